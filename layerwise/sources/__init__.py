"""Model sources: a SPEC string becomes a module, example inputs and a modality.

Schemes: `timm:NAME`, `torchvision:NAME`, `hf:PATH`, `zoo:NAME`, `FILE.py:factory`,
`package.module:factory` and `FILE.pt2` (a `torch.export.save` program, loaded without pickle).
Example inputs always have batch 2 so that export can keep the batch dimension dynamic.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from layerwise.base.errors import SourceError
from layerwise.sources.source import (
    BATCH,
    Source,
    example_images,
    example_text,
    first_line,
    offline_hub,
    seeded,
)
from layerwise.spec import SCHEMES, SourceOptions

__all__ = ["BATCH", "Source", "SourceOptions", "example_images", "example_text", "lift_spec",
           "load_source", "offline_hub", "seeded"]

def load_source(spec: str, options: SourceOptions | None = None) -> Source:
    """Resolve SPEC to a Source; raises SourceError with what to do on any failure."""
    opts = options or SourceOptions()
    scheme, _, rest = spec.partition(":")
    if spec.endswith(".pt2") and (not rest or Path(spec).exists()):
        src = _from_pt2(spec)
    elif scheme in _SCHEMES and rest:
        src = _SCHEMES[scheme](rest, opts)
        src.spec = spec
    elif rest and (scheme.endswith(".py") or Path(scheme).suffix == ".py"):
        src = _from_factory(spec, _import_file(scheme), rest, opts)
    elif rest:
        src = _from_factory(spec, _import_module(scheme, spec), rest, opts)
    else:
        raise SourceError(f"cannot read SPEC {spec!r}: use one of {SCHEMES}")
    if src.module is not None:
        src.module.eval()
    return src


# ---------------------------------------------------------------- example inputs


def lift_spec(spec: str, options: SourceOptions | None = None,
              progress: Callable[[str], None] = lambda _msg: None):
    """SPEC -> IR (torch.export, Core ATen, layer table)."""
    from layerwise.compiler.frontend import lift

    progress(f"loading {spec}")
    source = load_source(spec, options)
    progress("exporting with torch.export")
    return lift(source)


# ---------------------------------------------------------------- schemes


def _from_timm(name: str, opts: SourceOptions) -> Source:
    try:
        import timm
    except ImportError as e:
        raise SourceError("timm is not installed: pip install 'layerwise[compile]'") from e
    try:
        with seeded():
            model = timm.create_model(name, pretrained=False)
    except RuntimeError as e:
        raise SourceError(f"timm has no model {name!r}: see timm.list_models()") from e
    if opts.weights:
        _load_weights(model, opts.weights)
    cfg = model.pretrained_cfg
    size = opts.image_size or tuple(cfg.get("input_size", (3, 224, 224))[1:])
    x = example_images(size, cfg.get("mean", (0.485, 0.456, 0.406)),
                       cfg.get("std", (0.229, 0.224, 0.225)))
    notes = [] if opts.weights else ["random weights (pass --weights FILE for trained ones)"]
    return Source("", model, {"x": x}, "vision", "classification", notes)


def _from_torchvision(name: str, opts: SourceOptions) -> Source:
    import torchvision

    from layerwise.sources.detection import load_task_model, task_of

    task = task_of(name)
    if task is not None:  # detection and segmentation (sources/detection.py)
        return load_task_model(name, opts, task, _load_weights)
    try:
        with seeded():
            model = torchvision.models.get_model(name, weights=None)
    except ValueError as e:
        raise SourceError(f"torchvision has no model {name!r}: "
                          "see torchvision.models.list_models()") from e
    if opts.weights:
        _load_weights(model, opts.weights)
    notes = [] if opts.weights else ["random weights (pass --weights FILE for trained ones)"]
    if name in _VIDEO:
        frames, side = _VIDEO[name]
        x = _example_clips(opts.image_size or side, frames)
        return Source("", model, {"x": x}, "video", "classification", notes)
    size = opts.image_size or (299 if "inception" in name else 224)
    return Source("", model, {"x": example_images(size)}, "vision", "classification", notes)


# torchvision video classifiers: (frames, side) of the clips they were trained on
_VIDEO = {"r3d_18": (16, 112), "mc3_18": (16, 112), "r2plus1d_18": (16, 112),
          "s3d": (16, 224), "mvit_v1_b": (16, 224), "mvit_v2_s": (16, 224),
          "swin3d_t": (16, 224), "swin3d_s": (16, 224), "swin3d_b": (16, 224)}


def _example_clips(side: int, frames: int) -> torch.Tensor:
    """Clips [B, 3, T, H, W] panning across real photos, normalised as torchvision's video
    models expect (Kinetics mean/std)."""
    big = example_images(side + frames, mean=(0.43216, 0.394666, 0.37645),
                         std=(0.22803, 0.22145, 0.216989))
    return torch.stack([big[:, :, t:t + side, t:t + side] for t in range(frames)], dim=2)


def _from_hf(path: str, opts: SourceOptions) -> Source:
    from layerwise.sources.hf import load_hf_folder

    return load_hf_folder(path, opts)


def _from_zoo(name: str, opts: SourceOptions) -> Source:
    from layerwise.sources.zoo import ZOO

    if name not in ZOO:
        raise SourceError(f"unknown zoo model {name!r}: available are {', '.join(sorted(ZOO))}")
    return ZOO[name](opts)


_SCHEMES: dict[str, Callable[[str, SourceOptions], Source]] = {
    "timm": _from_timm,
    "torchvision": _from_torchvision,
    "hf": _from_hf,
    "zoo": _from_zoo,
}


def _load_weights(model: nn.Module, path: str) -> None:
    """Load a state dict (safetensors or torch file, never unpickled code) into model."""
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"weights file {path!r} does not exist")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        model.load_state_dict(state)
    except Exception as e:
        raise SourceError(f"cannot load weights from {path!r}: {first_line(e)}") from e


def _import_file(path: str):
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"model file {path!r} does not exist")
    name = f"layerwise_user_{abs(hash(str(p.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, p)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise SourceError(f"importing {path} failed: {first_line(e)}") from e
    return module


def _import_module(name: str, spec: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and name.startswith(e.name):
            raise SourceError(f"unknown SPEC {spec!r}: {name!r} is neither a scheme nor an "
                              f"importable module; use one of {SCHEMES}") from e
        raise SourceError(f"importing {name} failed: {first_line(e)}") from e
    except Exception as e:
        raise SourceError(f"importing {name} failed: {first_line(e)}") from e


def _from_factory(spec: str, module, attr: str, opts: SourceOptions) -> Source:
    """Call `factory()`; it returns a module, (module, inputs) or (module, inputs, modality)."""
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise SourceError(f"{spec!r}: no callable {attr!r} in {module.__name__}")
    try:
        made = factory()
    except Exception as e:
        raise SourceError(f"factory {spec!r} raised {type(e).__name__}: {first_line(e)}") from e
    modality = "tabular"
    if isinstance(made, nn.Module):
        model, inputs = made, None
    elif isinstance(made, tuple) and made and isinstance(made[0], nn.Module):
        model, inputs = made[0], made[1] if len(made) > 1 else None
        modality = made[2] if len(made) > 2 else modality
    else:
        raise SourceError(f"factory {spec!r} returned {type(made).__name__}; return an "
                          "nn.Module or (module, example_inputs)")
    if opts.weights:
        _load_weights(model, opts.weights)
    if inputs is None:
        raise SourceError(f"factory {spec!r} returned no example inputs: return "
                          "(module, {'name': tensor, ...}) so the model can be traced")
    return Source(spec, model, _name_inputs(model, inputs, spec), modality, "feature-extraction")


def _name_inputs(model: nn.Module, inputs, spec: str) -> dict[str, torch.Tensor]:
    """Example inputs as an ordered {forward-parameter name: tensor} dict."""
    if isinstance(inputs, dict):
        return dict(inputs)
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    params = [p.name for p in inspect.signature(model.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(params) < len(inputs):
        raise SourceError(f"{spec!r}: forward takes {len(params)} named inputs but the factory "
                          f"gave {len(inputs)}; return a dict of named inputs")
    return dict(zip(params, inputs))


def _from_pt2(path: str) -> Source:
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"program file {path!r} does not exist")
    from layerwise.compiler.ir import IR, sidecar_path

    if sidecar_path(p).exists():
        ir = IR.load(p)
        return Source(path, None, ir.example_inputs, ir.meta.get("modality", "tabular"),
                      ir.meta.get("task", "feature-extraction"), program=ir)
    from layerwise.compiler.load_program import load_program

    ep = load_program(p)
    return Source(path, None, _inputs_from_program(ep), "tabular", program=ep,
                  notes=["example inputs synthesised from the program's input shapes"])


def _inputs_from_program(ep) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    out: dict[str, torch.Tensor] = {}
    for spec in ep.graph_signature.input_specs:
        if spec.kind.name != "USER_INPUT":
            continue
        node = next(n for n in ep.graph.nodes if n.name == spec.arg.name)
        val = node.meta["val"]
        shape = [d if isinstance(d, int) else BATCH for d in val.shape]
        if val.dtype.is_floating_point:
            out[spec.arg.name] = torch.randn(shape, generator=gen).to(val.dtype)
        else:
            out[spec.arg.name] = torch.randint(0, 2, shape, generator=gen).to(val.dtype)
    return out
