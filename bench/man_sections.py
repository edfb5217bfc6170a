"""A real labelled English text task from the machine's own man pages: which manual section
a sentence comes from (1 commands, 2 system calls, 3 library calls, 5 file formats,
7 overviews, 8 administration).

    python bench/man_sections.py OUT_DIR [--per-class N]

writes OUT_DIR/eval.tsv (labelled, `sentence<TAB>section`), OUT_DIR/data.txt (unlabelled
sentences from other pages, for calibration, analysis and healing) and OUT_DIR/other.txt
(text of another kind: standard-library docstrings). Pages are split between the files, so
no page lends sentences to two of them; at most a few sentences come from any one page.
"""

from __future__ import annotations

import argparse
import gzip
import random
import re
from pathlib import Path

SECTIONS = ("1", "2", "3", "5", "7", "8")
MAN = Path("/usr/share/man")
PER_PAGE = 4


def _text(path: Path) -> str:
    """The prose of a troff page: macro lines dropped, escapes removed."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", errors="replace") as f:
                raw = f.read()
        else:
            raw = path.read_text(errors="replace")
    except (OSError, EOFError):
        return ""
    if raw.startswith(".so "):
        return ""  # a link to another page
    lines = []
    for raw_line in raw.splitlines():
        if raw_line.startswith((".", "'")):
            if raw_line[:3] in (".PP", ".LP", ".P ", ".IP", ".TP", ".SH", ".SS") \
                    or raw_line == ".P":
                lines.append("\n")  # paragraph break
            continue
        ln = re.sub(r"\\f(\[[^\]]*\]|\(..|.)", "", raw_line)
        ln = re.sub(r"\\\(..|\\\[[^\]]*\]|\\[*n]\(?..|\\s[-+]?\d+", " ", ln)
        ln = ln.replace("\\-", "-").replace("\\&", "").replace("\\e", "\\").replace("\\ ", " ")
        lines.append(re.sub(r"\\.", "", ln))
    return " ".join(lines)


def sentences(path: Path) -> list[str]:
    """Plain English sentences of 6 to 40 words from a man page."""
    out = []
    for para in _text(path).split("\n"):
        for s in re.split(r"(?<=[.!?])\s+", " ".join(para.split())):
            words = s.split()
            letters = sum(c.isalpha() for c in s)
            if 6 <= len(words) <= 40 and letters > 0.7 * len(s.replace(" ", "")) \
                    and s[0].isupper() and s.endswith("."):
                out.append(s)
    return out


def build(out: Path, per_class: int = 150, seed: int = 0) -> dict:
    """Write eval.tsv, data.txt and other.txt into `out`; returns their sizes."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    labelled, unlabelled = [], []
    for sec in SECTIONS:
        pages = sorted((MAN / f"man{sec}").glob("*"))
        rng.shuffle(pages)
        got = {"eval": 0, "data": 0}
        for i, page in enumerate(pages):
            part = "eval" if i % 2 == 0 else "data"
            if got[part] >= per_class:
                if all(v >= per_class for v in got.values()):
                    break
                continue
            picked = sentences(page)
            rng.shuffle(picked)
            for s in picked[:PER_PAGE]:
                if got[part] >= per_class:
                    break
                (labelled if part == "eval" else unlabelled).append((s, sec))
                got[part] += 1
    rng.shuffle(labelled)
    rng.shuffle(unlabelled)
    (out / "eval.tsv").write_text("".join(f"{s}\t{sec}\n" for s, sec in labelled))
    (out / "data.txt").write_text("".join(f"{s}\n" for s, _ in unlabelled))
    from layerwise.text import stdlib_sentences

    other = stdlib_sentences(per_class)
    (out / "other.txt").write_text("".join(f"{s}\n" for s in other))
    counts = {sec: sum(1 for _, c in labelled if c == sec) for sec in SECTIONS}
    return {"eval": len(labelled), "data": len(unlabelled), "other": len(other),
            "eval_per_section": counts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-class", type=int, default=150)
    args = ap.parse_args()
    print(build(args.out, args.per_class))


if __name__ == "__main__":
    main()
