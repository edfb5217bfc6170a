"""What each verb takes besides its SPEC or bundle, declared once (layerwise.base.params):
the CLI adds a flag per field, the API takes the dataclass, the server will read the same."""

from __future__ import annotations

from dataclasses import dataclass

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
    max_drop: str | None = opt(None, "search the plan: largest quality loss allowed on held-out "
                               "--data, e.g. 1% (drops blocks, tries int8)")
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
    remote: str | None = opt(None, "plan search: measure candidates' latency on the device "
                             "agent at this URL (see `layerwise agent`) instead of here")
    token_file: str | None = opt(None, TOKEN_HELP)
    db: str | None = opt(None, DB_HELP)


@dataclass(frozen=True)
class ProfileOptions:
    """What `profile` takes besides the bundle directory."""

    runs: int = opt(100, "timed runs", minimum=1)
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
