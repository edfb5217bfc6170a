"""`compile --task text-generation`, `generate` and `profile` on tiny LMs trained on real
text: the generator's greedy tokens are transformers' own; int4 packs the linears; dropping
a decoder block shrinks the cache; mistakes give one line and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from layerwise import api
from layerwise.runtime.generate import Generator, Sampling, pick
from tests.conftest import FIXTURES, ROOT


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "layerwise", *args], capture_output=True,
                          text=True, cwd=ROOT, check=False, timeout=timeout)


def _one_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("layerwise:")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, \
        proc.stderr[-2000:]
    return lines[0]


def _hf_greedy(folder, prompt: str, n: int) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False, eos_token_id=None,
                             pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_generator_bundle_generates_what_transformers_generates(tiny_lms, lm_bundle):
    m = json.loads((lm_bundle / "manifest.json").read_text())
    v = m["verification"]
    assert m["task"] == "text-generation" and v["passed"] and v["token_agreement"] == 1.0
    assert v["tokens_checked"] == 32 and v["rel_err"] < 1e-4
    g = m["generation"]
    assert (g["layers"], g["kv_heads"], g["head_dim"]) == (4, 2, 16)
    assert g["cache_bytes_per_token"] == 2 * 4 * 2 * 16 * 4 and g["eos_token_ids"] == [1]
    names = [i["name"] for i in m["inputs"]]
    assert names[:3] == ["input_ids", "attention_mask", "past_key_values.0.key"]
    assert len(names) == 2 + 2 * 4
    # the CLI streams the same text transformers' greedy generate gives (torch-free runtime)
    proc = _cli("generate", str(lm_bundle), "--prompt", "This License", "--max-new-tokens",
                "24")
    assert proc.returncode == 0, proc.stderr[-2000:]
    want = _hf_greedy(tiny_lms["llama"], "This License", 24)
    assert proc.stdout.rstrip("\n") == want and len(want) > 20


def test_qwen2_with_tied_embeddings_verifies(tiny_lms, tmp_path):
    out = tmp_path / "q"
    m = api.compile(f"hf:{tiny_lms['qwen2']}", api.CompileOptions(
        task="text-generation", out=str(out), db="none"))
    assert m["verification"]["passed"] and m["verification"]["token_agreement"] == 1.0
    # the tied LM head is a weight of its own, not a Transpose of the table at every step
    graph = onnx.load(str(out / "model.onnx"))
    inits = {i.name for i in graph.graph.initializer}
    assert not [n for n in graph.graph.node if n.op_type == "Transpose" and n.input[0] in inits]
    gen = Generator(out)
    text = gen.generate("The licensor", 16)
    assert text == _hf_greedy(tiny_lms["qwen2"], "The licensor", 16)


def test_int4_packs_the_linears_and_stays_close(tiny_lms, lm_bundle, tmp_path):
    out = tmp_path / "int4"
    m = api.compile(f"hf:{tiny_lms['llama']}", api.CompileOptions(
        task="text-generation", precision="int4-weight", out=str(out), db="none"))
    ops = [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]
    # onnxruntime-genai's graph: 4 blocks x 5 linears (packed QKV) + the LM head, all packed
    assert m["model"]["graph"]["writer"] == "onnxruntime-genai model builder"
    assert ops.count("MatMulNBits") == 4 * 5 + 1 and "MatMul" not in ops
    assert "GatherBlockQuantized" in ops and ops.count("GroupQueryAttention") == 4
    fp32 = json.loads((lm_bundle / "manifest.json").read_text())
    assert m["sizes"]["model_bytes"] < 0.6 * fp32["sizes"]["model_bytes"]
    v = m["verification"]
    assert v["passed"] and v["rel_err"] < 0.5 and v["teacher_forced_agreement"] >= 0.5


def test_dropping_a_block_shrinks_the_cache_and_heals(tiny_lms, tmp_path):
    corpus = tiny_lms["llama"] / "corpus.txt"
    out = tmp_path / "small"
    m = api.compile(f"hf:{tiny_lms['llama']}", api.CompileOptions(
        task="text-generation", out=str(out), db="none", drop="model.layers.2",
        data=str(corpus), heal_steps=30, heal_lr=1e-3))
    assert m["generation"]["layers"] == 3 and len(m["inputs"]) == 2 + 2 * 3
    z = m["sizes"]
    assert z["cache_bytes_per_token"] == 3 * z["cache_bytes_per_token_original"] // 4
    assert abs(z["cache_saved_fraction"] - 0.25) < 1e-9
    drop, heal = m["plan"]["passes"]
    assert drop["dropped"] == ["model.layers.2"] and heal["steps"] == 30
    assert heal["held_perplexity_after"] <= heal["held_perplexity_before"]
    # the compiled small model is what the generator verified against, token for token
    assert m["verification"]["token_agreement"] == 1.0
    assert len(Generator(out).runner.input_names) == 8


def test_max_drop_drops_least_important_blocks_within_the_perplexity_bound(tiny_lms,
                                                                          tmp_path):
    corpus = tiny_lms["llama"] / "corpus.txt"
    m = api.compile(f"hf:{tiny_lms['llama']}", api.CompileOptions(
        task="text-generation", out=str(tmp_path / "s"), db="none", data=str(corpus),
        max_drop="10%"))
    imp = m["plan"]["importance"]
    assert sorted(imp["ensemble_order"]) == [0, 1, 2, 3]
    assert all(0 <= b <= 2 for b in imp["block_influence"])
    tried = m["plan"]["search"]["tried"]
    kept = [t for t in tried if t["rise"] <= 0.10]
    dropped = m["plan"]["passes"][0]["dropped"]
    assert len(dropped) == len(kept) and m["generation"]["layers"] == 4 - len(kept)
    # the first block tried is the least important by the ensemble
    assert tried[0]["dropped"] == [imp["ensemble_order"][0]]
    ppl = m["plan"]["perplexity"]
    assert ppl["shrunk_model"] <= 1.10 * ppl["original"]
    # the fp32 artifact's own perplexity, run by onnxruntime, is the shrunk model's
    assert abs(ppl["artifact"] / ppl["shrunk_model"] - 1) < 1e-3


def test_profile_reports_ttft_tokens_per_second_and_per_block_time(lm_bundle):
    r = api.profile(str(lm_bundle), api.ProfileOptions(prompt_len=16, new_tokens=8, runs=2,
                                                       db="none"))
    assert r["task"] == "text-generation" and r["ttft_ms"] > 0 and r["decode_tokens_per_s"] > 0
    assert r["cache_bytes"] == 24 * 1024 and r["model_bytes"] > 0 and r["peak_rss_mb"] > 0
    blocks = [row["layer"] for row in r["per_layer"]]
    assert blocks == ["layers.0", "layers.1", "layers.2", "layers.3", "other"]
    assert abs(sum(row["share"] for row in r["per_layer"]) - 1) < 1e-6


def test_sampling_picks_within_top_k_and_top_p():
    logits = np.array([0.0, 5.0, 4.0, -3.0, 1.0])
    rng = np.random.default_rng(0)
    assert pick(logits, Sampling(), rng) == 1
    picks = {pick(logits, Sampling(temperature=1.0, top_k=2, seed=0), rng) for _ in range(200)}
    assert picks == {1, 2}
    # top_p=0.5: token 1 alone holds over half the mass
    assert {pick(logits, Sampling(temperature=1.0, top_p=0.5), rng) for _ in range(50)} == {1}


def test_mistakes_give_one_line(tiny_lms, lm_bundle, tmp_path):
    line = _one_line(_cli("compile", f"{FIXTURES}:half_dead_mlp", "--task", "text-generation",
                          "--out", str(tmp_path / "x"), "--db", "none"))
    assert "not a decoder with a language-modelling head" in line
    assert not (tmp_path / "x").exists()
    line = _one_line(_cli("compile", f"hf:{tiny_lms['llama']}", "--task", "text-generation",
                          "--target", "coreml", "--out", str(tmp_path / "x")))
    assert "unknown target 'coreml'" in line and "tvm" in line  # the list of valid ones
    assert not (tmp_path / "x").exists()
    line = _one_line(_cli("generate", str(lm_bundle), "--prompt", "word " * 40,
                          "--max-new-tokens", "2040"))
    assert "exceeds the bundle's --max-seq 2048" in line
    line = _one_line(_cli("compile", f"hf:{tiny_lms['llama']}", "--task", "text-generation",
                          "--drop", "model.layers.9", "--out", str(tmp_path / "x")))
    assert "model.layers.0 … model.layers.3" in line


def test_a_folder_without_a_tokenizer_compiles_and_generates_from_ids(tiny_lms, tmp_path):
    import shutil

    folder = tmp_path / "bare"
    folder.mkdir()
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        if (tiny_lms["llama"] / f).exists():
            shutil.copy(tiny_lms["llama"] / f, folder / f)
    out = tmp_path / "b"
    m = api.compile(f"hf:{folder}", api.CompileOptions(task="text-generation", out=str(out),
                                                       db="none", max_seq=64))
    assert m["generation"]["tokenizer"] is None and m["verification"]["passed"]
    line = _one_line(_cli("generate", str(out), "--prompt", "hello"))
    assert "no tokenizer" in line and "--prompt-ids" in line
    proc = _cli("generate", str(out), "--prompt-ids", "5,6,7", "--max-new-tokens", "4",
                "--json")
    assert proc.returncode == 0 and len(json.loads(proc.stdout)["ids"]) == 4
    # heal/importance need text: refused before any work
    line = _one_line(_cli("compile", f"hf:{folder}", "--task", "text-generation", "--max-drop",
                          "5%", "--data", str(tiny_lms["llama"] / "corpus.txt"), "--out",
                          str(tmp_path / "y")))
    assert "no tokenizer" in line and not (tmp_path / "y").exists()


@pytest.mark.parametrize("bad", ["eos", "tokenizer"])
def test_a_tampered_generation_section_is_refused(lm_bundle, tmp_path, bad):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(lm_bundle, copy)
    m = json.loads((copy / "manifest.json").read_text())
    if bad == "eos":
        m["generation"]["eos_token_ids"] = [10**9]
    else:
        m["generation"]["tokenizer"] = "../../etc/passwd"
    (copy / "manifest.json").write_text(json.dumps(m))
    line = _one_line(_cli("generate", str(copy), "--prompt", "x"))
    assert ("eos_token_ids" in line) if bad == "eos" else ("outside the bundle" in line)


def test_openvino_stateful_generator_matches_transformers(tiny_lms, tmp_path):
    out = tmp_path / "ov"
    m = api.compile(f"hf:{tiny_lms['llama']}", api.CompileOptions(
        task="text-generation", target="openvino", out=str(out), db="none"))
    v = m["verification"]
    assert v["passed"] and v["runtime"] == "openvino" and v["token_agreement"] == 1.0
    # the cache lives in the model's state: two inputs, one output
    assert [i["name"] for i in m["inputs"]] == ["input_ids", "attention_mask"]
    assert [o["name"] for o in m["outputs"]] == ["logits"] and m["model"]["stateful"]
    gen = Generator(out)
    assert len(gen.runner.request.query_state()) == 8
    assert gen.generate("This License", 16) == _hf_greedy(tiny_lms["llama"], "This License", 16)
    r = api.profile(str(out), api.ProfileOptions(prompt_len=8, new_tokens=4, runs=1, db="none"))
    assert [row["layer"] for row in r["per_layer"]][:4] == [f"layers.{i}" for i in range(4)]


def test_int4_mixed_keeps_the_most_important_block_at_int8(tiny_lms, tmp_path):
    from onnx import helper

    out = tmp_path / "mixed"
    m = api.compile(f"hf:{tiny_lms['llama']}", api.CompileOptions(
        task="text-generation", precision="int4-mixed", out=str(out), db="none",
        data=str(tiny_lms["llama"] / "corpus.txt")))
    plan = m["plan"]
    order = plan["mixed_precision"]["scores"]["ensemble_order"]
    assert plan["int8_blocks"] == [order[-1]]  # a quarter of 4 blocks: the most important
    bits: dict[str, set] = {}
    for n in onnx.load(str(out / "model.onnx")).graph.node:
        if n.op_type == "MatMulNBits":
            block = n.name.split("/")[0] if n.name.startswith("layers.") else "head"
            bits.setdefault(block, set()).add(
                next(helper.get_attribute_value(a) for a in n.attribute if a.name == "bits"))
    assert bits.pop(f"layers.{order[-1]}") == {8}
    assert all(b == {4} for b in bits.values()) and len(bits) == 4  # 3 blocks + the head
    ppl = plan["perplexity"]
    assert ppl["artifact_runtime"] == "onnxruntime" and ppl["artifact"] < 1.5 * ppl["original"]


def test_tensorrt_bundle_holds_the_step_and_a_prefill_to_decode_profile(tiny_lms, tmp_path):
    out = tmp_path / "trt"
    m = api.compile(f"hf:{tiny_lms['llama']}", api.CompileOptions(
        task="text-generation", target="tensorrt", precision="fp16", out=str(out),
        db="none", max_seq=256))
    assert m["verification"]["passed"] and m["verification"]["runtime"] == "onnxruntime"
    prof = json.loads((out / "manifest.json").read_text())["model"]["engine"]["profile"]
    assert prof["input_ids"] == [[1, 1], [1, 1], [1, 256]]
    assert prof["past_key_values.3.value"] == [[1, 2, 0, 16], [1, 2, 128, 16], [1, 2, 256, 16]]
    script = (out / "build_engine.sh").read_text()
    assert "--fp16" in script and "past_key_values.0.key:1x2x256x16" in script
    from layerwise.runtime import open_bundle
    from layerwise.targets.tensorrt import engine_builder

    assert "profile.set_shape('attention_mask', (1, 1), (1, 128), (1, 256))" in \
        engine_builder(open_bundle(out))
    line = _one_line(_cli("compile", f"hf:{tiny_lms['llama']}", "--task", "text-generation",
                          "--target", "tensorrt", "--precision", "int4-weight", "--out",
                          str(tmp_path / "x")))
    assert "takes --precision fp32, fp16" in line
