"""The readout: the model's own head applied to the residual stream after a layer.

``local_head(model, layer)`` is a function of the residual vector r taken right after block
``layer`` at the readout position (:func:`readout_positions`):

* pre-LN families (LLaMA, Mistral, Qwen2, GPT-NeoX, GPT-2): ``score(final_norm(r))``; r is the
  block's output, before the final norm;
* BERT (post-LN): r is the sum ``dense(intermediate) + attention_output`` inside the block's
  ``BertOutput``, before its LayerNorm; the head is that block's LayerNorm, then the pooler
  (dense + tanh) if the model has one, then the classifier (dropout is off in eval);
* ``*ForCausalLM``: the final norm, then the ``lm_head`` row of one token id (``score_token_id``,
  required: a causal LM has no single output logit, so the caller names the token whose logit
  is the score, e.g. the "yes"/"true" token of a pointwise reranking prompt).

At the last layer it equals the model's own output logit. ``norm=False`` drops the head's
nonlinearities (the norm, and BERT's pooler tanh): a purely linear readout, under which pairwise
ablation synergy is identically zero (the logit is then additive in the neurons' contributions).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hedonic_neurons.errors import ModelError
from hedonic_neurons.models.adapters import (
    body,
    check_layer,
    final_norm,
    get_spec,
    mlp_modules,
    n_layers,
)
from hedonic_neurons.neurons.recording import (
    StopForward,
    hf_model,
    hooks,
    model_inputs,
    readout_positions,
    run_forward,
)


def _block_output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _score_module(hf: nn.Module) -> nn.Module | None:
    for name in ("score", "classifier"):
        module = getattr(hf, name, None)
        if isinstance(module, nn.Module):
            return module
    return None


def _linear_rows(module: nn.Module, in_features: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight (out, in) and bias (out,) of a linear module, also through a peft wrapper."""
    if isinstance(module, nn.Linear):
        return module.weight, module.bias
    # e.g. peft's ModulesToSaveWrapper: read the affine map off the module itself
    ref = next(module.parameters())
    with torch.no_grad():
        zero = module(torch.zeros(1, in_features, dtype=ref.dtype, device=ref.device))[0]
        eye = torch.eye(in_features, dtype=ref.dtype, device=ref.device)
        weight = (module(eye) - zero).T.contiguous()
    return weight, (zero if bool(zero.any()) else None)


@dataclass
class LocalHead:
    """The head as a function of the residual: ``r (..., d) -> logit (...)``.

    ``norm`` (module or None), then ``pooler`` (linear, or None) followed by tanh if ``tanh``,
    then ``weight`` (d,) · h + ``bias``. Differentiable in r (autograd / torch.func).
    """

    layer: int
    norm: nn.Module | None
    pooler: nn.Module | None
    tanh: bool
    weight: torch.Tensor
    bias: torch.Tensor | None

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        h = r.to(self.weight.dtype)
        if self.norm is not None:
            h = self.norm(h)
        if self.pooler is not None:
            h = self.pooler(h)
            if self.tanh:
                h = torch.tanh(h)
        out = h @ self.weight
        return out + self.bias if self.bias is not None else out

    @property
    def norm_kind(self) -> str | None:
        """``"rms"`` (RMSNorm: weight · r / sqrt(mean r² + eps)), ``"layer"`` (LayerNorm) or None."""
        if self.norm is None:
            return None
        return "layer" if isinstance(self.norm, nn.LayerNorm) else "rms"

    @property
    def norm_eps(self) -> float | None:
        if self.norm is None:
            return None
        return float(getattr(self.norm, "eps", getattr(self.norm, "variance_epsilon", 0.0)))


def local_head(
    model: Any,
    layer: int,
    *,
    norm: bool = True,
    score_token_id: int | None = None,
    dtype: torch.dtype | None = None,
) -> LocalHead:
    """The model's own head for the residual after block ``layer`` (see the module docstring).

    ``model``: a torch model or a :class:`~hedonic_neurons.models.NeuronModel` (its ``.model``).
    ``score_token_id``: for ``*ForCausalLM`` only, the token whose logit is the score (required;
    default for a NeuronModel: its own). ``dtype``: evaluate the head in this dtype (copies of the
    norm / pooler / weights), e.g. ``torch.float64`` for exact synergy computations; default: the
    model's own parameters.
    """
    from hedonic_neurons.neurons.ablation import torch_model_of  # ablation imports this module

    model, owner = torch_model_of(model)
    if score_token_id is None and owner is not None:
        score_token_id = getattr(owner, "score_token_id", None)
    hf = hf_model(model)
    spec = get_spec(hf)
    layer = check_layer(model, layer)
    score = _score_module(hf)
    pooler = tanh = None
    if spec.post_norm is not None:  # BERT: the block's own LayerNorm, pooler, classifier
        if score is None:
            raise ModelError(
                f"{type(hf).__name__} has no classifier: the BERT readout needs a "
                "*ForSequenceClassification model"
            )
        norm_module = mlp_modules(model, layer).post_norm
        pooler_module = getattr(body(model), "pooler", None)
        if pooler_module is not None:
            pooler, tanh = pooler_module.dense, True
    else:
        norm_module = final_norm(model)
    if score is not None:
        if score_token_id is not None:
            raise ModelError("score_token_id is only for causal LMs; this model has a classification head")
        in_features = pooler.out_features if pooler is not None else hf.config.hidden_size
        weight, bias = _linear_rows(score, in_features)
        if weight.shape[0] != 1:
            raise ModelError(
                f"the classification head has {weight.shape[0]} outputs; the readout needs "
                "a single-logit head (num_labels=1)"
            )
        weight, bias = weight[0], (bias[0] if bias is not None else None)
    else:
        lm_head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
        if lm_head is None:
            raise ModelError(f"{type(hf).__name__} has neither a classification head nor an LM head")
        vocab = lm_head.weight.shape[0]
        if score_token_id is None or not 0 <= int(score_token_id) < vocab:
            raise ModelError(
                f"causal LM readout needs score_token_id, the token whose logit is the score "
                f"(an id in 0..{vocab - 1}); got {score_token_id}"
            )
        weight = lm_head.weight[int(score_token_id)]
        lm_bias = getattr(lm_head, "bias", None)
        bias = lm_bias[int(score_token_id)] if lm_bias is not None else None
    if not norm:
        norm_module, tanh = None, False
    if dtype is not None:
        norm_module = copy.deepcopy(norm_module).to(dtype) if norm_module is not None else None
        pooler = copy.deepcopy(pooler).to(dtype) if pooler is not None else None
        weight = weight.detach().to(dtype)
        bias = bias.detach().to(dtype) if bias is not None else None
    return LocalHead(layer=layer, norm=norm_module, pooler=pooler, tanh=bool(tanh), weight=weight, bias=bias)


@dataclass
class SiteCapture:
    """What :func:`capture_site` saw at the readout position of each input (row b of each tensor).

    ``resid`` (B, d): the residual after the block (pre-LN: block output, before the final norm;
    BERT: the sum before the block's output LayerNorm). ``mlp_input`` (B, d): the input of the
    MLP's up/gate projection. ``activations`` (B, n): the neurons there (input of the down
    projection). ``positions`` (B,): the readout positions.
    """

    resid: torch.Tensor
    mlp_input: torch.Tensor
    activations: torch.Tensor
    positions: torch.Tensor


def site_hooks(
    model: nn.Module, layer: int, hook_set: Any, store: dict[str, torch.Tensor], *, stop: bool = True
) -> None:
    """Register hooks that put the full (B, T, ·) residual at ``layer`` into ``store["resid"]``
    (and end the forward there if ``stop``)."""
    mods = mlp_modules(model, layer)

    def save(value: torch.Tensor) -> None:
        store["resid"] = value
        if stop:
            raise StopForward

    if mods.post_norm is not None:
        hook_set.pre(mods.post_norm, lambda module, args: save(args[0]))
    else:
        hook_set.post(mods.block, lambda module, args, output: save(_block_output(output)))


def capture_site(model: nn.Module, batch: Mapping[str, Any], layer: int) -> SiteCapture:
    """Run the model (no gradient) up to block ``layer`` and return the readout-site tensors."""
    layer = check_layer(model, layer)
    inputs = model_inputs(batch)
    positions = readout_positions(model, inputs["attention_mask"])
    store: dict[str, torch.Tensor] = {}
    mods = mlp_modules(model, layer)
    with torch.no_grad(), hooks() as hook_set:
        hook_set.pre(mods.up, lambda module, args: store.__setitem__("mlp_input", args[0]))
        hook_set.pre(mods.down, lambda module, args: store.__setitem__("activations", args[0]))
        site_hooks(model, layer, hook_set, store)
        run_forward(model, inputs)
    rows = torch.arange(positions.shape[0], device=positions.device)
    return SiteCapture(
        resid=store["resid"][rows, positions],
        mlp_input=store["mlp_input"][rows, positions],
        activations=store["activations"][rows, positions],
        positions=positions,
    )


def full_logits(
    model: nn.Module, batch: Mapping[str, Any], *, score_token_id: int | None = None
) -> torch.Tensor:
    """The whole model's output logit per input, (B,): the head at the last layer, at the readout
    position (equals ``model(**batch).logits`` of a single-logit classifier)."""
    last = n_layers(model) - 1
    head = local_head(model, last, score_token_id=score_token_id)
    with torch.no_grad():
        return head(capture_site(model, batch, last).resid)
