"""The hedonic game on neurons: MFC utility, Top Covering (exact and PAC), stability checks.

numpy in, numpy out. Public API:

* :class:`PACTopCover` (method A8) and :class:`TopCover` (A9): estimators with ``fit(phi)``,
  ``coalitions_``, ``labels_``, ``n_rounds_``, ``diagnostics_``;
* :func:`certify` (A10): blocking rate of any partition with a Clopper-Pearson bound;
* :func:`is_core_stable`: brute-force core check for n <= 12;
* :func:`choice_sets`, :func:`utility`, :func:`prefers`: the MFC utility (A7);
* :func:`sink_sccs`: sink strongly connected components of a digraph.
"""

from hedonic_neurons.game.certify import (
    Certificate,
    PreparedPartition,
    certify,
    clopper_pearson_upper,
    is_core_stable,
    prepare_partition,
)
from hedonic_neurons.game.digraph import sink_sccs
from hedonic_neurons.game.planted import PlantedGame, planted_game
from hedonic_neurons.game.significance import DEFAULT_MIN_Z, significant_phi
from hedonic_neurons.game.solvers import PACTopCover, TopCover, pac_budget
from hedonic_neurons.game.utility import choice_sets, prefers, utility

__all__ = [
    "DEFAULT_MIN_Z",
    "Certificate",
    "PACTopCover",
    "PlantedGame",
    "PreparedPartition",
    "TopCover",
    "certify",
    "choice_sets",
    "clopper_pearson_upper",
    "is_core_stable",
    "pac_budget",
    "planted_game",
    "prefers",
    "prepare_partition",
    "significant_phi",
    "sink_sccs",
    "utility",
]
