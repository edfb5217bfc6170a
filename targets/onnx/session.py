"""An onnxruntime CPU session for the ONNX targets' own measurements (calibration,
equalization, checks): unoptimized unless asked, quiet."""

from __future__ import annotations


def ort_session(model, optimize: bool = False):
    """A CPU session on `model` (a path, serialized bytes or a ModelProto)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    data = model if isinstance(model, (str, bytes)) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
