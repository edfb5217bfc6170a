"""The ONNX target's other precisions, each onnxruntime's own tool on the fp32 model:

- "int8-dynamic": `quantize_dynamic` (int8 per-channel weights, activations quantized at run
  time by DynamicQuantizeMatMul / MatMulInteger) on the linears;
- "int8-weight" / "int4-weight": `MatMulNBitsQuantizer` (block-wise symmetric weights in a
  MatMulNBits node that dequantizes inside the kernel) on the linears;
- "fp16": `onnxruntime.transformers.float16.convert_float_to_float16`, inputs and outputs
  kept float32 so callers feed the same arrays.

The exporter writes linears as Gemm (2-D input) or MatMul + Add; onnxruntime's dynamic and
n-bit quantizers only take MatMul, so Gemm nodes with a constant weight are first rewritten
as MatMul + Add (same numbers).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from layerwise.base.errors import TargetError
from layerwise.base.recipe import QuantRecipe


def gemm_to_matmul(model) -> int:
    """Rewrite Gemm(A, W, C) with a constant W, alpha = beta = 1 and no transA as
    MatMul(A, W') + Add(C) in place; returns how many were rewritten."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes = []
    done = 0
    for n in model.graph.node:
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        if (n.op_type != "Gemm" or n.input[1] not in inits or a.get("transA", 0)
                or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0):
            nodes.append(n)
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        if a.get("transB", 0):
            w = np.ascontiguousarray(w.T)
        wname = f"{n.input[1]}__matmul"
        model.graph.initializer.append(numpy_helper.from_array(w, wname))
        has_bias = len(n.input) > 2 and n.input[2]
        mm_out = f"{n.output[0]}__matmul" if has_bias else n.output[0]
        nodes.append(helper.make_node("MatMul", [n.input[0], wname], [mm_out], name=n.name))
        if has_bias:
            nodes.append(helper.make_node("Add", [mm_out, n.input[2]], [n.output[0]],
                                          name=f"{n.name}__bias"))
        done += 1
    if done:
        _replace_nodes(model, nodes)
    return done


def weighted_matmuls(model) -> list[str]:
    """MatMul nodes whose second operand is a weight (initializer)."""
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]


def convert(fp32_path: Path, out_path: Path, precision: str, recipe: QuantRecipe,
            exclude: list[str]) -> dict:
    """Write `precision`'s model to out_path from the fp32 model; returns what was done."""
    import onnx

    model = onnx.load(str(fp32_path))
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            if precision == "fp16":
                info = _fp16(model, out_path, exclude)
            elif precision == "int8-dynamic":
                info = _dynamic(model, out_path, recipe, exclude)
            elif precision in ("int8-weight", "int4-weight"):
                info = _weight_only(model, out_path, recipe, exclude)
            else:
                raise TargetError(f"the onnx target has no precision {precision!r}")
    except TargetError:
        raise
    except Exception as e:  # noqa: BLE001 - onnxruntime's tools raise many types
        raise TargetError(f"onnxruntime could not convert the model to {precision}: "
                          f"{str(e).splitlines()[0][:300]}; try --precision int8 or fp32") from e
    return {"precision": precision, "excluded_nodes": len(exclude), **info}


def _fp16(model, out_path: Path, exclude: list[str]) -> dict:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(model, keep_io_types=True, node_block_list=exclude or None)
    onnx.save(half, str(out_path))
    inits = half.graph.initializer
    return {"fp16_initializers": sum(i.data_type == onnx.TensorProto.FLOAT16 for i in inits)}


def _dynamic(model, out_path: Path, recipe: QuantRecipe, exclude: list[str]) -> dict:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rewritten = gemm_to_matmul(model)
    targets = [n for n in weighted_matmuls(model) if n not in exclude]
    if not targets:
        raise TargetError("int8-dynamic found no linear layer (MatMul/Gemm with weights) to "
                          "quantize; use --precision int8 for convolutional models")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "matmul.onnx"
        onnx.save(model, str(src))
        quantize_dynamic(str(src), str(out_path), op_types_to_quantize=list(recipe.op_types),
                         per_channel=recipe.per_channel, weight_type=QuantType.QInt8,
                         nodes_to_exclude=[n.name for n in model.graph.node
                                           if n.op_type == "MatMul" and n.name not in targets],
                         extra_options={"WeightSymmetric": True, "MatMulConstBOnly": True})
    return {"gemm_rewritten": rewritten, "quantized_nodes": len(targets)}


def _weight_only(model, out_path: Path, recipe: QuantRecipe, exclude: list[str]) -> dict:
    import logging

    import onnx
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    # the module sets up INFO logging of every node on import: keep a compile's output short
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(
        logging.WARNING)

    rewritten = gemm_to_matmul(model)
    targets = [n for n in weighted_matmuls(model) if n not in exclude]
    inits = {i.name for i in model.graph.initializer}
    tables = [n.name for n in model.graph.node if n.op_type == "Gather"
              and n.input[0] in inits and n.name not in exclude] if "Gather" in recipe.op_types \
        else []  # embedding tables: the largest weights of a text model
    dq_tables = 0
    if recipe.weight_bits == 4:  # GatherBlockQuantized (onnxruntime packs 4-bit tables only)
        targets += tables
    elif tables:
        dq_tables = int8_tables(model, set(tables), recipe.block_size)
    if not targets:
        raise TargetError("weight-only precisions quantize linear layers (MatMul/Gemm with "
                          "weights) and this model has none; use --precision int8")
    config = DefaultWeightOnlyQuantConfig(
        block_size=recipe.block_size, is_symmetric=True, bits=recipe.weight_bits,
        accuracy_level=recipe.accuracy_level or None, quant_format=QuantFormat.QOperator,
        op_types_to_quantize=tuple(recipe.op_types))
    quant = MatMulNBitsQuantizer(model, bits=recipe.weight_bits, block_size=recipe.block_size,
                                 is_symmetric=True, nodes_to_include=targets,
                                 accuracy_level=recipe.accuracy_level or None,
                                 nodes_to_exclude=list(exclude), algo_config=config)
    quant.process()
    out = quant.model.model
    onnx.save(out, str(out_path))
    packed = sum(n.op_type in ("MatMulNBits", "GatherBlockQuantized") for n in out.graph.node)
    return {"gemm_rewritten": rewritten, "quantized_nodes": packed, "int8_tables": dq_tables,
            "weight_bits": recipe.weight_bits, "block_size": recipe.block_size,
            "accuracy_level": recipe.accuracy_level}


def int8_tables(model, gathers: set[str], block_size: int) -> int:
    """Store the tables of the named Gather nodes as 8-bit blocks of `block_size` along a
    row with one symmetric scale each, read by onnxruntime's GatherBlockQuantized (bits 8,
    uint8 around zero point 128): a lookup dequantizes only the rows it gathers. A table
    whose width no power-of-two block from 16 up divides stays fp32. In place; returns how
    many tables."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes = []
    done = 0
    for n in model.graph.node:
        w = numpy_helper.to_array(inits[n.input[0]]) if n.name in gathers \
            and n.input[0] in inits else None
        block = next((b for b in (block_size, 128, 64, 32, 16) if w is not None
                      and w.ndim == 2 and b >= 16 and w.shape[1] % b == 0), None)
        if block is None:
            nodes.append(n)
            continue
        rows, width = w.shape
        blocks = w.astype(np.float32).reshape(rows, width // block, block)
        scale = np.maximum(np.abs(blocks).max(-1), 1e-12) / 127.0
        q = np.clip(np.round(blocks / scale[..., None]), -127, 127).reshape(rows, width)
        base = f"{n.input[0]}__int8"
        model.graph.initializer.extend([
            numpy_helper.from_array((q + 128).astype(np.uint8), base),
            numpy_helper.from_array(scale.astype(np.float32), f"{base}_scales"),
            numpy_helper.from_array(np.full(scale.shape, 128, np.uint8), f"{base}_zero_points")])
        nodes.append(helper.make_node(
            "GatherBlockQuantized", [base, n.input[1], f"{base}_scales", f"{base}_zero_points"],
            list(n.output), name=n.name, domain="com.microsoft", bits=8, block_size=block,
            gather_axis=0, quantize_axis=1))
        done += 1
    if done:
        _replace_nodes(model, nodes)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return done


def _replace_nodes(model, nodes: list) -> None:
    """Make `nodes` the graph's nodes and drop the initializers no node reads any more."""
    nodes = [onnx_copy(x) for x in nodes]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def onnx_copy(node):
    """A detached copy of a NodeProto (protobuf repeated fields hand out views)."""
    import onnx

    return onnx.NodeProto.FromString(node.SerializeToString())
