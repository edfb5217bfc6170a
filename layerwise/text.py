"""Real English sentences that ship with every Python install, for example inputs."""

from __future__ import annotations

import ast
import codecs
import importlib.util
import re


def stdlib_sentences(limit: int | None = None) -> list[str]:
    """Sentences from the Zen of Python and standard-library docstrings (always on the machine).

    Deterministic: the same Python version yields the same list.
    """
    zen = codecs.decode(_zen_source(), "rot13").splitlines()[2:]
    out = [s.strip() for s in zen if len(s.split()) >= 4]
    import argparse
    import collections
    import difflib
    import json
    import logging
    import textwrap

    for mod in (json, argparse, logging, collections, difflib, textwrap):
        doc = re.sub(r"\s+", " ", mod.__doc__ or "")
        for sent in re.split(r"(?<=[.!?])\s+", doc):
            words = sent.split()
            if 6 <= len(words) <= 40 and not re.search(r"[>{}\[\]=]|::", sent):
                out.append(sent.strip())
    seen: set[str] = set()
    unique = [s for s in out if not (s in seen or seen.add(s))]
    return unique[:limit] if limit else unique


def _zen_source() -> str:
    """The rot13 text of the `this` module, read without importing it (import prints)."""
    spec = importlib.util.find_spec("this")
    with open(spec.origin, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "s":
            return node.value.value
    raise RuntimeError("the `this` module has no text")
