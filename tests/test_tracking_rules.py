"""Tracking rules live in a registry: a toy rule registered inside a test is accepted everywhere a
rule is named (track_layers, the config, TrackSettings, `hedonic track --rule`)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from hedonic_neurons.artifacts import save_partition
from hedonic_neurons.config import TrackingConfig, load_config
from hedonic_neurons.errors import ConfigError
from hedonic_neurons.tracking import TRACKING_RULES, TrackingRule, classify_transitions, track_layers
from hedonic_neurons.tracking.rules import CodeRule, MatchingRule, NullRule
from hedonic_neurons.tracking.run import TrackSettings
from test_loading import save_tiny


class Reciprocal(TrackingRule):
    """Persistence for every pair that is each other's largest mass; all else vanishes / emerges."""

    def classify(self, mass: np.ndarray, *, tau: float | None, null: Any) -> dict[str, Any]:
        assert tau is None and null is None
        src = ["vanishing"] * mass.shape[0]
        tgt = ["emergence"] * mass.shape[1]
        matches = []
        for i in range(mass.shape[0]):
            j = int(mass[i].argmax())
            if mass[i, j] > 0 and int(mass[:, j].argmax()) == i:
                src[i] = tgt[j] = "persistence"
                matches.append((i, j, "persistence"))
        counts = {"persistence": src.count("persistence"), "vanishing": src.count("vanishing")}
        counts["emergence"] = tgt.count("emergence")
        basis = {"persistence": "sources", "vanishing": "sources", "emergence": "targets"}
        return {
            "matches": matches,
            "source_labels": src,
            "target_labels": tgt,
            "counts": counts,
            "basis": basis,
        }


def reciprocal_by_hand(mass: np.ndarray) -> list[tuple[int, int]]:
    m = np.asarray(mass)
    return [
        (i, j)
        for i in range(m.shape[0])
        for j in range(m.shape[1])
        if m[i, j] > 0 and m[i, j] == m[i].max() == m[:, j].max()
    ]


def test_builtin_rules_are_registered_by_name():
    assert TRACKING_RULES.names()[:3] == ["null", "matching", "code"]
    assert [TRACKING_RULES.get(n) for n in ("null", "matching", "code")] == [NullRule, MatchingRule, CodeRule]
    assert NullRule.uses_null and NullRule.default_tau is None
    assert (MatchingRule.default_tau, CodeRule.default_tau) == (0.5, 0.3)
    with pytest.raises(ConfigError, match="does not implement TrackingRule"):
        TRACKING_RULES.add("not-a-rule", dict)
    with pytest.raises(ConfigError, match="did you mean 'matching'"):
        classify_transitions(np.ones((2, 2)), rule="matchin")


def test_a_toy_rule_registered_in_a_test_is_used_everywhere(tmp_path, capsys):
    mass = np.array([[5.0, 1.0, 0.0], [4.0, 3.0, 0.0], [0.0, 4.0, 1.0], [0.0, 0.0, 0.0]])
    with TRACKING_RULES.temporarily("reciprocal", Reciprocal):
        out = classify_transitions(mass, rule="reciprocal")
        assert out["matches"] == [(0, 0, "persistence"), (2, 1, "persistence")]
        assert [(i, j) for i, j, _ in out["matches"]] == reciprocal_by_hand(mass)
        assert out["source_labels"] == ["persistence", "vanishing", "persistence", "vanishing"]
        # percentages in LABELS order, over the basis the rule names
        assert out["percentages"] == {"persistence": 50.0, "vanishing": 50.0, "emergence": 100 / 3}
        with pytest.raises(ConfigError, match="takes none"):
            classify_transitions(mass, 0.5, rule="reciprocal")

        # the config, the settings and the command line read the registry
        assert TrackingConfig(rule="reciprocal").rule == "reciprocal"
        assert load_config(None, {"tracking": {"rule": "reciprocal"}}).tracking.rule == "reciprocal"
        assert TrackSettings(rule="reciprocal").rule == "reciprocal"

        rng = np.random.default_rng(1)
        down, up, gate = rng.normal(size=(8, 12)), rng.normal(size=(12, 8)), rng.normal(size=(12, 8))
        src = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
        res = track_layers(down, up, gate, None, np.ones(12), src, src, rule="reciprocal", layer=0)
        assert res.rule == "reciprocal" and res.tau is None and res.null is None
        assert [(i, j) for i, j, _ in res.matches] == reciprocal_by_hand(res.mass)

        from hedonic_neurons.cli import main

        base = save_tiny(tmp_path / "base", "llama", layers=3, n=24)
        parts = rng.permutation(24).reshape(6, 4).tolist()
        for layer in (0, 1):
            save_partition(tmp_path / "parts" / f"L{layer}.json", parts, method="m", params={}, layer=layer)
        pairs = tmp_path / "pairs.tsv"
        pairs.write_text("".join(f"q{i}\tp{i}\tquery {i} words\tpassage {i} text here\n" for i in range(6)))
        argv = ["track", str(base), "--partitions", str(tmp_path / "parts"), "--out", str(tmp_path / "t"),
                "--data", str(pairs), "--rule", "reciprocal", "--flow-pairs", "0",
                "--device", "cpu"]  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code in (0, None)
        doc = json.loads((tmp_path / "t" / "transition_L0_L1.json").read_text())
        assert doc["rule"] == "reciprocal" and doc["settings"]["rule"] == "reciprocal"
        assert [(m["source"], m["target"]) for m in doc["matches"]] == reciprocal_by_hand(doc["mass"])
        assert "| reciprocal |" in (tmp_path / "t" / "transitions.md").read_text()

    # gone after the block: every place that names a rule refuses it again
    assert "reciprocal" not in TRACKING_RULES
    with pytest.raises(ConfigError, match="unknown tracking rule 'reciprocal'"):
        TrackSettings(rule="reciprocal")
    with pytest.raises(ConfigError, match="tracking.rule"):
        load_config(None, {"tracking": {"rule": "reciprocal"}})
    with pytest.raises(SystemExit) as exc:
        main([*argv[:4], "--out", str(tmp_path / "t2"), *argv[6:]])
    assert exc.value.code == 2
    assert "--rule" in capsys.readouterr().err and not (tmp_path / "t2").exists()
