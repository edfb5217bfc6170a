"""Profile a text-generation bundle as a user of a generator sees it: time to first token at a
prompt length, decode tokens/s, peak memory (the process, and the model file plus the cache
at the final length), and per-block decode time from onnxruntime's profiler. Torch-free."""

from __future__ import annotations

import re
import resource
import statistics

import numpy as np

from layerwise.base.errors import LayerwiseError


def profile_lm(path, prompt_len: int = 128, new_tokens: int = 128, runs: int = 3, *,
               threads: int = 0, per_layer: bool = True) -> dict:
    """Generate `new_tokens` after a `prompt_len`-token prompt `runs` times (after one
    warm-up) and report the medians; with `per_layer`, one more decode pass under the
    profiler attributes its time to the decoder blocks."""
    from layerwise.runtime.generate import Generator

    if prompt_len < 1 or new_tokens < 1 or runs < 1:
        raise LayerwiseError("--prompt-len, --new-tokens and --runs must be positive")
    gen = Generator(path, threads=threads)
    g = gen.config
    gen.check_length(prompt_len, new_tokens)
    prompt = np.random.default_rng(0).integers(0, g["vocab_size"], prompt_len).tolist()
    gen.generate_ids(prompt[:8], 4, stop_ids=[])  # warm-up
    ttft, tps = [], []
    for _ in range(runs):
        r = gen.generate_ids(prompt, new_tokens, stop_ids=[])
        ttft.append(r["ttft_s"] * 1000)
        if new_tokens > 1:
            tps.append((new_tokens - 1) / r["decode_s"])
    total = prompt_len + new_tokens
    model_bytes = sum(f["bytes"] for f in gen.bundle.manifest["files"]
                      if f["name"] in gen.bundle.manifest["model"].get("files", []))
    result = {
        "bundle": str(gen.bundle.dir.resolve()), "spec": gen.bundle.manifest.get("spec"),
        "target": gen.bundle.target, "task": "text-generation",
        "device": gen.bundle.manifest.get("device", "host"),
        "runtime": f"{gen.runner.name} {gen.runner.version}", "threads": gen.runner.threads,
        "precision": gen.bundle.manifest.get("precision"),
        "prompt_len": prompt_len, "new_tokens": new_tokens, "runs": runs,
        "ttft_ms": statistics.median(ttft),
        "decode_tokens_per_s": statistics.median(tps) if tps else None,
        "ttft_ms_runs": ttft, "decode_tokens_per_s_runs": tps,
        "model_bytes": model_bytes,
        "cache_bytes": g.get("cache_bytes_per_token", 0) * total,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        # what `profile` reports for the history's latency columns: one decode step
        "latency_ms": {"p50": 1000.0 / statistics.median(tps)} if tps else None,
    }
    if per_layer and hasattr(gen.runner, "op_profile"):  # LiteRT has no per-op profiler
        result["per_layer"] = _per_layer(gen, prompt, min(new_tokens, 32), threads)
    return result


def _per_layer(plain, prompt: list[int], steps: int, threads: int) -> list[dict]:
    """Decode time per decoder block (the nodes the compile prefixed `layers.N/`), the rest
    (embedding, final norm, LM head) as `other`: the prompt's cache is filled by a plain
    session, then only the decode steps run under the profiler."""
    from layerwise.runtime.generate import Generator

    gen = Generator(plain.bundle, threads=threads, per_op=True)
    if hasattr(gen.steps, "past"):  # onnx: the prompt's cache from the plain session
        plain.reset()
        logits = plain.forward(np.array([prompt], np.int64))
        gen.steps.past = plain.steps.past
        before: dict[str, float] = {}
    else:  # openvino: the state is the session's own, so the prompt runs timed; subtracted
        gen.reset()
        logits = gen.forward(np.array([prompt], np.int64))
        before = {n["op"]: n["total_ms"] for n in gen.runner.op_profile(by="node")}
    for _ in range(steps):
        token = int(np.argmax(logits[0, -1]))
        logits = gen.forward(np.array([[token]], np.int64))
    per: dict[str, float] = {}
    pattern = re.compile(r"^layers\.(\d+)/")
    for n in gen.runner.op_profile(by="node"):
        m = pattern.match(n["op"])
        key = f"layers.{m.group(1)}" if m else "other"
        per[key] = per.get(key, 0.0) + max(n["total_ms"] - before.get(n["op"], 0.0), 0.0)
    total = sum(per.values()) or 1.0
    order = sorted(per, key=lambda k: (k == "other", int(k.split(".")[1]) if k != "other"
                                       else 0))
    return [{"layer": k, "ms_per_token": per[k] / steps, "share": per[k] / total}
            for k in order]
