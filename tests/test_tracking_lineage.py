"""The per-coalition lineage view: in the tracking folder (lineage.json / .md) and in the report."""

from __future__ import annotations

from hedonic_neurons.report.build import lineage_view, write_report
from hedonic_neurons.tracking import track_layers, transition_table
from hedonic_neurons.tracking.run import lineage, lineage_markdown
from test_tracking_null import planted_layers


def planted_results():
    src, tgt, A, g, down, up = planted_layers()
    one = track_layers(down, up, None, g, A, src, tgt, layer=7, seed=1)
    two = track_layers(down, up, None, g, A, src, tgt, layer=7, target_layer=9, seed=2)
    return [one, two]


def test_lineage_lists_where_each_coalition_comes_from_and_goes_to():
    results = planted_results()
    tree = lineage(results)
    assert sorted(tree) == ["L7", "L8", "L9"]
    s1 = tree["L7"]["C1"]  # the planted split, seen at both horizons
    assert [e["layer"] for e in s1["to"]] == [8, 9] and s1["size"] == 4
    assert s1["to"][0]["label"] == "split" and sorted(x["coalition"] for x in s1["to"][0]["links"]) == [1, 2]
    assert s1["to"][0]["links"][0]["lift_alpha"] >= results[0].null["tau_alpha"]
    t3 = tree["L8"]["C3"]  # the merge target: two parents
    assert t3["from"][0]["label"] == "merge" and sorted(x["coalition"] for x in t3["from"][0]["links"]) == [
        2,
        3,
    ]
    assert tree["L7"]["C4"]["to"][0]["label"] == "vanishing" and tree["L7"]["C4"]["to"][0]["links"] == []
    assert tree["L8"]["C15"]["from"][0]["label"] == "emergence"
    assert tree["L7"]["C0"]["to"][0]["matched"]["coalition"] == 0  # the matching is reported too
    md = lineage_markdown(tree, title="t")
    assert "**L7 C1** (4 neurons; →L8 split, →L9 split)" in md
    assert "to L8 C1 (split, α·K" in md and "from L7 C2 (merge" in md
    assert "L7 C5" not in md  # unstructured coalitions are only in lineage.json


def test_report_has_the_transition_table_and_the_lineage_view(tmp_path):
    results = planted_results()
    rows = [
        {
            "source_layer": r.source_layer,
            "target_layer": r.target_layer,
            "percent": dict(r.percentages),
            **row,
            "link_list": r.to_dict()["links"],
        }
        for r, row in zip(results, transition_table(results, method="hedonic-oca"))
    ]
    view = lineage_view({"hedonic-oca": rows})
    node = view["hedonic-oca"][(7, 1)]
    assert [(layer, c) for layer, c, _ in node["to"]] == [(8, 1), (8, 2), (9, 1), (9, 2)]
    assert [(layer, c) for layer, c, _ in view["hedonic-oca"][(8, 3)]["from"]] == [(7, 2), (7, 3)]
    doc = {
        "title": "t",
        "table_extrinsic": [],
        "sizes": {},
        "transitions": {"hedonic-oca": rows},
        "notes": [],
    }
    paths = write_report(doc, tmp_path)
    md = paths["markdown"].read_text()
    assert "| hedonic-oca | 7→8 | 6.2 | 6.2 | 12.5 | 6.2 | 6.2 | 68.8 |" in md  # label % of the planted pair
    assert "τα" in md and "## Coalition lineage (links above the null)" in md
    assert "| L7 C1 | 4 | – | L8 C1 (split;" in md
    page = paths["html"].read_text()
    assert "<h2>Coalition lineage</h2>" in page and "coalitions with a link above the null" in page
