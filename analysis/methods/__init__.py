"""Importance methods, found by name in one table (`METHODS`); each lives in its own file.

Every method scores the layer table's blocks (higher = more important) and declares what it
needs in a `MethodInfo`. Three modes share the work differently:

- *static*: reads weights or the graph only (data-free);
- *shared*: observes the one forward pass (taps) and the one backward pass that the engine runs
  for all shared methods together, keeping streaming accumulators;
- *intervention*: runs its own gated forward passes (drops, patches, scales blocks).

Planted facts each method must find (tests/analysis builds residual-MLP, CNN and transformer
models with one block an exact identity, one block a copy of its predecessor, one block
critical — its update scaled up). "least" = ranks the identity block last; "top" = ranks the
critical block first; "dup" = reports the duplicated pair.

| method                     | mode         | least | top | dup | notes                          |
|----------------------------|--------------|-------|-----|-----|--------------------------------|
| fisher_information         | shared       |  yes  | yes |     | Fisher saliency 1/2 F w^2      |
| gradient_based             | shared       |  yes  | yes |     | Taylor sum |w * g|             |
| layer_ablation             | intervention |  yes  | yes |     | measured damage of dropping    |
| mutual_information         | shared       |  yes  |     |     | KSG I(update; target)          |
| layer_conductance          | intervention |  yes  | yes |     | integrated gradients           |
| shap_analysis              | intervention |  yes  | yes |     | truncated Shapley of ablations |
| attention_analysis         | shared       |  yes  | yes |     | transformers (softmax nodes)   |
| neuron_activation          | shared       |  yes  | yes |     | relative update; neuron stats  |
| gradient_flow              | shared       |  yes  | yes |     | gradient added by the branch   |
| layer_correlation          | shared       |  yes  | yes | yes | 1 - CKA(in, out); update CKA   |
| information_bottleneck     | shared       |  yes  |     |     | Gaussian I(update; target)     |
| causal_analysis            | intervention |  yes  | yes |     | resample activation patching   |
| uncertainty_quantification | shared       |  yes  | yes |     | variance under branch noise    |
| spectral_analysis          | static       |  yes  | yes | yes | weights only                   |
| topology_analysis          | static       |       |     |     | graph position: sees no fact   |
| meta_learning              | static       |  yes  |     |     | needs a history of analyses    |
| block_influence            | shared       |  yes  | yes |     | 1 - cos(in, out)               |
| angular_distance           | shared       |  yes  | yes |     | arccos over n-block spans      |
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Any

from layerwise.base.errors import LayerwiseError


class MethodError(LayerwiseError):
    """An unknown method, or one that cannot run on this model or data."""


@dataclass(frozen=True, slots=True)
class MethodInfo:
    """What a method needs and costs. Cost is in passes over the analysis data:
    `forward`/`backward` plain, plus `per_block_forward` forward passes for each block."""

    name: str
    mode: str  # static | shared | intervention
    needs_labels: bool = False
    needs_gradients: bool = False
    data_free: bool = False
    forward: float = 0.0
    backward: float = 0.0
    per_block_forward: float = 0.0
    summary: str = ""

    def cost(self, n_blocks: int, backward_factor: float = 2.0) -> float:
        """Declared cost in forward-pass equivalents (a backward counts `backward_factor`)."""
        return self.forward + self.per_block_forward * n_blocks + backward_factor * self.backward


@dataclass(frozen=True, slots=True)
class Requests:
    """What a shared method needs from the shared passes: node names to tap, node names whose
    gradient it needs, and whether it needs parameter gradients."""

    taps: frozenset[str] = frozenset()
    grads: frozenset[str] = frozenset()
    params: bool = False


@dataclass
class Result:
    """Scores per block path (NaN where the method does not apply) and finer detail."""

    scores: dict[str, float]
    detail: dict[str, Any] = field(default_factory=dict)

    def applicable(self) -> dict[str, float]:
        return {k: v for k, v in self.scores.items() if not math.isnan(v)}


# name -> "module:Class", the one registry. Modules are imported when a method is used.
METHODS: dict[str, str] = {
    "fisher_information": "fisher:FisherInformation",
    "gradient_based": "gradient_based:GradientBased",
    "layer_ablation": "ablation:LayerAblation",
    "mutual_information": "mutual_information:MutualInformation",
    "layer_conductance": "conductance:LayerConductance",
    "shap_analysis": "shap:ShapAnalysis",
    "attention_analysis": "attention:AttentionAnalysis",
    "neuron_activation": "neuron_activation:NeuronActivation",
    "gradient_flow": "gradient_flow:GradientFlow",
    "layer_correlation": "correlation:LayerCorrelation",
    "information_bottleneck": "information_bottleneck:InformationBottleneck",
    "causal_analysis": "causal:CausalAnalysis",
    "uncertainty_quantification": "uncertainty:UncertaintyQuantification",
    "spectral_analysis": "spectral:SpectralAnalysis",
    "topology_analysis": "topology:TopologyAnalysis",
    "meta_learning": "meta_learning:MetaLearning",
    "block_influence": "block_influence:BlockInfluence",
    "angular_distance": "angular_distance:AngularDistance",
}


def get_method(name: str, **options: Any):
    """A new instance of the method registered under `name` (built in, or a plugin's entry
    point in group `layerwise.methods`)."""
    if name not in METHODS:
        from layerwise.base.registry import load, plugins

        found = plugins("layerwise.methods")
        if name in found:
            return load(found[name])(**options)
        raise MethodError(f"unknown analysis method {name!r}; known methods: "
                          f"{', '.join(sorted([*METHODS, *found]))}")
    module, _, cls = METHODS[name].partition(":")
    klass = getattr(importlib.import_module(f"layerwise.analysis.methods.{module}"), cls)
    return klass(**options)


def method_info(name: str) -> MethodInfo:
    """The declared needs and cost of a method."""
    return get_method(name).info
