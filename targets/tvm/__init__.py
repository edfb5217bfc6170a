"""TVM target: Relax from the IR's ExportedProgram, `tvm.compile` for the host CPU (llvm,
-mcpu of this machine) into model.so, run by the Relax VM (runtime/tvm.py).

Untuned TVM runs every kernel as plain loops, many times slower than torch eager, so the
target tunes with MetaSchedule when given a trial budget (`tune_trials`). The
tuning runs in a torch-free child process (a crash inside TVM becomes an error) and its
JSON database is kept in the bundle under tuning/. The next compile reuses the database
named by `tune_db` (a database folder or a bundle) or, failing that, the one in the bundle
already at --out, and adds its own trials to it.

Batch: dynamic when untuned (the VM takes any batch); MetaSchedule tunes static shapes, so a
tuned model is fixed at batch 1, the batch an edge device runs and the one its kernels are
tuned for (model entry `dynamic_batch: false`, `batch: 1`; compile verifies it on the first
example row). A model exported with a static batch keeps it.

Cross-compiling (`tvm_cross="aarch64"` or "aarch64:cortex-a72") adds model-aarch64.so built
with Debian's aarch64-linux-gnu-g++/gcc, or model-aarch64.tar (objects to link on the device)
when no cross compiler is installed. Tuning records measured here are x86 records: the
aarch64 library is built untuned.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from layerwise.base.errors import TargetError
from layerwise.runtime.native_trust import trust
from layerwise.runtime.tvm import allow_threads, host_cores
from layerwise.targets import TargetInfo
from layerwise.targets.tvm.tune import DB_FILES

INFO = TargetInfo(name="tvm", runtime="tvm", precisions=("fp32",), extra="tvm",
                  legalize=("unguard_softmax", "legalize_float_floor_divide",
                            "legalize_slice_scatter", "legalize_symbolic_repeat",
                            "legalize_negative_select", "legalize_shared_weight_bmm"))
MODEL = "model.so"
SIDECAR = "model.json"
TUNING = "tuning"
CROSS = {"aarch64": ("aarch64-linux-gnu", ("aarch64-linux-gnu-g++", "aarch64-linux-gnu-gcc"))}


def _tvm():
    allow_threads()  # before TVM makes its thread pool, or it keeps one thread here
    try:
        import tvm
        from tvm import relax  # noqa: F401
    except ImportError as e:
        raise TargetError("the tvm target needs Apache TVM: pip install 'layerwise[tvm]'") from e
    return tvm


def host_target(tvm) -> dict:
    """The llvm target for this CPU, as a dict (TVM 0.27 refuses target strings)."""
    return {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(),
            "num-cores": host_cores()}


def _export_trusted(ex, path: Path) -> None:
    """Write the library and record it as compiled here, so this machine's runtime may load
    it (runtime/native_trust.py)."""
    ex.export_library(str(path))
    trust(path)


def emit(ir, out_dir: Path, opts=None) -> dict:
    """Write model.so (+ model.json: input/output names, dtypes, shapes; tuning/ when tuned;
    model-<arch>.so/.tar when cross-compiling) into out_dir; returns the model entry."""
    tvm = _tvm()
    from tvm import relax

    trials = int(getattr(opts, "tune_trials", 0) or 0)
    if trials < 0:
        raise TargetError(f"--tune-trials must be >= 0, got {trials}")
    _check_ops(ir)
    mod = _import(ir)
    reuse = _find_database(opts)
    tuned = trials > 0 or reuse is not None
    rows = 1 if tuned and ir.meta.get("dynamic_inputs") else None  # the static batch
    if tuned:
        mod = relax.transform.BindSymbolicVars(_static_shapes(mod, ir, rows))(mod)
    mod = relax.transform.CanonicalizeBindings()(
        relax.transform.DecomposeOpsForInference()(_fold_batch_norms(mod)))
    target = tvm.target.Target(host_target(tvm))
    entry: dict = {"format": "tvm-relax-vm", "tvm": tvm.__version__, "target": host_target(tvm),
                   "dynamic_batch": not tuned and bool(ir.meta.get("dynamic_inputs"))}
    if rows:
        entry["batch"] = rows
    t0 = time.perf_counter()
    untuned = _compile(tvm, mod, target)
    entry["compile_s"] = time.perf_counter() - t0
    ex = untuned
    if tuned:
        db_dir = out_dir / TUNING
        db_dir.mkdir()
        if reuse is not None:
            for f in DB_FILES:
                shutil.copy(reuse / f, db_dir / f)
        t0 = time.perf_counter()
        if trials > 0:
            _run_tuning(tvm, mod, target, db_dir, trials)
        from tvm.s_tir import meta_schedule as ms

        db = ms.database.JSONDatabase(work_dir=str(db_dir))
        ex = ms.relax_integration.compile_relax(db, mod, target, None)
        entry["tuning"] = {"trials": trials, "records": len(db), "database": TUNING,
                           "reused": str(reuse) if reuse else None,
                           "seconds": time.perf_counter() - t0}
        shutil.rmtree(db_dir / "logs", ignore_errors=True)
    _export_trusted(ex, out_dir / MODEL)
    feeds = {k: v[:rows].numpy() for k, v in ir.example_inputs.items()}
    entry["latency_ms"] = {"untuned": _latency(tvm, untuned, feeds)}
    if tuned:
        entry["latency_ms"]["tuned"] = _latency(tvm, ex, feeds)
    entry["latency_batch"] = int(next(iter(feeds.values())).shape[0]) if feeds else 1
    specs = {"inputs": _io_specs(ir.input_specs(), entry, feeds),
             "outputs": [{"name": n} for n in ir.output_names], "function": "main"}
    (out_dir / SIDECAR).write_text(json.dumps(specs, indent=1))
    files = [MODEL, SIDECAR]
    if tuned:
        files += [f"{TUNING}/{f}" for f in DB_FILES]
    cross = getattr(opts, "tvm_cross", None)
    if cross:
        entry["cross"] = _cross_compile(tvm, mod, cross, out_dir)
        files.append(entry["cross"]["file"])
    return {"file": MODEL, "files": files, **entry}


def _check_ops(ir) -> None:
    """Refuse, before any compiling, ops TVM's frontend has no converter for. (Ops it maps
    but computes wrongly, like the decomposed LSTM's negative indices read out of bounds
    without legalize_negative_select, are caught by verification.)"""
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    known = ExportedProgramImporter().create_convert_map()
    for node in ir.program.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if name not in known:
            stack = node.meta.get("nn_module_stack") or {}
            layer = next(reversed(stack.values()))[0] if stack else "the model's top level"
            raise TargetError(f"TVM cannot map aten.{name} (layer {layer or 'top level'}): its "
                              "PyTorch frontend has no converter for it; try --target onnx or "
                              "openvino")


def _import(ir):
    from tvm.relax.frontend.torch import from_exported_program

    try:
        return from_exported_program(ir.program, keep_params_as_input=False)
    except Exception as e:  # noqa: BLE001 - the frontend raises assorted types
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise TargetError(f"TVM's PyTorch frontend cannot import the model: {msg}; try "
                          "--target onnx or openvino") from e


def _static_shapes(mod, ir, batch: int | None = None) -> dict[str, int]:
    """Symbolic dims of main's inputs -> sizes (MetaSchedule tunes static shapes): the batch
    axis of the IR's dynamic inputs -> `batch` (None: the example batch), others -> the
    example inputs' sizes."""
    import tvm

    dynamic = set(ir.meta.get("dynamic_inputs") or ())
    binds: dict[str, int] = {}
    for var, (name, t) in zip(mod["main"].params, ir.example_inputs.items()):
        for i, (d, n) in enumerate(zip(var.ty.shape, t.shape)):
            if isinstance(d, tvm.tirx.Var):
                binds.setdefault(d.name, batch if batch and i == 0 and name in dynamic
                                 else int(n))
    return binds


def _fold_batch_norms(mod):
    """Fold each inference batch norm that directly follows a bias-free conv2d (the usual
    conv-BN block; a conv with its own bias keeps its norm) into the conv's weights and a
    bias add (Relax's FoldBatchnormToConv2D, then FoldConstant). Unfolded, each norm stays a
    subtract, divide, multiply and add fused into the conv's kernel, which every tuned
    candidate pays for."""
    from tvm import relax

    return relax.transform.FoldConstant()(relax.transform.FoldBatchnormToConv2D()(mod))


def _compile(tvm, mod, target):
    try:
        return tvm.compile(mod, target=target)
    except Exception as e:  # noqa: BLE001
        msg = (str(e).strip().splitlines() or [type(e).__name__])[-1][:300]
        raise TargetError(f"TVM cannot compile the model: {msg}; try --target onnx") from e


def _fused(tvm, mod, target):
    """The module as MetaSchedule sees it: legalized to TIR and fused, like compile_relax."""
    from tvm.relax.backend import cpu_generic

    with target:
        return tvm.transform.Sequential(cpu_generic.library_dispatch_passes(target)
                                        + cpu_generic.legalize_passes(target))(mod)


def _run_tuning(tvm, mod, target, db_dir: Path, trials: int) -> None:
    """Tune in a child process (tvm_tune.py) that extends the database in db_dir."""
    with tempfile.TemporaryDirectory(prefix="layerwise-tvm-tune-") as tmp:
        mod_json, tgt_json = Path(tmp) / "mod.json", Path(tmp) / "target.json"
        mod_json.write_text(tvm.ir.save_json(_fused(tvm, mod, target)))
        tgt_json.write_text(json.dumps(dict(host_target(tvm))))
        log = Path(tmp) / "tune.log"
        with open(log, "w") as f:
            proc = subprocess.run(
                [sys.executable, "-m", "layerwise.targets.tvm.tune", str(mod_json),
                 str(tgt_json), str(db_dir), str(trials)],
                stdout=f, stderr=subprocess.STDOUT,
                # candidates are measured on as many threads as the bundle will run on
                env={**os.environ, "PYTHONUNBUFFERED": "1",
                     "TVM_NUM_THREADS": str(target.attrs["num-cores"])},
                check=False)
        if proc.returncode != 0:
            lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
            what = (f"crashed (signal {-proc.returncode})" if proc.returncode < 0
                    else f"failed: {lines[-1][:200] if lines else 'no output'}")
            raise TargetError(f"MetaSchedule tuning {what}; compile with --tune-trials 0 or "
                              "another --target")


def _find_database(opts) -> Path | None:
    """The tuning database to start from: `tune_db` (a database folder or a bundle), else the
    tuning/ folder of the bundle already at --out; None when there is none."""
    given = getattr(opts, "tune_db", None)
    if given:
        p = Path(given)
        for cand in (p, p / TUNING):
            if all((cand / f).is_file() for f in DB_FILES):
                return cand.resolve()
        raise TargetError(f"--tune-db {given}: no MetaSchedule database there (expected "
                          f"{' and '.join(DB_FILES)}, or a tvm bundle with {TUNING}/)")
    out = getattr(opts, "out", None)
    if out and all((Path(out) / TUNING / f).is_file() for f in DB_FILES):
        return (Path(out) / TUNING).resolve()
    return None


def _latency(tvm, ex, feeds: dict, budget_s: float = 1.0, max_runs: int = 20) -> float:
    """Median ms of the executable on `feeds`, after one warm-up, within about budget_s."""
    import numpy as np
    from tvm import relax

    vm = relax.VirtualMachine(ex, tvm.cpu())
    args = [tvm.runtime.tensor(v) for v in feeds.values()]
    vm["main"](*args)
    times: list[float] = []
    t_end = time.perf_counter() + budget_s
    while len(times) < max_runs and (len(times) < 3 or time.perf_counter() < t_end):
        t0 = time.perf_counter()
        vm["main"](*args)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000.0)


def _io_specs(specs: list[dict], entry: dict, feeds: dict) -> list[dict]:
    """Input specs for the runner; fixed batch when the model was compiled static."""
    if entry["dynamic_batch"]:
        return specs
    return [{**s, "shape": list(feeds[s["name"]].shape)} for s in specs]


def _cross_compile(tvm, mod, cross: str, out_dir: Path) -> dict:
    """Build for another CPU: `arch` or `arch:mcpu` (aarch64, aarch64:cortex-a72)."""
    arch, _, mcpu = cross.partition(":")
    if arch not in CROSS:
        raise TargetError(f"--tvm-cross {cross!r}: supported: {', '.join(CROSS)} "
                          "(optionally arch:mcpu, e.g. aarch64:cortex-a72)")
    triple, compilers = CROSS[arch]
    tdict: dict = {"kind": "llvm", "mtriple": triple, "mattr": ["+neon"]}
    if mcpu:
        tdict["mcpu"] = mcpu
    ex = _compile(tvm, mod, tvm.target.Target(tdict))
    cc = next((c for c in compilers if shutil.which(c)), None)
    if cc:
        from tvm.support import cc as tvm_cc

        name = f"model-{arch}.so"
        ex.export_library(str(out_dir / name), fcompile=tvm_cc.cross_compiler(cc))
    else:
        name = f"model-{arch}.tar"
        ex.export_library(str(out_dir / name))
    return {"arch": arch, "target": tdict, "file": name, "compiler": cc,
            "note": None if cc else f"no {compilers[0]} here: objects to link on the device"}
