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


def _analyze(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "layerwise", "analyze", *args, "--json"],
                          capture_output=True, text=True, cwd=ROOT, check=False, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_analyze_minilm_all_methods(tmp_path, hf_folders):
    data = tmp_path / "sentences.txt"
    data.write_text("\n".join(stdlib_sentences(24)))
    db = str(tmp_path / "runs.db")
    # two other architectures measured first: their records in the SQLite history are what
    # meta_learning trains on for MiniLM
    for name in ("bert", "gpt2"):
        rec = _analyze(f"hf:{hf_folders[name]}", "--data", str(data), "--methods",
                       "layer_ablation", "--out", str(tmp_path / name), "--db", db)
        assert rec["history_record"]["target"] == "layer_ablation"
    out = tmp_path / "d"
    _analyze("zoo:minilm-l6", "--data", str(data), "--methods", "all", "--out", str(out),
             "--db", db)
    imp = json.loads((out / "importance.json").read_text())
    assert imp["blocks"] == [f"bert.encoder.layer.{i}" for i in range(6)]
    assert set(imp["methods"]) == set(METHODS), imp["skipped"]
    assert imp["detail"]["meta_learning"]["records"] == 2
    # the last block is by far the most damaging to drop on MiniLM
    assert imp["ranking"][0] == "bert.encoder.layer.5"
    assert imp["scores"]["layer_ablation"]["bert.encoder.layer.5"] == max(
        imp["scores"]["layer_ablation"].values())
    if CHROMIUM:
        render_in_chromium(out / "report.html", tmp_path)
