"""One call each: φ of one layer from a loaded model and some inputs, nothing written to disk.

:func:`oca` and :func:`pas` run the same collectors as ``hedonic collect``
(:mod:`~hedonic_neurons.synergy.collect`) over the inputs in memory and return φ (and, with
``with_se=True``, its standard errors) as float32 n × n arrays. :func:`synergy` does the same
for any metric registered in :data:`~hedonic_neurons.synergy.base.METRICS`.

``data`` is one of

- a list of (query, passage) pairs: 2-tuples of strings, or objects with ``query`` and
  ``passage`` attributes (what :func:`hedonic_neurons.data.load_pairs` returns), formatted by
  the model's input format exactly as ``hedonic collect`` formats them;
- a list of strings, each one whole input text (tokenised as it is, truncated to the input
  format's ``max_length``, padded on its ``padding_side``);
- an iterable of tokenised batches: dicts with ``input_ids`` and ``attention_mask`` (and
  whatever else the model takes), used as they are (moved to the model's device).

Example::

    from hedonic_neurons.models import load_model
    from hedonic_neurons.synergy.api import oca, pas

    nm = load_model("minilm")
    texts = [("what is a cat", "a cat is a small mammal"), ...]
    phi = oca(nm, texts, layer=3)
    phi, se = pas(nm, texts, layer=3, ablation="zero", with_se=True)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from hedonic_neurons.errors import ConfigError, DataError, arg
from hedonic_neurons.synergy.base import METRICS

if TYPE_CHECKING:
    from hedonic_neurons.models.neuron_model import NeuronModel


def _check_model(model: Any) -> None:
    missing = [
        k for k in ("model", "encode", "n_neurons", "check_layer", "mlp_weights") if not hasattr(model, k)
    ]
    if missing:
        raise ConfigError(
            f"{arg('model')} must be a NeuronModel (hedonic_neurons.models.load_model), got "
            f"{type(model).__name__} (no {', '.join(missing)})"
        )


def _pair_of(item: Any) -> tuple[str, str] | None:
    from hedonic_neurons.models.neuron_model import as_pair  # imported here: it needs torch

    return as_pair(item)


def _kind(item: Any) -> str:
    if isinstance(item, Mapping):
        return "batch"
    if isinstance(item, str):
        return "text"
    if _pair_of(item) is not None:
        return "pair"
    return type(item).__name__


_WHAT = (
    "a list of (query, passage) pairs, a list of strings, or an iterable of tokenised batches "
    "(dicts with input_ids and attention_mask)"
)


def _encode_texts(nm: NeuronModel, texts: list[str]) -> dict[str, Any]:
    """Whole input texts, tokenised as they are, truncated and padded as the input format says."""
    import torch

    fmt = getattr(nm, "input_format", None)
    max_length = getattr(fmt, "max_length", 256)
    side = getattr(fmt, "padding_side", "right")
    tok = nm.tokenizer
    ids = tok(texts, truncation=True, max_length=max_length)["input_ids"]
    if getattr(fmt, "append_eos", False) and tok.eos_token_id is not None:
        ids = [[*row[: max_length - 1], tok.eos_token_id] for row in ids]
    rows = [{"input_ids": row, "attention_mask": [1] * len(row)} for row in ids]
    batch = dict(tok.pad(rows, padding=True, padding_side=side, return_tensors="pt"))
    if side == "left":
        mask = batch["attention_mask"]
        batch["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return {k: v.to(nm.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _to_device(nm: NeuronModel, batch: Mapping[str, Any], index: int) -> dict[str, Any]:
    import torch

    if "input_ids" not in batch or "attention_mask" not in batch:
        raise DataError(
            f"{arg('data')}: batch {index} has keys {sorted(batch)}; expected at least input_ids and "
            "attention_mask (padding is excluded through the mask)"
        )
    return {k: v.to(nm.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def iter_batches(nm: NeuronModel, data: Any, batch_size: int) -> Iterator[dict[str, Any]]:
    """The tokenised batches of ``data`` (see the module docstring), ``batch_size`` inputs each
    for pairs and texts; a one-line :class:`DataError` naming ``data=`` for anything else."""
    if isinstance(data, str | bytes | Mapping):
        raise DataError(
            f"{arg('data')} must be {_WHAT}, got a single {type(data).__name__} (to read a file use "
            "hedonic_neurons.data.load_pairs(path))"
        )
    if not isinstance(data, Iterable):
        raise DataError(f"{arg('data')} must be {_WHAT}, got {type(data).__name__}")
    items = iter(data)
    first = next(items, None)
    if first is None:
        raise DataError(f"{arg('data')} is empty; expected at least one input")
    kind = _kind(first)
    if kind not in ("batch", "text", "pair"):
        raise DataError(f"{arg('data')} must be {_WHAT}; its first item is a {kind}")

    def checked(index: int, item: Any) -> Any:
        found = _kind(item)
        if found != kind:
            raise DataError(
                f"{arg('data')}: item {index} is a {found} but item 0 is a {kind}; expected one kind "
                f"throughout ({_WHAT})"
            )
        return item

    if kind == "batch":
        yield _to_device(nm, first, 0)
        for index, item in enumerate(items, 1):
            yield _to_device(nm, checked(index, item), index)
        return
    rest = (checked(index, item) for index, item in enumerate(items, 1))
    if kind == "pair":
        from hedonic_neurons.models.neuron_model import pair_batches

        for _, batch in pair_batches(nm, itertools.chain([first], rest), batch_size):
            yield batch
        return
    chunk: list[Any] = [first]
    for item in rest:
        chunk.append(item)
        if len(chunk) == batch_size:
            yield _encode_texts(nm, chunk)
            chunk = []
    if chunk:
        yield _encode_texts(nm, chunk)


def synergy(
    metric: str,
    model: NeuronModel,
    data: Any,
    layer: int,
    *,
    with_se: bool = False,
    pairs: Sequence[Sequence[int]] | np.ndarray | None = None,
    max_elements: int | None = None,
    pair_dtype: Any = None,
    **settings: Any,
) -> Any:
    """φ of ``layer`` by the registered ``metric`` over ``data`` (float32 n × n, symmetric, zero
    diagonal), or ``(phi, se)`` with ``with_se=True`` (a :class:`DataError` when the metric gives
    no standard error for this data, e.g. too few inputs).

    ``settings``: fields of :class:`~hedonic_neurons.synergy.collect.CollectSettings` (``mode``,
    ``readout``, ``ablation``, ``pooling``, ``statistic``, ``batch_size``, ``max_pairs``,
    ``seed``, ``accumulate``); the values are checked as ``hedonic collect`` checks them, and
    errors name these parameters as Python arguments. ``max_inputs`` is not a setting here (pass
    the inputs you want). ``pairs``, ``max_elements``, ``pair_dtype``: options of the metric's
    accumulator (PAS: the neuron pairs to report, memory bound of one block, precision of the
    tanh path).
    """
    from dataclasses import fields

    import torch

    from hedonic_neurons.synergy.collect import CollectSettings

    _check_model(model)
    known = {f.name for f in fields(CollectSettings)} - {"metric", "max_inputs"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; expected some of "
            f"{', '.join(sorted(known))}"
        )
    cfg = replace(CollectSettings(), metric=metric, **settings).check()
    cls = METRICS.get(metric)
    layer = int(model.check_layer(int(layer)))
    options: dict[str, Any] = {}
    if pairs is not None:
        options["pairs"] = pairs
    if max_elements is not None:
        options["max_elements"] = max_elements
    if pair_dtype is not None:
        options["pair_dtype"] = pair_dtype
    if cls.needs_reference(cfg) and not getattr(model, "has_reference", False):
        from hedonic_neurons.synergy.base import reference_error

        raise reference_error()
    refused = sorted(set(options) - set(cls.options))
    if refused:
        raise ConfigError(
            f"{', '.join(arg(k) for k in refused)}: not an option of the {metric} metric (it takes "
            f"{', '.join(arg(k) for k in cls.options) or 'none'})"
        )
    collector = cls.create(model, [layer], cfg, **options)
    with collector, torch.no_grad():
        for index, batch in enumerate(iter_batches(model, data, cfg.batch_size)):
            collector.update(batch, index)
    phi, info = collector.result(layer)
    if not with_se:
        return phi
    se = collector.arrays(layer).get("phi_se")
    if se is None:
        why = (info.get("se") or {}).get("why", "the metric writes none")
        raise DataError(f"{metric} gives no standard errors for this data ({why})")
    return phi, se


def oca(
    model: NeuronModel,
    data: Any,
    layer: int,
    *,
    pooling: str = "tokens",
    statistic: str = "corr",
    batch_size: int = 16,
    accumulate: str = "mixed",
    with_se: bool = False,
) -> Any:
    """φ_OCA(i, j) = (1 − |cos(W_i, W_j)|) · ρ(a_i, a_j) of ``layer`` over ``data``, float32 n × n.

    ``model``: a :class:`~hedonic_neurons.models.NeuronModel`; ``data``: pairs, texts or
    tokenised batches (module docstring). ``pooling``: ``tokens`` (every non-pad token is a
    sample), ``mean`` or ``last`` (one sample per input); ``statistic``: ``corr`` (Pearson) or
    ``cov`` (the public code's covariance); ``accumulate``: ``mixed`` or ``fp64`` (precision of
    the per-batch products; changes φ by rounding only). Equal (to float32 rounding) to the φ
    ``hedonic collect --metric oca`` writes for the same model, inputs and settings.
    ``with_se=True``: ``(phi, se)``, se by normal theory with the number of inputs as the
    sample size (:func:`~hedonic_neurons.synergy.oca.oca_se`; needs ≥ 4 inputs).
    """
    return synergy(
        "oca",
        model,
        data,
        layer,
        with_se=with_se,
        pooling=pooling,
        statistic=statistic,
        batch_size=batch_size,
        accumulate=accumulate,
    )


def pas(
    model: NeuronModel,
    data: Any,
    layer: int,
    mode: str = "exact",
    readout: str = "local",
    ablation: str = "reference",
    pairs: Sequence[Sequence[int]] | np.ndarray | None = None,
    *,
    batch_size: int = 16,
    max_pairs: int | None = None,
    seed: int = 0,
    with_se: bool = False,
    max_elements: int | None = None,
    pair_dtype: Any = None,
) -> Any:
    """φ_PAS(i, j) = E_x[ℓ − ℓ_{−i} − ℓ_{−j} + ℓ_{−ij}] of ``layer`` over ``data``, float32 n × n.

    Positive means complements (each neuron matters only when the other is present), negative
    substitutes. ℓ is the layer-local logit (``readout="local"``: the model's own head on the
    residual right after the layer), the model's output (``"full"``, the neurons ablated at every
    position) or ``"next-block"`` (the model above the layer run on the residual at the readout
    position, the neurons ablated at that position only: exact on requested pairs, taylor and
    grad-outer for all pairs; :mod:`hedonic_neurons.synergy.nextblock`); ℓ_{−S} the same with the
    neurons of S ablated: reverted to the reference (pre-fine-tuning) weights
    (``ablation="reference"``, needs a model loaded with an adapter or a reference) or zeroed
    (``"zero"``). ``mode``: ``exact`` (the definition; for the local readout in closed form
    for all pairs at once), ``taylor`` (second-order: d_iᵀ H d_j with H the head's Hessian in
    residual space) or ``grad-outer`` (the public code's surrogate −E[(g⊙a)(g⊙a)ᵀ]); the full
    readout supports ``exact`` only; next-block supports all three. ``pairs``: neuron pairs
    (i, j) to report (φ is zero elsewhere); default all pairs, or for the full readout ``max_pairs`` pairs drawn with
    ``seed`` when ``max_pairs`` is given. ``with_se=True``: ``(phi, se)``, se = sd / √N of the
    per-input values over the N inputs (needs N ≥ 2). ``max_elements``, ``pair_dtype``: memory
    bound of one block and precision of the tanh path's per-pair work (defaults as in
    ``hedonic collect``).

    Cost per input (seconds; ``docs/costs.md``: zero ablation, 2 torch threads on a 2-core
    machine shared with other jobs, load average 5-11, range over three runs; the full
    readout timed on 20 pairs, per pair):

    ==========  =====  ===  ===========  ============  ==========================
    model       n      d    exact local  taylor local  exact full, per pair
    ==========  =====  ===  ===========  ============  ==========================
    tiny GPT-2  24     16   0.005-0.029  0.023-0.036   0.005-0.012
    tiny LLaMA  24     16   0.003-0.018  0.006-0.022   0.003-0.012
    MiniLM      1,536  384  1.4-3.9      0.14-0.52     0.015-0.047 (all pairs: 5-15 h)
    ==========  =====  ===  ===========  ============  ==========================

    The tiny models' times are mostly Python overhead. On MiniLM (tanh pooler head) exact
    local costs about 10x taylor; the full readout is for samples of pairs only.
    """
    return synergy(
        "pas",
        model,
        data,
        layer,
        with_se=with_se,
        pairs=pairs,
        max_elements=max_elements,
        pair_dtype=pair_dtype,
        mode=mode,
        readout=readout,
        ablation=ablation,
        batch_size=batch_size,
        max_pairs=max_pairs,
        seed=seed,
    )
