"""Latency prediction: a roofline per op with per-op-kind efficiency factors.

    t(op) = overhead + s(r) * r,  r = max(compute, memory) [+ overlap * min(...) if it reads DRAM]
    compute = flops / (peak * eff_c[kind]) [+ outputs / (peak * eff_c["epilogue"]) for convs
              and matmuls: the bias, activation and store of each output element]
              [+ rows * ROW_FLOPS / (peak * eff_c["row"]) for layer norms]
    memory = bytes / (bandwidth * eff_m[kind])
    s(r) = T / (1 + (T - 1) * r / (r + grain)): T threads, a small op keeps fewer busy

summed over the ops of the exported program (`graph_ops.op_records`); ops fused into a conv or
matmul add only their FLOPs at the `fused` efficiency, free ops (views, constant folding) add
nothing. Bytes split in two: activations come from the cache unless one op's activations do
not fit; weights by where the whole model's weights live between runs (`weight_tier`): in the
core's L2 ("hot", the cache bandwidth), in the last-level cache ("llc", the cache bandwidth
times a fitted efficiency: each op re-reads its weights from there) or in DRAM ("dram").
For `host` the peaks and factors come from a calibration (`calibrate.py`); for other
devices from their published peaks with the default factors below — uncalibrated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from layerwise.base.errors import LayerwiseError
from layerwise.devices.latency.graph_ops import COMPUTE, KIND_NAMES, ROW_FLOPS, OpRecord, op_records
from layerwise.devices.loader import DeviceProfile, load_device

# uncalibrated compute efficiency per op kind (fraction of the published peak); memory-bound
# kinds barely use the ALUs, so their figure only matters when they are compute bound
DEFAULT_COMPUTE = {"conv": 0.5, "dwconv": 0.15, "matmul": 0.6, "elementwise": 0.1,
                   "transcendental": 0.05, "norm": 0.1, "softmax": 0.05, "pool": 0.1,
                   "reduce": 0.1, "copy": 1.0, "fused": 0.3, "epilogue": 0.1, "row": 0.1,
                   "reorder": 1.0}
DEFAULT_MEMORY = dict.fromkeys(KIND_NAMES, 0.6)
BYTES_PER = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
# LiteRT builtin each Core ATen op becomes, to check a device's op limits (norms decompose
# into MEAN / SQUARED_DIFFERENCE / RSQRT / MUL / ADD, which the limits list separately)
LITERT_OPS = {
    "conv": "CONV_2D", "dwconv": "DEPTHWISE_CONV_2D", "addmm": "FULLY_CONNECTED",
    "mm": "FULLY_CONNECTED", "linear": "FULLY_CONNECTED", "bmm": "BATCH_MATMUL",
    "matmul": "BATCH_MATMUL", "gelu": "GELU", "_softmax": "SOFTMAX", "add": "ADD",
    "mul": "MUL", "sub": "SUB", "div": "DIV", "relu": "RELU", "hardtanh": "RELU6",
    "clamp": "RELU6", "hardswish": "HARD_SWISH", "sigmoid": "LOGISTIC", "tanh": "TANH",
    "mean": "MEAN", "sum": "SUM", "max_pool2d_with_indices": "MAX_POOL_2D",
    "avg_pool2d": "AVERAGE_POOL_2D", "permute": "TRANSPOSE", "cat": "CONCATENATION",
    "embedding": "GATHER", "gather": "GATHER", "index": "GATHER", "exp": "EXP", "pow": "POW",
    "sqrt": "SQRT", "rsqrt": "RSQRT", "erf": "GELU", "slice": "STRIDED_SLICE",
    "select": "STRIDED_SLICE", "constant_pad_nd": "PAD", "where": "SELECT_V2",
    "upsample_nearest2d": "RESIZE_NEAREST_NEIGHBOR", "upsample_bilinear2d": "RESIZE_BILINEAR",
}


@dataclass(frozen=True)
class Factors:
    """Efficiency factors and overheads of one device (calibrated or defaults)."""

    compute: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_COMPUTE))
    memory: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MEMORY))
    op_overhead_us: float = 5.0
    invoke_overhead_us: float = 0.0
    view_overhead_us: float = 0.0  # a reshape-like node (no data moved) the runtime launches
    # share of the smaller of compute and memory time that does not overlap the larger, for
    # ops that read DRAM: t = max + overlap * min (0: the ideal roofline; calibration fits it,
    # as weights streamed from DRAM by small-batch GEMMs can add to the compute time)
    overlap: float = 0.0
    # with several threads, an op whose roofline time t is small cannot keep them all busy:
    # it runs at t * T / (1 + (T - 1) * t / (t + grain)), from one thread's speed (t << grain)
    # to all T threads' (t >> grain); 0: every op scales to all threads
    parallel_grain_us: float = 0.0
    # effective share of the cache / DRAM bandwidth at which ops re-read weights that left
    # the core's L2 (or every cache) since the last run
    llc_weight_eff: float = 1.0
    dram_weight_eff: float = 1.0

    def to_json(self) -> dict:
        return {"compute": self.compute, "memory": self.memory,
                "op_overhead_us": self.op_overhead_us,
                "invoke_overhead_us": self.invoke_overhead_us,
                "view_overhead_us": self.view_overhead_us, "overlap": self.overlap,
                "parallel_grain_us": self.parallel_grain_us,
                "llc_weight_eff": self.llc_weight_eff, "dram_weight_eff": self.dram_weight_eff}

    @classmethod
    def from_json(cls, d: dict) -> Factors:
        return cls({**DEFAULT_COMPUTE, **d["compute"]}, {**DEFAULT_MEMORY, **d["memory"]},
                   float(d["op_overhead_us"]), float(d["invoke_overhead_us"]),
                   float(d.get("view_overhead_us", 0.0)), float(d.get("overlap", 0.0)),
                   float(d.get("parallel_grain_us", 0.0)),
                   float(d.get("llc_weight_eff", 1.0)), float(d.get("dram_weight_eff", 1.0)))


def parallel_slowdown(t, threads: int, grain_s: float):
    """How much slower than the all-threads roofline time t an op runs when it is too small
    to split over `threads` (works on floats and numpy arrays)."""
    if threads <= 1 or grain_s <= 0:
        return 1.0
    return threads / (1.0 + (threads - 1) * t / (t + grain_s))


@dataclass(frozen=True)
class Machine:
    """What the roofline needs: peaks (GOP/s) per precision, bandwidth, factors."""

    peak_gops: dict[str, float]
    bandwidth_gbs: float | None
    factors: Factors
    cache_bandwidth_gbs: float | None = None  # None: the DRAM figure
    cache_mb: float = 0.0
    host_link_gbs: float | None = None
    param_cache_mb: float | None = None
    full_integer: bool = False
    threads: int = 1  # the threads the peaks were measured with (parallel_grain_us)
    l2_mb: float = 0.0  # per-core L2; 0: unknown (weights within the LLC count as hot)
    nchwc_block: int = 0  # onnxruntime's NCHWc channel block (reorders.py); 0: no reorders


def default_factors(profile: DeviceProfile) -> Factors:
    return Factors({**DEFAULT_COMPUTE, **dict(profile.efficiency)}, dict(DEFAULT_MEMORY),
                   profile.op_overhead_us, profile.invoke_overhead_us)


def op_time_s(rec: OpRecord, m: Machine, precision: str,
              tier: str = "dram") -> tuple[float, float, float]:
    """(overhead, compute, memory) seconds of one op; the op costs overhead + max of the two.
    `tier`: where the model's weights live between runs (`weight_tier`)."""
    f = m.factors
    if rec.kind == "view":
        return f.view_overhead_us * 1e-6, 0.0, 0.0
    low = precision if (rec.kind in COMPUTE or m.full_integer) else "fp32"
    peak = m.peak_gops.get(low) or m.peak_gops.get("fp32") or max(m.peak_gops.values())
    if rec.fused:
        return 0.0, rec.flops / (peak * 1e9 * f.compute["fused"]), 0.0
    compute = rec.flops / (peak * 1e9 * f.compute.get(rec.kind, 0.1))
    if rec.outputs:  # a conv's or matmul's epilogue: one "epilogue" FLOP per output
        compute += rec.outputs / (peak * 1e9 * f.compute["epilogue"])
    if rec.rows:  # a norm's per-row reductions
        compute += rec.rows * ROW_FLOPS / (peak * 1e9 * f.compute["row"])
    memory = 0.0
    if m.bandwidth_gbs:
        scale = BYTES_PER.get(low, 4) / 4.0 / f.memory.get(rec.kind, 0.6)
        dram, cache = m.bandwidth_gbs * 1e9, (m.cache_bandwidth_gbs or m.bandwidth_gbs) * 1e9
        weights = {"hot": cache, "llc": cache * f.llc_weight_eff,
                   "dram": dram * f.dram_weight_eff}[tier]
        acts = rec.bytes - rec.weight_bytes
        memory = scale * (rec.weight_bytes / weights
                          + acts / (cache if acts <= m.cache_mb * 2**20 else dram))
    return f.op_overhead_us * 1e-6, compute, memory


def streams_dram(rec: OpRecord, m: Machine, tier: str) -> bool:
    """Whether an op reads from DRAM (its weights, or activations larger than the cache);
    only such ops pay the `overlap` share (cache-resident ops overlap well)."""
    acts = rec.bytes - rec.weight_bytes
    return bool((rec.weight_bytes and tier == "dram") or acts > m.cache_mb * 2**20)


def weight_tier(records: list[OpRecord], m: Machine, precision: str = "fp32") -> str:
    """Where all the model's weights stay between runs: "hot" (the core's L2, or the
    last-level cache when L2 is unknown), "llc" (the last-level cache) or "dram"."""
    weights = sum(r.weight_bytes for r in records) * BYTES_PER.get(precision, 4) / 4.0
    if weights > m.cache_mb * 2**20:
        return "dram"
    return "llc" if m.l2_mb and weights > m.l2_mb * 2**20 else "hot"


def predict_records(records: list[OpRecord], m: Machine, precision: str = "fp32",
                    io_bytes: float = 0.0, fp32_nodes: frozenset[str] = frozenset()) -> dict:
    """Total seconds and per-row / per-kind breakdown of op records on machine `m`."""
    rows: dict[str, dict] = {}
    kinds: dict[str, float] = {}
    total = m.factors.invoke_overhead_us * 1e-6
    tier = weight_tier(records, m, precision)
    for rec in records:
        prec = "fp32" if rec.name in fp32_nodes and "fp32" in m.peak_gops else precision
        ov, comp, mem = op_time_s(rec, m, prec, tier)
        t = max(comp, mem)
        if streams_dram(rec, m, tier):
            t += m.factors.overlap * min(comp, mem)
        if not rec.fused:  # a fused op runs inside its conv's or matmul's parallel region
            t *= parallel_slowdown(t, m.threads, m.factors.parallel_grain_us * 1e-6)
        t += ov
        total += t
        row = rows.setdefault(rec.layer or "(outside layers)", {
            "ms": 0.0, "flops": 0.0, "bytes": 0.0, "ops": 0, "_c": 0.0, "_m": 0.0, "_o": 0.0})
        row["ms"] += t * 1e3
        row["flops"] += rec.flops
        row["bytes"] += rec.bytes
        row["ops"] += 0 if rec.fused or rec.kind == "view" else 1
        row["_c"] += comp
        row["_m"] += mem
        row["_o"] += ov
        kinds[rec.kind] = kinds.get(rec.kind, 0.0) + t * 1e3
    link = 0.0
    if m.host_link_gbs:
        weights = sum(r.weight_bytes for r in records) * BYTES_PER.get(precision, 4) / 4.0
        cache = (m.param_cache_mb or 0.0) * 2**20
        link = (io_bytes + max(0.0, weights - cache)) / (m.host_link_gbs * 1e9)
        total += link
    table = []
    for name, row in rows.items():
        parts = {"compute": row.pop("_c"), "memory": row.pop("_m"), "overhead": row.pop("_o")}
        table.append({"layer": name, **row, "share": row["ms"] / (total * 1e3),
                      "bound": max(parts, key=parts.get) if row["ops"] else "fused"})
    return {"total_ms": total * 1e3, "layers": table, "by_kind_ms": kinds,
            "host_link_ms": link * 1e3}


def machine_for(profile: DeviceProfile, calibration: dict | None) -> Machine:
    """The roofline machine of a profile; `calibration` (host) supplies measured figures."""
    if calibration is not None:
        return Machine(dict(calibration["peak_gops"]), calibration["bandwidth_gbs"],
                       Factors.from_json(calibration["factors"]),
                       calibration["cache_bandwidth_gbs"], calibration["cache_mb"],
                       threads=int(calibration.get("threads", 1)),
                       l2_mb=float(calibration.get("l2_mb", 0.0)),
                       nchwc_block=int(calibration.get("nchwc_block", 0)))
    return Machine(dict(profile.peak_gops), profile.bandwidth_gbs, default_factors(profile),
                   host_link_gbs=profile.host_link_gbs, param_cache_mb=profile.param_cache_mb,
                   full_integer=profile.quant.full_integer)


def _ir_of(ir, progress):
    if not hasattr(ir, "program"):  # SPEC strings are lifted by layerwise.api.predict
        raise LayerwiseError("devices.latency.roofline.predict takes a lifted IR "
                             "(layerwise.api.lift); for a SPEC use layerwise.api.predict")
    return ir


def predict(spec_or_ir, device: str | DeviceProfile = "host", batch: int = 1,
            precision: str | None = None, *, progress=lambda _: None,
            calibration: dict | None = None) -> dict:
    """Predicted latency of a model (SPEC or IR) on a device at `batch`, with a breakdown by
    the layer table's blocks and depth-1 layers. A device with measured peaks (`host`) needs
    its `calibration` (devices.latency.predict calibrates it on first use)."""
    if batch < 1:
        raise LayerwiseError(f"--batch must be >= 1, got {batch}")
    profile = device if isinstance(device, DeviceProfile) else load_device(device)
    ir = _ir_of(spec_or_ir, progress)
    quant = ir.annotations.get("quantize") if hasattr(ir, "annotations") else None
    prec = precision or ("int8" if quant else profile.default_precision)
    if prec not in profile.precisions:
        raise LayerwiseError(f"device {profile.name} runs {', '.join(profile.precisions)}, not "
                             f"{prec}; pick one of those with --precision")
    if profile.measured and calibration is None:
        raise LayerwiseError(f"{profile.name}'s peaks are measured: pass its calibration "
                             "(layerwise.devices.predict calibrates on first use)")
    if not profile.measured:
        calibration = None
    m = machine_for(profile, calibration)
    if prec not in m.peak_gops:
        raise LayerwiseError(f"device {profile.name} has no {prec} peak; use one of "
                             f"{', '.join(sorted(m.peak_gops))}")
    records, info = op_records(ir.program, ir.layers, batch, nchwc_block=m.nchwc_block)
    fp32_nodes = frozenset(n for path in (quant or {}).get("keep_fp32", [])
                           for n in ir.layer(path).nodes)
    io = _io_bytes(ir, info["batch"] or batch, prec)
    result = predict_records(records, m, prec, io, fp32_nodes)
    notes = []
    unsupported = unsupported_ops(records, profile)
    if unsupported:
        notes.append(f"{profile.name} cannot map {', '.join(unsupported)}: those ops would run "
                     "on the host CPU (not in this estimate)")
    if info["batch_fixed"] is not None and info["batch_fixed"] != batch:
        notes.append(f"the exported batch is fixed at {info['batch_fixed']}: predicted for it")
    basis = ("calibrated on this machine (onnxruntime, "
             f"{calibration['threads']} threads)" if calibration is not None
             else "predicted from published peaks, uncalibrated")
    return {
        "spec": getattr(ir, "meta", {}).get("spec") if not isinstance(spec_or_ir, str)
        else spec_or_ir,
        "device": profile.name, "target": profile.target, "precision": prec,
        "batch": info["batch"] or batch, "calibrated": calibration is not None, "basis": basis,
        "total_ms": result["total_ms"],
        "flops": sum(r.flops for r in records),
        "bytes": sum(r.bytes for r in records),
        "ops": sum(1 for r in records if not r.fused and r.kind != "view"),
        "layers": result["layers"], "by_kind_ms": result["by_kind_ms"],
        "host_link_ms": result["host_link_ms"], "unsupported_ops": unsupported,
        "notes": notes,
    }


def unsupported_ops(records: list[OpRecord], profile: DeviceProfile) -> list[str]:
    """LiteRT names of the model's ops outside the device's op limits (none declared: [])."""
    if not profile.supported_ops:
        return []
    names = {LITERT_OPS.get(r.kind if r.kind in ("conv", "dwconv") else r.op) for r in records}
    return sorted(n for n in names - {None} if n not in profile.supported_ops)


def _io_bytes(ir, batch: int, precision: str) -> float:
    """Bytes of the model's inputs and outputs at `batch` (for devices behind a USB link)."""
    total = 0.0
    for t in list(ir.example_inputs.values()) + list(ir.reference):
        n = t.numel() // max(1, t.shape[0]) * batch if t.dim() else 1
        total += n * BYTES_PER.get(precision, 4)
    return total
