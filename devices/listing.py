"""`layerwise devices`: every profile as a table row."""

from __future__ import annotations

from layerwise.devices.loader import list_devices, load_device


def devices_table() -> dict:
    """Every known device with its target, precisions, peaks, bandwidth and INT8 recipe (for
    `layerwise devices`). The host's peaks appear once it has been calibrated."""
    from layerwise.devices.latency.calibrate import load_calibration

    rows = []
    for name in list_devices():
        p = load_device(name)
        peaks, bw, calibrated = dict(p.peak_gops), p.bandwidth_gbs, None
        if p.measured:
            cal = load_calibration()
            calibrated = cal is not None
            if cal is not None:
                peaks, bw = cal["peak_gops"], cal["bandwidth_gbs"]
        rows.append({
            "name": p.name, "description": p.description, "target": p.target,
            "precisions": list(p.precisions), "peak_gops": peaks, "bandwidth_gbs": bw,
            "memory_gb": p.memory_gb, "quant": p.quant.as_dict(),
            "op_limits": list(p.supported_ops), "source": list(p.source),
            "measured": p.measured, "calibrated": calibrated,
        })
    return {"devices": rows}
