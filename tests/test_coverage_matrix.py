"""README's support matrix is the one bench/coverage_matrix.py renders from its committed JSON
(no hand-kept table that can drift)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("lw_bench_coverage_matrix",
                                                  ROOT / "bench" / "coverage_matrix.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_matrix_is_rendered_from_the_bench_json():
    bench = _bench()
    data = json.loads((ROOT / "bench" / "results" / "coverage.json").read_text())
    readme = (ROOT / "README.md").read_text()
    section = readme.split(bench.BEGIN, 1)[1].split(bench.END, 1)[0].strip()
    assert section == bench.render(data).strip(), (
        "README's matrix differs from bench/results/coverage.json: run "
        "python bench/coverage_matrix.py --readme README.md --json bench/results/coverage.json")


def test_every_listed_model_has_cells_and_every_failure_a_reason():
    bench = _bench()
    data = json.loads((ROOT / "bench" / "results" / "coverage.json").read_text())
    names = {bench.name_of(s) for _, s in bench.all_specs(None)}
    assert names <= set(data["results"]), sorted(names - set(data["results"]))
    for model, cells in data["results"].items():
        assert set(cells) <= set(bench.TARGETS), (model, sorted(cells))
        for cell in cells.values():
            assert cell["ok"] or cell.get("reason"), (model, cell)
