"""torchvision detection and segmentation models as traceable sources.

A detector's exported graph is its dense part: the input normalisation, backbone, heads and
box decoding against anchors computed once at load time for the fixed input size (stored as
constants). It takes `images` (float, [B, 3, H, W], values in [0, 1]) and returns `boxes`
([B, N, 4], xyxy in pixels, clipped to the image) and `scores` ([B, N, C], the model's own
class probabilities). Score thresholds, top-k and non-maximum suppression are left to the host
(runtime/detection.py) with the model's own parameters, recorded as the source's
`postprocess` and from there in the bundle's manifest.

A segmentation model is exported as it is: outputs `out` (and `aux` when the model has one),
[B, classes, H, W] logits at the input size.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn

from layerwise.base.errors import SourceError
from layerwise.sources.source import Source, example_images, seeded

# torchvision detector class -> how its dense outputs are scored and cut before NMS
_DENSE = {
    # softmax over classes, background (label 0) dropped, top-k per class
    "SSD": {"activation": "softmax", "topk_scope": "class", "first_label": 1},
    # sigmoid per class, top-k over (anchor, class) pairs per feature level
    "RetinaNet": {"activation": "sigmoid", "topk_scope": "level", "first_label": 0},
    # sqrt(sigmoid(class) * sigmoid(centerness)), top-k per feature level
    "FCOS": {"activation": "centerness", "topk_scope": "level", "first_label": 0},
}
# the largest default square side for detectors whose own minimum size is larger (800)
DEFAULT_SIDE = 512
TWO_STAGE = ("fasterrcnn", "maskrcnn", "keypointrcnn")


def task_of(name: str) -> str | None:
    """'detection' or 'segmentation' for a torchvision model of those kinds, else None."""
    import torchvision

    if name in torchvision.models.list_models(module=torchvision.models.detection):
        return "detection"
    if name in torchvision.models.list_models(module=torchvision.models.segmentation):
        return "segmentation"
    return None


def torchvision_model(name: str, opts, load_weights: Callable[[nn.Module, str], None]
                      ) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """torchvision's own model `name` as layerwise lifts it, in eval mode, and its example
    inputs: seeded random weights with BatchNorm statistics of the example images, or
    opts.weights loaded with `load_weights`; a detector's transform is fixed to the input
    size (see fix_input_size). Compare a bundle's results with this model's."""
    import torchvision

    if name.startswith(TWO_STAGE):
        raise SourceError(f"torchvision:{name} is a two-stage detector (region proposals with "
                          "NMS inside the network), which layerwise cannot lift yet; use a "
                          "single-stage one: ssdlite320_mobilenet_v3_large, ssd300_vgg16, "
                          "retinanet_resnet50_fpn, fcos_resnet50_fpn")
    with seeded():
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None)
    if opts.weights:
        load_weights(model, opts.weights)
    model.eval()
    if task_of(name) == "segmentation":
        side = opts.image_size or 520  # torchvision's own evaluation size for these weights
        arg = next(iter(inspect.signature(model.forward).parameters))  # x, or input (LRASPP)
        inputs = {arg: example_images(side)}
        args: tuple = ()
    else:
        if type(model).__name__ not in _DENSE:
            raise SourceError(f"torchvision detector {type(model).__name__} is not supported; "
                              f"supported are {', '.join(_DENSE)}")
        side = fix_input_size(model, opts.image_size)
        inputs = {"images": example_images(side, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))}
        args = (list(inputs["images"]),)
    if not opts.weights:
        settle_batchnorm(model, lambda: model(*args) if args else model(**inputs))
    return model, inputs


def load_task_model(name: str, opts, task: str,
                    load_weights: Callable[[nn.Module, str], None]) -> Source:
    """A Source for torchvision model `name` of `task` (see task_of and torchvision_model):
    a segmentation model as it is, a detector's dense part (DenseDetector)."""
    model, inputs = torchvision_model(name, opts, load_weights)
    weights = (f"weights {opts.weights}" if opts.weights else
               "random weights with BatchNorm statistics of the example images (pass "
               "--weights FILE for trained ones)")
    side = next(iter(inputs.values())).shape[-1]
    if task == "segmentation":
        notes = [weights, f"segmentation at {side}x{side}: outputs are per-class logits"]
        return Source("", model, inputs, "vision", "segmentation", notes)
    dense = DenseDetector(model, side)
    postprocess = {"kind": "dense-detection", **_DENSE[type(model).__name__],
                   "score_thresh": float(model.score_thresh),
                   "nms_thresh": float(model.nms_thresh),
                   "detections_per_img": int(model.detections_per_img),
                   "topk_candidates": int(model.topk_candidates),
                   "levels": dense.levels, "image_size": [side, side]}
    notes = [weights, f"input images {side}x{side} in [0, 1]; non-maximum suppression runs "
             "on the host (the manifest's postprocess)"]
    return Source("", dense, inputs, "vision", "detection", notes, postprocess=postprocess)


def settle_batchnorm(model: nn.Module, run: Callable[[], object]) -> None:
    """Replace every BatchNorm's running statistics by those of one `run()` (random weights
    otherwise shrink activations layer after layer to ~1e-13, making every class score equal
    and every box a tie). Leaves the model in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the run
        m.train()
    with torch.no_grad():
        run()
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def fix_input_size(model: nn.Module, image_size: int | None) -> int:
    """Set the model's own GeneralizedRCNNTransform to keep a square of the returned side as
    it is (no resize, no padding), so its outputs and the exported graph's agree."""
    t = model.transform
    if t.fixed_size is not None:  # SSD: resized to a fixed (W, H)
        side = image_size or int(t.fixed_size[0])
        t.fixed_size = (side, side)
    else:
        side = image_size or min(int(t.min_size[-1]), DEFAULT_SIDE)
    if side % t.size_divisible:
        raise SourceError(f"--image-size {side}: this detector pads images to a multiple of "
                          f"{t.size_divisible}; choose a size divisible by it")
    t.min_size, t.max_size = (side,), side
    return side


class DenseDetector(nn.Module):
    """Normalise, backbone, head, decode every anchor's box: the traceable part of a
    single-stage torchvision detector at one input size."""

    def __init__(self, model: nn.Module, side: int):
        super().__init__()
        from torchvision.models.detection.image_list import ImageList

        self.kind = type(model).__name__
        self.backbone, self.head = model.backbone, model.head
        self.box_coder = model.box_coder
        t = model.transform
        self.register_buffer("mean", torch.tensor(t.image_mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(t.image_std).view(1, 3, 1, 1))
        self.side = side
        with torch.no_grad():
            x = torch.zeros(1, 3, side, side)
            feats = self._features(x)
            anchors = model.anchor_generator(ImageList(x, [(side, side)]), feats)[0]
            head = self.head(feats)
        hw = [f.shape[-2] * f.shape[-1] for f in feats]
        per_cell = head["cls_logits"].shape[1] // sum(hw)
        self.levels = [int(n * per_cell) for n in hw]
        self.register_buffer("anchors", anchors)

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.backbone(x)
        return [feats] if isinstance(feats, torch.Tensor) else list(feats.values())

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        head = self.head(self._features((images - self.mean) / self.std))
        logits, reg = head["cls_logits"], head["bbox_regression"]
        if self.kind == "FCOS":
            boxes = self.box_coder.decode(reg, self.anchors[None])
            scores = torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(head["bbox_ctrness"]))
        else:
            boxes = decode_boxes(reg, self.anchors, self.box_coder)
            scores = torch.softmax(logits, -1) if self.kind == "SSD" else torch.sigmoid(logits)
        return {"boxes": boxes.clamp(0, self.side), "scores": scores}


def decode_boxes(codes: torch.Tensor, anchors: torch.Tensor, coder) -> torch.Tensor:
    """torchvision's BoxCoder.decode_single over a batch: codes [B, N, 4] against anchors
    [N, 4] (same operations in the same order, so the same rounding)."""
    widths = anchors[:, 2] - anchors[:, 0]
    heights = anchors[:, 3] - anchors[:, 1]
    ctr_x = anchors[:, 0] + 0.5 * widths
    ctr_y = anchors[:, 1] + 0.5 * heights
    wx, wy, ww, wh = coder.weights
    dx, dy = codes[..., 0] / wx, codes[..., 1] / wy
    dw = torch.clamp(codes[..., 2] / ww, max=coder.bbox_xform_clip)
    dh = torch.clamp(codes[..., 3] / wh, max=coder.bbox_xform_clip)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    half_w = 0.5 * (torch.exp(dw) * widths)
    half_h = 0.5 * (torch.exp(dh) * heights)
    return torch.stack((pred_ctr_x - half_w, pred_ctr_y - half_h,
                        pred_ctr_x + half_w, pred_ctr_y + half_h), dim=-1)
