"""The latency model: a roofline time per op of the legalized graph (roofline.py), its op
records (graph_ops.py, with onnxruntime's layout reorders in reorders.py), and the host's
calibration (calibrate.py over calibration_set.py). Unlike the rest of devices/ it may use
torch and the runtime, imported inside the functions that need them."""

from __future__ import annotations


def predict(spec_or_ir, device: str = "host", batch: int = 1, precision: str | None = None,
            progress=lambda _: None) -> dict:
    """Predicted latency of a lifted IR on `device`, calibrating the host on first use; see
    devices.latency.roofline.predict."""
    from layerwise.devices.latency.roofline import predict as _predict
    from layerwise.devices.loader import DeviceProfile, load_device

    profile = device if isinstance(device, DeviceProfile) else load_device(device)
    calibration = None
    if profile.measured:
        from layerwise.devices.latency.calibrate import calibrate_host as _calibrate

        progress("calibrating the host (first use only)")
        calibration = _calibrate()
    return _predict(spec_or_ir, profile, batch=batch, precision=precision, progress=progress,
                    calibration=calibration)


def calibrate_host(force: bool = False, progress=lambda _: None) -> dict:
    """Measure this machine (peaks, bandwidth, per-kind efficiency) or reuse the stored
    calibration; see devices.latency.calibrate.calibrate_host."""
    from layerwise.devices.latency.calibrate import calibrate_host as _calibrate

    return _calibrate(force=force, progress=progress)
