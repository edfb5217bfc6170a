"""`compile --task text-generation`: a causal LM becomes a generator bundle. Its step graph
carries the KV cache (compiler/decoder.py, targets/onnx/decoder.py); blocks named by
`--drop` (or chosen by importance under `--max-drop`, layerwise/lm_plan.py) leave the model
and its cache; the artifact generates, token by token, beside transformers before the
bundle is written (verification: the same greedy tokens and the step logits within
tolerance), and the manifest says how large the cache is per token."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from layerwise.base.errors import LayerwiseError, SourceError, VerificationError
from layerwise.options import CompileOptions

VERIFY_TOKENS = 16
TARGETS = ("onnx", "openvino", "tensorrt", "tflite", "tvm")


def check_decoder(source, opts: CompileOptions) -> None:
    """Refuse what a text-generation compile cannot take, before any work."""
    if source.task != "text-generation" or source.module is None:
        raise SourceError(f"{source.spec} is not a decoder with a language-modelling head "
                          f"(task {source.task}); --task text-generation takes a causal LM "
                          "folder (architectures: *ForCausalLM)")
    target = opts.target or "onnx"
    if target not in TARGETS:
        raise LayerwiseError(f"text-generation bundles are built for --target "
                             f"{' or '.join(TARGETS)} so far, not {target}; compile with "
                             "--target onnx (its build feeds onnxruntime and TensorRT)")
    if opts.max_seq < 2:
        raise LayerwiseError("--max-seq must be at least 2 (one prompt token, one new token)")


def compile_lm(spec: str, source, opts: CompileOptions, progress, timings: dict) -> dict:
    """Shrink (drop, heal), emit, verify and write a text-generation bundle; returns the
    manifest."""
    from layerwise.compiler.decoder import block_list
    from layerwise.lm_plan import plan_decoder
    from layerwise.record import record_run
    from layerwise.targets.bundle import BundleWriter
    check_decoder(source, opts)
    target = opts.target or "onnx"
    offers = precisions(target)
    if opts.precision not in offers:
        raise LayerwiseError(f"a text-generation bundle for {target} takes --precision "
                             f"{', '.join(offers)}, not {opts.precision}")
    model = source.model if hasattr(source, "model") else source.module
    model = model.eval()
    texts = read_texts(opts.data) if opts.data else []
    path, blocks = block_list(model)
    t0 = time.perf_counter()
    small, plan = plan_decoder(model, source.tokenizer, texts, opts, progress)
    timings["plan_s"] = time.perf_counter() - t0
    writer = BundleWriter(opts.out, force=opts.force)
    with writer:
        progress(f"emitting the decoder step for {target} at {opts.precision}")
        t0 = time.perf_counter()
        tokenizer = save_tokenizer(source.tokenizer, writer.dir)
        generation = generation_config(small, tokenizer, opts.max_seq)
        entry = _emit(target, small, writer.dir, opts.precision, plan=plan,
                      generation=generation)
        if entry.get("cache") == "fixed":  # tflite, tvm: a fixed-size cache, prefill in chunks
            generation.update(cache="fixed", prefill_len=entry["prefill_len"])
        timings["emit_s"] = time.perf_counter() - t0
        prompts = verify_prompts(source.tokenizer, texts, small.config.vocab_size)
        progress("verifying: generating beside transformers")
        t0 = time.perf_counter()
        check = verify(target, writer.dir / entry["file"], generation, small, prompts,
                       tolerance=opts.tolerance or (1e-4 if opts.precision == "fp32" else 0.5),
                       exact=opts.precision == "fp32")
        fidelity = verify(target, writer.dir / entry["file"], generation, model, prompts,
                          tolerance=None, exact=False) if small is not model else check
        timings["verify_s"] = time.perf_counter() - t0
        if texts:
            _artifact_perplexity(target, writer.dir / entry["file"], generation, plan,
                                 tokenizer=source.tokenizer, texts=texts)
        if not check["passed"]:
            raise VerificationError(
                f"the {opts.precision} generator misses transformers: {check['reason']}; "
                "nothing written. Raise --tolerance or try another --precision")
        if "signatures" in entry:  # tflite, tvm: the prefill signature's tensors
            from layerwise.targets.tflite.decoder import prefill_example

            writer.save_arrays("inputs.npz", prefill_example(generation, prompts[0]))
        else:
            cache = {} if entry.get("stateful") else {
                n: np.zeros((1, generation["kv_heads"], 0, generation["head_dim"]),
                            np.float32) for n in _cache_names(generation["layers"])}
            writer.save_arrays("inputs.npz", {"input_ids": np.array([prompts[0]], np.int64),
                                              "attention_mask": np.ones((1, len(prompts[0])),
                                                                        np.int64), **cache})
        manifest = _manifest(spec, opts, source, entry=entry, generation=generation,
                             checks=(check, fidelity), plan=plan, models=(model, small),
                             blocks=(path, len(blocks)), timings=timings, tmp=writer.dir)
        if "signatures" in entry:  # prefill (LiteRT: subgraph 0, what a plain interpreter runs)
            manifest.update(entry["signatures"]["prefill"])
        manifest = writer.finish(manifest)
    manifest["run_id"] = record_run("compile", {**manifest, "bundle": str(
        Path(opts.out).resolve())}, opts.db)
    return manifest


def precisions(target: str) -> tuple[str, ...]:
    if target == "openvino":
        from layerwise.targets.openvino_decoder import PRECISIONS
    elif target == "tensorrt":
        return ("fp32", "fp16")
    elif target == "tflite":
        from layerwise.targets.tflite.decoder import PRECISIONS
    elif target == "tvm":
        from layerwise.targets.tvm.decoder import PRECISIONS
    else:
        from layerwise.targets.onnx.decoder import PRECISIONS
    return PRECISIONS


def _emit(target: str, model, out: Path, precision: str, *, plan: dict,
          generation: dict) -> dict:
    """The target's decoder artifact; int4-mixed keeps the plan's sensitive blocks at int8."""
    from layerwise.finish import recipe

    int8_blocks = tuple(plan.get("int8_blocks", ()))
    if target == "openvino":
        from layerwise.targets.openvino_decoder import emit_ov_decoder

        return emit_ov_decoder(model, out, precision, group_size=group_size(model.config),
                               int8_blocks=int8_blocks)
    if target == "tensorrt":
        from layerwise.targets.tensorrt import emit_decoder as trt_decoder

        return trt_decoder(model, out, precision, generation)
    if target == "tflite":
        from layerwise.targets.tflite.decoder import emit_tflite_decoder

        return emit_tflite_decoder(model, out, precision, generation)
    if target == "tvm":
        from layerwise.targets.tvm.decoder import emit_tvm_decoder

        return emit_tvm_decoder(model, out, precision, generation)
    from layerwise.targets.onnx.decoder import emit_decoder

    rec = None
    if precision != "fp32":
        rec = recipe(CompileOptions(target=target), "int4-weight" if precision == "int4-mixed"
                     else precision)
    return emit_decoder(model, out, precision, rec, int8_blocks=int8_blocks, writer="auto")


def group_size(config) -> int:
    """Weights per int4 scale: 128 where the hidden and MLP widths allow, else 64 or 32."""
    widths = [config.hidden_size, getattr(config, "intermediate_size", config.hidden_size)]
    return next((g for g in (128, 64, 32) if all(w % g == 0 for w in widths)), 32)


def _artifact_perplexity(target, model_file, generation, plan, *, tokenizer, texts) -> None:
    """Held-out perplexity of the artifact itself, in its runtime (teacher-forced, one line
    at a time), beside the plan's torch figures (in place)."""
    from layerwise.lm_plan import split_texts
    from layerwise.runtime.generate import Generator

    held = split_texts(texts)[1]
    if not held or tokenizer is None or "perplexity" not in plan:
        return
    gen = Generator.unbundled(target, model_file, generation)
    total, count = 0.0, 0
    for line in held:
        ids = tokenizer(line)["input_ids"][:64]
        if len(ids) < 2:
            continue
        gen.reset()
        logits = gen.forward(np.array([ids], np.int64))[0, :-1].astype(np.float64)
        z = logits - logits.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        total -= float(logp[np.arange(len(ids) - 1), ids[1:]].sum())
        count += len(ids) - 1
    plan["perplexity"]["artifact"] = float(np.exp(total / max(count, 1)))
    plan["perplexity"]["artifact_runtime"] = gen.runner.name


def read_texts(path: str) -> list[str]:
    """The non-empty lines of a UTF-8 text file (one example per line)."""
    p = Path(path)
    if not p.is_file():
        raise LayerwiseError(f"--data {path!r} is not a file; a text-generation compile takes "
                             "a text file, one example per line")
    try:
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as e:
        raise LayerwiseError(f"--data {path} is not UTF-8 text") from e
    lines = [ln for ln in lines if ln]
    if not lines:
        raise LayerwiseError(f"--data {path} holds no text")
    return lines


def save_tokenizer(tokenizer, out: Path) -> str | None:
    """Write the fast tokenizer's tokenizer.json into the bundle; None when there is none."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    clean = Tokenizer.from_str(backend.to_str())  # without the padding a caller left set
    clean.no_padding()
    clean.no_truncation()
    clean.save(str(out / "tokenizer.json"))
    return "tokenizer.json"


def generation_config(model, tokenizer: str | None, max_seq: int) -> dict:
    """The manifest's generation section (runtime/generate.py reads it)."""
    from layerwise.compiler.decoder import cache_bytes_per_token, cache_shape

    config = model.config
    layers, kv, head_dim = cache_shape(config)
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = config.eos_token_id if eos is None else eos
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    return {"layers": layers, "kv_heads": kv, "head_dim": head_dim,
            "vocab_size": config.vocab_size, "max_seq": max_seq,
            "eos_token_ids": [int(t) for t in eos if 0 <= t < config.vocab_size],
            "tokenizer": tokenizer, "cache_dtype": "float32",
            "cache_bytes_per_token": cache_bytes_per_token(config)}


def verify_prompts(tokenizer, texts: list[str], vocab: int, count: int = 2,
                   length: int = 12) -> list[list[int]]:
    """Prompts to verify on: the first lines of --data, else fixed text, else fixed ids."""
    if tokenizer is not None:
        lines = texts[:count] or ["The device reads the model file and", "In this manual"]
        out = [tokenizer(t, add_special_tokens=True)["input_ids"][:length] for t in lines]
        return [p for p in out if p] or [[1, 2, 3]]
    rng = np.random.default_rng(0)
    return [rng.integers(0, vocab, length).tolist() for _ in range(count)]


def verify(target: str, model_file: Path, generation: dict, reference,
           prompts: list[list[int]], *,
           tolerance: float | None, exact: bool, steps: int = VERIFY_TOKENS) -> dict:
    """Greedy generation by the artifact and by transformers from each prompt: the tokens
    agree (required when `exact`), and teacher-forced on the reference's tokens every step's
    logits lie within `tolerance` (rel_err of the worst step; None: recorded only)."""
    from layerwise.runtime.generate import Generator

    gen = Generator.unbundled(target, model_file, generation)
    agree, total, worst, first_miss, forced = 0, 0, 0.0, None, 0
    for prompt in prompts:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            want = reference.generate(ids, attention_mask=torch.ones_like(ids),
                                      max_new_tokens=steps, do_sample=False,
                                      eos_token_id=None, pad_token_id=0)[0, len(prompt):]
            ref_logits = reference(torch.cat([ids, want[None, :-1]], 1)).logits[0]
        got = gen.generate_ids(prompt, steps, stop_ids=[])["ids"]
        gen.reset()
        logits = [gen.forward(np.array([prompt], np.int64))[0]]
        logits += [gen.forward(np.array([[t]], np.int64))[0] for t in want[:-1].tolist()]
        mine = np.concatenate(logits)
        ref = ref_logits.numpy()
        err = float(np.linalg.norm(mine - ref) / max(np.linalg.norm(ref), 1e-12))
        worst = max(worst, err)
        tail = slice(len(prompt) - 1, None)  # the rows that predict the generated tokens
        forced += int((mine[tail].argmax(-1) == ref[tail].argmax(-1)).sum())
        same = [a == b for a, b in zip(got, want.tolist())]
        agree += sum(same)
        total += len(same)
        if first_miss is None and not all(same):
            first_miss = same.index(False)
    out = {"tokens_checked": total, "token_agreement": agree / max(total, 1),
           "runtime": gen.runner.name, "runtime_version": gen.runner.version,
           # on the reference's own tokens: the same next-token choice at each step
           "teacher_forced_agreement": forced / max(total, 1),
           "rel_err": worst, "prompts": len(prompts)}
    reasons = []
    if exact and agree < total:
        reasons.append(f"greedy tokens differ from step {first_miss}")
    if tolerance is not None and worst > tolerance:
        reasons.append(f"logits rel_err {worst:.3g} > tolerance {tolerance}")
    out["passed"] = not reasons
    if reasons:
        out["reason"] = "; ".join(reasons)
    if tolerance is not None:
        out["tolerance"] = tolerance
    return out


def _cache_names(layers: int) -> list[str]:
    from layerwise.compiler.decoder import io_names

    return io_names(layers)[0][2:]


def _manifest(spec, opts, source, *, entry, generation, checks, plan, models, blocks,
              timings, tmp: Path) -> dict:
    (check, fidelity), (model, small), (path, n_blocks) = checks, models, blocks
    from layerwise.compiler.decoder import cache_bytes_per_token
    from layerwise.targets.manifest import tool_versions

    layers = generation["layers"]
    kv = ["batch", generation["kv_heads"], "past_sequence", generation["head_dim"]]
    present = ["batch", generation["kv_heads"], "total_sequence", generation["head_dim"]]
    # a stateful model (openvino) keeps the cache inside: no cache inputs or outputs
    names_in = [] if entry.get("stateful") else _cache_names(layers)
    names_out = [n.replace("past_key_values", "present") for n in names_in]
    full = cache_bytes_per_token(model.config)
    model_bytes = sum((tmp / f).stat().st_size for f in entry["files"])

    return {
        "spec": spec, "target": opts.target or "onnx", "device": opts.device or "host",
        "modality": "text", "task": "text-generation", "notes": source.notes,
        "model": entry,
        "inputs": [{"name": "input_ids", "shape": ["batch", "sequence"], "dtype": "int64"},
                   {"name": "attention_mask", "shape": ["batch", "total_sequence"],
                    "dtype": "int64"}]
        + [{"name": n, "shape": kv, "dtype": "float32"} for n in names_in],
        "outputs": [{"name": "logits", "shape": ["batch", "sequence",
                                                  generation["vocab_size"]],
                     "dtype": "float32"}]
        + [{"name": n, "shape": present, "dtype": "float32"} for n in names_out],
        "example_inputs": "inputs.npz",
        "generation": generation,
        "verification": {**check, "against": "transformers generate (the compiled model)"},
        "fidelity": {**fidelity, "against": "transformers generate (the original model)"},
        "precision": opts.precision,
        "plan": plan,
        "layers": {"count": n_blocks, "kept": layers, "block_list": path},
        "sizes": {"model_bytes": model_bytes,
                  "params": sum(p.numel() for p in small.parameters()),
                  "cache_bytes_per_token": generation["cache_bytes_per_token"],
                  "cache_bytes_per_token_original": full,
                  "cache_bytes_at_max_seq": generation["cache_bytes_per_token"] * opts.max_seq,
                  "cache_saved_fraction": 1 - generation["cache_bytes_per_token"] / full},
        "timings": timings,
        "tool_versions": tool_versions(check["runtime"], check["runtime_version"]),
    }
