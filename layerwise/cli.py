"""The `layerwise` command: inspect, compile, profile. Exit codes: 0 ok, 2 user error,
1 internal error. User errors print one line and no traceback. LAYERWISE_PROGRESS=stderr
keeps the progress lines on stderr under --json (the hub's jobs log them)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
import warnings

from layerwise.base.errors import LayerwiseError
from layerwise.base.params import add_arguments, from_namespace

# Packages only the compile extra brings; a runtime-only install lacks them.
COMPILE_SIDE = {"torch", "torchvision", "onnx", "onnxscript", "timm", "transformers", "skimage",
                "scipy", "networkx"}


def _parser() -> argparse.ArgumentParser:
    from layerwise.options import AnalyzeOptions, CompileOptions, ProfileOptions
    from layerwise.hub.serve import add_serve_parsers
    from layerwise.runtime.agent import add_agent_parser
    from layerwise.spec import SCHEMES, SourceOptions

    p = argparse.ArgumentParser(prog="layerwise", description="Layer-importance edge compiler.")
    sub = p.add_subparsers(dest="command", required=True)

    ins = sub.add_parser("inspect", help="show the layer table of a model")
    ins.add_argument("spec", help=f"model: {SCHEMES}")
    ins.add_argument("--depth", type=int, default=None, help="show layers up to this depth")
    add_arguments(ins, SourceOptions)

    comp = sub.add_parser("compile", help="lift, emit and verify a bundle")
    comp.add_argument("spec", help=f"model: {SCHEMES}")
    add_arguments(comp, CompileOptions)
    add_arguments(comp, SourceOptions)

    ana = sub.add_parser("analyze", help="score every block's importance; write a report")
    ana.add_argument("spec", help=f"model: {SCHEMES}")
    add_arguments(ana, AnalyzeOptions)
    add_arguments(ana, SourceOptions)

    prof = sub.add_parser("profile", help="profile a bundle with its own runtime")
    prof.add_argument("bundle", help="bundle directory written by `layerwise compile`")
    add_arguments(prof, ProfileOptions)

    # their own --quiet / --json; not in the --json/--quiet loop below
    add_agent_parser(sub)
    add_serve_parsers(sub)

    dev = sub.add_parser("devices", help="list the device profiles (peaks, precisions, recipe)")
    pred = sub.add_parser("predict", help="predict a model's latency on a device (roofline)")
    pred.add_argument("spec", help=f"model: {SCHEMES}")
    pred.add_argument("--device", default="host", help="device profile (see `layerwise devices`)")
    pred.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    pred.add_argument("--precision", default=None, help="fp32, fp16, int8 (default: the "
                      "device's)")
    pred.add_argument("--calibrate", action="store_true", help="re-time the host's calibration "
                      "set first (host only; done automatically the first time)")
    add_arguments(pred, SourceOptions)

    run = sub.add_parser("run", help="run a bundle on inputs from an .npz file")
    run.add_argument("bundle", help="bundle directory")
    run.add_argument("--input", required=True, help=".npz with one array per model input")
    run.add_argument("--output", required=True, help=".npz to write the outputs to")
    run.add_argument("--threads", type=int, default=0, help="intra-op threads (0: default)")
    run.add_argument("--trust-native", action="store_true", help="load a native model library "
                     "(a TVM bundle) compiled on another machine: it runs its own code")

    dif = _diff_parser(sub, SourceOptions)
    gen = _generate_parser(sub)

    eng = sub.add_parser("build-engine", help="build the TensorRT engine of a tensorrt bundle")
    eng.add_argument("bundle", help="bundle directory written by `compile --target tensorrt`")

    runs = sub.add_parser("runs", help="list recorded compile / analyze / profile runs")
    leader = sub.add_parser("leaderboard", help="best recorded result per model and target")
    for s in (runs, leader):
        s.add_argument("--db", default=None, help="results database (default $LAYERWISE_DB or "
                       "~/.layerwise/runs.db)")
        s.add_argument("--target", default=None, help="only this target")
        s.add_argument("--device", default=None, help="only this device")
        s.add_argument("--limit", type=int, default=20, help="at most this many rows")
    runs.add_argument("--kind", choices=["compile", "analyze", "profile"], default=None)
    runs.add_argument("--model", default=None, help="only this SPEC")
    leader.add_argument("--metric", default="p50", help="p50 | rel_err | size (lower is better)")

    for s in (ins, comp, ana, prof, dev, pred, run, _faces_parser(sub), dif, gen, eng, runs,
              leader):
        s.add_argument("--json", action="store_true", help="print JSON for scripts")
        s.add_argument("--quiet", action="store_true", help="no progress display")
    return p


def _faces_parser(sub) -> argparse.ArgumentParser:
    faces = sub.add_parser("faces", help="detect faces in a photo with compiled MTCNN nets "
                           "(bundles of zoo:mtcnn-pnet, zoo:mtcnn-rnet, zoo:mtcnn-onet)")
    for net in ("pnet", "rnet", "onet"):
        faces.add_argument(net, help=f"bundle directory of zoo:mtcnn-{net}")
    faces.add_argument("image", help="photo (PNG, JPEG...) or .npy array [H, W, 3]")
    faces.add_argument("--threads", type=int, default=0, help="intra-op threads (0: default)")
    faces.add_argument("--trust-native", action="store_true", help="load native model "
                       "libraries (TVM bundles) compiled on another machine")
    return faces


def _diff_parser(sub, source_options) -> argparse.ArgumentParser:
    dif = sub.add_parser("diff", help="where a bundle departs from the original model, layer "
                         "by layer (each layer's output error, run by the bundle's runtime)")
    dif.add_argument("bundle", help="bundle directory (onnx, tensorrt, openvino or tflite)")
    dif.add_argument("--reference", default=None, help="the original model's spec (default: "
                     "the spec in the bundle's manifest)")
    dif.add_argument("--inputs", default=None, help=".npz of named inputs (default: the "
                     "bundle's example inputs); the first row is compared")
    dif.add_argument("--depth", choices=["all", "blocks"], default="all",
                     help="every layer, or the blocks only")
    dif.add_argument("--top", type=int, default=0, help="show only the N layers of largest "
                     "error, with the blocks (0: all)")
    add_arguments(dif, source_options)
    return dif


def _generate_parser(sub) -> argparse.ArgumentParser:
    gen = sub.add_parser("generate", help="generate text with a text-generation bundle "
                         "(torch-free; streams to stdout)")
    gen.add_argument("bundle", help="bundle written by `compile --task text-generation`")
    src = gen.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text (the bundle's tokenizer encodes it)")
    src.add_argument("--prompt-ids", help="prompt as comma-separated token ids")
    gen.add_argument("--max-new-tokens", type=int, default=64, help="most tokens to generate")
    gen.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); "
                     "above 0: sample")
    gen.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest "
                     "tokens (0: all)")
    gen.add_argument("--top-p", type=float, default=1.0, help="sample from the smallest set "
                     "of tokens whose probability reaches p")
    gen.add_argument("--seed", type=int, default=None, help="sampling seed")
    gen.add_argument("--stop", action="append", default=[], help="stop at this text "
                     "(repeatable); the end-of-sequence token always stops")
    gen.add_argument("--threads", type=int, default=0, help="intra-op threads (0: default)")
    return gen


@contextlib.contextmanager
def _progress(enabled: bool):
    """Yields a callback that shows the current step on stderr (a spinner on a terminal)."""
    if not enabled:
        yield lambda _msg: None
        return
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        yield lambda msg: console.print(f"[dim]… {msg}[/dim]", highlight=False)
        return
    with console.status("starting") as status:
        yield lambda msg: status.update(msg)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            return _run(args)
    except LayerwiseError as e:
        print(f"layerwise: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] in COMPILE_SIDE:
            print(f"layerwise: error: `{args.command}` needs the compile side ({e.name} is not "
                  "installed): pip install 'layerwise[compile]'", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("layerwise: interrupted; nothing was written", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the one place internal errors are reported
        if os.environ.get("LAYERWISE_DEBUG"):
            traceback.print_exc()
        first = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"layerwise: internal error: {type(e).__name__}: {first} "
              "(set LAYERWISE_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    from layerwise import api
    from layerwise import console as report
    from layerwise.spec import SourceOptions

    if args.command == "agent":  # serves until interrupted; has no --json
        from layerwise.runtime.agent import run_agent

        return run_agent(args)
    if args.command in ("serve", "users"):
        from layerwise.hub.serve import run_serve, run_users

        return run_serve(args) if args.command == "serve" else run_users(args)
    # the hub's jobs print --json on stdout and their progress on stderr (their log)
    show = not args.quiet and (not args.json or os.environ.get("LAYERWISE_PROGRESS") == "stderr")
    if args.command == "inspect":
        with _progress(show) as step:
            result = api.inspect(args.spec, from_namespace(SourceOptions, args), step)
        _emit(args, result, lambda r: report.layer_table(r, args.depth))
    elif args.command == "compile":
        with _progress(show) as step:
            result = api.compile(args.spec, from_namespace(api.CompileOptions, args),
                                 from_namespace(SourceOptions, args), step)
        _emit(args, result, lambda r: report.compile_summary(r, args.out))
    elif args.command == "analyze":
        # under torchrun with --distributed, ranks other than 0 work silently
        silent = args.distributed and os.environ.get("RANK", "0") != "0"
        with _progress(show and not silent) as step:
            result = api.analyze(args.spec, from_namespace(api.AnalyzeOptions, args),
                                 from_namespace(SourceOptions, args), step)
        if not silent:
            _emit(args, result, lambda r: report.importance_table(r, args.out))
    elif args.command == "profile":
        with _progress(show) as step:
            step("profiling")
            result = api.profile(args.bundle, from_namespace(api.ProfileOptions, args), step)
        _emit(args, result, report.profile_table)
    elif args.command == "devices":
        from layerwise.devices import devices_table

        _emit(args, devices_table(), report.devices_table)
    elif args.command == "predict":
        with _progress(show) as step:
            result = api.predict(args.spec, args.device, args.batch, args.precision,
                                 args.calibrate, step, from_namespace(SourceOptions, args))
        _emit(args, result, report.prediction_table)
    elif args.command == "run":
        from layerwise.runtime.run import run_bundle

        result = run_bundle(args.bundle, args.input, args.output, args.threads,
                            trust_native=args.trust_native)
        _emit(args, result, lambda r: print(f"wrote {r['output']}: " + ", ".join(
            f"{o['name']}{o['shape']}" for o in r["outputs"])))
    elif args.command == "faces":
        _faces(args)
    elif args.command == "diff":
        _diff(args, show)
    elif args.command == "generate":
        _generate(args)
    elif args.command == "build-engine":
        from layerwise.targets.tensorrt import build_engine

        plan = build_engine(args.bundle)
        _emit(args, {"engine": str(plan)}, lambda r: print(f"wrote {r['engine']}"))
    elif args.command == "runs":
        from layerwise.runtime.history import query

        result = query(args.db, kind=args.kind, model=args.model, target=args.target,
                       device=args.device, limit=args.limit)
        _emit(args, result, report.runs_table)
    elif args.command == "leaderboard":
        from layerwise.runtime.history import leaderboard

        result = leaderboard(args.metric, args.db, device=args.device, target=args.target,
                             limit=args.limit)
        _emit(args, result, lambda r: report.leaderboard_table(r, args.metric))
    return 0


def _faces(args: argparse.Namespace) -> None:
    from layerwise.runtime.faces import detect_faces

    result = detect_faces(args.pnet, args.rnet, args.onet, args.image, threads=args.threads,
                          trust_native=args.trust_native)
    _emit(args, result, lambda r: print("\n".join(
        [f"{len(r['faces'])} face(s) in {r['image']}"] + [
            f"  box {f['box']}  p={f['prob']:.5f}  landmarks {f['landmarks']}"
            for f in r["faces"]])))


def _diff(args: argparse.Namespace, show: bool) -> None:
    from layerwise.diff import diff, render
    from layerwise.spec import SourceOptions

    with _progress(show) as step:
        result = diff(args.bundle, args.reference, args.inputs, depth=args.depth,
                      source_options=from_namespace(SourceOptions, args), progress=step)
    _emit(args, result, lambda r: print(render(r, args.top)))


def _generate(args: argparse.Namespace) -> None:
    from layerwise.runtime.generate import Generator, Sampling

    if args.max_new_tokens < 1 or args.threads < 0:
        raise LayerwiseError("--max-new-tokens must be >= 1 and --threads >= 0")
    sampling = Sampling(args.temperature, args.top_k, args.top_p, args.seed)
    gen = Generator(args.bundle, threads=args.threads)
    if args.prompt_ids is not None:
        try:
            ids = [int(t) for t in args.prompt_ids.split(",") if t.strip()]
        except ValueError:
            raise LayerwiseError("--prompt-ids takes comma-separated integers") from None
        if any(not 0 <= t < gen.config["vocab_size"] for t in ids):
            raise LayerwiseError(f"--prompt-ids must lie in [0, {gen.config['vocab_size']})")
        r = gen.generate_ids(ids, args.max_new_tokens, sampling, on_token=None if args.json
                             else lambda t: print(t, end=" ", flush=True))
        if args.json:
            print(json.dumps(r))
        else:
            print()
        return
    if args.json:
        text = gen.generate(args.prompt, args.max_new_tokens, sampling, args.stop)
        print(json.dumps({"prompt": args.prompt, "text": text}))
        return
    gen.generate(args.prompt, args.max_new_tokens, sampling, args.stop,
                 stream=lambda piece: print(piece, end="", flush=True))
    print()


def _emit(args, result: dict, render) -> None:
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        render(result)


if __name__ == "__main__":
    sys.exit(main())
