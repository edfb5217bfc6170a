"""Small decoder LMs across engines, side by side in one run on this host: decode tokens/s, time
to first token, size on disk, peak RSS, held-out perplexity and greedy agreement.

    python bench/llm.py [--speed-model DIR|qwen|none] [--quality-model DIR|standin|none]
                        [--engines a,b,...] [--rounds 3] [--prompt-tokens 128]
                        [--new-tokens 128] [--threads 2] [--heal-steps 300] [--json PATH]
                        [--build-only]

Run it with the project's venv from any folder. Peers: onnxruntime-genai, openvino-genai (the
version of openvino) and llama-cpp-python (built from source, GGML_NATIVE) beside layerwise;
optimum-intel, which pins another transformers, in its own venv bench/.peers/optimum (it also
runs llama.cpp's convert_hf_to_gguf.py, from the llama-cpp-python sdist unpacked under
~/.cache/layerwise/llm-bench/src/). --speed-model (default `qwen`: the Qwen2.5-0.5B shape
with random weights, made once under ~/.cache/layerwise/llm-bench/models/) is timed only;
--quality-model (default ~/.cache/layerwise/man-llama; `standin`: a tiny random Llama for
smoke tests) is timed and, having heldout.txt, scored. Engines (ENGINES, bench/llm_build.py):
hf-fp32; lw-fp32, lw-int8, lw-int4 (layerwise onnx); lw-ov-int8, lw-ov-int4 (layerwise
--target openvino); lw-tflite-fp32, lw-tflite-int8 (LiteRT, --max-seq 512) and
lw-drop{12,25}[h]-int4 (quality model only; h: healed); ortgenai-int4;
ovgenai-int4; llamacpp-q4_0, llamacpp-q8_0. Artifacts are built once and cached under
~/.cache/layerwise/llm-bench/<folder>-<hash>/<engine>/ (layerwise ones rebuilt when the
layerwise sources change, unless --keep-builds); one that fails to build shows why.

Method: each engine runs in its own persistent worker (bench/llm_peers.py), models loaded once
and warmed up at the measured shape; rounds are interleaved (every engine once per round,
start rotated; one engine runs at a time); medians are reported and ratios come from this run
only. Each engine generates greedily with its own loop at batch 1 and `--threads` threads from
the same prompt ids: TTFT is the prompt's forward plus the first token; decode tokens/s is
(new - 1) / the time of the remaining steps (bench/llm_peers.py says how each engine is timed).
Quality: heldout.txt is tokenized once by the folder's tokenizer and cut into --prompt-tokens
chunks; perplexity = exp(mean next-token cross-entropy) from each engine's teacher-forced
logits; greedy agreement = share of the --greedy-tokens greedy tokens (after prompts from
heldout.txt) equal, position by position, to hf-fp32's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llm_build as lb

MAN_LLAMA = Path.home() / ".cache" / "layerwise" / "man-llama"
PEERS_PY = Path(__file__).resolve().parent / "llm_peers.py"
FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
         "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
SPEED_ENGINES = ["hf-fp32", "lw-fp32", "lw-int8", "lw-int4", "lw-ov-int8", "lw-ov-int4",
                 "ortgenai-int4", "ovgenai-int4", "llamacpp-q4_0", "llamacpp-q8_0"]
DROP_ENGINES = ["lw-drop12-int4", "lw-drop12h-int4", "lw-drop25-int4", "lw-drop25h-int4"]
# engines run on the quality model only (the speed model's fp32 weights pass LiteRT's 2 GiB)
QUALITY_ONLY = [*DROP_ENGINES, "lw-tflite-fp32", "lw-tflite-int8"]


def cpu_summary() -> dict:
    """CPU model, core count and the SIMD flags that matter to these kernels."""
    info = {"model": platform.processor() or "unknown", "cores": 0, "flags": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip()
        if key == "model name":
            info["model"] = val.strip()
        elif key == "processor":
            info["cores"] += 1
        elif key == "flags" and not info["flags"]:
            have = set(val.split())
            info["flags"] = [f for f in FLAGS if f in have]
    return info


def trainer_state() -> str:
    """Whether bench/train_lm.py is running now (it disturbs timings)."""
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True,
                        check=False).stdout
    running = [ln.split()[0] for ln in ps.splitlines() if "train_lm.py" in ln
               and "ps -eo" not in ln]
    log = MAN_LLAMA / "train_log.json"
    finished = log.exists() and json.loads(log.read_text()).get("finished", False)
    return (f"running (pid {', '.join(running)})" if running else "not running") + \
        (", man-llama finished" if finished else ", man-llama not finished")


class Worker:
    """One engine's persistent worker process, JSON lines over its stdin/stdout."""

    def __init__(self, kind: str, path: str, threads: int, log: Path,
                 python: str = sys.executable) -> None:
        self.log = open(log, "a")  # noqa: SIM115 - held for the worker's lifetime
        self.proc = subprocess.Popen([python, str(PEERS_PY), kind, path, "--threads",
                                      str(threads)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     cwd="/tmp", bufsize=1)
        self.hello = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            return {"error": f"worker exited ({self.proc.poll()}); see {self.log.name}"}
        return json.loads(line)

    def ask(self, **req) -> dict:
        if self.proc.poll() is not None:
            return {"error": f"worker exited ({self.proc.returncode}); see {self.log.name}"}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
        self.log.close()


def token_data(folder: Path, prompt_tokens: int, n_prompts: int, max_chunks: int) -> dict:
    """The speed prompt, greedy prompts and perplexity chunks, as token ids of the folder's
    tokenizer (random ids in its range for the speed prompt when there is no heldout.txt)."""
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    held = folder / "heldout.txt"
    if not held.exists():
        rng = np.random.default_rng(0)
        return {"speed": rng.integers(0, tok.get_vocab_size(), prompt_tokens).tolist()}
    lines = [ln for ln in held.read_text().splitlines() if ln.strip()]
    stream = tok.encode("\n".join(lines), add_special_tokens=False).ids
    chunks = [stream[i:i + prompt_tokens] for i in range(0, len(stream), prompt_tokens)]
    chunks = [c for c in chunks if len(c) > 1][:max_chunks or None]
    step = max(1, len(lines) // max(1, n_prompts))
    prompts = [tok.encode(ln, add_special_tokens=False).ids[:32] for ln in lines[::step]]
    return {"speed": stream[:prompt_tokens], "chunks": chunks,
            "greedy": [p for p in prompts if len(p) >= 8][:n_prompts]}


def run_model(folder: Path, engines: list[str], a: argparse.Namespace, scored: bool) -> dict:
    """Build, load, time (interleaved rounds) and score every engine on one model folder."""
    root = lb.CACHE / lb.folder_key(folder)
    # random weights give noise logits: int4's relative error exceeds the compile's default
    # sanity bound (0.5), so the speed model's lossy layerwise builds get --lw-tolerance
    tol = a.lw_tolerance if a.lw_tolerance is not None else (None if scored else 1.0)
    opts = {"heal_steps": a.heal_steps, "heal_lr": a.heal_lr, "tolerance": tol,
            "keep_builds": a.keep_builds}
    data = token_data(folder, a.prompt_tokens, a.greedy_prompts, a.ppl_chunks)
    rows: dict[str, dict] = {}
    for e in engines:
        t = time.perf_counter()
        print(f"[{folder.name}] build {e} ...", file=sys.stderr, flush=True)
        rows[e] = {"build": lb.build(e, lb.ENGINES[e], folder, root, opts)}
        print(f"[{folder.name}]   {e}: {rows[e]['build'].get('error', 'ok')} "
              f"({time.perf_counter() - t:.0f}s)", file=sys.stderr, flush=True)
    if a.build_only:
        return {"folder": str(folder), "cache": str(root), "engines": rows, "ratios": {},
                "prompt_tokens": len(data["speed"])}
    workers: dict[str, Worker] = {}
    for e in engines:
        b = rows[e]["build"]
        if "error" in b:
            continue
        spec = lb.ENGINES[e]
        w = Worker(spec["worker"], b["path"], a.threads, root / f"{e}.worker.log",
                   spec.get("python", sys.executable))
        if "error" in w.hello:
            rows[e]["error"] = w.hello["error"]
            w.close()
            continue
        rows[e]["info"], rows[e]["load_s"] = w.hello["info"], w.hello["load_s"]
        workers[e] = w
    live = list(workers)
    for e in live:  # untimed, at the measured shape: first-call allocations and caches
        for _ in range(a.warmup):
            workers[e].ask(op="speed", prompt=data["speed"], new=a.new_tokens)
    load_before = os.getloadavg()
    for r in range(a.rounds):
        order = live[r % len(live):] + live[:r % len(live)] if live else []
        for e in order:
            res = workers[e].ask(op="speed", prompt=data["speed"], new=a.new_tokens)
            row = rows[e]
            if "error" in res:
                row.setdefault("error", res["error"])
                continue
            row.setdefault("ttft_ms_runs", []).append(res["ttft_s"] * 1000)
            row.setdefault("tps_runs", []).append((a.new_tokens - 1) / res["decode_s"])
            print(f"[{folder.name}] round {r + 1} {e}: {row['tps_runs'][-1]:.1f} tok/s, "
                  f"TTFT {row['ttft_ms_runs'][-1]:.0f} ms", file=sys.stderr, flush=True)
    for e, w in workers.items():
        row = rows[e]
        row["peak_rss_mb"] = w.ask(op="rss").get("peak_rss_mb")
        if row.get("tps_runs"):
            row["tps"] = statistics.median(row["tps_runs"])
            row["ttft_ms"] = statistics.median(row["ttft_ms_runs"])
    if scored and "chunks" in data:
        score(workers, rows, data, a.greedy_tokens)
    for e, w in workers.items():
        rows[e]["info"] = w.ask(op="info").get("info", rows[e].get("info"))
        w.close()
    out = {"folder": str(folder), "cache": str(root), "engines": rows,
           "prompt_tokens": len(data["speed"]),
           "loadavg_1m_before_after_rounds": [load_before[0], os.getloadavg()[0]]}
    imp = root / "importance.json"
    if imp.exists():
        out["importance"] = json.loads(imp.read_text())
    out["ratios"] = ratios(rows)
    return out


def score(workers: dict, rows: dict, data: dict, greedy_tokens: int) -> None:
    """Perplexity and greedy agreement (vs hf-fp32) of every live engine."""
    ref = None
    if "hf-fp32" in workers:
        ref = [workers["hf-fp32"].ask(op="greedy", prompt=p, new=greedy_tokens).get("ids")
               for p in data["greedy"]]
    for e, w in workers.items():
        print(f"  quality {e} ...", file=sys.stderr, flush=True)
        nll, n = 0.0, 0
        for c in data["chunks"]:
            res = w.ask(op="nll", chunk=c)
            if "error" in res:
                rows[e]["quality_error"] = res["error"]
                break
            nll, n = nll + res["nll"], n + res["n"]
        else:
            rows[e]["nll"], rows[e]["tokens_scored"] = nll / n, n
            rows[e]["ppl"] = math.exp(nll / n)
        if ref is None:
            continue
        same, prefix, total = 0, 0, 0
        for p, want in zip(data["greedy"], ref):
            got = w.ask(op="greedy", prompt=p, new=greedy_tokens).get("ids") or []
            eq = [g == t for g, t in zip(got, want)]
            same += sum(eq)
            prefix += next((i for i, ok in enumerate(eq) if not ok), len(eq))
            total += len(want)
        rows[e]["greedy_agreement"] = same / total if total else None
        rows[e]["greedy_prefix"] = prefix / total if total else None


def ratios(rows: dict) -> dict:
    """layerwise int4 vs the faster of the ONNX Runtime GenAI / OpenVINO GenAI int4 rows, and
    each dropped+healed layerwise int4 vs llama.cpp Q4_0; tok/s: layerwise / peer (>1:
    layerwise faster), TTFT: layerwise / peer (<1: layerwise faster); medians of this run."""
    out = {}

    def pair(mine: str, peer: str) -> dict | None:
        a, b = rows.get(mine, {}), rows.get(peer, {})
        if not (a.get("tps") and b.get("tps")):
            return None
        return {"vs": peer, "tps_ratio": a["tps"] / b["tps"],
                "ttft_ratio": a["ttft_ms"] / b["ttft_ms"]}

    peers = [p for p in ("ortgenai-int4", "ovgenai-int4") if rows.get(p, {}).get("tps")]
    if peers:
        out["lw-int4 vs fastest int4 peer"] = pair("lw-int4", max(peers,
                                                   key=lambda p: rows[p]["tps"]))
    for e in ("lw-drop12h-int4", "lw-drop25h-int4"):
        out[f"{e} vs llamacpp-q4_0"] = pair(e, "llamacpp-q4_0")
    return {k: v for k, v in out.items() if v}


def _f(v, fmt: str) -> str:
    width = int(fmt.split(".", maxsplit=1)[0] or 0)
    return format(v, fmt) if isinstance(v, (int, float)) else "-".rjust(width)


def table(name: str, res: dict) -> str:
    """The model's rows as a fixed-width table, then the ratios."""
    head = (f"{'engine':17} {'tok/s':>7} {'TTFT ms':>8} {'size MB':>8} {'RSS MB':>7} "
            f"{'ppl':>8} {'agree':>6}  note")
    lines = [f"== {name}: {res['folder']}  (prompt {res['prompt_tokens']} tokens)", head,
             "-" * len(head)]
    for e, r in res["engines"].items():
        b = r["build"]
        note = b.get("error") or r.get("error") or r.get("quality_error") or ""
        if b.get("error", "").startswith("exit 2"):
            note = "not built: " + b["error"].split(": ", 1)[-1]
        if not note and b.get("dropped"):
            note = "dropped " + ",".join(d.rsplit(".", 1)[-1] for d in b["dropped"])
        size = b.get("bytes", 0) / 2**20 if "bytes" in b else None
        lines.append(f"{e:17} {_f(r.get('tps'), '7.1f')} {_f(r.get('ttft_ms'), '8.1f')} "
                     f"{_f(size, '8.1f')} {_f(r.get('peak_rss_mb'), '7.0f')} "
                     f"{_f(r.get('ppl'), '8.3f')} {_f(r.get('greedy_agreement'), '6.3f')}  "
                     f"{note[:110]}")
    for k, v in res["ratios"].items():
        label = k if v["vs"] in k else f"{k} ({v['vs']})"
        lines.append(f"{label}: tok/s x{v['tps_ratio']:.2f} (>1 layerwise faster), "
                     f"TTFT x{v['ttft_ratio']:.2f} (<1 layerwise faster)")
    return "\n".join(lines)


def resolve(arg: str, default: Path, maker) -> Path | None:
    if arg == "none":
        return None
    if arg in ("qwen", "standin"):
        return maker()
    return Path(arg).expanduser() if arg else default


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--speed-model", default="qwen",
                    help="HF folder timed only; 'qwen' (default): the random Qwen2.5-0.5B "
                         "shape, made once; 'none': skip")
    ap.add_argument("--quality-model", default=str(MAN_LLAMA),
                    help="HF folder with heldout.txt and train_sample.txt, timed and scored "
                         "(default ~/.cache/layerwise/man-llama); 'standin': a tiny random "
                         "Llama for smoke tests; 'none': skip")
    ap.add_argument("--engines", default=",".join(SPEED_ENGINES + QUALITY_ONLY),
                    help="comma-separated engines (drop engines run on the quality model)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed generations per engine before the rounds")
    ap.add_argument("--keep-builds", action="store_true",
                    help="reuse cached layerwise artifacts even if built from other layerwise "
                         "sources (by default they are rebuilt)")
    ap.add_argument("--build-only", action="store_true",
                    help="build (or find cached) every artifact, time nothing")
    ap.add_argument("--greedy-prompts", type=int, default=4)
    ap.add_argument("--greedy-tokens", type=int, default=32)
    ap.add_argument("--ppl-chunks", type=int, default=200,
                    help="at most this many held-out chunks (0: all)")
    ap.add_argument("--heal-steps", type=int, default=300)
    ap.add_argument("--heal-lr", type=float, default=1e-4)
    ap.add_argument("--lw-tolerance", type=float,
                    help="layerwise compile --tolerance for lossy precisions (default: 1.0 on "
                         "the speed model, whose random weights give noise logits; the "
                         "compile's own default on the quality model)")
    ap.add_argument("--json", help="write every number to this file")
    a = ap.parse_args(argv)
    engines = [e for e in a.engines.split(",") if e]
    bad = [e for e in engines if e not in lb.ENGINES]
    if bad:
        ap.error(f"unknown engines {bad}; choose from {', '.join(lb.ENGINES)}")
    cpu = cpu_summary()
    trainer = trainer_state()
    print(f"CPU: {cpu['model']}, {cpu['cores']} logical cores; flags: "
          f"{' '.join(cpu['flags'])}\nthreads {a.threads}, batch 1, prompt {a.prompt_tokens}, "
          f"new {a.new_tokens}, {a.rounds} rounds (medians); trainer: {trainer}", flush=True)
    report = {"cpu": cpu, "trainer": trainer, "settings": vars(a), "models": {},
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    speed = resolve(a.speed_model, lb.QWEN_DIR, lb.make_qwen)
    quality = resolve(a.quality_model, MAN_LLAMA, lb.make_tiny)
    for name, folder, scored in (("speed", speed, False), ("quality", quality, True)):
        if folder is None:
            continue
        if not (folder / "config.json").exists():
            print(f"== {name}: {folder} has no model (config.json); skipped", flush=True)
            continue
        mine = [e for e in engines if scored or e not in QUALITY_ONLY]
        res = run_model(folder, mine, a, scored)
        report["models"][name] = res
        print(table(name, res), flush=True)
        if a.json:
            Path(a.json).write_text(json.dumps(report, indent=1))
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
