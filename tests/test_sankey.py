"""The tracking Sankey: offline HTML, the right nodes and links, renders in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from conftest import headless_chromium
from hedonic_neurons.report.sankey import sankey_figure, write_sankey
from hedonic_neurons.tracking.run import track_partitions
from tiny import tiny_model

# Coalitions per layer: layer 0 has 6 tracked (+1 singleton), layer 1 has 4, layer 2 has 7 (+1 singleton).
SIZES = {0: [5, 4, 4, 3, 3, 2, 1], 1: [8, 6, 6, 4], 2: [4, 4, 3, 3, 3, 3, 2, 1]}
# 6 + 4 + 7 coalition nodes, a "vanished after L0" node (2 sources unmatched) and an
# "emerged in L2" node (3 targets unmatched).
EXPECTED_NODES = 6 + 4 + 7 + 1 + 1
EXPECTED_LINKS = (4 + 2) + (4 + 3)  # matched pairs + pseudo links, per transition


@pytest.fixture(scope="module")
def results():
    model = tiny_model("llama", layers=3, d=16, n=24)
    rng = np.random.default_rng(0)
    parts = {}
    for layer, sizes in SIZES.items():
        perm = rng.permutation(24)
        parts[layer] = [perm[a:b].tolist() for a, b in zip(np.cumsum([0, *sizes[:-1]]), np.cumsum(sizes))]
    A = {layer: rng.uniform(0.1, 1.0, size=24) for layer in (0, 1)}
    return track_partitions(model, parts, A)


def test_figure_nodes_links_and_hover(results):
    fig = sankey_figure(results)
    sk = fig.data[0]
    assert len(sk.node.label) == EXPECTED_NODES
    assert len(sk.link.source) == EXPECTED_LINKS
    assert (
        "L0 C0 (5)" in sk.node.label
        and "vanished after L0" in sk.node.label
        and "emerged in L2" in sk.node.label
    )
    # links per transition: matched pairs first (with alpha / beta), then vanished / emerged links
    matched = [i for i, h in enumerate(sk.link.customdata) if "α =" in h]
    assert matched == [0, 1, 2, 3, 6, 7, 8, 9]
    # every link of a matched pair is as wide as its source coalition
    widths = sorted(sk.link.value[:4])
    assert widths == sorted(m["source_size"] for m in results[0].to_dict()["matches"])
    # the same figure from the JSON documents that `hedonic track` writes
    again = sankey_figure([json.loads(json.dumps(r.to_dict())) for r in reversed(results)])
    assert list(again.data[0].node.label) == list(sk.node.label)


def test_html_is_self_contained(results, tmp_path):
    path = write_sankey(results, tmp_path / "sankey.html")
    html = path.read_text()
    assert not re.search(r"<script[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", html, re.I)
    assert "<script" in html and len(html) > 1_000_000  # plotly.js is embedded


ERROR_HOOK = """<script>
window.__errs = [];
const __origError = console.error;
console.error = function (...a) { window.__errs.push(a.map(String).join(" ")); __origError.apply(console, a); };
window.addEventListener("error", (e) => window.__errs.push("uncaught: " + e.message));
window.addEventListener("unhandledrejection", (e) => window.__errs.push("rejection: " + String(e.reason)));
window.addEventListener("load", () => setTimeout(() => {
  document.documentElement.setAttribute("data-errors", JSON.stringify(window.__errs));
  document.documentElement.setAttribute("data-nodes", document.querySelectorAll("g.sankey-node").length);
  document.documentElement.setAttribute("data-links", document.querySelectorAll("path.sankey-link").length);
}, 500));
</script>"""


def render(page, tmp_path) -> tuple[dict, str]:
    """Load ``page`` in headless Chromium (with the error hook injected first in <head>)."""
    probe = tmp_path / f"probe_{page.name}"
    probe.write_text(page.read_text().replace("<head>", "<head>" + ERROR_HOOK, 1))
    cmd = headless_chromium(
        tmp_path / "profile",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=15000",
        "--dump-dom",
        probe.as_uri(),
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True)
    head = re.search(r"<html([^>]*)>", proc.stdout).group(1)
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', head))
    assert "errors" in attrs, "the page never finished loading"
    return {
        "errors": json.loads(attrs["errors"].replace("&quot;", '"')),
        "nodes": int(attrs["nodes"]),
        "links": int(attrs["links"]),
    }, proc.stderr


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_sankey_renders_in_headless_chromium(results, tmp_path):
    # the probe sees console errors (positive control)
    bad = tmp_path / "bad.html"
    bad.write_text("<html><head></head><body><script>console.error('boom'); nope();</script></body></html>")
    seen, _ = render(bad, tmp_path)
    assert seen["errors"][0] == "boom" and "nope" in seen["errors"][1]

    page = write_sankey(results, tmp_path / "sankey.html")
    seen, stderr = render(page, tmp_path)
    assert seen["errors"] == []
    assert "Uncaught" not in stderr
    assert seen["nodes"] == EXPECTED_NODES
    assert seen["links"] == EXPECTED_LINKS
