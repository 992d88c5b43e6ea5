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
