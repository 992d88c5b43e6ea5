"""The registry helper every extension point uses."""

import abc

import pytest

from hedonic_neurons.errors import ConfigError
from hedonic_neurons.registry import Registry


class Base(abc.ABC):
    @abc.abstractmethod
    def run(self) -> int: ...


class One(Base):
    def run(self) -> int:
        return 1


def test_register_get_and_names_in_order():
    reg: Registry[type[Base]] = Registry("toy", base=Base)
    reg.add("one", One)

    @reg.register("two")
    class Two(Base):
        def run(self) -> int:
            return 2

    assert reg.names() == ["one", "two"]
    assert reg.get("two")().run() == 2
    assert "one" in reg and "three" not in reg and len(reg) == 2


def test_unknown_name_lists_choices_and_suggests():
    reg: Registry[type[Base]] = Registry("toy", base=Base)
    reg.add("spherical-kmeans", One)
    with pytest.raises(ConfigError, match=r"unknown toy 'sphericl-kmeans' \(expected one of: spherical-kmeans\); did you mean 'spherical-kmeans'\?"):
        reg.get("sphericl-kmeans")


def test_protocol_and_duplicates_are_checked():
    reg: Registry[type[Base]] = Registry("toy", base=Base)
    with pytest.raises(ConfigError, match="does not implement Base"):
        reg.add("bad", int)
    reg.add("one", One)
    with pytest.raises(ConfigError, match="already registered"):
        reg.add("one", type("Other", (Base,), {"run": lambda self: 0}))
    with pytest.raises(ConfigError, match="non-empty string"):
        reg.add(" one", One)


def test_temporarily_restores_previous_entry():
    reg: Registry[type[Base]] = Registry("toy", base=Base)
    reg.add("one", One)
    other = type("Other", (Base,), {"run": lambda self: 7})
    with reg.temporarily("one", other):
        assert reg.get("one")().run() == 7
    assert reg.get("one") is One
    with reg.temporarily("new", other):
        assert "new" in reg
    assert "new" not in reg


def test_defaults_module_imported_on_first_use():
    reg: Registry[object] = Registry("toy", defaults=("json",))
    assert not reg._loaded
    reg.names()
    assert reg._loaded
