"""The one model type of the library: :class:`NeuronModel`.

A :class:`NeuronModel` is a Hugging Face model in eval mode with the fine-tuned weights in its
modules, its tokenizer, the one :class:`~hedonic_neurons.models.inputs.InputFormat`, the head
("classification": one-logit ``*ForSequenceClassification``; "causal": ``*ForCausalLM``, whose
scalar is the logit of :attr:`NeuronModel.score_token_id`) and, optionally, a
:class:`~hedonic_neurons.models.reference.Reference`: the pre-fine-tuning MLP weights that
reference ablation reverts to. Build it from names and paths with
:func:`~hedonic_neurons.models.loading.load_model`, from a model object with
:meth:`NeuronModel.from_hf`, or directly with the constructor.

Padding. Decoder heads read the last token that is not the pad id, so the pad id must never be
a real token of an input: a tokenizer without a pad token gets its unknown token as pad when
that differs from EOS/BOS, else EOS (and then EOS is not appended to inputs, see
:meth:`InputFormat.resolve`).

Causal head score token: the id of ``" yes"`` if that is a single known token, else EOS.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hedonic_neurons.errors import ConfigError, DataError, HedonicNote, ModelError, arg
from hedonic_neurons.models import adapters
from hedonic_neurons.models.adapters import ArchSpec, MLPWeights
from hedonic_neurons.models.inputs import InputFormat
from hedonic_neurons.models.reference import ROLES, Reference, as_reference

HEADS = ("classification", "causal")


class NeuronModel:
    """A model plus everything the neuron analysis needs.

    Attributes: ``model`` (HF model, fine-tuned weights in its modules), ``tokenizer``, ``spec``
    (:class:`ArchSpec`), ``input_format`` (resolved :class:`InputFormat`), ``head``
    ("classification" or "causal"), ``score_token_id`` (causal head only), ``identity`` (JSON-safe:
    model, model_path, adapter, adapter_sha256, reference, head, initialised), ``lora`` (dict or
    None: target_modules, rank, alpha, layers, ...), ``n_layers``, ``n_neurons``, ``d_model``,
    ``device``, ``dtype``, ``has_reference``.

    The constructor takes public types only. ``reference``: None, a
    :class:`~hedonic_neurons.models.reference.Reference` (``LoraReference``,
    ``CheckpointReference``, ``ModelReference``), a second model object or a checkpoint folder.
    ``input_format``: default :class:`InputFormat` (resolved here for the tokenizer and
    architecture). ``head``: default from the model class (``*ForCausalLM``: causal; else
    classification). ``identity``: missing keys are filled in (``model`` from the config's
    ``_name_or_path``). The model is used as given: :meth:`from_hf` also merges LoRA, sets a pad
    token, switches to eval mode and freezes the parameters.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        input_format: InputFormat | None = None,
        identity: dict[str, Any] | None = None,
        head: str | None = None,
        score_token_id: int | None = None,
        lora: dict[str, Any] | None = None,
        reference: Reference | nn.Module | str | os.PathLike | None = None,
    ) -> None:
        if not isinstance(model, nn.Module) or not hasattr(model, "config"):
            raise ModelError(
                f"NeuronModel needs a transformers model object, got {type(model).__name__}; "
                "for another library's wrapper use NeuronModel.from_hf"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.spec: ArchSpec = adapters.get_spec(model)
        self.head = infer_head(model) if head is None else check_head(head, model)
        if tokenizer is None:
            raise ModelError(f"NeuronModel needs a tokenizer: pass {arg('tokenizer')}")
        if input_format is None or input_format.kind == "auto" or input_format.append_eos is None:
            input_format = (input_format or InputFormat()).resolve(
                tokenizer,
                encoder=adapters.is_encoder(model),
                eos_is_pad=tokenizer.pad_token_id is not None
                and tokenizer.pad_token_id == tokenizer.eos_token_id,
            )
        self.input_format = input_format
        shown = str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
        self.identity: dict[str, Any] = {
            "model": shown,
            "model_path": shown,
            "adapter": None,
            "adapter_sha256": None,
            "reference": None,
            "head": self.head,
            "initialised": [],
            **(identity or {}),
        }
        if score_token_id is None and self.head == "causal":
            score_token_id = causal_score_token(tokenizer)
        self.score_token_id = score_token_id
        self.lora = lora
        if reference is not None and not isinstance(reference, Reference):
            if self.identity["reference"] is None:
                self.identity["reference"] = (
                    str(reference) if isinstance(reference, (str, os.PathLike)) else type(reference).__name__
                )
            reference = as_reference(reference, model, self.identity["model"])
        self._reference = reference
        self.n_layers = adapters.n_layers(model)
        self.n_neurons = adapters.n_neurons(model)
        cfg = model.config.get_text_config()
        self.d_model = int(cfg.hidden_size)

    @classmethod
    def from_hf(
        cls,
        model: Any,
        tokenizer: Any = None,
        *,
        reference: Reference | nn.Module | str | os.PathLike | None = None,
        input_format: InputFormat | None = None,
        head: str | None = None,
        name: str | None = None,
    ) -> NeuronModel:
        """A :class:`NeuronModel` from a model object.

        ``model``: a transformers model (``*ForSequenceClassification`` with one label, or
        ``*ForCausalLM``), a peft ``PeftModel`` (LoRA) of one, or an nnsight wrapper of either
        (unwrapped). A TransformerLens ``HookedTransformer`` is refused (pass the Hugging Face
        model instead). For a peft LoRA model a deep copy is merged and analysed, and the base
        (pre-LoRA) weights become the reference (rebuilt from the LoRA factors): the object you
        pass is left untouched. A plain model is used in place: it is switched to eval mode and
        its parameters are frozen (``requires_grad=False``).

        ``tokenizer``: default: an nnsight ``LanguageModel``'s own, else loaded from
        ``model.config._name_or_path`` when that is a local folder; otherwise pass it. A tokenizer
        without a pad token is copied before one is added to it.
        ``reference``: the pre-fine-tuning weights for reference ablation: a second model object,
        a checkpoint folder, or a :class:`~hedonic_neurons.models.reference.Reference`; not with a
        peft model (its reference is its base model). ``input_format``: default
        :class:`InputFormat`. ``head``: default from the model class. ``name``: how the model is
        shown in results (default: ``model.config._name_or_path``).
        """
        from hedonic_neurons.models import lora as lora_mod
        from hedonic_neurons.models.interop import unwrap_model, wrapper_tokenizer

        tokenizer = tokenizer if tokenizer is not None else wrapper_tokenizer(model)
        obj = unwrap_model(model)
        adapters.get_spec(obj)  # unknown architecture: one line naming the adapter to add
        shown = name or str(getattr(obj.config, "_name_or_path", "") or type(obj).__name__)
        identity: dict[str, Any] = {"model": shown, "model_path": shown}
        lora = None
        if adapters.is_peft(obj):
            if reference is not None:
                raise ConfigError(
                    f"{shown} is a peft LoRA model: its reference is its base model, so do not pass "
                    f"{arg('reference')} as well"
                )
            lora_mod.check_lora(obj)
            work = copy.deepcopy(obj)
            factors, _ = lora_mod.lora_factors(work)
            lora = lora_mod.peft_summary(work, factors)
            hf, reference = lora_mod.merge_lora(work)
            identity["adapter"] = f"<in-memory peft {type(obj).__name__}>"
            if not lora["head_from_adapter"] and infer_head(hf) == "classification":
                warnings.warn(
                    f"{shown}: the peft model trains no head (modules_to_save is empty); the head is "
                    "the base model's, which may be untrained",
                    HedonicNote,
                    stacklevel=2,
                )
        else:
            hf = obj
        if tokenizer is None:
            tokenizer = _tokenizer_for(hf, shown)
        elif tokenizer.pad_token_id is None:
            tokenizer = copy.deepcopy(tokenizer)
        chosen = infer_head(hf) if head is None else check_head(head, hf)
        check_vocabulary(tokenizer, shown)
        choose_pad(tokenizer, hf, adapters.is_encoder(hf), shown)
        hf.eval()
        hf.requires_grad_(False)
        return cls(
            hf,
            tokenizer,
            input_format=input_format,
            identity={**identity, "head": chosen},
            head=chosen,
            lora=lora,
            reference=reference,
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def has_reference(self) -> bool:
        return self._reference is not None

    def check_layer(self, layer: int) -> int:
        """``layer`` as a non-negative index, or a one-line :class:`ModelError`."""
        return adapters.check_layer(self.model, layer)

    def mlp_weights(self, layer: int) -> MLPWeights:
        """The layer's current (fine-tuned) MLP weights: views of the model's parameters."""
        return adapters.mlp_weights(self.model, self.check_layer(layer))

    def reference_mlp_weights(self, layer: int) -> MLPWeights:
        """The layer's reference (pre-LoRA / first checkpoint) MLP weights, fp32 copies on the
        model's device; equal to the current weights on layers the fine-tuning did not touch."""
        if self._reference is None:
            raise ModelError(
                f"{self.identity['model']} has no reference weights: load it with {arg('adapter')}... (LoRA) "
                f"or {arg('reference')}... (the pre-fine-tuning checkpoint or model)"
            )
        return self._reference.mlp_weights(self, self.check_layer(layer))

    def encode(self, queries: list[str] | str, passages: list[str] | str) -> dict[str, torch.Tensor]:
        """Model inputs for (query, passage) pairs, formatted by :attr:`input_format`, on the device."""
        batch = self.input_format.encode(self.tokenizer, queries, passages)
        return {k: v.to(self.device) for k, v in batch.items()}

    def batches(
        self, pairs: Iterable[Any], batch_size: int, *, input_format: InputFormat | None = None
    ) -> Iterator[tuple[list[Any], dict[str, torch.Tensor]]]:
        """``(chunk, encoded batch)`` for consecutive chunks of ``batch_size`` (query, passage)
        pairs, in order, the last chunk possibly shorter; see :func:`pair_batches`."""
        return pair_batches(self, pairs, batch_size, input_format=input_format)

    def weight_change(self, layers: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """Per layer, Frobenius norms of (fine-tuned - reference) MLP weights, absolute and relative.

        One dict per layer: ``layer``, ``gate`` (None for ungated MLPs), ``up``, ``down``, ``total``
        (norm over all three, biases excluded) and ``relative`` (``total`` / norm of the reference
        weights). Computed in float64.
        """
        chosen = range(self.n_layers) if layers is None else [self.check_layer(layer) for layer in layers]
        rows = []
        for layer in chosen:
            cur, ref = self.mlp_weights(layer), self.reference_mlp_weights(layer)
            row: dict[str, Any] = {"layer": layer}
            total = ref_total = 0.0
            for role in ROLES:
                w, r = getattr(cur, role), getattr(ref, role)
                if w is None:
                    row[role] = None
                    continue
                diff = float(torch.linalg.vector_norm(w.detach().double() - r.double()))
                row[role] = diff
                total += diff**2
                ref_total += float(torch.linalg.vector_norm(r.double())) ** 2
            row["total"] = total**0.5
            row["relative"] = (total / ref_total) ** 0.5 if ref_total > 0 else 0.0
            rows.append(row)
        return rows

    def describe(self) -> dict[str, Any]:
        """JSON-safe description for provenance: identity, shape, head, dtype, device, input, LoRA."""
        return {
            **self.identity,
            "family": self.spec.family,
            "model_type": self.model.config.model_type,
            "n_layers": self.n_layers,
            "n_neurons": self.n_neurons,
            "d_model": self.d_model,
            "score_token_id": self.score_token_id,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "input_format": self.input_format.to_dict(),
            "lora": self.lora,
            "has_reference": self.has_reference,
        }

    def __repr__(self) -> str:
        return (
            f"NeuronModel({self.identity['model']!r}, {self.spec.family}, {self.n_layers} layers x "
            f"{self.n_neurons} neurons, head={self.head}, adapter={self.identity['adapter']!r})"
        )


# ---------------------------------------------------------------------------- batches of pairs

_PAIR = "a Pair (with query and passage attributes) or a (query, passage) tuple of two strings"


def as_pair(item: Any) -> tuple[str, str] | None:
    """``(query, passage)`` of one pair: an object with ``query`` and ``passage`` attributes
    (:class:`~hedonic_neurons.data.loaders.Pair`; the values as strings) or a tuple or list of
    two strings; None for anything else."""
    if hasattr(item, "query") and hasattr(item, "passage"):
        return str(item.query), str(item.passage)
    if isinstance(item, tuple | list) and len(item) == 2 and all(isinstance(x, str) for x in item):
        return item[0], item[1]
    return None


def encode_pairs(
    nm: NeuronModel, pairs: Sequence[Any], *, input_format: InputFormat | None = None, start: int = 0
) -> dict[str, torch.Tensor]:
    """Model inputs for ``pairs`` (each as :func:`as_pair` takes it) on ``nm``'s device: ``nm.encode``
    of the queries and passages, or ``input_format`` (a different length, say) applied with
    ``nm``'s tokenizer. ``start``: the index of ``pairs[0]`` in the caller's data, for the
    message a non-pair item gets (a :class:`DataError` naming ``pairs``)."""
    texts = []
    for index, item in enumerate(pairs, start):
        pair = as_pair(item)
        if pair is None:
            raise DataError(f"{arg('pairs')}: item {index} is a {type(item).__name__}; expected {_PAIR}")
        texts.append(pair)
    queries, passages = [q for q, _ in texts], [p for _, p in texts]
    if input_format is None:
        return nm.encode(queries, passages)
    batch = input_format.encode(nm.tokenizer, queries, passages)
    return {k: v.to(nm.device) for k, v in batch.items()}


def pair_batches(
    nm: NeuronModel, pairs: Iterable[Any], batch_size: int, *, input_format: InputFormat | None = None
) -> Iterator[tuple[list[Any], dict[str, torch.Tensor]]]:
    """The one batching of (query, passage) pairs: ``(chunk, encoded batch)`` for consecutive
    chunks of ``batch_size`` items of ``pairs`` (an iterable, read lazily), in order, the last
    chunk possibly shorter; each chunk encoded by :func:`encode_pairs` (``nm.encode``, or
    ``input_format`` with ``nm``'s tokenizer). ``nm``: a :class:`NeuronModel` or any object with
    ``encode(queries, passages)`` and ``device``. A :class:`DataError` naming ``pairs`` for an item
    that is not a pair, a :class:`ConfigError` naming ``batch_size`` for a size below 1."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"{passed('batch_size', batch_size)}: expected a positive integer")
    chunk: list[Any] = []
    start = 0
    for item in pairs:
        chunk.append(item)
        if len(chunk) == batch_size:
            yield chunk, encode_pairs(nm, chunk, input_format=input_format, start=start)
            start += batch_size
            chunk = []
    if chunk:
        yield chunk, encode_pairs(nm, chunk, input_format=input_format, start=start)


# ---------------------------------------------------------------------------- heads, tokens


def infer_head(model: nn.Module) -> str:
    """The head of a model: "causal" for a causal LM (``*ForCausalLM``, GPT-2's
    ``GPT2LMHeadModel``), "classification" for a one-label ``*ForSequenceClassification``; a
    one-line ModelError for anything else."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model = adapters.unwrap_peft(model)
    cls = type(model).__name__
    if cls.endswith("ForCausalLM") or cls in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        return "causal"
    if cls.endswith("ForSequenceClassification"):
        labels = getattr(model.config, "num_labels", None)
        if labels != 1:
            raise ModelError(
                f"{cls} has a {labels}-label classifier; the method needs one scalar logit (num_labels=1)"
            )
        return "classification"
    raise ModelError(
        f"{cls} has no scoring head: expected a *ForSequenceClassification model with one label or a "
        "*ForCausalLM model"
    )


def check_head(head: str, model: nn.Module) -> str:
    """``head`` if it is one of :data:`HEADS` and matches the model's class."""
    if head not in HEADS:
        raise ConfigError(f"unknown head {head!r}; expected one of {', '.join(HEADS)}")
    have = infer_head(model)
    if have != head:
        raise ModelError(f"{type(model).__name__} has a {have} head, but {passed('head', head)} was given")
    return head


def passed(name: str, value: Any) -> str:
    """How a user passes ``value`` for parameter ``name``: ``name='value'`` from Python,
    ``--name value`` on the command line (see :func:`hedonic_neurons.errors.arg`)."""
    flag = arg(name)
    return f"{flag} {value}" if flag.startswith("--") else f"{flag}{value!r}"


def causal_score_token(tokenizer: Any) -> int:
    """The token whose logit is a causal head's score: ``" yes"`` if one known token, else EOS."""
    ids = tokenizer(" yes", add_special_tokens=False)["input_ids"]
    if len(ids) == 1 and ids[0] != tokenizer.unk_token_id:
        return int(ids[0])
    if tokenizer.eos_token_id is None:
        raise ModelError("causal head: ' yes' is not one token and the tokenizer has no EOS token to score")
    return int(tokenizer.eos_token_id)


def check_vocabulary(tokenizer: Any, shown: str) -> None:
    """A tokenizer made of special tokens only (transformers builds one for a folder without
    vocabulary files) would turn every word into the unknown token: a one-line ModelError."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    if len(tokenizer) <= len(special) + 1:
        raise ModelError(
            f"the tokenizer of {shown} has no vocabulary ({len(tokenizer)} tokens, all special); "
            "expected tokenizer files (tokenizer.json, vocab.txt, ...) in the model folder"
        )


def choose_pad(tokenizer: Any, model: nn.Module, encoder: bool, shown: str) -> None:
    """Make sure there is a pad token that never occurs as a real token (see the module
    docstring), and record it in the model's config."""
    if tokenizer.pad_token_id is None:
        unk, eos, bos = tokenizer.unk_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id
        if not encoder and unk is not None and unk not in (eos, bos):
            tokenizer.pad_token = tokenizer.unk_token
        elif eos is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            raise ModelError(f"the tokenizer of {shown} has no pad, unknown or EOS token to pad with")
    model.config.pad_token_id = tokenizer.pad_token_id
    text_config = model.config.get_text_config()
    if text_config is not model.config:
        text_config.pad_token_id = tokenizer.pad_token_id


def _tokenizer_for(model: nn.Module, shown: str) -> Any:
    """The tokenizer saved beside a model loaded from a local folder, else a one-line error."""
    source = str(getattr(model.config, "_name_or_path", "") or "")
    if source and Path(source).expanduser().is_dir():
        import transformers as tf

        from hedonic_neurons.models.cache import from_pretrained

        return from_pretrained(tf.AutoTokenizer, str(Path(source).expanduser()), "tokenizer")
    raise ModelError(
        f"no tokenizer for {shown}: its config names no local model folder to load one from; "
        f"pass {arg('tokenizer')}..."
    )
