"""analysis room of layerwise (see DESIGN.md): importance methods behind one registry
(`analysis.methods.METHODS`), shared execution, task adapters, ensemble and method choice.

Entry point: `analyze(ir, batches, methods="auto"|"all"|[...], task=..., labels=...)`.
"""

from __future__ import annotations


def analyze(*args, **kwargs) -> dict:
    """See layerwise.analysis.analyze_model.analyze. (The module is not named `analyze`: importing
    it would rebind this package attribute to the module.)"""
    from layerwise.analysis.analyze_model import analyze as _analyze

    return _analyze(*args, **kwargs)


__all__ = ["analyze"]
