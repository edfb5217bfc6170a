"""Devices: one TOML profile per device (peaks, bandwidth, precisions, op limits, the INT8
recipe it wants) and, in latency/, a roofline latency model calibrated on the host.

The loader is standard library only; prediction and calibration import their heavy parts
(onnxruntime, torch) inside the functions that need them.
"""

from layerwise.devices.latency import calibrate_host, predict
from layerwise.devices.listing import devices_table
from layerwise.devices.loader import (
    DeviceProfile,
    QuantSpec,
    list_devices,
    load_device,
    load_file,
)

__all__ = ["DeviceProfile", "QuantSpec", "calibrate_host", "devices_table", "list_devices",
           "load_device", "load_file", "predict"]
