"""Finish one plan into a bundle: compose the target's quantization recipe (the device's
rules and the user's calibration on top), run the finishing passes (compiler/pipeline),
emit, verify and write the bundle (targets/build), record the run. Used by `compile` for
its one artifact and by the plan search for every candidate it measures."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from layerwise.base.errors import LayerwiseError
from layerwise.options import CompileOptions
from layerwise.record import record_run


@dataclass(frozen=True)
class Choice:
    """What a plan settles beyond the shrunk model: the precision, the layers kept in fp32."""

    precision: str = "fp32"
    keep_fp32: tuple[str, ...] = field(default_factory=tuple)


def build(spec: str, ir, opts: CompileOptions, choice: Choice, calibration: list, *,
          out: Path, force: bool, progress: Callable[[str], None], timings: dict,
          search: dict | None = None, record: bool = True) -> dict:
    """Finish `ir` (already shrunk) for opts.target at `choice`, emit, verify and write the
    bundle at `out` (static int8 calibrates on `calibration`, data batches); returns the
    manifest (with run_id when `record`)."""
    from layerwise.base.recipe import LOSSY
    from layerwise.compiler.pipeline import finish
    from layerwise.targets import get_target
    from layerwise.targets.build import build_bundle
    from layerwise.targets.bundle import BundleWriter

    target = get_target(opts.target)
    writer = BundleWriter(out, force=force)
    quantized = choice.precision in LOSSY and choice.precision in target.INFO.precisions
    extra = [p.strip() for p in (opts.passes or "").split(",") if p.strip()]
    quantize = None
    if quantized:
        if choice.precision == "int8":
            ir = dataclasses.replace(ir, calibration=_calibration(calibration))
        quantize = {"recipe": recipe(opts, choice.precision),
                    "keep_fp32": list(choice.keep_fp32), "precision": choice.precision}
    ir = finish(ir, extra, target.INFO.legalize, quantize, progress)
    opts = dataclasses.replace(opts, precision=choice.precision)
    pages = {}
    if search is not None:
        from layerwise.plan_report import plan_report

        pages["report.html"] = plan_report(search, spec, ir.annotations.get("passes", []))
    manifest = build_bundle(spec, ir, target, opts, writer,
                            tolerance=opts.tolerance or (0.5 if quantized else 1e-4),
                            progress=progress, timings=timings, search=search, pages=pages)
    if record:
        bundle = str(Path(out).resolve())
        manifest["run_id"] = record_run("compile", {**manifest, "bundle": bundle}, opts.db)
    return manifest


def recipe(opts: CompileOptions, precision: str):
    """The target's recipe for `precision`, the device's rules on top, the user's
    --calibration on top of those."""
    from layerwise.targets import recipe_for

    out = recipe_for(opts.target, precision)
    if opts.device:
        from layerwise.devices import load_device

        out = dataclasses.replace(out, **dict(load_device(opts.device).quant.overrides))
    if opts.calibration:
        out = dataclasses.replace(out, calibration=opts.calibration)
    return out


def _calibration(batches: list) -> list[dict]:
    """Data batches as single examples (numpy by input name), as the int8 recipes read them."""
    if not batches:
        raise LayerwiseError("--precision int8 needs --data (calibration inputs: .npz, an "
                             "image folder, a text file or module:factory)")
    return [{k: v[i:i + 1].numpy() for k, v in b.inputs.items()}
            for b in batches for i in range(b.size)]
