"""Method choice: given the model kind, task, data size and a compute budget in forward-pass
equivalents, pick methods in order of expected value per cost, and say why for each one.

Shared methods share one forward (and one backward) pass, so after the first one each adds
only its bookkeeping; interventions pay their own passes."""

from __future__ import annotations

from dataclasses import dataclass, field

from layerwise.analysis.methods import METHODS, method_info

BACKWARD = 2.0  # a backward pass costs about two forward passes
SHARED_OVERHEAD = 0.15  # bookkeeping of one more shared method, in forward passes

# Prior reliability of each method as a predictor of the damage of dropping a block (0..1),
# one line of reasoning each; the ensemble uses the same numbers as prior weights.
PRIORS: dict[str, tuple[float, str]] = {
    "layer_ablation": (1.0, "measures the damage directly"),
    "shap_analysis": (0.95, "measures damage, including interactions between blocks"),
    "causal_analysis": (0.8, "measures input-specific damage by patching"),
    "layer_conductance": (0.75, "integrates the fidelity gradient along the dropping path"),
    "block_influence": (0.8, "1 - cos(in, out) tracks drop damage well in transformers"),
    "angular_distance": (0.75, "same signal as block influence, plus best spans to drop"),
    "uncertainty_quantification": (0.75, "linearised output variance from the block's update"),
    "layer_correlation": (0.6, "representation change; redundancy between layers"),
    "neuron_activation": (0.55, "relative size of the block's update"),
    "gradient_flow": (0.5, "gradient added by the branch"),
    "fisher_information": (0.45, "parameter sensitivity, not block removal"),
    "gradient_based": (0.45, "first-order parameter saliency"),
    "attention_analysis": (0.4, "head importance, transformers only"),
    "information_bottleneck": (0.3, "Gaussian estimate, noisy with little data"),
    "mutual_information": (0.3, "KSG estimate, noisy with little data"),
    "spectral_analysis": (0.3, "data-free: weights only"),
    "meta_learning": (0.3, "data-free: transferred from other models' analyses"),
    "topology_analysis": (0.1, "data-free: graph position only"),
}

# Methods that measure the damage of dropping directly: the ensemble's anchors.
MEASURED = ("layer_ablation", "shap_analysis")

# Extra value of a method for a task (the seed design's task strategies).
TASK_FOCUS: dict[str, set[str]] = {
    "classification": {"fisher_information", "gradient_based", "layer_ablation"},
    "language-modeling": {"attention_analysis", "gradient_flow", "causal_analysis"},
    "recommendation": {"fisher_information", "mutual_information", "shap_analysis"},
    "embedding": {"block_influence", "angular_distance", "layer_correlation"},
    "retrieval": {"block_influence", "angular_distance", "layer_correlation"},
    "fidelity": {"block_influence", "angular_distance", "layer_ablation"},
}


@dataclass(frozen=True, slots=True)
class Selection:
    """The chosen methods, a reason for every method considered, the estimated cost."""

    methods: list[str]
    reasons: dict[str, str] = field(default_factory=dict)
    estimated_cost: float = 0.0


def model_kind(ir) -> str:
    """transformer | cnn | recurrent | mlp, from the kinds in the layer table."""
    kinds = {layer.kind for layer in ir.layers}
    for kind, name in (("attention", "transformer"), ("conv", "cnn"),
                       ("recurrent", "recurrent")):
        if kind in kinds:
            return name
    return "mlp"


def select_methods(kind: str, task: str, data_size: int, budget: float, n_blocks: int, *,
                   has_labels: bool = False, has_history: bool = False,
                   shap_samples: int = 64) -> Selection:
    """Greedy by prior value (with task focus) per marginal cost until the budget is spent.

    Assumes costs in forward passes over the `data_size` samples."""
    reasons: dict[str, str] = {}
    candidates = []
    for name in METHODS:
        info = method_info(name)
        prior, why = PRIORS[name]
        if data_size == 0 and not info.data_free:
            reasons[name] = "skipped: needs data and none was given"
            continue
        if info.needs_labels and not has_labels:
            reasons[name] = "skipped: needs labels"
            continue
        if name == "attention_analysis" and kind != "transformer":
            reasons[name] = f"skipped: a {kind} has no attention"
            continue
        if name == "meta_learning" and not has_history:
            reasons[name] = "skipped: no history of other analyses to learn from"
            continue
        if name == "topology_analysis" and data_size > 0:
            reasons[name] = "skipped: graph position only; data-based methods see more"
            continue
        value = prior + (0.15 if name in TASK_FOCUS.get(task, set()) else 0.0)
        candidates.append((value, name, why))
    candidates.sort(reverse=True)
    chosen, spent = [], 0.0
    have_forward = have_backward = False
    for value, name, why in candidates:
        info = method_info(name)
        if info.mode == "shared":
            cost = SHARED_OVERHEAD + (0.0 if have_forward else 1.0)
            if info.needs_gradients and not have_backward:
                cost += BACKWARD
        elif info.mode == "static":
            cost = 0.1
        else:
            cost = info.cost(n_blocks, BACKWARD)
            if name == "shap_analysis" and data_size:
                cost *= min(1.0, shap_samples / data_size)
        if spent + cost > budget:
            reasons[name] = f"skipped: costs {cost:.1f} passes, {budget - spent:.1f} left"
            continue
        chosen.append(name)
        spent += cost
        have_forward |= info.mode == "shared"
        have_backward |= info.mode == "shared" and info.needs_gradients
        reasons[name] = f"chosen: {why} (value {value:.2f}, +{cost:.2f} passes)"
    return Selection(chosen, reasons, spent)
