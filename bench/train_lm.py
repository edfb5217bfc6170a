"""Train one small Llama-architecture language model on the machine's English man pages.

The benchmarks measure a decoder's quality (held-out perplexity) before and after compiling
it; this script makes that decoder from the prose paragraphs of /usr/share/man (troff turned
into prose by bench/man_sections.py; the near-identical gcloud pages are capped). Pages,
never paragraphs, are split: a small share is held out and never trained on. A byte-level
BPE tokenizer is trained on the training text, then the model on 256-token windows of the
training stream (pages separated by `</s>`) for a wall-clock budget (AdamW, warmup, cosine).

    python bench/train_lm.py [--out DIR] [--minutes N] [--threads N] [--seed S] [--force]

DIR (default ~/.cache/layerwise/man-llama) ends up holding the model and tokenizer
(`from_pretrained(DIR)` loads both), heldout.txt (held-out paragraphs, one a line),
train_sample.txt (training paragraphs for calibration/healing data) and train_log.json.
Checkpoints are saved every few minutes, so a killed run still leaves a loadable folder;
a folder whose log says it finished is reported and left alone unless --force is given.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from man_sections import MAN, _text

SEQ = 256
VOCAB = 8192
HELDOUT_SHARE = 0.02
GCLOUD_MAX = 600  # gcloud pages kept (of many thousands, nearly all alike)
SAMPLE_LINES = 3000
SPECIALS = ("<s>", "</s>", "<pad>")


def paragraphs(path: Path) -> list[str]:
    """The prose paragraphs of a man page: 4+ words, mostly letters, whitespace collapsed."""
    out = []
    for raw in _text(path).split("\n"):
        para = " ".join(raw.split())
        chars = para.replace(" ", "")
        if len(para.split()) >= 4 and sum(c.isalpha() for c in chars) >= 0.7 * len(chars):
            out.append(para)
    return out


def split_pages(seed: int) -> tuple[list[list[str]], list[list[str]], dict]:
    """Paragraphs of the training pages and of the held-out pages, plus page counts."""
    rng = random.Random(seed)
    files = [p for d in sorted(MAN.glob("man[0-9]*")) for p in sorted(d.iterdir())]
    real = [p for p in files if not p.is_symlink()]
    gcloud = [p for p in real if p.name.startswith("gcloud")]
    picked = [p for p in real if not p.name.startswith("gcloud")]
    picked += rng.sample(gcloud, min(GCLOUD_MAX, len(gcloud)))
    rng.shuffle(picked)
    n_held = round(HELDOUT_SHARE * len(picked))
    seen: set[str] = set()
    train, held = [], []
    for i, page in enumerate(picked):
        paras = paragraphs(page)
        if i >= n_held:  # training page: drop paragraphs already seen (boilerplate)
            paras = [p for p in paras if not (p in seen or seen.add(p))]
            if paras:
                train.append(paras)
        elif paras:
            held.append(paras)
    held = [[p for p in paras if p not in seen] for paras in held]
    held = [paras for paras in held if paras]
    counts = {"files": len(files), "symlinks_skipped": len(files) - len(real),
              "gcloud_total": len(gcloud), "gcloud_kept": min(GCLOUD_MAX, len(gcloud)),
              "train_pages": len(train), "heldout_pages": len(held),
              "train_paragraphs": sum(map(len, train)),
              "heldout_paragraphs": sum(map(len, held)),
              "train_chars": sum(len(p) for d in train for p in d)}
    return train, held, counts


def train_tokenizer(docs: list[str], out: Path):
    """Byte-level BPE on `docs`, saved into `out`; no special tokens are added on encode."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, min_frequency=2,
                                  special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                 pad_token="<pad>", model_max_length=1024)
    hf.save_pretrained(out)
    return hf


def build_model(tok):
    """The Llama decoder, randomly initialised, eager attention, tied embeddings."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=384, num_hidden_layers=8, num_attention_heads=6,
        num_key_value_heads=2, intermediate_size=1536, max_position_embeddings=1024,
        tie_word_embeddings=True, rope_theta=10000.0, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager")


def heldout_loss(model, tok, path: Path, seq: int = SEQ) -> dict:
    """Mean next-token cross-entropy (and its exp) over a text file, read as one stream.

    The file's lines are joined by newlines and tokenized without special tokens; windows of
    seq+1 tokens overlap by one, so every token but the first is predicted exactly once.
    """
    import torch
    import torch.nn.functional as F

    ids = tok("\n".join(path.read_text().splitlines()), add_special_tokens=False)["input_ids"]
    ids = torch.tensor(ids, dtype=torch.long)
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, seq):
            chunk = ids[start:start + seq + 1][None]
            logits = model(input_ids=chunk[:, :-1]).logits.float()
            total += F.cross_entropy(logits[0], chunk[0, 1:], reduction="sum").item()
            count += chunk.shape[1] - 1
    model.train()
    return {"loss": total / count, "perplexity": math.exp(total / count), "tokens": count}


def _step(model, opt, batch, bf16: bool) -> float:
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def _step_seconds(model, batch, bf16: bool, n: int = 3) -> float:
    """Seconds per training step, measured on a throwaway copy of the model."""
    import torch

    trial = copy.deepcopy(model)
    opt = torch.optim.AdamW(trial.parameters(), lr=1e-4)
    _step(trial, opt, batch, bf16)
    t = time.perf_counter()
    for _ in range(n):
        _step(trial, opt, batch, bf16)
    return (time.perf_counter() - t) / n


def _cpu_model() -> str:
    info = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    return next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                 if ln.startswith("Model name")), "unknown")


def prepare(out: Path, seed: int) -> tuple:
    """Write heldout.txt, train_sample.txt and the tokenizer into `out`; return the
    tokenizer, the training stream cut into SEQ-token windows, and the page counts."""
    import torch

    train_docs, held_docs, counts = split_pages(seed)
    (out / "heldout.txt").write_text("".join(p + "\n" for d in held_docs for p in d))
    rng = random.Random(seed)
    short = [p for d in train_docs for p in d if 8 <= len(p.split()) <= 80]
    sample = rng.sample(short, min(SAMPLE_LINES, len(short)))
    (out / "train_sample.txt").write_text("".join(p + "\n" for p in sample))
    texts = ["\n".join(d) for d in train_docs]
    tok = train_tokenizer(texts, out)
    stream: list[int] = []
    for enc in tok._tokenizer.encode_batch(texts, add_special_tokens=False):
        stream += enc.ids
        stream.append(tok.eos_token_id)
    counts["stream_tokens"] = len(stream)
    n_win = len(stream) // SEQ
    return tok, torch.tensor(stream[: n_win * SEQ], dtype=torch.long).view(n_win, SEQ), counts


def _lr(peak: float, step: int, frac: float, warmup: int = 50) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to a tenth by the time budget."""
    return peak * min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))


def _optimizer(model, lr: float):
    import torch

    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                              {"params": rest, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))


def _save(model, tok, out: Path, log: dict, t0: float, *, final: bool = False) -> None:
    """Checkpoint the model and rewrite the log; the final save also evaluates."""
    model.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    trained = log["train_seconds"]
    log.update(step_seconds=round(trained / max(log["steps"], 1), 3),
               tokens_per_second=round(log["tokens_seen"] / max(trained, 1e-9), 1))
    if final:
        log["heldout"] = heldout_loss(model, tok, out / "heldout.txt")
        log["finished"] = True
    log["wall_seconds"] = round(time.time() - t0, 1)
    (out / "train_log.json").write_text(json.dumps(log, indent=1))


def train(out: Path, *, minutes: float, threads: int = 1, seed: int = 0, batch_size: int = 8,
          lr: float = 1e-3, dtype: str = "auto", save_every_min: float = 10.0) -> dict:
    """Prepare data and tokenizer, train for `minutes`, save, evaluate; returns the log."""
    os.environ.setdefault("RAYON_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tok, windows, counts = prepare(out, seed)
    n_win = len(windows)
    order = torch.randperm(n_win)
    prep_s = time.time() - t0
    print(f"pages {counts}, {n_win} windows, prep {prep_s:.0f} s", flush=True)

    model = build_model(tok)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params} ({n_params / 1e6:.1f} M)", flush=True)
    timing = {}
    if dtype == "auto":
        probe = windows[order[:batch_size]]
        timing = {k: _step_seconds(model, probe, k == "bf16") for k in ("fp32", "bf16")}
        dtype = min(timing, key=timing.get)
        print(f"step seconds {timing} -> {dtype}", flush=True)
    opt = _optimizer(model, lr)
    budget = minutes * 60.0
    log = {"finished": False, "cpu": _cpu_model(), "threads": threads, "seed": seed,
           "dtype": dtype, "step_seconds_probe": timing, "parameters": n_params,
           "config": model.config.to_dict(), "pages": counts, "seq_len": SEQ,
           "batch_size": batch_size, "peak_lr": lr, "prep_seconds": round(prep_s, 1),
           "steps": 0, "tokens_seen": 0, "train_seconds": 0.0, "curve": []}
    step, trained, since_save, run_loss, pos, shown = 0, 0.0, 0.0, [], 0, 0.0
    model.train()
    while trained < budget:
        for g in opt.param_groups:
            g["lr"] = _lr(lr, step, trained / budget)
        if pos + batch_size > n_win:
            order, pos = torch.randperm(n_win), 0
        batch = windows[order[pos:pos + batch_size]]
        pos += batch_size
        t = time.perf_counter()
        loss = _step(model, opt, batch, dtype == "bf16")
        dt = time.perf_counter() - t
        if not math.isfinite(loss):
            raise RuntimeError(f"loss is {loss} at step {step}")
        trained, since_save, step = trained + dt, since_save + dt, step + 1
        run_loss.append(loss)
        log.update(steps=step, tokens_seen=step * batch_size * SEQ,
                   train_seconds=round(trained, 1))
        if step % 20 == 0:
            avg = sum(run_loss) / len(run_loss)
            log["curve"].append({"step": step, "tokens": step * batch_size * SEQ,
                                 "loss": round(avg, 4), "lr": round(opt.param_groups[0]["lr"], 6),
                                 "seconds": round(trained, 1)})
            per = (trained - shown) / len(run_loss)
            print(f"step {step} loss {avg:.3f} lr {opt.param_groups[0]['lr']:.2e} "
                  f"{per:.2f} s/step {batch_size * SEQ / per:.0f} tok/s", flush=True)
            run_loss, shown = [], trained
        if since_save >= save_every_min * 60:
            _save(model, tok, out, log, t0)
            since_save = 0.0
    _save(model, tok, out, log, t0, final=True)
    return log


def _report(log: dict) -> str:
    h = log.get("heldout", {})
    return (f"{log['parameters'] / 1e6:.1f} M parameters, {log['steps']} steps, "
            f"{log['tokens_seen']} tokens, {log['step_seconds']} s/step, "
            f"{log['tokens_per_second']} tok/s ({log['dtype']}), held-out perplexity "
            f"{h.get('perplexity', float('nan')):.2f} over {h.get('tokens', 0)} tokens")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("~/.cache/layerwise/man-llama"))
    ap.add_argument("--minutes", type=float, default=60.0, help="training time budget")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto")
    ap.add_argument("--force", action="store_true", help="retrain even if finished")
    args = ap.parse_args()
    out = args.out.expanduser()
    log_path = out / "train_log.json"
    if log_path.exists() and not args.force:
        log = json.loads(log_path.read_text())
        if log.get("finished"):
            print(f"{out}: already trained: {_report(log)}")
            return
    log = train(out, minutes=args.minutes, threads=args.threads, seed=args.seed,
                batch_size=args.batch_size, lr=args.lr, dtype=args.dtype)
    print(f"{out}: {_report(log)}")


if __name__ == "__main__":
    main()
