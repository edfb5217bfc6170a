"""Which decoder blocks a text-generation compile keeps: the blocks named by `--drop`, or under
`--max-drop` the most blocks whose removal (least important first, healed with `--heal-steps`)
keeps held-out perplexity within the bound. Importance of block i on the text: block influence
(ShortGPT: 1 - cosine of the block's input and output hidden states, mean over tokens), angular
distance (Gromov et al.: arccos of that cosine / pi, mean over tokens) and their rank ensemble.
Healing distils the original's next-token distributions into the smaller model (KL on the
logits) on the training split of --data."""

from __future__ import annotations

import math
import time

import torch

from layerwise.base.errors import LayerwiseError

MAX_TOKENS = 64


def plan_decoder(model, tokenizer, texts: list[str], opts, progress) -> tuple:
    """(the model to emit, the plan's record for the manifest)."""
    from layerwise.compiler.decoder import block_list, drop_blocks
    from layerwise.options import fraction, names, seconds

    path, blocks = block_list(model)
    n = len(blocks)
    mixed = opts.precision == "int4-mixed"
    if (opts.max_drop is not None or opts.heal_steps or mixed) and not texts:
        raise LayerwiseError("dropping decoder blocks by importance, healing them or int4-mixed "
                             "(int8 for the most important blocks) needs --data (a text file, "
                             "one example per line)")
    if opts.max_drop is None and not opts.drop:
        if opts.heal_steps:
            raise LayerwiseError("--heal-steps heals a model made smaller: add --drop or "
                                 "--max-drop")
        if not mixed:
            return model, {"passes": []}
    train, held = split_texts(texts)
    batches = token_batches(tokenizer, train, model.config.vocab_size)
    held_batches = token_batches(tokenizer, held, model.config.vocab_size)
    record: dict = {"passes": [], "block_list": path}
    ppl0 = perplexity(model, held_batches) if held_batches else None
    small = healed = None
    if opts.drop:
        drop = _indices(names(opts.drop), path, n)
    elif opts.max_drop is None:
        drop = []
    else:
        progress("scoring decoder blocks on the text (block influence, angular distance)")
        scores = block_scores(model, batches)
        record["importance"] = scores
        bound = fraction(opts.max_drop)
        drop, tried, small, healed = _search(model, scores["ensemble_order"], held_batches,
                                             batches, ppl0=ppl0, bound=bound, opts=opts,
                                             progress=progress)
        record["search"] = {"max_drop": bound, "tried": tried,
                            "metric": "perplexity (held-out --data)",
                            "baseline_perplexity": ppl0}
    if small is None:
        small = drop_blocks(model, drop) if drop else model
        if drop and opts.heal_steps:
            progress(f"healing: KL distillation on the logits, {opts.heal_steps} steps")
            healed = heal_decoder(small, model, batches, held_batches, steps=opts.heal_steps,
                                  lr=opts.heal_lr, budget_s=seconds(opts.heal_budget))
    if drop:
        record["passes"].append({"name": "drop_blocks", "dropped": [f"{path}.{i}" for i in drop],
                                 "kept": n - len(drop)})
    if healed is not None:
        record["passes"].append(healed)
    if mixed:
        record.update(int8_blocks(small, batches, progress))
    if held_batches:
        record["perplexity"] = {"original": ppl0,
                                "shrunk_model": perplexity(small, held_batches),
                                "on": f"{sum(b.shape[0] for b, _ in held_batches)} held-out "
                                      "lines of --data"}
    return small, record


def int8_blocks(model, batches, progress) -> dict:
    """int4-mixed: the most important quarter of the (kept) blocks by the ensemble, at least
    one, keep 8-bit weights; the others get 4 bits."""
    progress("scoring the kept blocks for int4-mixed (block influence, angular distance)")
    scores = block_scores(model, batches)
    order = scores["ensemble_order"]
    k = max(1, math.ceil(len(order) / 4))
    return {"int8_blocks": sorted(order[-k:]),
            "mixed_precision": {"rule": "the most important quarter of the blocks (ensemble "
                                        "of block influence and angular distance) at int8, "
                                        "the rest int4", "scores": scores}}


def split_texts(texts: list[str]) -> tuple[list[str], list[str]]:
    """Every fifth line held out (at least one when there are two or more)."""
    if len(texts) < 2:
        return texts, []
    held = texts[::5]
    return [t for i, t in enumerate(texts) if i % 5], held


def token_batches(tokenizer, texts: list[str], vocab: int,
                  batch: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(ids, mask) batches of up to MAX_TOKENS tokens per line, right-padded."""
    if not texts:
        return []
    if tokenizer is None:
        raise LayerwiseError("the model folder has no tokenizer, so --data text cannot be "
                             "tokenized; add tokenizer.json to the folder")
    out = []
    for i in range(0, len(texts), batch):
        enc = [tokenizer(t)["input_ids"][:MAX_TOKENS] for t in texts[i:i + batch]]
        enc = [e for e in enc if len(e) >= 2]
        if not enc:
            continue
        width = max(map(len, enc))
        ids = torch.zeros(len(enc), width, dtype=torch.long)
        mask = torch.zeros(len(enc), width, dtype=torch.long)
        for r, e in enumerate(enc):
            ids[r, :len(e)] = torch.tensor([min(t, vocab - 1) for t in e])
            mask[r, :len(e)] = 1
        out.append((ids, mask))
    return out


def perplexity(model, batches) -> float:
    """exp of the mean next-token cross-entropy over the unpadded tokens."""
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, mask in batches:
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
            target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                     target.reshape(-1), ignore_index=-100,
                                                     reduction="sum")
            total += float(loss)
            count += int((target != -100).sum())
    return math.exp(total / max(count, 1))


def block_scores(model, batches) -> dict:
    """Per block: block influence, angular distance, and the ensemble order (least
    important first: mean rank of the two)."""
    from layerwise.compiler.decoder import block_list

    _, blocks = block_list(model)
    sums = torch.zeros(len(blocks), 2, dtype=torch.float64)
    count = [0]
    mask_now: list[torch.Tensor] = []

    def hook(i):
        def fn(_mod, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(x, y, dim=-1).double()
            keep = mask_now[0].bool()
            cos = cos[keep].clamp(-1, 1)
            sums[i, 0] += float((1 - cos).sum())
            sums[i, 1] += float((torch.arccos(cos) / math.pi).sum())
        return fn

    handles = [b.register_forward_hook(hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            for ids, mask in batches:
                mask_now[:] = [mask]
                model(input_ids=ids, attention_mask=mask)
                count[0] += int(mask.sum())
    finally:
        for h in handles:
            h.remove()
    means = (sums / max(count[0], 1)).tolist()
    bi = [m[0] for m in means]
    ang = [m[1] for m in means]

    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0] * len(v)
        for pos, i in enumerate(order):
            r[i] = pos
        return r

    rb, ra = ranks(bi), ranks(ang)
    ensemble = sorted(range(len(bi)), key=lambda i: (rb[i] + ra[i], bi[i]))
    return {"block_influence": bi, "angular_distance": ang, "ensemble_order": ensemble}


def _search(model, order, held, train, *, ppl0, bound, opts, progress) -> tuple:
    """The most blocks (least important first) whose removal, healed as asked, keeps held-out
    perplexity within (1 + bound) x the original's; at least one block stays. Returns the
    blocks, the tries, and the chosen smaller model with its heal record (the original and
    None when no block can go)."""
    from layerwise.compiler.decoder import drop_blocks
    from layerwise.options import seconds

    if not held:
        raise LayerwiseError("--max-drop on a decoder needs at least two lines of --data "
                             "(one is held out for perplexity)")
    tried, best, chosen = [], [], (model, None)
    for k in range(1, len(order)):
        drop = sorted(order[:k])
        small = drop_blocks(model, drop)
        healed = None
        if opts.heal_steps:
            healed = heal_decoder(small, model, train, held, steps=opts.heal_steps,
                                  lr=opts.heal_lr, budget_s=seconds(opts.heal_budget))
        ppl = perplexity(small, held)
        rise = ppl / ppl0 - 1
        tried.append({"dropped": drop, "perplexity": ppl, "rise": rise,
                      "healed": healed is not None})
        progress(f"{k} block(s) dropped: perplexity {ppl:.2f} ({100 * rise:+.1f}%)")
        if rise > bound:
            break
        best, chosen = drop, (small, healed)
    return best, tried, *chosen


def heal_decoder(small, teacher, batches, held, *, steps: int, lr: float,
                 budget_s: float | None) -> dict:
    """Distil `teacher`'s next-token distributions into `small` (in place): KL on the logits
    of the unpadded tokens, AdamW with a cosine schedule; keeps the weights of the best
    held-out perplexity seen at the checkpoints. Returns the record."""
    import copy

    if not batches:
        raise LayerwiseError("healing needs --data text with at least two tokens per line")
    before = perplexity(small, held) if held else None
    small.train()
    opt = torch.optim.AdamW(small.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    t0 = time.perf_counter()
    best, best_state, curve, done = before, None, [], 0
    check_every = max(steps // 5, 1)
    for step in range(1, steps + 1):
        ids, mask = batches[(step - 1) % len(batches)]
        with torch.no_grad():
            target = torch.log_softmax(teacher(input_ids=ids, attention_mask=mask).logits, -1)
        logp = torch.log_softmax(small(input_ids=ids, attention_mask=mask).logits, -1)
        kl = (target.exp() * (target - logp)).sum(-1)
        loss = (kl * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        done = step
        out_of_time = budget_s is not None and time.perf_counter() - t0 > budget_s
        if held and (step % check_every == 0 or step == steps or out_of_time):
            small.eval()
            ppl = perplexity(small, held)
            small.train()
            curve.append({"step": step, "kl": float(loss.detach()), "held_perplexity": ppl})
            if best is None or ppl < best:
                best, best_state = ppl, copy.deepcopy(small.state_dict())
        if out_of_time:
            break
    if best_state is not None:
        small.load_state_dict(best_state)
    small.eval()
    return {"name": "heal", "loss": "kl(logits)", "steps": done, "lr": lr,
            "held_perplexity_before": before, "held_perplexity_after": best, "curve": curve,
            "seconds": time.perf_counter() - t0}


def _indices(paths: list[str], prefix: str, n: int) -> list[int]:
    out = []
    for p in paths:
        head, _, idx = p.rpartition(".")
        if head != prefix or not idx.isdigit() or int(idx) >= n:
            raise LayerwiseError(f"--drop {p!r} is not a decoder block; the blocks are "
                                 f"{prefix}.0 … {prefix}.{n - 1}")
        out.append(int(idx))
    if len(set(out)) >= n:
        raise LayerwiseError("--drop names every decoder block; keep at least one")
    return sorted(set(out))
