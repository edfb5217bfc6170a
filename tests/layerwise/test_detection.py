"""Detection and segmentation end to end: torchvision's SSDlite compiled to onnx returns the
detections torchvision's own model finds (host NMS, runtime/detection.py) and records their
agreement in the manifest; LR-ASPP's masks agree with the model's; the host NMS equals
torchvision.ops'; a two-stage detector is refused with one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from layerwise import api
from layerwise.runtime.detection import batched_nms, check_postprocess, match, nms
from layerwise.spec import SourceOptions
from tests.layerwise.test_cli_errors import assert_user_error, run_cli

SSD = "ssdlite320_mobilenet_v3_large"


def _compile(spec: str, out: Path, size: int | None = None) -> dict:
    return api.compile(spec, api.CompileOptions(target="onnx", out=str(out), db="none"),
                       SourceOptions(image_size=size))


def _torchvision(name: str, size: int | None = None) -> torch.nn.Module:
    from layerwise.sources import _load_weights
    from layerwise.sources.detection import torchvision_model

    return torchvision_model(name, SourceOptions(image_size=size), _load_weights)[0]


@pytest.fixture(scope="module")
def ssd(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("det") / "ssd"
    return out, _compile(f"torchvision:{SSD}", out)


def test_ssdlite_detections_equal_torchvision(ssd, tmp_path):
    from layerwise.runtime.run import run_bundle

    bundle, manifest = ssd
    assert [o["name"] for o in manifest["outputs"]] == ["boxes", "scores"]
    assert manifest["outputs"][1]["shape"] == ["batch", 3234, 91]
    model = _torchvision(SSD)
    post = manifest["postprocess"]
    assert (post["score_thresh"], post["nms_thresh"], post["detections_per_img"],
            post["topk_candidates"]) == (model.score_thresh, model.nms_thresh,
                                         model.detections_per_img, model.topk_candidates)
    for figures in (manifest["verification"], manifest["fidelity"]):
        assert figures["task"]["matched"] >= 0.99 and figures["task"]["box_iou"] >= 0.99
        assert figures["task"]["reference_detections"] >= 100

    run_bundle(bundle, bundle / "inputs.npz", tmp_path / "y.npz")
    with np.load(tmp_path / "y.npz") as z:
        got = {k: z[k] for k in z.files}
        with np.load(bundle / "inputs.npz") as x:
            images = torch.from_numpy(x["images"])
    with torch.no_grad():
        want = model(list(images))  # torchvision's own pre- and post-processing
    for i, image in enumerate(want):
        rows = got["detections.image"] == i
        g = {k: got[f"detections.{k}"][rows] for k in ("boxes", "scores", "labels")}
        w = {k: v.numpy() for k, v in image.items()}
        assert len(w["labels"]) >= 100 and len(g["labels"]) == len(w["labels"])
        assert len(match(w, g, min_iou=0.99)) == len(w["labels"])  # same label, IoU >= 0.99
        np.testing.assert_allclose(g["scores"], w["scores"], rtol=1e-4, atol=1e-6)


def test_lraspp_masks_agree(tmp_path):
    from layerwise.runtime.run import run_bundle

    manifest = _compile("torchvision:lraspp_mobilenet_v3_large", tmp_path / "seg", size=160)
    assert [o["name"] for o in manifest["outputs"]] == ["out"]
    assert manifest["outputs"][0]["shape"] == ["batch", 21, 160, 160]
    task = manifest["verification"]["task"]
    assert task["pixel_agreement"] >= 0.99 and task["mean_iou"] >= 0.9
    run_bundle(tmp_path / "seg", tmp_path / "seg" / "inputs.npz", tmp_path / "y.npz")
    with np.load(tmp_path / "seg" / "inputs.npz") as x, torch.no_grad():
        model = _torchvision("lraspp_mobilenet_v3_large", 160)
        want = model(torch.from_numpy(x["input"]))["out"]
    with np.load(tmp_path / "y.npz") as z:
        same = np.argmax(z["out"], 1) == want.argmax(1).numpy()
    assert same.mean() >= 0.99 and len(np.unique(want.argmax(1))) > 1


@pytest.mark.parametrize("count", [40, 1500])  # torchvision's offset path and per-label loop
def test_host_nms_equals_torchvision(count):
    from torchvision.ops import batched_nms as tv_batched_nms
    from torchvision.ops import nms as tv_nms

    gen = np.random.default_rng(0)
    xy = gen.uniform(0, 200, (count, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + gen.uniform(5, 60, (count, 2))], 1).astype(np.float32)
    scores = gen.uniform(0, 1, count).astype(np.float32)
    labels = gen.integers(0, 5, count)
    t = [torch.from_numpy(a) for a in (boxes, scores, labels)]
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), tv_nms(t[0], t[1], 0.5).numpy())
    np.testing.assert_array_equal(batched_nms(boxes, scores, labels, 0.45),
                                  tv_batched_nms(*t, 0.45).numpy())


def test_malformed_postprocess_refused():
    from layerwise.base.errors import BundleError

    good = {"kind": "dense-detection", "score_thresh": 0.1, "nms_thresh": 0.5,
            "detections_per_img": 10, "topk_candidates": 10, "topk_scope": "level",
            "first_label": 0, "levels": [4]}
    assert check_postprocess(good) is good
    for bad in ({**good, "nms_thresh": "0.5"}, {**good, "levels": None}, {"kind": "nms"}):
        with pytest.raises(BundleError, match="postprocess"):
            check_postprocess(bad)


def test_two_stage_detector_is_one_line(tmp_path):
    proc = run_cli("compile", "torchvision:fasterrcnn_resnet50_fpn", "--target", "onnx",
                   "--out", str(tmp_path / "x"))
    assert_user_error(proc, "two-stage", "ssdlite320_mobilenet_v3_large")


def test_plan_judge_reads_detections():
    from layerwise.judge import make_judge
    from layerwise.runtime.compare import agreement_for

    post = {"kind": "dense-detection", "score_thresh": 0.5, "nms_thresh": 0.5,
            "detections_per_img": 10, "topk_candidates": 10, "topk_scope": "class",
            "first_label": 1}
    agree = agreement_for({"task": "detection", "postprocess": post}, ["boxes", "scores"])
    judge = make_judge([], None, None, False, agree=agree)
    boxes = np.array([[[0, 0, 10, 10], [20, 20, 40, 40]]], np.float32)
    scores = np.array([[[0.1, 0.9], [0.2, 0.8]]], np.float32)
    judge.set_reference(lambda _batches: [boxes, scores])
    assert judge.every_output and "host NMS" in judge.describe()
    assert judge.quality([boxes, scores]) == 1.0
    taller = boxes + np.array([0, 0, 0, 5], np.float32)  # IoU 100/150 and 400/500
    assert judge.quality([taller, scores]) == pytest.approx((100 / 150 + 0.8) / 2)
    assert judge.quality([boxes, scores[..., ::-1]]) == 0.0  # below the threshold: none
