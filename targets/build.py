"""Emit, verify, write: the step every compile ends with. The target emits its artifact into
the bundle writer's temp dir, the target's own runtime runs it on the example inputs, and
the outputs are compared with the lifted IR (parity, which must hold) and with the original
model (fidelity, recorded); only then are the manifest and the bundle written. An artifact
that misses its tolerance leaves nothing behind."""

from __future__ import annotations

import time

from layerwise.base.errors import VerificationError
from layerwise.runtime import compare, open_runner
from layerwise.runtime.compare import task_agreement
from layerwise.targets.manifest import artifact_batch, build_manifest


def build_bundle(spec: str, ir, target, opts, writer, *, tolerance: float, progress,
                 timings: dict, search: dict | None = None,
                 pages: dict[str, str] | None = None) -> dict:
    """Emit `ir` with `target` (its module) into `writer` (a BundleWriter, not yet entered),
    verify it and publish the bundle; returns the manifest as written. `pages`: extra text
    files (name -> content) such as the plan search's report.html."""
    with writer:
        progress(f"emitting {opts.target}")
        t0 = time.perf_counter()
        model_entry = target.emit(ir, writer.dir, opts)
        timings = {**timings, "emit_s": time.perf_counter() - t0}
        progress(f"verifying with {target.INFO.runtime} runtime")
        t0 = time.perf_counter()
        rows = artifact_batch(model_entry)  # a static artifact at a smaller batch

        def cut(ts):
            return [(t if rows is None else t[:rows]).numpy() for t in ts]

        feeds = dict(zip(ir.example_inputs, cut(ir.example_inputs.values())))
        runner = open_runner(target.INFO.runtime, writer.dir / model_entry["file"])
        outputs = runner.run(feeds)
        # at a smaller static batch the lifted IR runs on the same rows: an output that mixes
        # rows (CLIP's image-text logits) is not the first rows of the full batch's
        lifted = cut(ir.run()) if rows is None else [
            t.numpy() for t in ir.run({k: v[:rows] for k, v in ir.example_inputs.items()})]
        original = cut(ir.reference)
        parity = compare(outputs, lifted, tolerance)
        fidelity = compare(outputs, original, tolerance)
        for figures, refs in ((parity, lifted), (fidelity, original)):
            if "rel_err" in figures:  # shapes match: add the task's own figure if it has one
                agree = task_agreement(ir.meta, ir.output_names, outputs, refs)
                figures.update({"task": agree} if agree else {})
        timings["verify_s"] = time.perf_counter() - t0
        if not parity["passed"]:
            raise VerificationError(
                f"{opts.target} artifact misses the reference: rel_err {parity.get('rel_err')} "
                f"> tolerance {tolerance} ({parity.get('reason', 'numeric mismatch')}); "
                "nothing written. Raise --tolerance or try another target")
        writer.save_arrays("inputs.npz", feeds)
        manifest = build_manifest(spec, opts, ir, model_entry, runner, parity, fidelity,
                                  timings, writer.dir)
        if search is not None:
            manifest["search"] = search
        for name, text in (pages or {}).items():
            (writer.dir / name).write_text(text, encoding="utf-8")
        return writer.finish(manifest)
