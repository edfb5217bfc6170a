"""`zoo:mtcnn-pnet|rnet|onet` — MTCNN's pretrained face-detection nets from facenet-pytorch.

The weights ship in the facenet-pytorch wheel (facenet_pytorch/data/*.pt), so loading needs
no network. Example inputs are real: scikit-image's astronaut, resampled as facenet-pytorch
does (torch's 'area' interpolation) and normalised with (x - 127.5) / 128. P-net is fully
convolutional; its bundle takes fixed square tiles of one pyramid level (the runtime's face
pipeline tiles every level into them). R-net and O-net take 24x24 and 48x48 face crops.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from layerwise.base.errors import SourceError
from layerwise.sources.source import Source
from layerwise.spec import SourceOptions

PNET_TILE = 128  # the P-net bundle's default tile side (even: tiles start on even pixels)
# (top, left, side) squares of the astronaut photo (512x512): the face, and the shoulder
CROPS = ((52, 168, 120), (300, 300, 100))


def _nets():
    try:
        from facenet_pytorch.models import mtcnn
    except ImportError as e:
        raise SourceError("zoo:mtcnn-* needs its weights package: pip install --no-deps "
                          "facenet-pytorch && pip install requests tqdm "
                          "(or 'layerwise[zoo]' plus the --no-deps install)") from e
    return mtcnn


def _astronaut() -> torch.Tensor:
    """The astronaut photo as [1, 3, H, W] float pixels in 0..255."""
    from skimage import data as skdata

    return torch.from_numpy(np.ascontiguousarray(skdata.astronaut())).permute(2, 0, 1)[None] \
        .float()


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125


def pnet(opts: SourceOptions) -> Source:
    """P-net on two square tiles of the astronaut's first pyramid level (scale 12 / 20)."""
    side = opts.image_size or PNET_TILE
    if side % 2 or side < 12:
        raise SourceError(f"zoo:mtcnn-pnet takes an even tile side of at least 12, not {side}")
    img = _astronaut()
    h, w = img.shape[2:]
    level = F.interpolate(img, size=(int(h * 0.6 + 1), int(w * 0.6 + 1)), mode="area")
    level = F.pad(level, (0, max(side * 2 - level.shape[3], 0),
                          0, max(side * 2 - level.shape[2], 0)), mode="replicate")
    tiles = [level[0, :, 0:side, 70:70 + side], level[0, :, -side:, :side]]
    x = _normalise(torch.stack(tiles))
    return Source("zoo:mtcnn-pnet", _nets().PNet().eval(), {"x": x}, "vision", "detection")


def _crops(size: int) -> torch.Tensor:
    img = _astronaut()
    out = [F.interpolate(img[:, :, t:t + s, lft:lft + s], size=(size, size), mode="area")
           for t, lft, s in CROPS]
    return _normalise(torch.cat(out))


def rnet(opts: SourceOptions) -> Source:
    """R-net on two 24x24 crops of the astronaut (the face and a non-face)."""
    return Source("zoo:mtcnn-rnet", _nets().RNet().eval(), {"x": _crops(24)}, "vision",
                  "detection")


def onet(opts: SourceOptions) -> Source:
    """O-net on two 48x48 crops of the astronaut (the face and a non-face)."""
    return Source("zoo:mtcnn-onet", _nets().ONet().eval(), {"x": _crops(48)}, "vision",
                  "detection")


MTCNN = {"mtcnn-pnet": pnet, "mtcnn-rnet": rnet, "mtcnn-onet": onet}
