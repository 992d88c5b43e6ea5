"""The LoRA training loop of a one-logit reranker for one scalar task.

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

The hyper-parameters are :class:`hedonic_neurons.config.FinetuneConfig`; the ``hedonic
finetune`` command (data, model, evaluation, saved files) is :mod:`hedonic_neurons.models.finetune`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from hedonic_neurons.config import FinetuneConfig
from hedonic_neurons.errors import ConfigError, DataError, ModelError

if TYPE_CHECKING:  # the data stage imports scikit-learn: keep `hedonic --help` fast
    from hedonic_neurons.data import Pair

__all__ = [
    "Encode",
    "FinetuneConfig",
    "add_lora",
    "crop_passage",
    "default_layer_band",
    "evaluate",
    "head_extras",
    "head_features",
    "head_linear",
    "init_head_probe",
    "init_pooler",
    "lora_summary",
    "parse_layers",
    "predict",
    "regression_batches",
    "rm_batches",
    "rm_groups",
    "train",
]

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
    from hedonic_neurons.validation import parse_layers as parse_layer_spec  # the one layer grammar

    layers = parse_layer_spec(spec, n_layers, option="layers")
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad or not layers:
        raise ConfigError(f"layers {spec!r}: this model has layers 0..{n_layers - 1}; got {bad or 'none'}")
    return sorted(set(layers))


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
    start but not the 300-step plateau (the input order did: docs/finetune-minilm.md). The probe is
    fitted on the model as it is now (LoRA B = 0:
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
        param_groups.append({"params": head, "lr": config.head_lr or config.learning_rate})
    optim = torch.optim.AdamW(param_groups, lr=config.learning_rate, weight_decay=config.weight_decay)
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
