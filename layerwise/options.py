"""What each verb takes besides its SPEC or bundle, declared once (layerwise.base.params):
the CLI adds a flag per field, the API takes the dataclass, the server will read the same."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from dataclasses import dataclass

from layerwise.base.errors import LayerwiseError
from layerwise.base.params import opt

DB_HELP = "results database (default $LAYERWISE_DB or ~/.layerwise/runs.db; 'none' records nothing)"
TOKEN_HELP = "file holding the agent's token (with --remote)"


@dataclass(frozen=True)
class CompileOptions:
    """What `compile` takes besides the SPEC and source options."""

    target: str | None = opt(None, "backend: onnx, openvino, tflite, tensorrt, tvm (default: "
                             "the --device's target, else onnx)")
    tune_trials: int = opt(0, "tvm: MetaSchedule trials (0: untuned, or apply --tune-db / the "
                           "database of the tvm bundle at --out with --force)", minimum=0)
    tune_db: str | None = opt(None, "tvm: tuning database to start from (a folder or a tvm "
                              "bundle)")
    tvm_cross: str | None = opt(None, "tvm: also cross-compile for aarch64[:mcpu]")
    device: str | None = opt(None, "device profile (see `layerwise devices`): its target, "
                             "precisions and INT8 recipe; the plan search predicts latency on "
                             "it unless --remote measures it")
    out: str | None = opt(None, "bundle directory to write (required)")
    task: str | None = opt(None, "text-generation: a causal LM becomes a generator (the step "
                           "graph with its KV cache, a tokenizer; see `layerwise generate`)")
    max_seq: int = opt(2048, "text-generation: the most tokens (prompt + new) a generation "
                       "may hold", minimum=2)
    force: bool = opt(False, "replace an existing --out directory")
    tolerance: float | None = opt(None, "largest rel_err accepted when verifying the artifact "
                                  "(default 1e-4 for fp32; 0.5 for lossy precisions, a "
                                  "sanity bound: "
                                  "quality bounds belong to the plan search)")
    precision: str = opt("fp32", "fp32; int8 (static, calibrated on --data); int8-dynamic "
                         "(linears, activations quantized at run time); int8-weight or "
                         "int4-weight (weight-only linears); fp16 — as the target offers")
    data: str | None = opt(None, "calibration data: .npz, image folder, text file, module:factory")
    calibration: str | None = opt(None, "int8 calibration: minmax|percentile|entropy|mse "
                                  "(default: the target's recipe)")
    keep_fp32: str | None = opt(None, "comma-separated layer paths kept in fp32 under a lower "
                                "precision")
    max_drop: str | None = opt(None, "search the plan: largest quality loss allowed, e.g. 1%: "
                               "of fidelity to the original on held-out --data, or points "
                               "of the --eval task metric (drops blocks, prunes, tries int8)")
    eval: str | None = opt(None, "plan search: labelled data the bound is judged on (an "
                           "image folder with a subfolder per class, a .tsv of text<TAB>label, "
                           "an .npz with inputs and labels, module:factory); half decides, "
                           "half is held out for the manifest's figures")
    metric: str | None = opt(None, "task metric on --eval: accuracy, macro_f1; for "
                             "embeddings centroid_accuracy, linear_probe, recall@K; ndcg@K, "
                             "auc (recommendation); perplexity (language models: on held-out "
                             "--data when there is no --eval); or module:function(outputs, "
                             "labels) -> float (default: accuracy for classifiers, else "
                             "centroid_accuracy)")
    confidence: float = opt(0.75, "with --eval: the bound must hold at this one-sided "
                            "confidence (paired bootstrap of the deciding examples; 0: the "
                            "point estimate)", minimum=0)
    search_budget: str | None = opt(None, "plan search: time budget (e.g. 10m): once spent, no "
                                    "further candidate is measured (the fp32 plan always is)")
    max_latency_ms: float | None = opt(None, "plan search: latency bound (target runtime, batch 1)")
    max_size_mb: float | None = opt(None, "plan search: model size bound in MiB")
    passes: str | None = opt(None, "extra passes (comma-separated names, plugins included) run "
                             "before emitting")
    drop: str | None = opt(None, "comma-separated block paths to drop (see `inspect`); the "
                           "plan search (--max-drop) chooses them itself")
    prune: float | None = opt(None, "structured pruning: remove this fraction of the conv "
                              "channels, MLP hidden units and attention heads of every "
                              "prunable dependency group (e.g. 0.5)")
    prune_criterion: str | None = opt(None, "channel scores for --prune: l2 (data-free), "
                                      "activation or taylor (default: activation with --data, "
                                      "else l2)")
    heal_steps: int = opt(0, "after dropping or pruning: distil the original model into the "
                          "smaller one for this many steps on --data (0: off)", minimum=0)
    heal_lr: float = opt(5e-5, "learning rate of --heal-steps (AdamW, cosine schedule)")
    heal_budget: str | None = opt(None, "time budget of healing, e.g. 90s or 5m: it stops at "
                                  "--heal-steps or the budget, whichever comes first")
    heal_hidden: float = opt(1.0, "weight of the hidden-state loss: each kept block's output "
                             "matched to the original's (0: the output only)", minimum=0)
    heal_augment: bool = opt(False, "heal on perturbed copies of --data (text: tokens "
                             "swapped within each sentence; images: flips and shifts)")
    remote: str | None = opt(None, "plan search: measure candidates' latency on the device "
                             "agent at this URL (see `layerwise agent`) instead of here")
    token_file: str | None = opt(None, TOKEN_HELP)
    executor: str = opt("local", "plan search: where the candidates are healed, built, "
                        "verified and timed: local (here, one after another), ray (a local "
                        "Ray cluster, one worker per CPU) or ray://HOST:PORT (a running one); "
                        "the choice is the same given the same measurements")
    db: str | None = opt(None, DB_HELP)


@dataclass(frozen=True)
class ProfileOptions:
    """What `profile` takes besides the bundle directory."""

    runs: int | None = opt(None, "timed runs (default 100; a text-generation bundle: 3 "
                           "generations)", minimum=1)
    prompt_len: int = opt(128, "text-generation bundles: prompt tokens before the first new "
                          "one (time to first token)", minimum=1)
    new_tokens: int = opt(128, "text-generation bundles: tokens generated per run (decode "
                          "tokens/s)", minimum=1)
    warmup: int = opt(10, "untimed warm-up runs", minimum=0)
    threads: int = opt(0, "intra-op threads (0: the runtime's default)", minimum=0)
    batch: int | None = opt(None, "batch size to profile (default 1 when the batch is dynamic)",
                            minimum=1)
    per_op: bool = opt(False, "also report time per op type (the runtime's profiler)")
    power_mode: str | None = opt(None, "runtime power setting: performance | balanced | "
                                 "efficiency (onnxruntime: worker spinning; OpenVINO: hint, "
                                 "core type, pinning); other runtimes refuse it")
    baseline: str | None = opt(None, "also time a baseline in the same run: 'eager' (torch)")
    baseline_spec: str | None = opt(None, "the model the eager baseline times (default: the "
                                    "bundle's SPEC when it is a timm:, torchvision:, hf: or "
                                    "zoo: model; a Python factory must be named here)")
    trust_native: bool = opt(False, "load a native model library (a TVM bundle) compiled on "
                             "another machine: it runs its own code")
    db: str | None = opt(None, DB_HELP)
    remote: str | None = opt(None, "profile on the device agent at this URL "
                                   "(http://HOST:8700, see `layerwise agent`) instead of here")
    token_file: str | None = opt(None, TOKEN_HELP)


@dataclass(frozen=True)
class AnalyzeOptions:
    """What `analyze` takes besides the SPEC and source options."""

    data: str | None = opt(None, "data: .npz, image folder, text file (one example per line), "
                           "or module:factory; none runs the data-free methods only")
    methods: str = opt("auto", "comma-separated method names, 'auto' (picked within --budget) "
                       "or 'all'")
    out: str | None = opt(None, "directory for importance.json and report.html (required)")
    force: bool = opt(False, "replace an existing --out directory")
    task: str | None = opt(None, "task adapter (default: fidelity to the model's own outputs)")
    budget: float | None = opt(None, "compute budget in forward-pass equivalents for 'auto'")
    batch_size: int = opt(16, "examples per batch", minimum=1)
    limit: int | None = opt(None, "use at most this many examples", minimum=1)
    db: str | None = opt(None, DB_HELP)
    distributed: bool = opt(False, "shard the data over torch.distributed (run under torchrun)")


def names(text: str | None) -> tuple[str, ...]:
    """'a, b,' -> ('a', 'b')."""
    return tuple(p.strip() for p in (text or "").split(",") if p.strip())


def fraction(text: str) -> float:
    """'1%' -> 0.01, '0.01' -> 0.01 (a --max-drop)."""
    try:
        v = float(text[:-1]) / 100.0 if str(text).endswith("%") else float(text)
    except ValueError as e:
        raise LayerwiseError(f"--max-drop {text!r}: give a fraction (0.01) or a percent "
                             "(1%)") from e
    if not 0 <= v < 1:
        raise LayerwiseError(f"--max-drop {text!r} must lie in [0, 100%)")
    return v


def seconds(text: str | None, flag: str = "--heal-budget") -> float | None:
    """'90s' -> 90, '5m' -> 300, '1.5h' -> 5400, '30' -> 30 (a time budget option)."""
    if text is None:
        return None
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    t = str(text).strip().lower()
    try:
        v = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError as e:
        raise LayerwiseError(f"{flag} {text!r}: give seconds (90, 90s), minutes (5m) or "
                             "hours (1h)") from e
    if v <= 0:
        raise LayerwiseError(f"{flag} {text!r} must be positive")
    return v


def check_compile(opts: CompileOptions) -> CompileOptions:
    """`opts` with the target filled in (from --device, else onnx), after every check that
    needs no model: the combinations of options, the device's precisions, the target's,
    the agent's reachability. Raises LayerwiseError naming what to change."""
    from layerwise.targets import get_target

    if not opts.out:
        raise LayerwiseError("compile needs --out DIR (the bundle directory to write)")
    opts = _resolve_device(opts)
    offers = get_target(opts.target).INFO.precisions
    if opts.precision not in offers and opts.task != "text-generation":
        raise LayerwiseError(f"target {opts.target} offers {', '.join(offers)}, "
                             f"not {opts.precision}")
    if opts.max_drop is not None:
        fraction(opts.max_drop)
    if opts.remote is not None or opts.token_file is not None:
        from layerwise.runtime.remote import agent_info, check_remote_options

        if opts.max_drop is None:
            raise LayerwiseError("--remote on compile measures the plan search's candidates; "
                                 "add --max-drop (or profile a bundle with `profile --remote`)")
        check_remote_options(opts.remote, opts.token_file, None)
        agent_info(opts.remote, opts.token_file)  # unreachable or refused: before any work
    if opts.task not in (None, "text-generation"):
        raise LayerwiseError(f"--task {opts.task!r} is not a compile task; the one there is: "
                             "text-generation (a causal LM as a generator)")
    if opts.task == "text-generation" and opts.target not in ("onnx", "openvino", "tensorrt",
                                                              "tflite", "tvm"):
        raise LayerwiseError(f"text-generation bundles are built for --target onnx, openvino, "
                             f"tensorrt, tflite or tvm, not {opts.target}; compile with "
                             "--target onnx")
    if opts.max_drop is not None and not opts.data:
        raise LayerwiseError("--max-drop needs --data (held-out inputs to measure quality on)")
    smaller = names(opts.drop) or opts.max_drop is not None or opts.prune
    seconds(opts.heal_budget)
    seconds(opts.search_budget, "--search-budget")
    if opts.search_budget and opts.max_drop is None:
        raise LayerwiseError("--search-budget bounds the plan search: add --max-drop")
    if opts.heal_budget and not opts.heal_steps:
        raise LayerwiseError("--heal-budget bounds healing: add --heal-steps (the most steps "
                             "to run)")
    if (opts.heal_steps and not (smaller and opts.data)) or opts.heal_steps < 0:
        raise LayerwiseError("--heal-steps heals a model made smaller: add --drop BLOCKS, "
                             "--prune or --max-drop, and --data (a positive step count)")
    if opts.prune_criterion not in (None, "l2") and opts.prune and not opts.data:
        raise LayerwiseError(f"--prune-criterion {opts.prune_criterion} scores channels on "
                             "data: add --data (or use l2, which needs none)")
    if (opts.eval or opts.metric) and opts.max_drop is None:
        raise LayerwiseError("--eval and --metric judge the plan search: add --max-drop")
    if not 0 <= opts.confidence < 1:
        raise LayerwiseError(f"--confidence {opts.confidence} must lie in [0, 1)")
    if opts.metric:
        from layerwise.judge import resolve_metric

        fn = resolve_metric(opts.metric)  # an unknown name or a failing module: before any work
        if not opts.eval and not getattr(fn, "token_labels", False):
            raise LayerwiseError("--metric needs --eval (labelled data to compute it on)")
    if names(opts.drop) and opts.max_drop is not None:
        raise LayerwiseError("give either --drop (your blocks) or --max-drop (the search "
                             "chooses), not both")
    _check_executor(opts)
    return opts


def _check_executor(opts: CompileOptions) -> None:
    """--executor: local, ray or ray://HOST:PORT, for a plan search, with Ray installed."""
    ex = opts.executor
    if ex == "local":
        return
    if ex != "ray" and not re.fullmatch(r"ray://[^\s/:]+:\d+", str(ex)):
        raise LayerwiseError(f"--executor {ex!r}: give local, ray (a local Ray cluster) or "
                             "ray://HOST:PORT")
    if opts.max_drop is None:
        raise LayerwiseError(f"--executor {ex} runs the plan search's candidates on Ray: add "
                             "--max-drop")
    if opts.task == "text-generation":
        raise LayerwiseError(f"--executor {ex}: a text-generation compile chooses its blocks "
                             "in-process; leave --executor out")
    if importlib.util.find_spec("ray") is None:
        raise LayerwiseError(f"--executor {ex} needs Ray: pip install 'layerwise[ray]'")
    if ex.startswith("ray://") and importlib.util.find_spec("grpc") is None:
        raise LayerwiseError(f"--executor {ex} connects through Ray Client: pip install "
                             "'layerwise[ray]'")


def _resolve_device(opts: CompileOptions) -> CompileOptions:
    """Fill the target from --device (else onnx) and check the device runs the precision."""
    if not opts.device:
        return dataclasses.replace(opts, target=opts.target or "onnx")
    from layerwise.devices import load_device

    dev = load_device(opts.device)
    if opts.precision not in dev.precisions:
        raise LayerwiseError(f"device {dev.name} runs {', '.join(dev.precisions)}, not "
                             f"{opts.precision}: pass --precision "
                             f"{dev.precisions[-1] if dev.precisions else 'int8'}")
    if dev.quant.full_integer and opts.keep_fp32:
        raise LayerwiseError(f"device {dev.name} runs full-integer models only: --keep-fp32 "
                             "cannot apply there")
    return dataclasses.replace(opts, target=opts.target or dev.target)
