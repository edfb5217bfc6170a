"""Analysis data: batches of named input tensors (and labels) from

- an `.npz` file: arrays named like the model's inputs, plus optional `labels`;
- a folder of images (class subfolders give labels), resized to the model's input size and
  normalised like ImageNet;
- a text file, one example per line, tokenized by the model's tokenizer (Source.tokenizer) to
  the sequence length of the IR's example inputs;
- a `.tsv` file, `text<TAB>label` per line: labelled text (labels numbered in sorted order);
- `module:factory`, a callable returning a DataLoader or any iterable of batches (dicts of
  named tensors, or (inputs, labels) pairs).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from layerwise.analysis.execution import Batch
from layerwise.base.errors import LayerwiseError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class DataError(LayerwiseError):
    """Analysis data that cannot be read or does not fit the model's inputs."""


def load_batches(spec: str, ir, tokenizer: Any = None, batch_size: int = 16,
                 limit: int | None = None) -> list[Batch]:
    """Batches for `ir` from `spec` (see the module docstring); at most `limit` samples."""
    if batch_size < 1 or (limit is not None and limit < 1):
        raise DataError(f"--batch-size and --limit must be positive integers, got {batch_size} "
                        f"and {limit}")
    p = Path(spec)
    if p.suffix == ".npz" and p.is_file():
        batches = _from_npz(p, ir, batch_size)
    elif p.suffix == ".tsv" and p.is_file():
        batches = _from_tsv(p, ir, tokenizer, batch_size)
    elif p.is_dir():
        batches = _from_images(p, ir, batch_size)
    elif p.is_file():
        batches = _from_text(p, ir, tokenizer, batch_size)
    elif ":" in spec:
        batches = _from_factory(spec)
    else:
        raise DataError(f"cannot read analysis data {spec!r}: give a .npz file, an image "
                        "folder, a text file (one example per line) or module:factory")
    return _limit(batches, limit)


def _limit(batches: list[Batch], limit: int | None) -> list[Batch]:
    if limit is None:
        return batches
    out, n = [], 0
    for b in batches:
        if n >= limit:
            break
        take = min(b.size, limit - n)
        out.append(Batch({k: v[:take] for k, v in b.inputs.items()},
                         None if b.labels is None else b.labels[:take]))
        n += take
    return out


def _split(inputs: dict[str, torch.Tensor], labels, batch_size: int) -> list[Batch]:
    n = next(iter(inputs.values())).shape[0]
    return [Batch({k: v[i:i + batch_size] for k, v in inputs.items()},
                  None if labels is None else labels[i:i + batch_size])
            for i in range(0, n, batch_size)]


def _from_npz(path: Path, ir, batch_size: int) -> list[Batch]:
    from layerwise.runtime.arrays import fit_arrays, read_npz

    arrays = read_npz(path, "--data")
    fitted = fit_arrays(path, arrays, ir.input_specs(), allowed=("labels",))
    inputs = {n: torch.from_numpy(np.ascontiguousarray(a)).to(ir.example_inputs[n].dtype)
              for n, a in fitted.items()}
    labels = None
    if "labels" in arrays:
        y = arrays["labels"]
        n = next(iter(inputs.values())).shape[0]
        if y.dtype.kind not in "biuf" or y.ndim == 0 or y.shape[0] != n:
            raise DataError(f"{path}: 'labels' must be numbers with one row per example ({n}); "
                            f"it is {y.dtype} of shape {list(y.shape)}")
        labels = torch.from_numpy(np.ascontiguousarray(y))
    return _split(inputs, labels, batch_size)


def _from_images(folder: Path, ir, batch_size: int) -> list[Batch]:
    from PIL import Image

    (name, example), = [(k, v) for k, v in ir.example_inputs.items()][:1]
    if example.dim() != 4:
        raise DataError(f"an image folder needs a model with one NCHW input; {name} has shape "
                        f"{tuple(example.shape)}")
    files = sorted(f for f in folder.rglob("*")
                   if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    classes = sorted({f.parent.name for f in files if f.parent != folder})
    h, w = example.shape[2], example.shape[3]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    images, labels = [], []
    for f in files:
        try:
            with Image.open(f) as opened:
                img = opened.convert("RGB").resize((w, h), Image.BILINEAR)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"{f} in the image folder is not an image that can be read "
                            f"({(str(e).splitlines() or [type(e).__name__])[0]}); remove or "
                            "replace it") from e
        t = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0
        images.append((t - mean) / std)
        if classes:
            labels.append(classes.index(f.parent.name) if f.parent.name in classes else -1)
    y = torch.tensor(labels) if classes and min(labels) >= 0 else None
    return _split({name: torch.stack(images).to(example.dtype)}, y, batch_size)


def _read_text(path: Path) -> str:
    """The UTF-8 text of `path`; a DataError for binary data or another encoding."""
    raw = path.read_bytes()
    what = ("give a UTF-8 text file with one example per line, a .npz of arrays named like "
            "the model's inputs, or an image folder")
    if b"\x00" in raw[:65536]:
        raise DataError(f"{path} holds binary data, not text: {what}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                        f"{e.start}): {what}") from e


def _from_text(path: Path, ir, tokenizer, batch_size: int) -> list[Batch]:
    lines = [ln.strip() for ln in _read_text(path).splitlines() if ln.strip()]
    return _split(_tokenized(path, lines, ir, tokenizer), None, batch_size)


def _from_tsv(path: Path, ir, tokenizer, batch_size: int) -> list[Batch]:
    rows = [ln.rstrip("\r").rsplit("\t", 1) for ln in _read_text(path).splitlines() if ln.strip()]
    bad = next((i for i, r in enumerate(rows) if len(r) != 2 or not r[0].strip()
                or not r[1].strip()), None)
    if bad is not None:
        raise DataError(f"{path} line {bad + 1} is not `text<TAB>label`; give one labelled "
                        "example per line")
    names = sorted({r[1].strip() for r in rows})
    labels = torch.tensor([names.index(r[1].strip()) for r in rows])
    return _split(_tokenized(path, [r[0].strip() for r in rows], ir, tokenizer), labels,
                  batch_size)


def _tokenized(path: Path, lines: list[str], ir, tokenizer) -> dict[str, torch.Tensor]:
    """`lines` tokenized to the IR's sequence length, by input name."""
    if tokenizer is None:
        raise DataError(f"{path} is text, but the model has no tokenizer; give a .npz of "
                        "token ids instead")
    if not lines:
        raise DataError(f"{path} has no non-empty lines")
    ex = ir.example_inputs
    seq = next((v.shape[1] for v in ex.values() if v.dim() == 2), None)
    if seq is None:
        raise DataError(f"{path} is text, but the model takes no token ids (batch x length); "
                        "give a .npz of arrays named like its inputs instead")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    enc = tokenizer(lines, padding="max_length", truncation=True, max_length=seq,
                    return_tensors="pt")
    missing = [n for n in ex if n not in enc]
    if missing:
        raise DataError(f"the tokenizer gives no {missing} for the model's inputs")
    return {n: enc[n].to(ex[n].dtype) for n in ex}


def _from_factory(spec: str) -> list[Batch]:
    module, _, attr = spec.rpartition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise DataError(f"cannot import data factory {spec!r}: {e}") from e
    out = []
    try:
        for b in fn():
            if isinstance(b, dict):
                out.append(Batch({k: v for k, v in b.items() if k != "labels"}, b.get("labels")))
            elif isinstance(b, (tuple, list)) and len(b) == 2 and isinstance(b[0], dict):
                out.append(Batch(dict(b[0]), b[1]))
            else:
                raise DataError(f"data factory {spec!r} yields {type(b).__name__}; yield dicts "
                                "of named input tensors (optionally with 'labels')")
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's code: reported as theirs, in one line
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise DataError(f"data factory {spec!r} raised {type(e).__name__}: {first}") from e
    return out
