"""The public entry points the CLI calls: `devices_table`, `predict`, `calibrate_host`."""

from __future__ import annotations

from layerwise.devices.loader import list_devices, load_device


def devices_table() -> dict:
    """Every known device with its target, precisions, peaks, bandwidth and INT8 recipe (for
    `layerwise devices`). The host's peaks appear once it has been calibrated."""
    from layerwise.devices.calibrate import load_calibration

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


def predict(spec_or_ir, device: str = "host", batch: int = 1, precision: str | None = None,
            progress=lambda _: None) -> dict:
    """Predicted latency of a lifted IR on `device`; see devices.roofline.predict."""
    from layerwise.devices.roofline import predict as _predict

    return _predict(spec_or_ir, device, batch=batch, precision=precision, progress=progress)


def calibrate_host(force: bool = False, progress=lambda _: None) -> dict:
    """Measure this machine (peaks, bandwidth, per-kind efficiency) or reuse the stored
    calibration; see devices.calibrate.calibrate_host."""
    from layerwise.devices.calibrate import calibrate_host as _calibrate

    return _calibrate(force=force, progress=progress)
