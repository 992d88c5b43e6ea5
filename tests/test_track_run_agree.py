"""`hedonic run` (stopped after tracking) and `hedonic track` on the partitions that run wrote:
the same tracking output (same transitions, same numbers), end to end, with nothing patched."""

from __future__ import annotations

import json

import pytest

from hedonic_neurons.cli import main
from hedonic_neurons.pipeline import load_split, run
from test_loading import tiny_run_config

# where the two calls differ by construction: the run's timestamps, the partition seed it tracked
# (``hedonic track`` reads a folder) and the words describing the pairs (a split vs a file name)
CALLER = ("provenance", "seed")


def outputs(folder) -> dict[str, object]:
    """Every tracking output except the Sankey page (its plotly div id is random)."""
    out: dict[str, object] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix == ".json" and path.name != "stage.json":
            doc = json.loads(path.read_text())
            for key in CALLER:
                doc.pop(key, None)
            if "activations" in doc:
                doc["activations"] = {k: v for k, v in doc["activations"].items() if k != "data"}
            out[path.name] = doc
        elif path.suffix in (".md", ".csv"):
            out[path.name] = path.read_text()
    return out


def test_hedonic_track_on_the_runs_partitions_writes_the_runs_tracking_files(tmp_path):
    cfg = tiny_run_config(tmp_path, [0, 1, 2], {"seeds": [0, 1, 2]})
    run(cfg, tmp_path / "run", progress=False, stop_after="tracking")

    # the train pairs the run tracked on, as a pairs file for `hedonic track --data`
    pairs, _, _ = load_split("demo", "train", cfg.data.max_train_pairs, cfg.seed, cfg.task)
    assert len(pairs) > cfg.tracking.max_pairs  # so the seeded sample of E|a_p|'s pairs matters
    tsv = tmp_path / "train.tsv"
    tsv.write_text("".join(f"{p.qid}\t{p.pid}\t{p.query}\t{p.passage}\n" for p in pairs))

    for method in ("hedonic-oca", "random"):
        argv = [
            "track", str(tmp_path / "base"), "--adapter", str(tmp_path / "adapter"),
            "--partitions", str(tmp_path / "run" / "partitions" / method / "seed0"),
            "--out", str(tmp_path / "track" / method),
            "--data", str(tsv), "--max-pairs", "30", "--flow-pairs", "8",
            "--batch-size", "4", "--max-length", "32", "--seed", "0",
        ]  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code in (0, None)

        ours = outputs(tmp_path / "run" / "tracking" / method)
        theirs = outputs(tmp_path / "track" / method)
        assert sorted(ours) == sorted(theirs)
        assert {"transition_L0_L1.json", "transition_L0_L2.json", "transition_L1_L2.json"} <= set(ours)
        for name in ours:
            assert ours[name] == theirs[name], (method, name)
        doc = ours["transition_L0_L1.json"]
        # the same library statistic on the same 30 pairs, the same settings and model
        assert doc["activations"] == {"pairs": 30, "statistic": "E|a_p| over non-pad tokens"}
        assert doc["settings"]["max_pairs"] == 30 and doc["method"] == method
        assert doc["flow_info"]["inputs"] == 8 and doc["mass_summary"]["total"] > 0
        assert doc["partitions"]["0"].endswith(f"{method}/seed0/layer0.json")
