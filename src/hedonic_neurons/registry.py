"""Named registries: the one way an extension point is extended.

Every extension point of the tool (architectures, synergy metrics, partitioners, evaluations,
tracking rules) is a :class:`Registry`, defined next to the abstract base class that states its
protocol. Adding one is one new file that defines a class and registers it, e.g.::

    from hedonic_neurons.baselines import PARTITIONERS, Partitioner

    @PARTITIONERS.register("singletons")
    class Singletons(Partitioner):
        ...

The configuration, the command line's choices and the report's method lists read the names from
the registry, so nothing else needs an edit. A registry checks, when an entry is registered, that
it subclasses the registry's declared base class (an abstract base class that states the
protocol), and names the known entries (with a "did you mean" hint) when asked for an unknown one.

Registries are filled when the module that defines their entries is imported; each registry names
that module (``defaults``) and imports it on first use, so ``hedonic --help`` stays fast and the
built-in entries are always there.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

from hedonic_neurons.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → entry, for one kind of extension.

    Parameters
    ----------
    kind:
        What the entries are, in words ("synergy metric"); used in error messages.
    base:
        If given, every registered entry must be a subclass (or, for non-class entries, an
        instance) of it.
    defaults:
        Modules imported on first lookup; importing them registers the built-in entries.
    """

    def __init__(self, kind: str, base: type | None = None, defaults: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.base = base
        self._defaults = defaults
        self._loaded = not defaults
        self._entries: dict[str, T] = {}

    # -- registration -----------------------------------------------------------------------
    def _check(self, name: str, entry: Any) -> None:
        if not isinstance(name, str) or not name or name != name.strip():
            raise ConfigError(f"a {self.kind} name must be a non-empty string without spaces, got {name!r}")
        if self.base is not None:
            ok = issubclass(entry, self.base) if isinstance(entry, type) else isinstance(entry, self.base)
            if not ok:
                raise ConfigError(
                    f"{self.kind} {name!r}: {entry!r} does not implement {self.base.__name__} "
                    f"(subclass {self.base.__module__}.{self.base.__name__})"
                )

    def add(self, name: str, entry: T, *, replace: bool = False) -> T:
        """Register ``entry`` under ``name``; a second entry under a taken name is an error unless
        ``replace``."""
        self._check(name, entry)
        if name in self._entries and not replace and self._entries[name] is not entry:
            raise ConfigError(f"{self.kind} {name!r} is already registered ({self._entries[name]!r})")
        self._entries[name] = entry
        return entry

    def register(self, name: str, *, replace: bool = False) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def deco(entry: T) -> T:
            return self.add(name, entry, replace=replace)

        return deco

    def remove(self, name: str) -> None:
        """Unregister ``name`` (no error if absent)."""
        self._entries.pop(name, None)

    @contextmanager
    def temporarily(self, name: str, entry: T) -> Iterator[T]:
        """Register ``entry`` for the duration of a ``with`` block (tests, notebooks)."""
        self._load()
        previous = self._entries.get(name)
        self.add(name, entry, replace=True)
        try:
            yield entry
        finally:
            if previous is None:
                self.remove(name)
            else:
                self._entries[name] = previous

    # -- lookup -----------------------------------------------------------------------------
    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self._defaults:
                importlib.import_module(module)

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        self._load()
        return list(self._entries)

    def get(self, name: str) -> T:
        """The entry for ``name``; an unknown name is one :class:`ConfigError` naming the choices."""
        self._load()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(self.unknown(name)) from None

    def unknown(self, name: Any) -> str:
        """The message for an unknown ``name``: the choices, and the closest one if any is close."""
        known = self.names()
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r} (expected one of: {', '.join(known)}){hint}"

    def check(self, name: str) -> str:
        """``name`` if registered, else :class:`ConfigError` (for pydantic validators)."""
        self.get(name)
        return name

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"
