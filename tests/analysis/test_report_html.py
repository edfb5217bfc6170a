"""report.html renders in headless Chromium, offline, with no console errors."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from layerwise.analysis.report import render_html, spearman, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _importance() -> dict:
    layers = [f"encoder.layer.{i}" for i in range(6)]
    damage = [0.08, 0.05, 0.02, 0.04, 0.06, 0.30]
    rng = np.random.default_rng(0)
    methods = {
        "block_influence": {"scores": {p: d + rng.normal(0, 0.01) for p, d in zip(layers, damage)},
                            "cost": {"forward_equivalents": 1.0}},
        "spectral_analysis": {"scores": {p: float(rng.random()) for p in layers},
                              "cost": {"forward_equivalents": 0.0}},
    }
    return {"model": "zoo:minilm-l6", "layers": layers, "methods": methods,
            "ensemble": {"scores": dict(zip(layers, damage))},
            "measured_damage": dict(zip(layers, damage))}


def test_spearman():
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_html_is_self_contained():
    page = render_html(_importance())
    assert "<script" not in page and "http://" not in page and "https://" not in page
    for section in ("Per-layer scores", "Method × layer", "Agreement", "Predicted vs measured"):
        assert section in page
    assert page.count("<svg") == 3 + 1 + 1 + 1  # bars per series, heatmap, agreement, scatter


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_renders_in_chromium(tmp_path):
    render_in_chromium(write_report(_importance(), tmp_path / "report.html"), tmp_path)


def render_in_chromium(page, tmp_path) -> None:
    """Screenshot `page` in headless Chromium; assert no console errors and a drawn page."""
    from PIL import Image

    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
         "--v=0", "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert shot.exists(), proc.stderr[-2000:]
    console = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert console == [], console
    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.std() > 5  # something was drawn, not a blank page
