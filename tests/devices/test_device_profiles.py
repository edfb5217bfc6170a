"""Device profiles: every built-in TOML loads and validates; bad files are one-line errors."""

from __future__ import annotations

from importlib.resources import files

import pytest

from layerwise.base.errors import LayerwiseError
from layerwise.base.recipe import QuantRecipe
from layerwise.devices import list_devices, load_device, load_file
from layerwise.targets import quant_recipe, recipe_for

REAL = ["rpi4", "rpi5", "jetson-orin-nano", "jetson-agx-orin", "i7-1185g7", "n100",
        "coral-edgetpu", "sd8gen2-x3"]


def test_profiles_are_package_data():
    names = {p.name for p in (files("layerwise.devices") / "profiles").iterdir()}
    assert {f"{n}.toml" for n in [*REAL, "host"]} <= names


@pytest.mark.parametrize("name", [*REAL, "host"])
def test_every_profile_loads(name):
    p = load_device(name)
    assert p.name == name and p.precisions and p.source and p.description
    assert p.target in ("onnx", "openvino", "tflite", "tensorrt", "tvm")
    if name == "host":
        assert p.measured and not p.peak_gops  # measured by the calibration
        return
    assert all(p.peak(prec) > 0 for prec in p.precisions)
    assert p.bandwidth_gbs is not None
    assert any("http" in s or "Data Sheet" in s or "Guide" in s for s in p.source)
    assert isinstance(quant_recipe(p), QuantRecipe)


def test_list_devices():
    assert set([*REAL, "host"]) <= set(list_devices())


def test_unknown_device_lists_the_known_ones():
    with pytest.raises(LayerwiseError) as e:
        load_device("pdp-11")
    msg = str(e.value)
    assert "unknown device 'pdp-11'" in msg and "rpi5" in msg and "\n" not in msg


def _write(tmp_path, text: str):
    path = tmp_path / "board.toml"
    path.write_text(text)
    return path


GOOD = """
name = "board"
description = "a board"
source = "a data sheet"
target = "tflite"
precisions = ["fp32"]
op_overhead_us = 5.0
bandwidth_gbs = 10.0
[peak_gops]
fp32 = 20.0
[quant]
activation_dtype = "int8"
full_integer = false
"""


def test_a_valid_file_loads(tmp_path):
    p = load_file(_write(tmp_path, GOOD))
    assert p.name == "board" and p.peak("fp32") == 20.0


@pytest.mark.parametrize(("edit", "field"), [
    (lambda t: t.replace('target = "tflite"\n', ""), "'target'"),
    (lambda t: t.replace('[peak_gops]\nfp32 = 20.0\n', ""), "'peak_gops.fp32'"),
    (lambda t: t.replace('target = "tflite"', 'target = "coreml"'), "'target'"),
    (lambda t: t.replace('full_integer = false\n', ""), "'quant.full_integer'"),
    (lambda t: t.replace('full_integer = false', 'full_integer = false\nsymmetric = true'),
     "'quant.symmetric'"),
    (lambda t: t.replace("op_overhead_us = 5.0", 'op_overhead_us = "fast"'),
     "'op_overhead_us'"),
    (lambda t: t + "\n[[[", "not valid TOML"),
])
def test_an_invalid_file_is_a_one_line_error_naming_file_and_field(tmp_path, edit, field):
    path = _write(tmp_path, edit(GOOD))
    with pytest.raises(LayerwiseError) as e:
        load_file(path)
    msg = str(e.value)
    assert str(path) in msg and field in msg and "\n" not in msg


def test_coral_wants_full_integer_int8():
    p = load_device("coral-edgetpu")
    r = quant_recipe(p)
    assert p.precisions == ("int8",) and p.quant.full_integer
    assert p.quant.activation_dtype == "int8"
    # symmetric per-channel int8 weights; activations follow the LiteRT int8 spec
    # (asymmetric int8), and activation x activation matmuls are quantized too
    assert r.per_channel and not r.weighted_matmuls_only
    assert not r.float_outputs  # the logits stay on the TPU in int8
    assert p.supported_ops and "CONV_2D" in p.supported_ops


def test_device_recipe_overrides_the_target_default():
    jetson = quant_recipe("jetson-orin-nano")
    assert jetson == recipe_for("tensorrt") and jetson.symmetric_activations
    rpi = quant_recipe("rpi5")
    assert rpi.calibration == "mean_minmax" and rpi.float_outputs
    assert recipe_for("tflite").calibration == "mean_minmax"
    assert not quant_recipe("host").symmetric_activations  # onnxruntime U8S8


def test_devices_table(tmp_path, monkeypatch):
    from layerwise.devices import devices_table

    monkeypatch.setenv("LAYERWISE_HOME", str(tmp_path))  # no stored host calibration
    rows = {r["name"]: r for r in devices_table()["devices"]}
    assert set([*REAL, "host"]) <= set(rows)
    assert rows["host"]["measured"] and rows["host"]["calibrated"] is False
    assert rows["rpi5"]["peak_gops"]["fp32"] == 153.6 and rows["rpi5"]["target"] == "tflite"
    assert rows["coral-edgetpu"]["quant"]["full_integer"] and rows["coral-edgetpu"]["op_limits"]
