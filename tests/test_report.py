import html
import json
import shutil
import subprocess

import pytest

from browser import headless_chromium
from hedonic_neurons.evaluate.stats import mean_ci
from hedonic_neurons.report.build import markdown_table, write_report


def fake_results():
    rows = [
        {
            "method": "hedonic-pas",
            "ood_drop": mean_ci([0.1, 0.12, 0.11]).to_dict(),
            "alignment_r2": mean_ci([0.5, 0.4, 0.45]).to_dict(),
        },
        {
            "method": "random",
            "ood_drop": mean_ci([0.01, 0.02, 0.0]).to_dict(),
            "alignment_r2": mean_ci([0.1, 0.05, 0.0]).to_dict(),
        },
    ]
    sizes = {
        "hedonic-pas": {
            "2": {"count": 3, "largest": 5, "singletons": 1, "median": 2, "p90": 4, "all_sizes": [5, 2, 1]}
        }
    }
    trans = {
        "hedonic-pas": [
            {
                "source_layer": 2,
                "target_layer": 3,
                "percent": {"persistence": 10, "split": 20, "merge": 0, "vanishing": 70},
            }
        ]
    }
    return {
        "title": "test report",
        "banner": ["DEMO CORPUS: not MS MARCO"],
        "model": "tiny",
        "task": "cqtr",
        "layers": [2, 3],
        "seeds": [0, 1, 2],
        "table_extrinsic": rows,
        "table_ridge": [{"method": "random", "cqtr": mean_ci([0.1, 0.2, 0.15]).to_dict()}],
        "sizes": sizes,
        "transitions": trans,
        "notes": ["a note"],
    }


def test_markdown_table_formats_ci():
    table = markdown_table(fake_results()["table_extrinsic"])
    lines = table.splitlines()
    assert lines[0] == "| method | OOD drop ↑ | alignment R² ↑ |"
    # mean 0.11, CI half-width t(0.975, 2) * sd/sqrt(3) = 4.303 * 0.01/1.732 = 0.0248
    assert lines[2].startswith("| hedonic-pas | 0.110 ± 0.025 |")


def test_write_report_files(tmp_path):
    paths = write_report(fake_results(), tmp_path)
    for key in ("results", "markdown", "html", "fig_methods", "fig_sizes", "fig_transitions", "fig_ridge"):
        assert paths[key].is_file(), key
    assert paths["fig_methods"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["markdown"].read_text()
    assert (
        "> DEMO CORPUS: not MS MARCO" in md and "| hedonic-pas | 2→3 | 10.0 | 20.0 | 0.0 | 70.0 | 0.0 |" in md
    )
    page = paths["html"].read_text()
    assert "http://" not in page and "https://" not in page  # offline: everything inline
    assert page.count("data:image/png;base64,") == 4
    assert json.loads(paths["results"].read_text())["task"] == "cqtr"


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(tmp_path):
    paths = write_report(fake_results(), tmp_path)
    shot = tmp_path / "shot.png"
    cmd = headless_chromium(
        tmp_path / "profile",
        "--window-size=1200,1600",
        f"--screenshot={shot}",
        paths["html"].as_uri(),
    )
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    from PIL import Image

    img = Image.open(shot).convert("L")
    # a rendered page with tables and figures is not blank: many distinct grey levels
    assert img.size == (1200, 1600)
    assert len(set(img.getdata())) > 20


# ----------------------------------------------------------------------------------------------
# what the report says: summary, scaled numbers, counts, every table in both files, legible figures


def told_results():
    res = fake_results()
    res["table_extrinsic"][0]["synergy"] = mean_ci([6.06e-12, 6.06e-12, 6.06e-12]).to_dict()
    res["table_extrinsic"][1]["synergy"] = mean_ci([1e-12, 3e-12, 2e-12]).to_dict()
    res["table_extrinsic"][0]["k"] = mean_ci([2, 2, 2]).to_dict()
    res["table_extrinsic"][1]["k"] = mean_ci([4, 5, 4]).to_dict()
    res["finetune"] = {
        "task": "cqtr",
        "test": {"dataset": "trec-dl-2019", "pearson": 0.934, "spearman": 0.92, "r2": 0.85, "n": 4300},
    }
    res["summary"] = ["hedonic-pas coalitions sit at the 97th percentile (95% CI 91–99) of random sets."]
    res["evaluation_tables"] = {
        "Effects against the null": [
            {"method": "hedonic-pas", "layer": 2, "delta_loss": {"mean": 3e-5, "low": 1e-5, "high": 5e-5}},
            {"method": "random", "layer": 2, "delta_loss": {"mean": -1e-5, "low": -2e-5, "high": 0.0}},
        ]
    }
    return res


def test_report_opens_with_a_summary_and_scales_numbers(tmp_path):
    paths = write_report(told_results(), tmp_path)
    md = paths["markdown"].read_text()
    page = paths["html"].read_text()
    # the summary comes first: what was run, the task quality, the evaluation's sentences
    assert md.index("## Summary") < md.index("## Extrinsic evaluation")
    ft = "on the out-of-domain test set (trec-dl-2019, 4300 pairs): R² 0.850, Pearson r 0.934, Spearman ρ 0.920"
    assert ft in md and html.escape(ft) in page
    assert "methods compared: hedonic-pas, random" in md
    assert "- hedonic-pas coalitions sit at the 97th percentile" in md and "97th percentile" in page
    # tiny values are scaled in the header, not printed as 6.06e-12 ± 2.42e-27; counts are integers
    head = next(line for line in md.splitlines() if line.startswith("| method | OOD drop"))
    assert "mean pairwise φ ↑ (×10⁻¹²)" in head and "| coalitions evaluated |" in head
    row = next(line for line in md.splitlines() if line.startswith("| hedonic-pas | 0.110"))
    assert row.endswith("| 6.060 ± 0.000 | 2 |") and "e-" not in row
    assert "| random |" in md and "2.000 ± 2.484 | 4.3 (range 4–5) |" in md
    assert "coalitions evaluated: how many coalitions" in md  # the count is explained
    # a generic evaluation table: intervals as [low, high], scaled; in both files
    assert (
        "| method | layer | delta_loss (×10⁻⁵) |" in md and "| hedonic-pas | 2 | 3.000 [1.000, 5.000] |" in md
    )
    assert "<th>delta_loss (×10⁻⁵)</th>" in page and "<td>3.000 [1.000, 5.000]</td>" in page
    # the sizes and transitions tables are in the HTML too
    assert "<th>singletons</th>" in page and "<td>hedonic-pas</td><td>2</td><td>3</td><td>5</td>" in page
    assert "<td>2→3</td><td>10.0</td><td>20.0</td>" in page


def test_report_figures_are_legible(tmp_path):
    """Every figure fits the page's content width (never scaled down) and its text is ≥ 10 pt."""
    import matplotlib.text
    from PIL import Image

    from hedonic_neurons.report.build import CONTENT_PX, methods_figure, sizes_figure, transitions_figure

    res = told_results()
    paths = write_report(res, tmp_path)
    for key, path in paths.items():
        if key.startswith("fig_"):
            assert Image.open(path).size[0] <= CONTENT_PX, key
    for fig in (
        methods_figure(res["table_extrinsic"], "t"),
        sizes_figure(res["sizes"]),
        transitions_figure(res["transitions"]),
    ):
        sizes = [t.get_fontsize() for t in fig.findobj(matplotlib.text.Text) if t.get_text().strip()]
        assert min(sizes) >= 10
    # three metric panels with estimates (k is a count, not plotted): two per row
    assert len([ax for ax in methods_figure(res["table_extrinsic"], "t").axes if ax.get_visible()]) == 3


def test_phi_maps_add_a_heat_map(tmp_path):
    import numpy as np

    phi = np.arange(16, dtype=float).reshape(4, 4)
    phi = phi + phi.T
    paths = write_report(fake_results(), tmp_path, phi_maps={"hedonic-pas L2": (phi, [[0, 2], [1, 3]])})
    assert paths["fig_phi_hedonic-pas-l2"].is_file()
    assert paths["html"].read_text().count("data:image/png;base64,") == 5


MINILM_PAIRS = [
    ("boiling point of water", "water boils at 100 degrees celsius at sea level"),
    ("capital of france", "paris is the capital and largest city of france"),
    ("how do vaccines work", "vaccines train the immune system to recognise a pathogen"),
    ("python list sort", "list.sort sorts the list in place and returns none"),
    ("tallest mountain", "mount everest is the highest mountain above sea level"),
    ("photosynthesis", "plants convert light energy into chemical energy in chloroplasts"),
    ("speed of light", "light travels at about 300,000 kilometres per second in vacuum"),
    ("bm25 ranking", "bm25 scores documents by term frequency and inverse document frequency"),
    ("who wrote hamlet", "hamlet is a tragedy written by william shakespeare"),
    ("largest ocean", "the pacific ocean is the largest and deepest ocean on earth"),
    ("what is dna", "dna carries the genetic instructions of living organisms"),
    ("coffee caffeine", "a cup of coffee contains roughly 95 mg of caffeine"),
]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_minilm_coalition_explorer_renders_top_inputs_with_highlights(tmp_path):
    """inspect_coalition on a MiniLM coalition: the HTML report shows its top 10 inputs with one
    highlighted span per token (opacity ∝ activation), and the page renders them."""
    import re
    import warnings

    from PIL import Image

    from hedonic_neurons.errors import HedonicNote
    from hedonic_neurons.explore import inspect_coalition
    from hedonic_neurons.models import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HedonicNote)  # the untrained head: fine for looking at activations
        nm = load_model("minilm", device="cpu")
    partition = [list(range(0, 1536, 64)), [i for i in range(1536) if i % 64]]
    s = inspect_coalition(nm, partition, 0, MINILM_PAIRS, layer=3, top=10, method="hedonic-pas")
    assert len(s.top) == 10 and s.size == 24 and s.ablation["mode"] == "zero" and s.heuristics
    res = fake_results()
    res["explorer"] = {"hedonic-pas": [s.to_dict()]}
    paths = write_report(res, tmp_path)
    page = paths["html"].read_text()
    spans = re.findall(
        r'<span class="hn-tok[^"]*" style="background:rgba\((\d+),(\d+),(\d+),([\d.]+)\)"', page
    )
    assert len(spans) == sum(len(t["tokens"]) for t in s.top) > 10 * 5
    acts = [a for t in s.top for a in t["activations"]]
    scale = max(abs(a) for a in acts)
    assert [float(x[3]) for x in spans] == pytest.approx([abs(a) / scale for a in acts], abs=1e-3)
    assert sum(float(x[3]) > 0.05 for x in spans) > 10  # many visibly highlighted tokens
    assert "[CLS]" in page and page.index("Coalition explorer") < page.index("Extrinsic evaluation")
    md = paths["markdown"].read_text()
    assert "## Coalition explorer" in md and "- members (24): 0, 64, 128" in md
    assert md.count("most active tokens") == 10

    shot = tmp_path / "shot.png"
    cmd = headless_chromium(
        tmp_path / "profile", "--window-size=1200,1800", f"--screenshot={shot}", paths["html"].as_uri()
    )
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    img = Image.open(shot).convert("RGB")
    assert len(set(img.convert("L").getdata())) > 20  # not blank
    # highlighted tokens are on screen: orange (255,140,0 blended with white) pixels
    orange = sum(1 for r, g, b in img.getdata() if r > 240 and 150 < g < 235 and b < 200 and r - b > 60)
    assert orange > 500
