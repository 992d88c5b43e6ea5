"""The hedonic game on neurons: MFC utility, Top Covering (exact and PAC), stability checks.

numpy in, numpy out. Public API:

* :class:`PACTopCover` and :class:`TopCover`: partitioners (scikit-learn estimators, registered
  as ``"pac"`` and ``"exact"``) with ``fit(phi)``, ``coalitions_``, ``labels_``, ``partition_``,
  ``n_rounds_``, ``diagnostics_``;
* :func:`certify`: blocking rate of any partition with a Clopper-Pearson bound, and
  :func:`certificates`: one certificate per coalition distribution;
* :func:`is_core_stable`: brute-force core check for n <= 12;
* :func:`choice_sets`, :func:`utility`, :func:`prefers`: the MFC utility;
* :func:`sink_sccs`: sink strongly connected components of a digraph.

The solvers (which load scikit-learn) are imported on first use, so importing this package (as
``hedonic --help`` does, for the ``solve`` command) stays light.
"""

from typing import Any

from hedonic_neurons.game.certify import (
    Certificate,
    PreparedPartition,
    certificates,
    certify,
    clopper_pearson_upper,
    is_core_stable,
    prepare_partition,
)
from hedonic_neurons.game.digraph import sink_sccs
from hedonic_neurons.game.planted import PlantedGame, planted_game
from hedonic_neurons.game.significance import DEFAULT_MIN_Z, significant_phi
from hedonic_neurons.game.utility import choice_sets, prefers, utility

_SOLVERS = ("PACTopCover", "TopCover", "pac_budget")

__all__ = [
    "DEFAULT_MIN_Z",
    "Certificate",
    "PACTopCover",
    "PlantedGame",
    "PreparedPartition",
    "TopCover",
    "certificates",
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


def __getattr__(name: str) -> Any:
    if name in _SOLVERS:
        from hedonic_neurons.game import solvers

        value = getattr(solvers, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
