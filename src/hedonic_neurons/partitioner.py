"""The partitioner protocol and registry: every method that partitions a layer's neurons.

:class:`Partitioner` is the abstract base class (a scikit-learn clusterer) and
:data:`PARTITIONERS` the registry that holds them all: the hedonic game's solvers (``exact``,
``pac``) and the baselines (``random``, ``kmeans``, ``hierarchical``, ``phi-communities``). A new
method is one class that subclasses :class:`Partitioner` and is registered::

    from hedonic_neurons.partitioner import PARTITIONERS, Partitioner

    @PARTITIONERS.register("singletons")
    class Singletons(Partitioner):
        requires = None

        def fit(self, X, y=None):
            self._set_result([[i] for i in range(len(X))], len(X))
            return self

after which ``hedonic baseline --method singletons`` and ``baselines: [singletons]`` in a run
config use it (through :func:`hedonic_neurons.partition.partition_layer`).
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from sklearn.base import BaseEstimator, ClusterMixin

from hedonic_neurons.artifacts import canonical_coalitions, labels_from_coalitions
from hedonic_neurons.errors import ConfigError
from hedonic_neurons.partition import Partition, hedonic_method, jsonable
from hedonic_neurons.registry import Registry

__all__ = [
    "PARTITIONERS",
    "Partitioner",
    "baseline_names",
    "check_baseline",
    "check_solver",
    "make_partitioner",
    "registered_name",
    "solver_names",
]


class Partitioner(ClusterMixin, BaseEstimator, metaclass=ABCMeta):
    """The protocol of a method that partitions a layer's neurons: a scikit-learn clusterer.

    A subclass follows scikit-learn's estimator contract: ``__init__`` takes every parameter as
    a keyword with a default and stores it unchanged under its own name (no validation there:
    ``fit`` validates), so ``get_params``/``set_params``/``clone``/``repr`` work; all randomness
    goes through a ``random_state`` parameter. ``fit(X)`` returns ``self`` after
    :meth:`_set_result`, which sets ``coalitions_`` (canonical), ``labels_`` (``labels_[i]`` is
    neuron i's coalition index), ``n_neurons_`` and ``partition_`` (a :class:`Partition`);
    ``fit_predict(X)`` returns ``labels_``.

    Class attributes a subclass sets:

    * ``requires``: what ``fit`` is given (:func:`~hedonic_neurons.partition.partition_layer`
      provides it):
      ``"phi"`` the n x n synergy matrix; ``"rows"`` the MLP input-projection weight rows
      (n x d_model); ``"profiles"`` activation profiles (n x inputs); ``"sizes"`` target
      coalition sizes (a list of ints); None nothing: ``fit`` gets an (n, 0) array, which only
      tells it n.
    * ``hedonic``: True for solvers of the hedonic game (given a metric's φ; their partitions
      are named ``hedonic-<metric>``), False for baselines.
    * ``deterministic``: True if the result does not depend on ``random_state`` (it is then
      computed once and reused for every seed).

    :meth:`prepare` may turn the input into something reusable across seeds (computed once per
    layer), and :meth:`diagnostics` returns fields written into the partition file.
    """

    requires: ClassVar[str | None] = None
    hedonic: ClassVar[bool] = False
    deterministic: ClassVar[bool] = False

    @abstractmethod
    def fit(self, X: Any, y: Any = None) -> Partitioner:
        """Partition the neurons given the input named by ``requires``; returns ``self``."""

    def prepare(self, X: Any) -> Any:
        """The input as ``fit`` takes it, computed once per layer and shared by every seed
        (default: ``X`` itself). It may depend on the parameters but not on ``random_state``."""
        return X

    def diagnostics(self) -> dict[str, Any]:
        """Fields the fitted partitioner adds to its partition file (default none)."""
        return {}

    def _set_result(self, coalitions: Sequence[Sequence[int]], n: int) -> None:
        self.coalitions_ = canonical_coalitions(coalitions)
        self.labels_ = labels_from_coalitions(self.coalitions_, n)
        self.n_neurons_ = n
        name = registered_name(type(self))
        params = {k: jsonable(v) for k, v in self.get_params(deep=False).items()}
        if self.hedonic:
            self.partition_ = Partition(
                self.labels_, method=hedonic_method(None), params={"solver": name, **params}
            )
        else:
            self.partition_ = Partition(self.labels_, method=name, params=params)


def registered_name(cls: type) -> str | None:
    """The name ``cls`` is registered under in :data:`PARTITIONERS` (None if it is not)."""
    return next((name for name, entry in PARTITIONERS.items() if entry is cls), None)


PARTITIONERS: Registry[type[Partitioner]] = Registry(
    "partitioner",
    base=Partitioner,
    defaults=("hedonic_neurons.game.solvers", "hedonic_neurons.baselines.partitioners"),
)
"""Every partitioner by name: the solvers of the game and the baselines."""


def solver_names() -> list[str]:
    """The registered solvers of the hedonic game (``GameConfig.solver``)."""
    return [name for name, cls in PARTITIONERS.items() if cls.hedonic]


def baseline_names() -> list[str]:
    """The registered baselines (``RunConfig.baselines``, ``hedonic baseline --method``)."""
    return [name for name, cls in PARTITIONERS.items() if not cls.hedonic]


def check_solver(name: Any) -> str:
    """``name`` if it is a registered solver, else one :class:`ConfigError` naming the solvers."""
    names = solver_names()
    if name not in names:
        raise ConfigError(f"unknown solver {name!r} (expected one of: {', '.join(names)})")
    return name


def check_baseline(name: Any) -> str:
    """``name`` if it is a registered baseline, else one :class:`ConfigError` naming them."""
    names = baseline_names()
    if name not in names:
        import difflib

        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown baseline {name!r} (expected one of: {', '.join(names)}){hint}")
    return name


def make_partitioner(name: str, settings: Mapping[str, Any] | None = None, seed: Any = None) -> Partitioner:
    """The partitioner registered as ``name``, built from the entries of ``settings`` that are its
    parameters (others are ignored), with ``random_state=seed`` if it takes one."""
    cls = PARTITIONERS.get(name)
    accepted = cls._get_param_names()
    kwargs = {k: v for k, v in (settings or {}).items() if k in accepted}
    if "random_state" in accepted:
        kwargs["random_state"] = seed
    return cls(**kwargs)
