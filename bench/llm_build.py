"""Model folders and per-engine artifacts for bench/llm.py (not run on its own).

Makes the Qwen2.5-0.5B-shaped random model (and a tiny Llama stand-in for smoke tests), each a
Hugging Face folder with a byte-level BPE tokenizer trained on the machine's man pages, and
builds every engine's artifact from a folder: layerwise bundles (`layerwise compile`),
onnxruntime-genai's model builder, optimum-intel's OpenVINO export (in its own venv under
bench/.peers/optimum), GGUF files for llama.cpp. Artifacts are cached under
~/.cache/layerwise/llm-bench/<folder key>/<engine>/ (a `build.json` marks a finished build),
so a rerun only times.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path.home() / ".cache" / "layerwise" / "llm-bench"
PEERS = HERE / ".peers"
OPTIMUM_PY = PEERS / "optimum" / "bin" / "python"
LLAMA_SRC = CACHE / "src" / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"
QWEN_DIR = CACHE / "models" / "qwen2.5-0.5b-shape-random"
TINY_DIR = CACHE / "models" / "tiny-llama-standin"


def english_lines(n: int) -> list[str]:
    """Up to n English sentences from the man pages (deterministic)."""
    sys.path.insert(0, str(HERE))
    from man_sections import MAN, sentences

    out: list[str] = []
    for section in ("man1", "man3", "man5", "man7", "man8", "man2"):
        for page in sorted((MAN / section).glob("*"))[:4000]:
            if not page.is_symlink():
                out.extend(sentences(page))
            if len(out) >= n:
                return out[:n]
    return out


def train_tokenizer(lines: list[str], vocab: int, out: Path, specials: tuple[str, ...]):
    """A byte-level BPE tokenizer trained on `lines`, saved into `out` (transformers form)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=specials[0],
                                 eos_token=specials[-1], pad_token=specials[-1])
    hf.save_pretrained(out)
    return hf


def make_qwen(out: Path = QWEN_DIR, seed: int = 0) -> Path:
    """The Qwen2.5-0.5B shape with random weights (vocab 151936, tokenizer of 8000 ids)."""
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(english_lines(20000), 8000, out, ("<|im_start|>", "<|endoftext|>"))
    torch.manual_seed(seed)
    cfg = Qwen2Config(hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                      num_key_value_heads=2, intermediate_size=4864, vocab_size=151936,
                      max_position_embeddings=32768, tie_word_embeddings=True,
                      rope_theta=1000000.0, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    Qwen2ForCausalLM(cfg).eval().save_pretrained(out)
    return out


def make_tiny(out: Path = TINY_DIR, seed: int = 0) -> Path:
    """A 2-layer random Llama stand-in for the trained LM, with heldout.txt and
    train_sample.txt beside it (smoke tests only: its quality numbers mean nothing)."""
    if (out / "config.json").exists() and (out / "heldout.txt").exists():
        return out
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    lines = english_lines(6000)
    tok = train_tokenizer(lines[400:], 2048, out, ("<s>", "<pad>", "</s>"))
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, intermediate_size=384,
                      max_position_embeddings=1024, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).eval().save_pretrained(out)
    (out / "heldout.txt").write_text("\n".join(lines[:400]) + "\n")
    (out / "train_sample.txt").write_text("\n".join(lines[400:2400]) + "\n")
    return out


def folder_key(folder: Path) -> str:
    """Cache key of a model folder: its name and a hash of its path, config and weights' stat."""
    h = hashlib.sha1(str(folder.resolve()).encode())
    h.update((folder / "config.json").read_bytes())
    for f in sorted(folder.glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return f"{folder.name}-{h.hexdigest()[:10]}"


def layerwise_rev() -> str:
    """A hash of the layerwise sources in this checkout (committed or not): cached layerwise
    artifacts built from other sources are rebuilt."""
    h = hashlib.sha1()
    for d in ("base", "compiler", "analysis", "targets", "runtime", "layerwise"):
        for f in sorted((HERE.parent / d).rglob("*.py")):
            h.update(f.relative_to(HERE.parent).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def _fresh(record: Path, rev: str | None, opts: dict) -> dict | None:
    """A cached build record, unless it is of other layerwise sources (and not keep_builds)."""
    if not record.exists():
        return None
    res = json.loads(record.read_text())
    if rev is None or opts.get("keep_builds") or res.get("layerwise_rev") == rev:
        return res
    return None


def dir_bytes(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def _run(cmd: list[str], log: Path, env: dict | None = None, cwd: Path | None = None) -> str | None:
    """Run a build command, its output to `log`; None when it succeeded, else a one-line reason."""
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                            check=False).returncode
    if rc == 0:
        return None
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errs = [ln for ln in lines if "error" in ln.lower() or "not supported" in ln.lower()]
    return f"exit {rc}: {(errs or lines or ['no output'])[-1][:300]}"


def layerwise_importance(folder: Path, data: Path, root: Path, opts: dict) -> dict:
    """The block order layerwise computes (least important first), read from the manifest of
    `compile --max-drop 5% --data ... --json`; cached in root/importance.json."""
    cached = root / "importance.json"
    rev = layerwise_rev()
    res = _fresh(cached, rev, opts)
    if res is not None:
        return res
    root.mkdir(parents=True, exist_ok=True)
    out = root / "lw-maxdrop5"
    cmd = [sys.executable, "-m", "layerwise.cli", "compile", f"hf:{folder}", "--task",
           "text-generation", "--target", "onnx", "--precision", "int4-weight", "--max-drop",
           "5%", "--data", str(data), "--out", str(out), "--force", "--db", "none", "--quiet",
           "--json"]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd="/tmp")
    (root / "importance.log").write_text(p.stdout + "\n" + p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"importance run failed ({p.stderr.strip().splitlines()[-1:]})")
    plan = json.loads(p.stdout[p.stdout.index("{"):]).get("plan") or {}
    prefix = plan.get("block_list", "model.layers")
    order = (plan.get("importance") or {}).get("ensemble_order") or []
    chosen = [d for ps in plan.get("passes", []) if ps.get("name") == "drop_blocks"
              for d in ps.get("dropped", [])]
    res = {"order": [f"{prefix}.{i}" for i in order], "max_drop_5pct_dropped": chosen,
           "perplexity": plan.get("perplexity"), "seconds": round(time.perf_counter() - t, 1),
           "layerwise_rev": rev}
    cached.write_text(json.dumps(res, indent=1))
    return res


def drop_list(folder: Path, order: list[str], frac: float) -> list[str]:
    """The least important round(frac * layers) blocks (at least one)."""
    layers = json.loads((folder / "config.json").read_text())["num_hidden_layers"]
    return order[:max(1, round(frac * layers))] if order else []


def build(engine: str, spec: dict, folder: Path, root: Path, opts: dict) -> dict:
    """Build (or find cached) the artifact of `engine` for `folder` under root/engine.
    Returns {"path", "bytes", "seconds", "cmd"} or {"error": one line}."""
    out = root / engine
    done = out / "build.json"
    rev = layerwise_rev() if spec["build"] == "layerwise" else None
    cached = _fresh(done, rev, opts)
    if cached is not None:
        return cached
    if out.exists():
        subprocess.run(["rm", "-rf", str(out)], check=False)
    out.mkdir(parents=True)
    log = out / "build.log"
    t = time.perf_counter()
    try:
        res = _BUILDERS[spec["build"]](spec, folder, out, log, opts)
    except Exception as e:  # noqa: BLE001 - any failure becomes the row's reason
        res = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    if "error" in res:
        return res
    res["seconds"] = round(time.perf_counter() - t, 1)
    if rev:
        res["layerwise_rev"] = rev
    res["bytes"] = dir_bytes(res.pop("files"))
    done.write_text(json.dumps(res, indent=1))
    return res


def _hf(spec: dict, folder: Path, out: Path, log: Path, opts: dict) -> dict:
    return {"path": str(folder), "files": sorted(folder.glob("*.safetensors")), "cmd": ""}


def _layerwise(spec: dict, folder: Path, out: Path, log: Path, opts: dict) -> dict:
    bundle = out / "bundle"
    cmd = [sys.executable, "-m", "layerwise.cli", "compile", f"hf:{folder}", "--task",
           "text-generation", "--target", spec.get("target", "onnx"), "--precision",
           spec["precision"], "--out", str(bundle), "--db", "none", "--quiet"]
    if opts.get("tolerance") and spec["precision"] != "fp32":
        cmd += ["--tolerance", str(opts["tolerance"])]
    if spec.get("max_seq"):
        cmd += ["--max-seq", str(spec["max_seq"])]
    drop = spec.get("drop")
    if drop:
        data = folder / "train_sample.txt"
        if not data.exists():
            return {"error": f"no {data.name} beside the model (needed to rank blocks)"}
        order = layerwise_importance(folder, data, out.parent, opts)["order"]
        if not order:
            return {"error": "the importance run gave no plan.importance.ensemble_order"}
        cmd += ["--drop", ",".join(drop_list(folder, order, drop))]
        if spec.get("heal"):
            cmd += ["--data", str(data), "--heal-steps", str(opts["heal_steps"]),
                    "--heal-lr", str(opts["heal_lr"])]
    err = _run(cmd, log, cwd=Path("/tmp"))
    if err:
        return {"error": err}
    m = json.loads((bundle / "manifest.json").read_text())
    files = [bundle / f for f in m["model"].get("files", [m["model"]["file"]])]
    res = {"path": str(bundle), "files": files, "cmd": " ".join(cmd)}
    if drop:
        res["dropped"] = cmd[cmd.index("--drop") + 1].split(",")
    return res


def _ortgenai(spec: dict, folder: Path, out: Path, log: Path, opts: dict) -> dict:
    model = out / "model"
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(folder), "-o",
           str(model), "-p", spec["precision"], "-e", "cpu", "-c", str(out / "hf_cache")]
    err = _run(cmd, log, cwd=Path("/tmp"))
    if err:
        return {"error": err}
    subprocess.run(["rm", "-rf", str(out / "hf_cache")], check=False)
    return {"path": str(model), "files": sorted(model.glob("*.onnx*")), "cmd": " ".join(cmd)}


def _openvino(spec: dict, folder: Path, out: Path, log: Path, opts: dict) -> dict:
    if not OPTIMUM_PY.exists():
        return {"error": f"no optimum-intel venv at {OPTIMUM_PY.parent.parent} (see llm.py)"}
    model = out / "model"
    cmd = [str(OPTIMUM_PY), "-m", "optimum.commands.optimum_cli", "export", "openvino",
           "--model", str(folder), "--task", "text-generation-with-past", "--weight-format",
           spec["precision"], str(model)]
    err = _run(cmd, log, cwd=Path("/tmp"))
    if err:
        return {"error": err}
    return {"path": str(model), "files": sorted(model.glob("openvino_model.*")),
            "cmd": " ".join(cmd)}


_CONVERT = """
import sys
sys.path[:0] = [{src!r}, {src!r} + "/gguf-py"]
import conversion.base as b
orig = b.TextModel.get_vocab_base_pre
def pre(self, tok):
    try:
        return orig(self, tok)
    except NotImplementedError:  # a tokenizer trained here: the GPT-2 byte-level split
        return "gpt-2"
b.TextModel.get_vocab_base_pre = pre
import convert_hf_to_gguf as c
sys.argv = ["convert_hf_to_gguf.py", {folder!r}, "--outfile", {out!r}, "--outtype", "f32"]
c.main()
"""

_QUANT = """
import ctypes, sys, llama_cpp as L
p = L.llama_model_quantize_default_params()
p.ftype = getattr(L, "LLAMA_FTYPE_MOSTLY_" + sys.argv[3])
p.nthread = 2
rc = L.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p))
sys.exit(rc)
"""


def _gguf(spec: dict, folder: Path, out: Path, log: Path, opts: dict) -> dict:
    f32 = out.parent / "gguf-f32" / "model-f32.gguf"
    if not f32.exists():
        f32.parent.mkdir(parents=True, exist_ok=True)
        code = _CONVERT.format(src=str(LLAMA_SRC), folder=str(folder), out=str(f32) + ".tmp")
        env = dict(os.environ, NO_LOCAL_GGUF="")
        py = str(OPTIMUM_PY) if OPTIMUM_PY.exists() else sys.executable  # has sentencepiece
        err = _run([py, "-c", code], log, env=env, cwd=Path("/tmp"))
        if err:
            return {"error": "convert_hf_to_gguf: " + err}
        os.replace(str(f32) + ".tmp", f32)
    q = out / f"model-{spec['precision'].lower()}.gguf"
    err = _run([sys.executable, "-c", _QUANT, str(f32), str(q), spec["precision"]], log,
               cwd=Path("/tmp"))
    if err:
        return {"error": "llama_model_quantize: " + err}
    return {"path": str(q), "files": [q], "cmd": f"convert_hf_to_gguf.py --outtype f32; "
            f"llama_model_quantize {spec['precision']}"}


_BUILDERS = {"hf": _hf, "layerwise": _layerwise, "ortgenai": _ortgenai, "openvino": _openvino,
             "gguf": _gguf}

# engine name -> how it is built and which worker runs it
ENGINES: dict[str, dict] = {
    "hf-fp32": {"build": "hf", "worker": "hf"},
    "lw-fp32": {"build": "layerwise", "worker": "layerwise", "precision": "fp32"},
    "lw-int8": {"build": "layerwise", "worker": "layerwise", "precision": "int8-weight"},
    "lw-int4": {"build": "layerwise", "worker": "layerwise", "precision": "int4-weight"},
    "lw-ov-int4": {"build": "layerwise", "worker": "layerwise", "precision": "int4-weight",
                   "target": "openvino"},
    "lw-ov-int8": {"build": "layerwise", "worker": "layerwise", "precision": "int8-weight",
                   "target": "openvino"},
    # LiteRT: a fixed-size cache (attention reads every row), sized for prompt + new tokens
    "lw-tflite-fp32": {"build": "layerwise", "worker": "layerwise", "precision": "fp32",
                       "target": "tflite", "max_seq": 512},
    "lw-tflite-int8": {"build": "layerwise", "worker": "layerwise", "precision": "int8-weight",
                       "target": "tflite", "max_seq": 512},
    "lw-drop12-int4": {"build": "layerwise", "worker": "layerwise", "precision": "int4-weight",
                       "drop": 0.12},
    "lw-drop12h-int4": {"build": "layerwise", "worker": "layerwise",
                        "precision": "int4-weight", "drop": 0.12, "heal": True},
    "lw-drop25-int4": {"build": "layerwise", "worker": "layerwise", "precision": "int4-weight",
                       "drop": 0.25},
    "lw-drop25h-int4": {"build": "layerwise", "worker": "layerwise",
                        "precision": "int4-weight", "drop": 0.25, "heal": True},
    "ortgenai-int4": {"build": "ortgenai", "worker": "ortgenai", "precision": "int4"},
    "ovgenai-int4": {"build": "openvino", "worker": "ovgenai", "precision": "int4"},
    "llamacpp-q4_0": {"build": "gguf", "worker": "llamacpp", "precision": "Q4_0"},
    "llamacpp-q8_0": {"build": "gguf", "worker": "llamacpp", "precision": "Q8_0"},
}


def blocks_of(folder: Path) -> int:
    return int(json.loads((folder / "config.json").read_text())["num_hidden_layers"])


def pct(frac: float, folder: Path) -> str:
    """How many blocks a drop fraction removes from the folder's model, e.g. '1/8'."""
    n = blocks_of(folder)
    return f"{max(1, round(frac * n))}/{n}" if not math.isnan(frac) else "-"
