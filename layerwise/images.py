"""Real photos as model inputs: scikit-image's and scikit-learn's sample photos, cropped,
flipped and rescaled into as many distinct inputs as asked for (deterministic)."""

from __future__ import annotations

import numpy as np


def photos() -> list[np.ndarray]:
    """The RGB photos that ship inside scikit-image and scikit-learn (uint8, HxWx3)."""
    from skimage import data as skd

    out = [skd.chelsea(), skd.astronaut(), skd.coffee(), skd.rocket(), skd.hubble_deep_field(),
           skd.immunohistochemistry(), skd.retina(), skd.colorwheel()]
    try:
        from sklearn.datasets import load_sample_images

        out += list(load_sample_images().images)
    except ImportError:
        pass
    return [p[..., :3] for p in out if p.ndim == 3]


def photo_crops(count: int, size: int = 224, seed: int = 0,
                mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)) -> np.ndarray:
    """`count` normalised NCHW float32 crops: random square crops (35–100% of the short side),
    random horizontal flips, bilinear resize to `size`."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pics = photos()
    out = np.empty((count, 3, size, size), np.float32)
    for i in range(count):
        img = pics[i % len(pics)]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.35, 1.0))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = Image.fromarray(img[top:top + side, left:left + side]).resize(
            (size, size), Image.BILINEAR)
        arr = np.asarray(crop, np.float32) / 255.0
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        out[i] = ((arr - mean) / std).transpose(2, 0, 1)
    return out
