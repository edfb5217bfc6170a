"""The plan search as plain values: given the blocks in drop order and functions that
measure a candidate, find the smallest, fastest plan within the bounds. Nothing here runs a
model, a runtime or an analysis: the caller (layerwise/plan.py) hands those in."""

from layerwise.compiler.plan.candidate import Bounds, Candidate
from layerwise.compiler.plan.pareto import pareto
from layerwise.compiler.plan.quality import quality, split
from layerwise.compiler.plan.search import NoPlanError, run_search

__all__ = ["Bounds", "Candidate", "NoPlanError", "pareto", "quality", "run_search", "split"]
