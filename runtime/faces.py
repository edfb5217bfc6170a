"""MTCNN face detection with three compiled bundles (P-net, R-net, O-net), in numpy.

Follows facenet-pytorch's `detect_face` (models/utils/detect_face.py) step by step: an image
pyramid (scale factor 0.709 from 12 / min_face_size), P-net on every level with a per-level
NMS at 0.5 and one over all levels at 0.7, box regression and squaring; R-net on 24x24 crops
(threshold, NMS 0.7, regression); O-net on 48x48 crops (threshold, landmarks, regression,
"Min" NMS 0.7). Crops are resampled as torch's `interpolate(mode="area")` does and normalised
with (x - 127.5) / 128.

The P-net bundle takes fixed tiles (`zoo:mtcnn-pnet`): each pyramid level is cut into
overlapping tiles on even pixels, so every output cell whose 12x12 window lies inside the
level is the one P-net computes on the whole level. Where a level's side is odd, torch's
ceil_mode pooling gives one more cell, from a clipped window; here that last row / column
reads the level's edge pixels repeated once. R-net and O-net run the crops in batches of the
bundle's batch (a fixed-batch bundle gets its last batch padded).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from layerwise.base.errors import BundleError, LayerwiseError
from layerwise.runtime.bundle import open_bundle
from layerwise.runtime.runners import ALIASES, RUNNERS, open_runner

THRESHOLDS = (0.6, 0.7, 0.7)
FACTOR = 0.709
MIN_FACE_SIZE = 20
MAX_BATCH = 512  # facenet-pytorch's fixed_batch_process chunk


@dataclass(frozen=True, slots=True)
class Faces:
    """Detected faces: boxes [n, 4] (x1, y1, x2, y2 in pixels), probs [n], landmarks
    [n, 5, 2] (eyes, nose, mouth corners as x, y), largest box first."""

    boxes: np.ndarray
    probs: np.ndarray
    landmarks: np.ndarray


class Net:
    """One compiled MTCNN net: its bundle's runner fed [n, 3, H, W] float32 in chunks."""

    def __init__(self, bundle: str | Path, threads: int = 0, trust_native: bool = False):
        b = open_bundle(bundle)
        if ALIASES.get(b.target, b.target) not in RUNNERS:
            raise BundleError(f"{b.dir.name}: a {b.target} bundle has no runtime here; "
                              f"compile the net for one of {', '.join(RUNNERS)}")
        shape = b.manifest["inputs"][0]["shape"]
        self.name = b.manifest["inputs"][0]["name"]
        self.batch = shape[0] if isinstance(shape[0], int) else None
        self.size = tuple(s if isinstance(s, int) else None for s in shape[2:])
        self.runner = open_runner(b.target, b.model_path, threads=threads,
                                  trust_native=trust_native)

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        """Outputs for n inputs, in the bundle's output order, each with n rows."""
        n = len(x)
        step = self.batch or MAX_BATCH
        outs = []
        for i in range(0, n, step):
            part = np.ascontiguousarray(x[i:i + step], np.float32)
            if self.batch and len(part) < step:
                part = np.concatenate([part, np.zeros((step - len(part), *part.shape[1:]),
                                                      np.float32)])
            outs.append(self.runner.run({self.name: part}))
        return [np.concatenate(o)[:n] for o in zip(*outs)]


def running_sums(x: np.ndarray, axis: int) -> np.ndarray:
    """float64 running sums of x along axis, with a zero slice in front (n + 1 long)."""
    cs = np.cumsum(x, axis=axis, dtype=np.float64)
    return np.concatenate([np.zeros_like(cs.take([0], axis)), cs], axis)


def area_from_sums(cs: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Resampled along axis as torch's 'area' (adaptive average) mode, from running_sums:
    output i averages inputs floor(i * n / n_out) .. ceil((i + 1) * n / n_out) - 1."""
    n = cs.shape[axis] - 1
    i = np.arange(n_out)
    lo, hi = (i * n) // n_out, -(-((i + 1) * n) // n_out)
    shape = [1] * cs.ndim
    shape[axis] = n_out
    return (cs.take(hi, axis) - cs.take(lo, axis)) / (hi - lo).reshape(shape)


def resample(img: np.ndarray, size: tuple[int, int], rows: np.ndarray | None = None
             ) -> np.ndarray:
    """[3, H, W] -> [3, h, w] float32, as torch.nn.functional.interpolate(mode='area').
    `rows`: running_sums(img, 1) when already computed (one image, many sizes)."""
    rows = running_sums(img, 1) if rows is None else rows
    return area_from_sums(running_sums(area_from_sums(rows, size[0], 1), 2), size[1], 2) \
        .astype(np.float32)


def normalise(x: np.ndarray) -> np.ndarray:
    return ((x - np.float32(127.5)) * np.float32(0.0078125)).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, method: str = "Union"
        ) -> np.ndarray:
    """Kept indices, highest score first. 'Union': torchvision.ops.nms (areas without +1);
    'Min': facenet-pytorch's nms_numpy (areas with +1, overlap over the smaller area)."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    one = 1.0 if method == "Min" else 0.0
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    area = (x2 - x1 + one) * (y2 - y1 + one)
    order = np.argsort(scores)[::-1] if method == "Min" else np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
        inter = w * h
        o = inter / (np.minimum(area[i], area[rest]) if method == "Min"
                     else area[i] + area[rest] - inter)
        order = rest[o <= iou]
    return np.asarray(keep, np.int64)


def rerec(b: np.ndarray) -> np.ndarray:
    """Boxes made square around their centre (side: the longer one)."""
    b = b.copy()
    h, w = b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]
    side = np.maximum(w, h)
    b[:, 0] = b[:, 0] + w * 0.5 - side * 0.5
    b[:, 1] = b[:, 1] + h * 0.5 - side * 0.5
    b[:, 2:4] = b[:, :2] + side[:, None]
    return b


def bbreg(b: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Boxes moved by the regression offsets (fractions of the +1 width / height)."""
    b = b.copy()
    w, h = b[:, 2] - b[:, 0] + 1, b[:, 3] - b[:, 1] + 1
    b[:, :4] = b[:, :4] + reg[:, :4] * np.stack([w, h, w, h], 1)
    return b


def crops(img: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(normalised [n, 3, size, size] crops, which boxes gave one): each box truncated to
    ints and clipped to the image (no zero border, as facenet-pytorch's pad())."""
    H, W = img.shape[1:]
    b = np.trunc(boxes[:, :4]).astype(np.int64)
    x, y = np.maximum(b[:, 0], 1), np.maximum(b[:, 1], 1)
    ex, ey = np.minimum(b[:, 2], W), np.minimum(b[:, 3], H)
    ok = (ey > y - 1) & (ex > x - 1)
    out = [resample(img[:, y[k] - 1:ey[k], x[k] - 1:ex[k]], (size, size))
           for k in np.flatnonzero(ok)]
    arr = np.stack(out) if out else np.zeros((0, 3, size, size), np.float32)
    return normalise(arr), ok


def scales(h: int, w: int, min_face_size: int = MIN_FACE_SIZE, factor: float = FACTOR
           ) -> list[float]:
    m = 12.0 / min_face_size
    minl, s, out = min(h, w) * m, m, []
    while minl >= 12:
        out.append(s)
        s, minl = s * factor, minl * factor
    return out


def pnet_level(pnet: Net, level: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """P-net's (reg [4, oh, ow], face prob [oh, ow]) on one normalised level [3, H, W]."""
    H, W = level.shape[1:]
    oh, ow = -(-(H - 2) // 2) - 4, -(-(W - 2) // 2) - 4
    th, tw = pnet.size
    if th is None or tw is None:
        reg, prob = pnet(level[None])
        return reg[0, :, :oh, :ow], prob[0, 1, :oh, :ow]
    ch, cw = th // 2 - 5, tw // 2 - 5  # cells per tile; tiles step 2 * cells pixels
    nh, nw = -(-oh // ch), -(-ow // cw)
    canvas = np.pad(level, ((0, 0), (0, max((nh - 1) * 2 * ch + th - H, 0)),
                            (0, max((nw - 1) * 2 * cw + tw - W, 0))), mode="edge")
    tiles = np.stack([canvas[:, 2 * ch * i:2 * ch * i + th, 2 * cw * j:2 * cw * j + tw]
                      for i in range(nh) for j in range(nw)])
    reg_t, prob_t = pnet(tiles)
    reg, prob = np.zeros((4, nh * ch, nw * cw), np.float32), np.zeros((nh * ch, nw * cw),
                                                                        np.float32)
    for k in range(len(tiles)):
        i, j = divmod(k, nw)
        reg[:, i * ch:(i + 1) * ch, j * cw:(j + 1) * cw] = reg_t[k, :, :ch, :cw]
        prob[i * ch:(i + 1) * ch, j * cw:(j + 1) * cw] = prob_t[k, 1, :ch, :cw]
    return reg[:, :oh, :ow], prob[:oh, :ow]


def candidates(reg: np.ndarray, prob: np.ndarray, scale: float, thresh: float) -> np.ndarray:
    """[n, 9] (x1, y1, x2, y2, score, 4 offsets) of the cells scoring at least thresh: each
    cell a 12x12 window at stride 2 of the level, mapped back to the image."""
    ys, xs = np.nonzero(prob >= thresh)
    bb = np.stack([xs, ys], 1).astype(np.float32)
    s = np.float32(scale)
    q1 = np.floor((2 * bb + 1) / s)
    q2 = np.floor((2 * bb + 12) / s)
    return np.concatenate([q1, q2, prob[ys, xs][:, None], reg[:, ys, xs].T], 1) \
        .astype(np.float32)


class FaceDetector:
    """MTCNN over three bundles (paths of P-net, R-net and O-net bundles, any runtime)."""

    def __init__(self, pnet: str | Path, rnet: str | Path, onet: str | Path, *,
                 threads: int = 0, trust_native: bool = False,
                 min_face_size: int = MIN_FACE_SIZE,
                 thresholds: tuple[float, float, float] = THRESHOLDS,
                 factor: float = FACTOR) -> None:
        self.pnet, self.rnet, self.onet = (Net(p, threads, trust_native)
                                           for p in (pnet, rnet, onet))
        self.min_face_size, self.thresholds, self.factor = min_face_size, thresholds, factor

    def detect(self, image: np.ndarray) -> Faces:
        """Faces in one RGB image [H, W, 3] (uint8 or float pixels in 0..255)."""
        img = np.ascontiguousarray(np.asarray(image, np.float32).transpose(2, 0, 1))
        t = self.thresholds
        boxes = self._stage1(img, t[0])
        if len(boxes):
            x, ok = crops(img, boxes, 24)
            boxes = boxes[ok]
            reg, prob = self.rnet(x)
            keep = prob[:, 1] > t[1]
            boxes = np.concatenate([boxes[keep, :4], prob[keep, 1:2]], 1)
            reg = reg[keep]
            pick = nms(boxes[:, :4], boxes[:, 4], 0.7)
            boxes = rerec(bbreg(boxes[pick], reg[pick]))
        points = np.zeros((0, 5, 2), np.float32)
        if len(boxes):
            x, ok = crops(img, boxes, 48)
            boxes = boxes[ok]
            reg, marks, prob = self.onet(x)
            keep = prob[:, 1] > t[2]
            boxes = np.concatenate([boxes[keep, :4], prob[keep, 1:2]], 1)
            reg, marks = reg[keep], marks[keep]
            w, h = boxes[:, 2:3] - boxes[:, 0:1] + 1, boxes[:, 3:4] - boxes[:, 1:2] + 1
            points = np.stack([w * marks[:, :5] + boxes[:, 0:1] - 1,
                               h * marks[:, 5:10] + boxes[:, 1:2] - 1], 2)
            boxes = bbreg(boxes, reg)
            pick = nms(boxes[:, :4], boxes[:, 4], 0.7, "Min")
            boxes, points = boxes[pick], points[pick]
        order = np.argsort((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[::-1]
        boxes, points = boxes[order], points[order]
        return Faces(boxes[:, :4].astype(np.float32), boxes[:, 4].astype(np.float32),
                     points.astype(np.float32))

    def _stage1(self, img: np.ndarray, thresh: float) -> np.ndarray:
        """P-net's squared, regressed candidate boxes [n, 5] over the image pyramid."""
        H, W = img.shape[1:]
        found, rows = [], running_sums(img, 1)
        for s in scales(H, W, self.min_face_size, self.factor):
            level = normalise(resample(img, (int(H * s + 1), int(W * s + 1)), rows))
            b = candidates(*pnet_level(self.pnet, level), s, thresh)
            found.append(b[nms(b[:, :4], b[:, 4], 0.5)])
        boxes = np.concatenate(found) if found else np.zeros((0, 9), np.float32)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        q = boxes[:, :4] + boxes[:, 5:9] * np.stack([w, h, w, h], 1)
        return rerec(np.concatenate([q, boxes[:, 4:5]], 1))


def read_image(path: str | Path) -> np.ndarray:
    """An RGB photo [H, W, 3] from an .npy array or an image file (decoded with Pillow)."""
    p = Path(path)
    if not p.is_file():
        raise LayerwiseError(f"no image file at {p}")
    try:
        if p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        else:
            from PIL import Image

            with Image.open(p) as im:
                arr = np.asarray(im.convert("RGB"))
    except ImportError as e:
        raise LayerwiseError("reading a PNG / JPEG needs Pillow: pip install pillow (or pass "
                             "an .npy array [H, W, 3])") from e
    except (OSError, ValueError) as e:
        raise LayerwiseError(f"cannot read {p.name} as an image: {e}") from e
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise LayerwiseError(f"{p.name}: expected an RGB image [H, W, 3], got {arr.shape}")
    return arr


def detect_faces(pnet: str | Path, rnet: str | Path, onet: str | Path, image: str | Path, *,
                 threads: int = 0, trust_native: bool = False) -> dict:
    """`layerwise faces`: the faces in an image file as plain values (boxes in pixels)."""
    faces = FaceDetector(pnet, rnet, onet, threads=threads,
                         trust_native=trust_native).detect(read_image(image))
    return {"image": str(image), "faces": [
        {"box": [round(float(v), 2) for v in b], "prob": float(pr),
         "landmarks": [[round(float(v), 2) for v in pt] for pt in m]}
        for b, pr, m in zip(faces.boxes, faces.probs, faces.landmarks)]}
