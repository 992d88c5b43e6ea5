"""The attribution baseline: neuron sets picked by first-order attribution of the ablation.

For neuron i and input x, the first-order effect of ablating i on the output logit ℓ is the
gradient of ℓ with respect to the MLP's output times the shift that ablation causes there,
summed over tokens: g_t · (a_i^ref W_i^ref − a_i W_i) under reference ablation (a_i W_i for zero
ablation, (m_i − a_i) W_i for mean ablation). It is computed exactly, for all neurons at once, as
∂ℓ/∂c_i at c = 0 of the model in which the layer's activations are a ↦ a + c ⊙ (fill − a) and
the reference terms c ⊙ a^ref are written by the reference weights (at c = 1 this is the ablated
model itself). A neuron's score is the mean over the (train) pairs of |that effect|; the baseline's
sets are the top-scored neurons, cut into consecutive disjoint sets of the target sizes (the
largest target takes the best-scored neurons).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hedonic_neurons.errors import ConfigError

if TYPE_CHECKING:
    from hedonic_neurons.models.neuron_model import NeuronModel


def attribution_scores(
    nm: NeuronModel,
    pairs: Sequence[Any],
    layer: int,
    *,
    mode: str = "reference",
    reference: Any = None,
    means: torch.Tensor | None = None,
    batch_size: int = 16,
) -> np.ndarray:
    """(n,) mean over ``pairs`` of |∂ℓ/∂c_i|: each neuron's first-order ablation effect."""
    if mode == "reference" and reference is None:
        raise ConfigError("attribution under reference ablation needs the layer's reference weights")
    if mode == "mean" and means is None:
        raise ConfigError("attribution under mean ablation needs the neurons' mean activations")
    total: np.ndarray | None = None
    count = 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        grad = _batch_gradient(nm, chunk, layer, mode, reference, means)
        part = grad.abs().double().sum(0).cpu().numpy()
        total = part if total is None else total + part
        count += grad.shape[0]
    if total is None:
        raise ConfigError("attribution needs at least one pair")
    return total / count


def _batch_gradient(
    nm: NeuronModel, chunk: Sequence[Any], layer: int, mode: str, reference: Any, means: torch.Tensor | None
) -> torch.Tensor:
    """(B, n) ∂ℓ/∂c at c = 0 for one batch of pairs (see the module docstring)."""
    from hedonic_neurons.models.adapters import mlp_modules, n_layers
    from hedonic_neurons.models.neuron_model import encode_pairs
    from hedonic_neurons.neurons.readout import local_head, site_hooks
    from hedonic_neurons.neurons.recording import hooks, model_inputs, readout_positions, run_forward

    model = nm.model
    mods = mlp_modules(model, layer)
    last = n_layers(model) - 1
    head = local_head(model, last, score_token_id=getattr(nm, "score_token_id", None))
    inputs = model_inputs(encode_pairs(nm, chunk))
    mask = inputs["attention_mask"]
    positions = readout_positions(model, mask)
    c = torch.zeros(mask.shape[0], 1, int(nm.n_neurons), device=mask.device, requires_grad=True)
    store: dict[str, torch.Tensor] = {}

    def ref_acts(module: Any, args: tuple[Any, ...]) -> None:
        store["a_ref"] = reference.activations(args[0].to(reference.up.dtype))

    def replace(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        a = args[0]
        if mode == "mean":
            fill = means.to(device=a.device, dtype=a.dtype)
        else:
            fill = torch.zeros((), dtype=a.dtype, device=a.device)
        return (a + c.to(a.dtype) * (fill - a), *args[1:])

    def add_ref(module: Any, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        a_ref = store.pop("a_ref") * c.to(reference.down.dtype)
        return output + torch.nn.functional.linear(a_ref, reference.down).to(output.dtype)

    with torch.enable_grad(), hooks() as hook_set:
        if mode == "reference":
            hook_set.pre(mods.up, ref_acts)
        hook_set.pre(mods.down, replace)
        if mode == "reference":
            hook_set.post(mods.down, add_ref)
        site_hooks(model, last, hook_set, store)
        run_forward(model, inputs)
    # the head after the hooks are gone (for BERT its norm is the module the site hook stops at)
    with torch.enable_grad():
        resid = store["resid"]
        rows = torch.arange(resid.shape[0], device=resid.device)
        (grad,) = torch.autograd.grad(head(resid[rows, positions]).sum(), c)
    return grad[:, 0, :]


def attribution_sets(scores: np.ndarray, targets: Sequence[int]) -> list[list[int]]:
    """Disjoint sets of the ``targets`` sizes from the neurons ranked by ``scores`` (best first;
    the largest target takes the top neurons). Targets that no longer fit are dropped."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    out: list[list[int]] = []
    start = 0
    for size in sorted(targets, reverse=True):
        if start + size > order.size:
            break
        out.append(sorted(int(i) for i in order[start : start + size]))
        start += size
    return out
