"""The IR: a Core ATen ExportedProgram plus the layer table, example inputs and annotations.

Saved as `NAME.pt2` (torch.export.save), `NAME.pt2.json` (table, metadata, annotations) and
`NAME.pt2.npz` (example inputs and reference outputs); loaded back without pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from layerwise.base.errors import LayerwiseError
from layerwise.compiler.layers import Layer

FORMAT = "layerwise-ir/1"


def flat_tensors(out) -> list[torch.Tensor]:
    """The tensors of a model's (nested) output, in order."""
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def sidecar_path(pt2: Path) -> Path:
    return pt2.parent / (pt2.name + ".json")


def arrays_path(pt2: Path) -> Path:
    return pt2.parent / (pt2.name + ".npz")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class IR:
    """A lifted model. `reference` holds the original model's outputs on `example_inputs`."""

    program: torch.export.ExportedProgram
    layers: list[Layer]
    example_inputs: dict[str, torch.Tensor]
    reference: list[torch.Tensor]
    output_names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    annotations: dict[str, Any] = field(default_factory=dict)
    # calibration batches for quantizing targets (numpy, by input name); not serialised
    calibration: list[dict[str, np.ndarray]] = field(default_factory=list, repr=False)

    # ------------------------------------------------------------ running

    def module(self) -> torch.nn.Module:
        """The unlifted graph module; it takes the user inputs by name."""
        return self.program.module()

    def rebuilt(self, gm: torch.nn.Module, record: dict) -> IR:
        """A new IR from `gm` (an edited copy of `module()`), re-exported like the original
        (dynamic batch where the IR had one), with `record` appended to the passes run.
        The reference outputs stay those of the original model. Raises what export raises."""
        from torch.export import Dim

        from layerwise.compiler.layers import build_layer_table

        dynamic = {k: {0: Dim.AUTO} if v.dim() > 0 else None
                   for k, v in self.example_inputs.items()}
        ep = torch.export.export(gm, (), kwargs=dict(self.example_inputs),
                                 dynamic_shapes=dynamic, strict=False)
        ep = ep.run_decompositions()
        annotations = dict(self.annotations)
        annotations["passes"] = [*self.annotations.get("passes", []), record]
        return IR(ep, build_layer_table(ep), dict(self.example_inputs), list(self.reference),
                  list(self.output_names), dict(self.meta), annotations,
                  list(self.calibration))

    def run(self, inputs: dict[str, torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Outputs of the program on `inputs` (default: the example inputs), flattened."""
        with torch.no_grad():
            out = self.module()(**(inputs if inputs is not None else self.example_inputs))
        return flat_tensors(out)

    # ------------------------------------------------------------ description

    def input_specs(self) -> list[dict]:
        dynamic = set(self.meta.get("dynamic_inputs", []))
        other = self.meta.get("other_dynamic", {})

        def dim(name: str, i: int, d: int) -> int | str:
            if i == 0 and name in dynamic:
                return "batch"
            return other[name] if i == 0 and name in other else int(d)

        return [
            {"name": name, "dtype": dtype_name(t.dtype),
             "shape": [dim(name, i, d) for i, d in enumerate(t.shape)]}
            for name, t in self.example_inputs.items()
        ]

    def output_specs(self) -> list[dict]:
        dyn = bool(self.meta.get("dynamic_inputs"))
        batch = next(iter(self.example_inputs.values())).shape[0] if self.example_inputs else None
        return [
            {"name": name, "dtype": dtype_name(t.dtype),
             "shape": ["batch" if dyn and i == 0 and d == batch else int(d)
                       for i, d in enumerate(t.shape)]}
            for name, t in zip(self.output_names, self.reference)
        ]

    def layer(self, path: str) -> Layer:
        for layer in self.layers:
            if layer.path == path:
                return layer
        raise LayerwiseError(f"no layer {path!r} in this model; see `layerwise inspect`")

    @property
    def params(self) -> int:
        sig = self.program.graph_signature
        return sum(self.program.state_dict[n].numel() for n in sig.parameters
                   if n in self.program.state_dict)

    @property
    def flops(self) -> int:
        """FLOPs of one run of the whole graph (ops outside any submodule included)."""
        from layerwise.compiler.flops import node_flops

        return sum(node_flops(n) for n in self.program.graph.nodes if n.op == "call_function")

    # ------------------------------------------------------------ serialization

    def save(self, path: str | Path) -> Path:
        """Write NAME.pt2 with its .json and .npz sidecars; returns the .pt2 path."""
        p = Path(path)
        if p.suffix != ".pt2":
            p = p / "model.pt2"
        p.parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(self.program, str(p))
        side = {
            "format": FORMAT,
            "meta": self.meta,
            "annotations": self.annotations,
            "output_names": self.output_names,
            "input_names": list(self.example_inputs),
            "layers": [layer.to_json() for layer in self.layers],
        }
        sidecar_path(p).write_text(json.dumps(side, indent=1))
        arrays = {f"in.{k}": v.numpy() for k, v in self.example_inputs.items()}
        arrays.update({f"ref.{i}": t.detach().numpy() for i, t in enumerate(self.reference)})
        with open(arrays_path(p), "wb") as f:
            np.savez(f, **arrays)
        return p

    @classmethod
    def load(cls, path: str | Path) -> IR:
        """Load what `save` wrote, as untrusted input (see compiler/load_program.py)."""
        from layerwise.compiler.load_program import load_program

        p = Path(path)
        redo = "re-create it with layerwise.compiler.IR.save or pass a plain torch.export .pt2"
        try:
            side = json.loads(sidecar_path(p).read_text())
            if not isinstance(side, dict) or side.get("format") != FORMAT:
                raise LayerwiseError(f"{sidecar_path(p)} is not a layerwise IR sidecar "
                                     f"(format {FORMAT}); {redo}")
            program = load_program(p)
            with np.load(arrays_path(p), allow_pickle=False) as z:
                inputs = {k: torch.from_numpy(z[f"in.{k}"]) for k in side["input_names"]}
                refs = [torch.from_numpy(z[f"ref.{i}"]) for i in range(len(side["output_names"]))]
            return cls(program, [Layer.from_json(d) for d in side["layers"]], inputs, refs,
                       list(side["output_names"]), dict(side["meta"]),
                       dict(side["annotations"]))
        except (OSError, KeyError, IndexError, TypeError, ValueError, RuntimeError,
                AttributeError) as e:
            raise LayerwiseError(f"cannot load IR {p}: {type(e).__name__}: "
                                 f"{(str(e).splitlines() or [''])[0][:200]}; {redo}") from e
