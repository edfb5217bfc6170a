"""Any model, every target: compile one model per family of timm, torchvision and transformers
to every target, verify each artifact with its own runtime, and print the model x target matrix.

    python bench/coverage_matrix.py [--targets onnx,openvino,tflite,tvm,tensorrt]
                                     [--models a,b|timm] [--jobs 2] [--timeout 1200]
                                     [--json PATH] [--redo-failed] [--merge FILE ...]
    python bench/coverage_matrix.py --readme README.md --json PATH   # rewrite README's matrix

(Named coverage_matrix, not coverage: `coverage` is coverage.py's import name, which pytest-cov,
scikit-learn and hypothesis import when present; bench/ is first on sys.path when run.)

The list (bench/coverage_models.py) is public and fixed: the smallest variant of each timm
family, torchvision's classification families plus segmentation, detection, keypoint and video,
and one tiny config per transformers architecture (saved once under
~/.cache/layerwise/coverage/hf/). Weights are random: the run measures whether a model lifts,
emits and verifies, not its accuracy. Each model runs in its own child process, one target
after another (`layerwise.compile` with the default fp32 precision and tolerance); a cell is
"ok" only if compile returned a verified bundle, else the one-line reason. tensorrt is
emitted and checked as the tensorrt target does without a GPU (its ONNX verified by
onnxruntime, every node against TensorRT's parser op table). The model is loaded and lifted
once per model (a model that does not lift fails every target with that reason); each target
then runs compile's remaining steps on a copy of the lifted IR.

With --json the results are merged into PATH (kept between runs: cells already there are
skipped unless --redo-failed names failed ones to run again), with the host and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from coverage_models import TRANSFORMERS, all_specs, hf_folder  # noqa: E402

TARGETS = ["onnx", "openvino", "tflite", "tvm", "tensorrt"]
HF_ROOT = Path.home() / ".cache" / "layerwise" / "coverage" / "hf"
GOALS = {"onnx": 0.95, "openvino": 0.95, "tensorrt": 0.95, "tflite": 0.90, "tvm": 0.90}
BEGIN, END = "<!-- coverage-matrix:begin -->", "<!-- coverage-matrix:end -->"


def name_of(spec: str) -> str:
    """The matrix name: `hf:` folders by their architecture."""
    return f"hf:{Path(spec[3:]).name}" if spec.startswith("hf:") else spec


def worker(spec: str, targets: list[str]) -> None:
    """Compile spec to each target in turn; one JSON line per target on stdout. The model is
    loaded and lifted once; each target then takes `compile`'s own steps (check the options,
    finish, emit, verify, write) on a copy of the lifted IR."""
    import copy

    from layerwise.api import CompileOptions, load_source
    from layerwise.compiler.frontend import lift
    from layerwise.finish import Choice, build
    from layerwise.options import check_compile

    if spec.startswith("hf:") and Path(spec[3:]).name in TRANSFORMERS:
        hf_folder(Path(spec[3:]).name, Path(spec[3:]).parent)
    t0 = time.perf_counter()
    try:
        lifted, why = lift(load_source(spec)), None
    except Exception as e:  # noqa: BLE001 - a model that does not lift fails every target
        lifted, why = None, _reason(e)
    lift_s = time.perf_counter() - t0
    for target in targets:
        t0 = time.perf_counter()
        cell: dict = {"target": target, "lift_s": round(lift_s, 1)}
        with tempfile.TemporaryDirectory() as tmp:
            try:
                if lifted is None:
                    raise RuntimeError(why)
                opts = check_compile(CompileOptions(target=target, out=f"{tmp}/b", db="none"))
                man = build(spec, copy.deepcopy(lifted), opts, Choice(), [], out=Path(opts.out),
                            force=False, progress=lambda _m: None, timings={}, record=False)
                ver = man.get("verification", {})
                cell.update(ok=bool(ver.get("passed")), rel_err=ver.get("rel_err"),
                            runtime=ver.get("runtime"))
                if "task" in ver:
                    cell["task"] = ver["task"]
                if not cell["ok"]:
                    cell["reason"] = "verification did not pass"
            except Exception as e:  # noqa: BLE001 - every failure is a cell with its reason
                cell.update(ok=False, reason=why if lifted is None else _reason(e))
        cell["seconds"] = round(time.perf_counter() - t0, 1)
        print("CELL " + json.dumps(cell, default=str), flush=True)


def _reason(e: BaseException) -> str:
    from layerwise.base.errors import LayerwiseError

    text = (str(e).strip() or type(e).__name__).splitlines()[0][:240]
    return text if isinstance(e, LayerwiseError) else f"{type(e).__name__}: {text}"


def run_model(spec: str, targets: list[str], timeout: float) -> dict[str, dict]:
    """Run the worker for spec in a child process; cells it never reached get the reason."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", spec,
           "--targets", ",".join(targets)]
    cells: dict[str, dict] = {}
    env = dict(os.environ, PYTHONWARNINGS="ignore", TF_CPP_MIN_LOG_LEVEL="3")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              check=False, cwd=tempfile.gettempdir())
        out, err, why = proc.stdout, proc.stderr, f"worker exited with {proc.returncode}"
        if proc.returncode == -9:  # SIGKILL: on this machine, the kernel's out-of-memory killer
            why = "worker killed by SIGKILL (out of memory: the machine has 24 GiB)"
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err, why = "", f"timed out after {timeout:.0f} s"
    for line in out.splitlines():
        if line.startswith("CELL "):
            cell = json.loads(line[5:])
            cells[cell.pop("target")] = cell
    tail = [ln for ln in (err or "").splitlines() if ln.strip()][-1:]
    for t in targets:
        if t not in cells:
            cells[t] = {"ok": False, "reason": why + (f" ({tail[0][:160]})" if tail else "")}
    return cells


def load(path: Path | None) -> dict:
    """The results at path (each cell stamped with the host that ran it: a cell of an older
    file without a stamp takes the file's host)."""
    if path and path.is_file():
        data = json.loads(path.read_text())
        for cells in data["results"].values():
            for cell in cells.values():
                _stamp(cell, data.get("host", {}))
        return data
    return {"results": {}}


def _stamp(cell: dict, h: dict) -> None:
    cell.setdefault("cpu", h.get("cpu", "?"))
    cell.setdefault("date", h.get("date", "?"))


def merge(data: dict, other: dict) -> None:
    """Merge other's cells into data (other is the newer run): a cell other only carried over
    unchanged keeps data's stamp."""
    def same(a: dict, b: dict) -> bool:
        return {k: v for k, v in a.items() if k not in ("cpu", "date")} == {
            k: v for k, v in b.items() if k not in ("cpu", "date")}

    for model, cells in other["results"].items():
        mine = data["results"].setdefault(model, {})
        for t, cell in cells.items():
            if t in mine and same(mine[t], cell):
                continue
            mine[t] = cell


def host() -> dict:
    import importlib.metadata as md

    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    vers = {}
    for pkg in ("torch", "timm", "torchvision", "transformers", "onnxruntime", "openvino",
                "ai-edge-litert", "apache-tvm", "layerwise"):
        try:
            vers[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            vers[pkg] = None
    return {"cpu": cpu, "machine": platform.machine(), "versions": vers,
            "date": time.strftime("%Y-%m-%d")}


def totals(results: dict, groups: dict[str, str]) -> dict:
    """{target: {group|'all': [verified, run]}} over the cells present."""
    out: dict = {}
    for model, cells in results.items():
        for t, cell in cells.items():
            for g in (groups.get(model, "other"), "all"):
                pair = out.setdefault(t, {}).setdefault(g, [0, 0])
                pair[0] += bool(cell.get("ok"))
                pair[1] += 1
    return out


def render(data: dict) -> str:
    """The README section: totals per target and group, the remaining failures with their
    reasons, and the whole matrix."""
    results = data["results"]
    groups = {name_of(s): g for g, s in all_specs(None)}
    tot = totals(results, groups)
    targets = [t for t in TARGETS if t in tot]
    order = ["timm", "torchvision", "transformers", "all"]
    runs = Counter((c.get("date", "?"), c.get("cpu", "?")) for cells in results.values()
                   for c in cells.values())
    where = "; ".join(f"{d} on {cpu} ({n} cells)" for (d, cpu), n in sorted(runs.items()))
    lines = [f"Generated by `python bench/coverage_matrix.py --readme README.md --json "
             f"{data.get('path', 'bench/results/coverage.json')}` from the runs of {where} "
             "(random weights; a cell counts when compile returned a bundle its own runtime "
             "verified; verified/run, and the models not yet run on a target).", "",
             "| models | " + " | ".join(targets) + " |",
             "|---|" + "---|" * len(targets)]
    listed = {g: sum(1 for m in results if g in ("all", groups.get(m))) for g in order}
    for g in order:
        row = []
        for t in targets:
            v, n = tot[t].get(g, [0, 0])
            missing = f", {listed[g] - n} not run" if n < listed[g] else ""
            row.append(f"{v}/{n} ({100 * v / n:.0f} %{missing})" if n else "not run")
        label = f"**{g}**" if g == "all" else g
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    fails = [(m, t, c.get("reason", "")) for m, cells in results.items()
             for t, c in cells.items() if not c.get("ok")]
    lines += ["", f"Failures ({len(fails)}):", ""]
    lines += [f"- `{m}` on {t}: {r}" for m, t, r in sorted(fails)] or ["- none"]
    lines += ["", "<details><summary>Every model</summary>", "",
              "| model | " + " | ".join(targets) + " |", "|---|" + "---|" * len(targets)]
    for model in sorted(results, key=lambda m: (order.index(groups.get(m, "all")), m)):
        cells = results[model]
        lines.append(f"| `{model}` | " + " | ".join(
            ("✓" if cells[t].get("ok") else "✗") if t in cells else " " for t in targets)
            + " |")
    lines += ["", "</details>"]
    return "\n".join(lines)


def write_readme(readme: Path, data: dict) -> None:
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"{readme} has no {BEGIN} ... {END} section to fill")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    readme.write_text(f"{head}{BEGIN}\n{render(data)}\n{END}{tail}")


def print_matrix(data: dict) -> None:
    results = data["results"]
    targets = [t for t in TARGETS if any(t in c for c in results.values())]
    width = max([len(m) for m in results] + [10])
    print(f"{'model':<{width}}  " + "  ".join(f"{t:>8}" for t in targets))
    for model, cells in results.items():
        print(f"{model:<{width}}  " + "  ".join(
            f"{('ok' if cells[t]['ok'] else 'FAIL') if t in cells else '':>8}"
            for t in targets))
    groups = {name_of(s): g for g, s in all_specs(None)}
    tot = totals(results, groups)
    print()
    for t in targets:
        v, n = tot[t]["all"]
        goal = GOALS.get(t, 0)
        print(f"{t:>9}: {v}/{n} verified ({100 * v / max(n, 1):.1f} %; goal "
              f"{100 * goal:.0f} %: {'met' if n and v / n >= goal else 'NOT met'})")
    for model, cells in results.items():
        for t, c in cells.items():
            if not c.get("ok"):
                print(f"  FAIL {model} on {t}: {c.get('reason', '')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--models", default="all",
                    help="comma-separated matrix names (timm:resnet18, hf:bert) or groups")
    ap.add_argument("--jobs", type=int, default=1, help="models compiled at once")
    ap.add_argument("--timeout", type=float, default=1500, help="seconds per model")
    ap.add_argument("--json", type=Path, help="results file to merge into (and resume from)")
    ap.add_argument("--redo-failed", action="store_true", help="run failed cells again")
    ap.add_argument("--readme", type=Path, help="rewrite this README's matrix from --json")
    ap.add_argument("--merge", type=Path, nargs="*", default=[],
                    help="results files (of runs on other targets) merged into --json first")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    if args.worker:
        return worker(args.worker, targets)
    data = load(args.json)
    for other in args.merge:  # cells of the other file win: it is the newer run
        merge(data, load(other))
    if args.merge and args.json:
        args.json.write_text(json.dumps(data, indent=1, sort_keys=True))
    if args.readme:
        if not args.json:
            sys.exit("--readme needs --json PATH (the results to render)")
        return write_readme(args.readme, data)
    wanted = set(args.models.split(","))
    specs = [(g, s) for g, s in all_specs(HF_ROOT)
             if "all" in wanted or g in wanted or name_of(s) in wanted]
    for _, s in specs:  # tiny configs are written before workers race for them
        if s.startswith("hf:"):
            hf_folder(Path(s[3:]).name, HF_ROOT)
    todo = []
    for _, spec in specs:
        have = data["results"].get(name_of(spec), {})
        need = [t for t in targets if t not in have
                or (args.redo_failed and not have[t].get("ok"))]
        if need:
            todo.append((spec, need))
    from concurrent.futures import ThreadPoolExecutor, as_completed

    here = host()

    def one(item):
        spec, need = item
        t0 = time.perf_counter()
        cells = run_model(spec, need, args.timeout)
        return spec, cells, time.perf_counter() - t0

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = [pool.submit(one, item) for item in todo]
        for i, fut in enumerate(as_completed(futures)):
            spec, cells, secs = fut.result()
            for cell in cells.values():
                _stamp(cell, here)
            data["results"].setdefault(name_of(spec), {}).update(cells)
            marks = " ".join(f"{t}:{'ok' if c['ok'] else 'FAIL'}" for t, c in cells.items())
            print(f"[{i + 1}/{len(todo)}] {name_of(spec)} ({secs:.0f} s) {marks}", flush=True)
            if args.json:
                data["host"] = here
                args.json.parent.mkdir(parents=True, exist_ok=True)
                tmp = args.json.with_suffix(".tmp")
                tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
                tmp.replace(args.json)
    print_matrix(data)


if __name__ == "__main__":
    main()
