"""The tracking Sankey: only links above the null are drawn, a legend, a shared plotly bundle,
small pages, and it renders in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from browser import headless_chromium
from hedonic_neurons.report.sankey import BUNDLE_NAME, drawn_links, sankey_figure, write_sankey
from hedonic_neurons.tracking import track_layers
from hedonic_neurons.tracking.run import track_partitions
from test_tracking_null import planted_layers
from tiny import tiny_model


@pytest.fixture(scope="module")
def results():
    """L0 -> L1 and L1 -> L2 on planted weights (5 significant links each: a persistence, a
    split into two, a merge of two), plus a horizon-2 result L0 -> L2 that is not drawn."""
    out = []
    for lo, hi, seed in ((0, 1, 0), (1, 2, 1), (0, 2, 2)):
        src, tgt, A, g, down, up = planted_layers(seed)
        out.append(track_layers(down, up, None, g, A, src, tgt, layer=lo, target_layer=hi, seed=seed))
    return out


def expected_links(results) -> list[tuple[int, int, int, int, str]]:
    return [
        (
            r.source_layer,
            r.source_index[link["source"]],
            r.target_layer,
            r.target_index[link["target"]],
            link["label"],
        )
        for r in results
        if r.horizon == 1
        for link in r.links
    ]


def test_figure_draws_exactly_the_links_that_pass_the_rule(results):
    assert [len(r.links) for r in results] == [5, 5, 5]
    fig = sankey_figure(results)
    sk = fig.data[0]
    drawn = [
        (
            *map(int, re.match(r"L(\d+) C(\d+)", sk.node.label[a]).groups()),
            *map(int, re.match(r"L(\d+) C(\d+)", sk.node.label[b]).groups()),
            h[0].split(":")[0],
        )
        for a, b, h in zip(sk.link.source, sk.link.target, sk.link.customdata)
    ]
    assert sorted(drawn) == sorted(expected_links(results))  # adjacent pairs only, every link once
    for _, lift_a, lift_b, tau_a, tau_b in sk.link.customdata:
        assert lift_a >= tau_a and lift_b >= tau_b
    # nodes: only coalitions that take part in a drawn link (C0..C3 of each of the 3 layers)
    assert len(sk.node.label) == 12 and "L0 C0 (4)" in sk.node.label
    # legend: one entry per label, with its number of links; the note states the thresholds
    legend = [t.name for t in fig.data[1:]]
    assert legend == ["persistence (2)", "split (4)", "merge (4)"]
    note = fig.layout.annotations[0].text
    tau = results[0].null["tau_alpha"]
    assert (
        "random-partition null, 100 draws" in note and f"L0→L1: τα {tau:.2f}" in note and "L0→L2" not in note
    )
    # the same figure from the JSON documents that `hedonic track` writes
    again = sankey_figure([json.loads(json.dumps(r.to_dict())) for r in reversed(results)])
    assert list(again.data[0].node.label) == list(sk.node.label)


def test_drawn_links_apply_the_thresholds_of_the_document(results):
    doc = results[0].to_dict()
    assert len(drawn_links(doc)) == 5
    doc["null"]["tau_beta"] = 1e9  # a stricter threshold removes every link
    assert drawn_links(doc) == []
    doc["null"]["tau_beta"] = None  # JSON's infinite threshold
    assert drawn_links(doc) == []
    # the absolute rule draws its matched pairs that are not vanishing
    src, tgt, A, g, down, up = planted_layers()
    old = track_layers(down, up, None, g, A, src, tgt, rule="matching", tau=0.25).to_dict()
    assert [m["label"] for m in drawn_links(old)] == [
        m["label"] for m in old["matches"] if m["label"] != "vanishing"
    ]
    assert drawn_links(old)


def test_no_link_gives_a_note_and_no_sankey():
    """Random partitions of a tiny random model: nothing passes, and plotly.js is not handed an
    empty Sankey (it throws on one)."""
    model = tiny_model("llama", layers=2, d=16, n=24)
    rng = np.random.default_rng(0)
    parts = {layer: rng.permutation(24).reshape(6, 4).tolist() for layer in (0, 1)}
    res = track_partitions(model, parts, {0: rng.uniform(0.1, 1, 24)})
    if res[0].links:
        pytest.skip("this random draw happens to have a link")
    fig = sankey_figure(res)
    assert not [t for t in fig.data if t.type == "sankey"]
    assert fig.layout.annotations[0].text.startswith("No link passes the rule.")


def synthetic_docs(layers: int = 8, k: int = 100, links: int = 60) -> list[dict]:
    """Transition documents for ``layers`` layers x ``k`` coalitions, ``links`` links per pair."""
    rng = np.random.default_rng(1)
    docs = []
    for lo in range(layers - 1):
        pairs = {(int(i), int(j)) for i, j in rng.integers(0, k, size=(links, 2))}
        docs.append(
            {
                "source_layer": lo,
                "target_layer": lo + 1,
                "rule": "null",
                "null": {"tau_alpha": 2.0, "tau_beta": 2.0, "draws": 100, "level": 0.95},
                "links": [
                    {
                        "source": i,
                        "target": j,
                        "source_coalition": i,
                        "target_coalition": j,
                        "source_size": int(rng.integers(2, 200)),
                        "target_size": int(rng.integers(2, 200)),
                        "label": ["persistence", "split", "merge"][n % 3],
                        "mass": float(rng.uniform()),
                        "alpha": 0.1,
                        "beta": 0.2,
                        "lift_alpha": 2.5,
                        "lift_beta": 3.0,
                        "pct_alpha": 99.0,
                        "pct_beta": 99.5,
                        "flow": 0.01,
                    }
                    for n, (i, j) in enumerate(sorted(pairs))
                ],
                "matches": [],
            }
        )
    return docs


def test_pages_are_small_and_share_one_bundle(tmp_path):
    docs = synthetic_docs()
    a = write_sankey(docs, tmp_path / "a" / "sankey.html", bundle_dir=tmp_path)
    b = write_sankey(docs[:3], tmp_path / "b" / "sankey.html", bundle_dir=tmp_path)
    assert a.stat().st_size < 1_000_000 and b.stat().st_size < 1_000_000  # 8 layers x 100 coalitions
    assert sorted(p.name for p in tmp_path.rglob("*.js")) == [BUNDLE_NAME]  # one bundle for both
    for page in (a, b):
        srcs = re.findall(r"<script[^>]*\bsrc\s*=\s*[\"']([^\"']+)", page.read_text())
        assert srcs == [f"../{BUNDLE_NAME}"]  # relative: no CDN, no network
    bundle = tmp_path / BUNDLE_NAME
    stamp = bundle.stat().st_mtime_ns
    write_sankey(docs, tmp_path / "c" / "sankey.html", bundle_dir=tmp_path)
    assert bundle.stat().st_mtime_ns == stamp  # an existing, identical bundle is not rewritten


def test_embedded_page_is_self_contained(results, tmp_path):
    path = write_sankey(results, tmp_path / "sankey.html", embed=True)
    html = path.read_text()
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, re.I)
    assert "<script" in html and len(html) > 1_000_000  # plotly.js is embedded
    assert not (tmp_path / BUNDLE_NAME).exists()


PROBE = """<script>
window.__errs = [];
const __origError = console.error;
console.error = function (...a) { window.__errs.push(a.map(String).join(" ")); __origError.apply(console, a); };
window.addEventListener("error", (e) => window.__errs.push("uncaught: " + e.message));
window.addEventListener("unhandledrejection", (e) => window.__errs.push("rejection: " + String(e.reason)));
function __record() {
  const root = document.documentElement;
  const links = [...document.querySelectorAll("path.sankey-link")];
  root.setAttribute("data-errors", JSON.stringify(window.__errs));
  root.setAttribute("data-nodes", document.querySelectorAll("g.sankey-node").length);
  root.setAttribute("data-links", links.length);
  root.setAttribute("data-linkdata", JSON.stringify(links.map((e) => e.__data__.link.customdata.slice(1))));
  root.setAttribute("data-legend", JSON.stringify(
    [...document.querySelectorAll("g.legend g.traces text.legendtext")].map((e) => e.textContent)));
  root.setAttribute("data-note", [...document.querySelectorAll("g.annotation-text-g text")].map((e) => e.textContent).join(" "));
}
// record once the drawing has settled: the same node and link counts three polls in a row
window.addEventListener("load", () => {
  let last = "", same = 0, polls = 0;
  const timer = setInterval(() => {
    const now = document.querySelectorAll("g.sankey-node").length + "/" + document.querySelectorAll("path.sankey-link").length;
    same = now === last ? same + 1 : 0;
    last = now;
    if ((same >= 3 && polls >= 4) || ++polls > 40) { clearInterval(timer); __record(); }
  }, 250);
});
</script>"""


def render(page, tmp_path) -> tuple[dict, str]:
    """Load ``page`` in headless Chromium (with the probe injected first in <head>)."""
    probe = page.with_name(f"probe_{page.name}")
    probe.write_text(page.read_text().replace("<head>", "<head>" + PROBE, 1))
    cmd = headless_chromium(
        tmp_path / "profile",
        "--enable-logging=stderr",
        "--v=0",
        "--allow-file-access-from-files",
        "--virtual-time-budget=15000",
        "--dump-dom",
        probe.as_uri(),
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True)
    head = re.search(r"<html([^>]*)>", proc.stdout).group(1)
    attrs = {
        k: v.replace("&quot;", '"').replace("&amp;", "&")
        for k, v in re.findall(r'data-(\w+)="([^"]*)"', head)
    }
    assert "errors" in attrs, "the page never finished loading"
    seen = {key: json.loads(attrs[key]) for key in ("errors", "nodes", "links")}
    if "linkdata" in attrs:
        seen |= {"linkdata": json.loads(attrs["linkdata"]), "legend": json.loads(attrs["legend"])}
        seen["note"] = attrs["note"]
    return seen, proc.stderr


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_sankey_renders_in_headless_chromium(results, tmp_path):
    # the probe sees console errors (positive control)
    bad = tmp_path / "bad.html"
    bad.write_text("<html><head></head><body><script>console.error('boom'); nope();</script></body></html>")
    seen, _ = render(bad, tmp_path)
    assert seen["errors"][0] == "boom" and "nope" in seen["errors"][1]

    page = write_sankey(results, tmp_path / "page" / "sankey.html", bundle_dir=tmp_path)
    seen, stderr = render(page, tmp_path)
    assert seen["errors"] == []
    assert "Uncaught" not in stderr
    assert seen["nodes"] == 12
    # every link on the page passes the rule, and they are exactly the expected ones
    assert seen["links"] == len(expected_links(results)) == 10
    for lift_a, lift_b, tau_a, tau_b in seen["linkdata"]:
        assert lift_a >= tau_a and lift_b >= tau_b
    # the legend is drawn with one entry per label
    assert seen["legend"] == ["persistence (2)", "split (4)", "merge (4)"]
    assert "random-partition null" in seen["note"]
