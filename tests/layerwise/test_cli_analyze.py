"""`layerwise analyze` end to end on the real MiniLM: every method, a report that renders."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from layerwise.analysis.methods import METHODS
from layerwise.text import stdlib_sentences
from tests.analysis.test_report_html import CHROMIUM, render_in_chromium
from tests.conftest import ROOT


@pytest.mark.slow
def test_analyze_minilm_all_methods(tmp_path):
    data = tmp_path / "sentences.txt"
    data.write_text("\n".join(stdlib_sentences(24)))
    out = tmp_path / "d"
    proc = subprocess.run(
        [sys.executable, "-m", "layerwise", "analyze", "zoo:minilm-l6", "--data", str(data),
         "--methods", "all", "--out", str(out), "--json"],
        capture_output=True, text=True, cwd=ROOT, check=False, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imp = json.loads((out / "importance.json").read_text())
    assert imp["blocks"] == [f"bert.encoder.layer.{i}" for i in range(6)]
    ran = set(imp["methods"]) | set(imp["skipped"])
    assert ran == set(METHODS)
    # with no recorded history, meta_learning is the only method allowed to skip
    assert set(imp["skipped"]) <= {"meta_learning"}
    # the last block is by far the most damaging to drop on MiniLM
    assert imp["ranking"][0] == "bert.encoder.layer.5"
    assert imp["scores"]["layer_ablation"]["bert.encoder.layer.5"] == max(
        imp["scores"]["layer_ablation"].values())
    if CHROMIUM:
        render_in_chromium(out / "report.html", tmp_path)
