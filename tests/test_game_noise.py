"""The thresholded game (only significantly positive phi is a partner) on a planted noisy game."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from hedonic_neurons.errors import ConfigError, PhiError
from hedonic_neurons.game import PACTopCover, TopCover
from hedonic_neurons.game.planted import planted_game
from hedonic_neurons.game.significance import DEFAULT_MIN_Z, significant_phi


@pytest.fixture(scope="module")
def games():
    return {sigma: planted_game(sigma=sigma, random_state=1) for sigma in (0.0, 0.02)}


def _ari(game, est):
    return adjusted_rand_score(game.labels, est.labels_)


@pytest.mark.parametrize("k", [2, 3])
def test_thresholded_exact_game_keeps_its_noise_free_recovery(games, k):
    clean, noisy = games[0.0], games[0.02]
    free = _ari(clean, TopCover(k, min_z=DEFAULT_MIN_Z).fit(clean.phi, clean.se))
    assert free == pytest.approx(_ari(clean, TopCover(k).fit(clean.phi)))  # se = 0: the plain game
    assert free > 0.7  # the planted groups are there to be found
    thresholded = _ari(noisy, TopCover(k, min_z=DEFAULT_MIN_Z).fit(noisy.phi, noisy.se))
    plain = _ari(noisy, TopCover(k).fit(noisy.phi))
    assert thresholded >= free - 0.05
    assert plain < free - 0.3  # without the threshold the noise chains the groups together


def test_thresholded_pac_recovers_what_plain_pac_cannot(games):
    noisy = games[0.02]
    kw = {"random_state": 0, "sampling": "phi", "phi_power": 4.0}
    thresholded = _ari(noisy, PACTopCover(2, min_z=DEFAULT_MIN_Z, **kw).fit(noisy.phi, noisy.se))
    plain = _ari(noisy, PACTopCover(2, **kw).fit(noisy.phi))
    assert thresholded > plain + 0.2


def test_significant_phi_is_the_entrywise_threshold():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 300))
    phi = (a + a.T) / 2
    np.fill_diagonal(phi, 0.0)
    s = rng.uniform(0.1, 1.0, size=(300, 300))
    se = (s + s.T) / 2
    got = significant_phi(phi, se, 1.5)
    assert np.array_equal(got, np.where(phi > 1.5 * se, phi, 0.0))
    assert not got.flags.writeable
    # an asymmetric se (rounding) keeps a pair when either side passes, so phi stays symmetric
    skew = se.copy()
    skew[3, 7] = 1e9
    got = significant_phi(phi, skew, 0.0)
    assert got[3, 7] == got[7, 3] == max(phi[3, 7], 0.0)


def test_thresholded_game_bad_input():
    phi = planted_game(n=40, n_groups=3, sigma=0.01).phi
    se = np.full_like(phi, 0.01)
    with pytest.raises(ConfigError, match="needs the standard errors"):
        TopCover(2, min_z=3).fit(phi)
    with pytest.raises(ConfigError, match="min_z is None"):
        TopCover(2).fit(phi, se)
    with pytest.raises(ConfigError, match="min_z must be"):
        TopCover(2, min_z=-1).fit(phi, se)
    with pytest.raises(PhiError, match="shape"):
        TopCover(2, min_z=3).fit(phi, se[:10])
    bad = se.copy()
    bad[2, 5] = np.nan
    with pytest.raises(PhiError, match=r"phi\[2, 5\]"):
        TopCover(2, min_z=3).fit(phi, bad)
    bad[2, 5] = -1.0
    with pytest.raises(PhiError, match="finite number >= 0"):
        PACTopCover(2, min_z=3).fit(phi, bad)
    with pytest.raises(ConfigError, match="planted_game"):
        planted_game(n=10, sizes=(1, 3))
