"""hedonic_neurons.plot: each figure's content checked (image data, bars and error bars, lines,
Sankey links), and text legible (>= 10 pt)."""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib.text
import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from hedonic_neurons import plot
from hedonic_neurons.errors import DataError


def _phi(n: int = 9, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n))
    a = (a + a.T) / 2
    np.fill_diagonal(a, 0)
    return a


def _min_font(fig: Figure) -> float:
    sizes = [t.get_fontsize() for t in fig.findobj(matplotlib.text.Text) if t.get_text().strip()]
    return min(sizes)


def test_phi_heatmap_shows_the_permuted_phi_with_borders():
    phi = _phi()
    partition = [[4], [0, 7], [1, 3, 8], [2], [5, 6]]
    fig = plot.phi_heatmap(phi, partition)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    order = [1, 3, 8, 0, 7, 5, 6, 2, 4]  # largest first; ties by smaller first member
    np.testing.assert_array_equal(ax.images[0].get_array(), phi[np.ix_(order, order)])
    boxes = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert [(b.get_x() + 0.5, b.get_width()) for b in boxes] == [(0, 3), (3, 2), (5, 2)]
    limit = np.abs(phi).max()
    assert ax.images[0].get_clim() == (-limit, limit)
    assert _min_font(fig) >= 10
    without_singletons = plot.phi_heatmap(phi, partition, min_size=2)
    np.testing.assert_array_equal(
        without_singletons.axes[0].images[0].get_array(), phi[np.ix_(order[:7], order[:7])]
    )


def test_phi_heatmap_errors():
    with pytest.raises(DataError, match="outside 0..8"):
        plot.phi_heatmap(_phi(), [[0, 9]])
    with pytest.raises(DataError, match="two coalitions"):
        plot.phi_heatmap(_phi(), [[0, 1], [1, 2]])
    with pytest.raises(DataError, match="square"):
        plot.phi_heatmap(np.zeros((2, 3)), [[0, 1]])


def test_size_distribution_one_line_per_partition():
    part = SimpleNamespace(coalitions=[[0, 1, 2, 3], [4], [5, 6]])  # anything with .coalitions
    fig = plot.size_distribution({"a": [[0], [1, 2], [3, 4, 5]], "b": part})
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2
    assert list(lines[0].get_ydata()) == [3, 2, 1] and list(lines[1].get_ydata()) == [4, 2, 1]
    assert list(lines[0].get_xdata()) == [1, 2, 3]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
        "a (3 coalitions, largest 3)",
        "b (3 coalitions, largest 4)",
    ]
    assert _min_font(fig) >= 10


def test_ablation_comparison_bars_and_error_bars():
    rows = [
        {"method": "hedonic", "mean": 0.5, "low": 0.25, "high": 0.9},
        {"method": "random", "mean": -0.1, "low": -0.3, "high": 0.05},
        {"method": "failed", "mean": float("nan"), "low": float("nan"), "high": float("nan")},
        {"method": "kmeans", "mean": 0.2, "low": 0.2, "high": 0.2},
    ]
    fig = plot.ablation_comparison(rows, title="t", ylabel="Δ loss")
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([0.5, -0.1, 0.2])  # the NaN row is left out
    assert [t.get_text() for t in ax.get_xticklabels()] == ["hedonic", "random", "kmeans"]
    (bars,) = [c for c in ax.containers if hasattr(c, "errorbar") and c.errorbar is not None]
    segments = bars.errorbar.lines[2][0].get_segments()
    extents = np.array([(s[0][1], s[1][1]) for s in segments])
    np.testing.assert_allclose(extents, [(0.25, 0.9), (-0.3, 0.05), (0.2, 0.2)], atol=1e-12)
    assert _min_font(fig) >= 10
    with pytest.raises(DataError, match="at least one finite mean"):
        plot.ablation_comparison([rows[2]])


def _link(s, t, label, lift):
    return {
        "source_coalition": s,
        "target_coalition": t,
        "source_size": 4,
        "target_size": 3,
        "label": label,
        "alpha": 0.5,
        "beta": 0.5,
        "mass": 1.0,
        "lift_alpha": lift,
        "lift_beta": lift,
        "pct_alpha": 99,
        "pct_beta": 99,
    }


def test_sankey_draws_only_links_that_pass_the_rule():
    doc = {
        "source_layer": 2,
        "target_layer": 3,
        "rule": "null",
        "null": {"tau_alpha": 2.0, "tau_beta": 2.0, "draws": 50, "level": 0.95},
        "links": [
            _link(0, 0, "persistence", 5.0),
            _link(1, 1, "split", 2.5),
            _link(1, 2, "split", 2.0),
            _link(2, 3, "merge", 1.9),  # below the thresholds: unstructured, not drawn
            _link(3, 4, "persistence", 0.5),
        ],
    }
    fig = plot.sankey([doc])
    sk = fig.data[0]
    pairs = [(sk.node.label[a], sk.node.label[b]) for a, b in zip(sk.link.source, sk.link.target)]
    assert pairs == [("L2 C0 (4)", "L3 C0 (3)"), ("L2 C1 (4)", "L3 C1 (3)"), ("L2 C1 (4)", "L3 C2 (3)")]
    assert [t.name for t in fig.data[1:]] == ["persistence (1)", "split (2)"]
