"""MTCNN face detection over compiled bundles (runtime/faces.py) against facenet-pytorch.

The three pretrained nets (`zoo:mtcnn-*`) are compiled to onnx once; the pipeline runs on
scikit-image's astronaut (one face) and must find facenet-pytorch's own box, probability and
landmarks. The numpy pieces (area resampling, NMS, P-net tiling) are checked against torch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("facenet_pytorch")

from layerwise import api
from layerwise.runtime.faces import FaceDetector, Net, nms, pnet_level, resample

NETS = ("pnet", "rnet", "onet")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, tuple]:
    root = tmp_path_factory.mktemp("mtcnn")
    out = {}
    for n in NETS:
        path = root / n
        manifest = api.compile(f"zoo:mtcnn-{n}", api.CompileOptions(target="onnx",
                                                                    out=str(path)))
        out[n] = (path, manifest)
    return out


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_compiled_nets_verify_and_take_any_batch(bundles):
    for n, (path, m) in bundles.items():
        assert m["verification"]["passed"] and m["verification"]["rel_err"] <= 1e-5, (n, m)
        assert m["inputs"][0]["shape"][0] == "batch", m["inputs"]
    net = Net(bundles["onet"][0])
    x = np.random.default_rng(0).standard_normal((3, 3, 48, 48)).astype(np.float32)
    reg, marks, prob = net(x)
    assert reg.shape == (3, 4) and marks.shape == (3, 10) and prob.shape == (3, 2)


def test_detects_the_astronaut_face_as_facenet_pytorch(bundles, astronaut):
    from facenet_pytorch import MTCNN

    want_boxes, want_probs, want_marks = MTCNN(keep_all=True).detect(astronaut, landmarks=True)
    faces = FaceDetector(*(bundles[n][0] for n in NETS), threads=2).detect(astronaut)
    assert len(want_boxes) == 1 and faces.boxes.shape == (1, 4), faces
    assert _iou(faces.boxes[0], want_boxes[0]) >= 0.9
    assert abs(float(faces.probs[0]) - float(want_probs[0])) <= 1e-3
    marks = np.asarray(want_marks[0], np.float32)
    assert np.linalg.norm(faces.landmarks[0] - marks, axis=1).max() <= 2.0


def test_area_resampling_is_torchs():
    x = np.random.default_rng(1).uniform(0, 255, (3, 37, 53)).astype(np.float32)
    for size in ((24, 24), (12, 31), (37, 53)):
        want = F.interpolate(torch.from_numpy(x)[None], size=size, mode="area")[0].numpy()
        np.testing.assert_allclose(resample(x, size), want, atol=1e-3)


def test_nms_is_torchvisions():
    from torchvision.ops import nms as tv_nms

    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 100, (200, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (200, 2))], 1).astype(np.float32)
    scores = rng.uniform(0, 1, 200).astype(np.float32)
    for iou in (0.5, 0.7):
        want = tv_nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou).numpy()
        np.testing.assert_array_equal(nms(boxes, scores, iou), want)


def test_tiled_pnet_is_pnet_on_the_whole_level(bundles):
    """Every cell of a level (even sides: all of them) is what P-net gives on the level."""
    from facenet_pytorch.models.mtcnn import PNet

    net = Net(bundles["pnet"][0])
    pnet = PNet().eval()
    rng = np.random.default_rng(3)
    for h, w in ((300, 190), (41, 77)):
        level = rng.uniform(-1, 1, (3, h, w)).astype(np.float32)
        reg, prob = pnet_level(net, level)
        with torch.no_grad():
            want_reg, want_prob = (t[0].numpy() for t in pnet(torch.from_numpy(level)[None]))
        assert reg.shape == want_reg.shape and prob.shape == want_prob.shape[1:]
        oh, ow = (h - 12) // 2 + 1, (w - 12) // 2 + 1  # cells whose window lies in the level
        np.testing.assert_allclose(reg[:, :oh, :ow], want_reg[:, :oh, :ow], atol=1e-4)
        np.testing.assert_allclose(prob[:oh, :ow], want_prob[1, :oh, :ow], atol=1e-4)


def test_cli_faces_prints_the_face(bundles, astronaut, tmp_path, capsys):
    import json

    from layerwise.cli import main

    image = tmp_path / "astronaut.npy"
    np.save(image, astronaut)
    paths = [str(bundles[n][0]) for n in NETS]
    assert main(["faces", *paths, str(image), "--json"]) == 0
    faces = json.loads(capsys.readouterr().out)["faces"]
    assert len(faces) == 1 and len(faces[0]["landmarks"]) == 5 and faces[0]["prob"] > 0.99
    assert main(["faces", *paths, str(tmp_path / "none.png")]) == 2
    assert "no image file" in capsys.readouterr().err
