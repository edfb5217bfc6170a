"""Engine workers for bench/llm.py: one persistent process per engine, JSON lines on stdin and
stdout (bench/llm.py starts them; run by hand only to debug one engine):

    python bench/llm_peers.py KIND ARTIFACT [--threads 2]

KIND is hf (transformers FP32, `model.generate`), layerwise (a text-generation bundle through
the torch-free `Generator`), ortgenai (onnxruntime-genai `og.Generator`), ovgenai (OpenVINO
GenAI `LLMPipeline`; logits from the same IR through openvino's runtime) or llamacpp
(llama-cpp-python, a GGUF file). The worker loads the model once, warms up, prints
{"ready": ...}, then answers one line per request:

    {"op": "speed", "prompt": [ids], "new": N}  -> {"ttft_s", "decode_s", "ids"}
    {"op": "greedy", "prompt": [ids], "new": N} -> {"ids"}   (argmax, no stop token)
    {"op": "nll", "chunk": [ids]}               -> {"nll": summed next-token CE, "n"}
    {"op": "rss"}                               -> {"peak_rss_mb"}

decode_s covers the N - 1 steps after the first token; library output goes to stderr so that
stdout carries only the protocol.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import traceback

import numpy as np


def nll_of(logits: np.ndarray, chunk: list[int]) -> float:
    """Summed next-token cross-entropy of `chunk` given logits [S, V] of its positions."""
    z = logits[:-1].astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(chunk) - 1), chunk[1:]].sum())


class HF:
    """transformers FP32 (default attention), `model.generate` greedy with its KV cache; the
    first and later tokens timed by a streamer's calls (prompt, then one call per token)."""

    def __init__(self, path: str, threads: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        gc = self.model.generation_config
        gc.eos_token_id, gc.do_sample = None, False
        gc.pad_token_id = gc.pad_token_id if gc.pad_token_id is not None else 0
        self.info = {"attn": self.model.config._attn_implementation,
                     "torch": torch.__version__}

    def speed(self, prompt: list[int], new: int) -> dict:
        stamps: list[float] = []

        class Stamp:
            def put(self, value) -> None:
                stamps.append(time.perf_counter())

            def end(self) -> None:
                pass

        ids = self.torch.tensor([prompt])
        with self.torch.inference_mode():
            t0 = time.perf_counter()
            out = self.model.generate(ids, attention_mask=self.torch.ones_like(ids),
                                      max_new_tokens=new, streamer=Stamp())
        toks = stamps[1:]  # stamps[0]: the prompt, put before the first forward
        return {"ttft_s": toks[0] - t0, "decode_s": toks[-1] - toks[0],
                "ids": out[0, len(prompt):].tolist()}

    def greedy(self, prompt: list[int], new: int) -> list[int]:
        return self.speed(prompt, new)["ids"]

    def logits(self, chunk: list[int]) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.tensor([chunk])).logits[0].float().numpy()


class Layerwise:
    """A layerwise text-generation bundle through `layerwise.runtime.generate.Generator`."""

    def __init__(self, path: str, threads: int) -> None:
        from layerwise.runtime.generate import Generator

        self.g = Generator(path, threads=threads)
        self.info = {"runtime": f"{self.g.runner.name} {self.g.runner.version}",
                     "precision": self.g.bundle.manifest.get("precision")}

    def speed(self, prompt: list[int], new: int) -> dict:
        r = self.g.generate_ids(prompt, new, stop_ids=[])
        return {"ttft_s": r["ttft_s"], "decode_s": r["decode_s"], "ids": r["ids"]}

    def greedy(self, prompt: list[int], new: int) -> list[int]:
        return self.g.generate_ids(prompt, new, stop_ids=[])["ids"]

    def logits(self, chunk: list[int]) -> np.ndarray:
        ids = np.array([chunk], np.int64)
        if hasattr(self.g, "step"):  # the first Generator API: step(ids, cache)
            return self.g.step(ids, self.g.empty_cache())[0][0]
        self.g.reset()
        return self.g.forward(ids)[0]


class OrtGenAI:
    """onnxruntime-genai: `og.Generator`, greedy search, session threads set by overlay. So that
    every run makes N tokens, the end-of-sequence id becomes the pad id (a token the model
    never predicts; the last id when pad is eos) and min_length masks it until the end."""

    def __init__(self, path: str, threads: int) -> None:
        import onnxruntime_genai as og

        self.og = og
        with open(os.path.join(path, "genai_config.json")) as f:
            m = json.load(f)["model"]
        eos = m["eos_token_id"]
        eos = set(eos if isinstance(eos, list) else [eos])
        stop = m.get("pad_token_id")
        stop = stop if stop is not None and stop not in eos else m["vocab_size"] - 1
        cfg = og.Config(path)
        so = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
        cfg.overlay(json.dumps({"model": {"eos_token_id": stop, "decoder": {
            "session_options": so}}}))
        self.model = og.Model(cfg)
        self.info = {"onnxruntime_genai": og.__version__}

    def _gen(self, total: int):
        p = self.og.GeneratorParams(self.model)
        p.set_search_options(max_length=total, min_length=total, do_sample=False)
        return self.og.Generator(self.model, p)

    def speed(self, prompt: list[int], new: int) -> dict:
        gen = self._gen(len(prompt) + new)
        t0 = time.perf_counter()
        gen.append_tokens(np.array([prompt], np.int32))
        gen.generate_next_token()
        t1 = time.perf_counter()
        for _ in range(new - 1):
            gen.generate_next_token()
        t2 = time.perf_counter()
        return {"ttft_s": t1 - t0, "decode_s": t2 - t1,
                "ids": [int(t) for t in gen.get_sequence(0)[len(prompt):]]}

    def greedy(self, prompt: list[int], new: int) -> list[int]:
        return self.speed(prompt, new)["ids"]

    def logits(self, chunk: list[int]) -> np.ndarray:
        gen = self._gen(len(chunk) + 1)
        gen.append_tokens(np.array([chunk], np.int32))
        out = np.asarray(gen.get_output("logits"), np.float32)
        return out.reshape(-1, out.shape[-1])[-len(chunk):]


class OvGenAI:
    """OpenVINO GenAI `LLMPipeline` on CPU, its defaults but prefix caching (on by default: a
    repeated prompt would skip its prefill); TTFT and time per output token from its
    perf_metrics. Logits: the exported stateful IR compiled by openvino."""

    def __init__(self, path: str, threads: int) -> None:
        import openvino as ov
        import openvino_genai as ovg

        self.ov, self.ovg, self.path, self.threads = ov, ovg, path, threads
        sched = ovg.SchedulerConfig()
        sched.enable_prefix_caching = False
        self.pipe = ovg.LLMPipeline(path, "CPU", INFERENCE_NUM_THREADS=threads,
                                    scheduler_config=sched)
        self.req = None
        self.info = {"openvino_genai": ovg.__version__, "prefix_caching": False}

    def _config(self, new: int):
        c = self.ovg.GenerationConfig()
        c.max_new_tokens, c.ignore_eos, c.do_sample = new, True, False
        return c

    def speed(self, prompt: list[int], new: int) -> dict:
        t0 = time.perf_counter()
        r = self.pipe.generate(self.ov.Tensor(np.array([prompt], np.int64)), self._config(new))
        wall = time.perf_counter() - t0
        pm = r.perf_metrics
        ttft = pm.get_ttft().mean / 1000
        return {"ttft_s": ttft, "decode_s": pm.get_tpot().mean / 1000 * (new - 1),
                "wall_s": wall, "ids": [int(t) for t in r.tokens[0]]}

    def greedy(self, prompt: list[int], new: int) -> list[int]:
        return self.speed(prompt, new)["ids"]

    def logits(self, chunk: list[int]) -> np.ndarray:
        if self.req is None:
            core = self.ov.Core()
            m = core.compile_model(os.path.join(self.path, "openvino_model.xml"), "CPU",
                                   {"INFERENCE_NUM_THREADS": self.threads})
            self.info["inference_precision"] = str(m.get_property("INFERENCE_PRECISION_HINT"))
            self.req = m.create_infer_request()
            self.names = {i.get_any_name() for i in m.inputs}
        self.req.reset_state()
        n = len(chunk)
        feed = {"input_ids": np.array([chunk], np.int64),
                "attention_mask": np.ones((1, n), np.int64),
                "position_ids": np.arange(n, dtype=np.int64)[None],
                "beam_idx": np.zeros(1, np.int32)}
        out = self.req.infer({k: v for k, v in feed.items() if k in self.names})
        return np.asarray(out["logits"])[0]


class LlamaCpp:
    """llama-cpp-python on a GGUF file: `eval` of the prompt, then one token per `eval`, argmax
    over llama.cpp's last-token logits (no sampler). Logits of every position for perplexity
    come from a second context opened with logits_all=True (after the timings)."""

    def __init__(self, path: str, threads: int) -> None:
        import llama_cpp

        self.lc, self.path, self.threads = llama_cpp, path, threads
        self.llm = self._open(False)
        self.full = None
        self.info = {"llama_cpp_python": llama_cpp.__version__}

    def _open(self, logits_all: bool):
        return self.lc.Llama(model_path=self.path, n_ctx=512, n_batch=512, n_ubatch=512,
                             n_threads=self.threads, n_threads_batch=self.threads,
                             logits_all=logits_all, verbose=False)

    def _next(self) -> int:
        v = self.llm.n_vocab()
        return int(np.argmax(np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(v,))))

    def speed(self, prompt: list[int], new: int) -> dict:
        self.llm.reset()
        t0 = time.perf_counter()
        self.llm.eval(prompt)
        ids = [self._next()]
        t1 = time.perf_counter()
        for _ in range(new - 1):
            self.llm.eval([ids[-1]])
            ids.append(self._next())
        t2 = time.perf_counter()
        return {"ttft_s": t1 - t0, "decode_s": t2 - t1, "ids": ids}

    def greedy(self, prompt: list[int], new: int) -> list[int]:
        return self.speed(prompt, new)["ids"]

    def logits(self, chunk: list[int]) -> np.ndarray:
        if self.full is None:
            self.full = self._open(True)
        self.full.reset()
        self.full.eval(chunk)
        return np.array(self.full.scores[:len(chunk)])


KINDS = {"hf": HF, "layerwise": Layerwise, "ortgenai": OrtGenAI, "ovgenai": OvGenAI,
         "llamacpp": LlamaCpp}


def serve(kind: str, path: str, threads: int) -> None:
    """Load the engine, warm it up, then answer requests until stdin closes."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the libraries print goes to stderr

    def say(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")

    t = time.perf_counter()
    try:
        eng = KINDS[kind](path, threads)
        load_s = time.perf_counter() - t
        eng.speed(list(range(1, 17)), 4)  # warm-up
    except Exception as e:  # noqa: BLE001 - reported as the row's reason
        traceback.print_exc()
        first = (str(e).splitlines() or [""])[0][:300]
        say({"error": f"load: {type(e).__name__}: {first}"})
        return
    say({"ready": True, "load_s": load_s, "info": eng.info, "pid": os.getpid()})
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            op = req["op"]
            if op == "speed":
                res = eng.speed(req["prompt"], req["new"])
            elif op == "greedy":
                res = {"ids": eng.greedy(req["prompt"], req["new"])}
            elif op == "nll":
                res = {"nll": nll_of(eng.logits(req["chunk"]), req["chunk"]),
                       "n": len(req["chunk"]) - 1}
            elif op == "rss":
                res = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
            elif op == "info":
                res = {"info": eng.info}
            else:
                res = {"error": f"unknown op {op}"}
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            res = {"error": f"{op}: {type(e).__name__}: {str(e)[:300]}"}
        say(res)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=sorted(KINDS))
    ap.add_argument("path")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    serve(a.kind, a.path, a.threads)


if __name__ == "__main__":
    main()
