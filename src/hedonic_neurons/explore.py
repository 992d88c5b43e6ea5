"""Look inside a coalition: what lights it up, what it does, what it carries.

:func:`inspect_coalition` summarises one coalition of one layer on a set of texts;
:func:`coalition_summaries` does the same for the top-K coalitions of a partition with one
recording and one batched ablation per batch, and can write them as one JSON file in a run
folder (the report's coalition explorer reads that format). A :class:`CoalitionSummary` holds:

- **top inputs**: the ``top`` texts on which the coalition is most active, ranked by
  ``rank_by``: ``"readout"`` (default) the coalition's activation at the token the model's head
  reads (CLS for BERT-like encoders, the last non-pad token for decoders), ``"max"`` its largest
  activation over the input's tokens. The coalition's activation at a token is the mean of its
  members' activations (the input of the MLP's down projection) there. Each top input keeps its
  tokens and the activation at every token (rendered as highlights by ``_repr_html_``);
- **size** (and the share of the layer's neurons);
- **mean φ** among members (mean of φ_ij over ordered pairs i ≠ j), when φ is given;
- **weight change**: the share of the layer's fine-tuning change ‖W − W_ref‖² (up, gate and down
  projections of the MLP, biases excluded) that sits in the members' rows of the up/gate
  projections and columns of the down projection, beside their share of the neurons (so a share
  far above the neuron share means the fine-tuning concentrated there). Needs a model with
  reference weights (a LoRA adapter or a reference checkpoint);
- **ablation effect**: the mean change of the model's output (full readout) when the members are
  ablated (``"reference"`` mode when the model has reference weights, else ``"zero"``), over the
  texts, with a 95% Student-t interval;
- **heuristic correlations**: Pearson and Spearman correlation, over the texts, of the
  coalition's mean activation (mean over an input's non-pad tokens) with BM25, the query-term
  IDF statistics and coverage, when the texts are (query, passage) pairs.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hedonic_neurons.errors import ConfigError, DataError, ModelError, arg

if TYPE_CHECKING:
    from hedonic_neurons.models.neuron_model import NeuronModel

__all__ = [
    "RANKINGS",
    "CoalitionSummary",
    "coalition_summaries",
    "explorer_section",
    "inspect_coalition",
    "load_summaries",
    "summary_html",
    "write_summaries",
]

RANKINGS = ("readout", "max")
SUMMARIES_FORMAT = "hedonic-neurons/coalition-summaries/v1"


# ----------------------------------------------------------------------------------- the summary


@dataclass
class CoalitionSummary:
    """What :func:`inspect_coalition` found about one coalition (see the module docstring).

    ``top``: one dict per top input, best first: ``input`` (index in the texts), ``text``
    (``query``/``passage`` too for pairs), ``score`` (the ranking value), ``readout_activation``,
    ``max_activation``, ``mean_activation``, ``tokens`` (token strings), ``token_ids``,
    ``positions``, ``activations`` (coalition activation per token), ``readout_position``.
    ``weight_change``: ``share``, ``neuron_share``, ``enrichment`` (share / neuron share),
    ``coalition_sq``, ``layer_sq``; ``ablation``: ``mode``, ``mean``, ``low``, ``high``, ``n``,
    ``unablated_mean``; ``heuristics``: feature -> {``pearson``, ``spearman``}. A part that could
    not be computed is None, with the reason in ``notes``.
    """

    layer: int
    members: list[int]
    n_neurons: int
    n_texts: int
    rank_by: str
    top: list[dict[str, Any]]
    index: int | None = None
    method: str | None = None
    mean_phi: float | None = None
    weight_change: dict[str, Any] | None = None
    ablation: dict[str, Any] | None = None
    heuristics: dict[str, dict[str, float | None]] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def name(self) -> str:
        coalition = f"C{self.index}" if self.index is not None else f"{{{len(self.members)} neurons}}"
        return f"{self.method + ' ' if self.method else ''}L{self.layer} {coalition}"

    def sentence(self) -> str:
        """One plain sentence saying what was found."""
        return summary_sentence(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (plain lists, floats, None for what could not be computed)."""
        return {
            **asdict(self),
            "size": self.size,
            "name": self.name,
            "sentence": summary_sentence({**asdict(self), "size": self.size, "name": self.name}),
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> CoalitionSummary:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in doc.items() if k in known})

    def _repr_html_(self) -> str:
        return summary_html(self.to_dict())

    def __repr__(self) -> str:
        return f"CoalitionSummary({self.name}, size {self.size}, {len(self.top)} top inputs)"


# ------------------------------------------------------------------------------------- the inputs


def _texts(texts: Sequence[Any]) -> tuple[list[str] | None, list[str] | None, list[str] | None]:
    """(plain texts, queries, passages): texts are all strings or all (query, passage) pairs."""
    if isinstance(texts, str) or not isinstance(texts, Sequence) or len(texts) == 0:
        raise DataError(
            "texts must be a non-empty list of strings or of (query, passage) pairs, got "
            f"{type(texts).__name__}"
        )
    if all(isinstance(t, str) for t in texts):
        return list(texts), None, None
    queries, passages = [], []
    for i, t in enumerate(texts):
        if hasattr(t, "query") and hasattr(t, "passage"):
            q, p = t.query, t.passage
        elif isinstance(t, (tuple, list)) and len(t) == 2:
            q, p = t
        else:
            raise DataError(
                f"text {i} is {type(t).__name__}; expected every text to be a string, or every one a "
                "(query, passage) pair"
            )
        if not (isinstance(q, str) and isinstance(p, str)):
            raise DataError(f"text {i}: query and passage must be strings")
        queries.append(q)
        passages.append(p)
    return None, queries, passages


def _pairs(texts: Sequence[Any], queries: list[str], passages: list[str]) -> list[Any]:
    from hedonic_neurons.data.loaders import Pair

    out = []
    for t, q, p in zip(texts, queries, passages):
        out.append(t if isinstance(t, Pair) else Pair(qid=q, pid=p, query=q, passage=p))
    return out


def _check_model(model: Any) -> Any:
    from hedonic_neurons.models.loading import NeuronModel

    if not isinstance(model, NeuronModel):
        raise ModelError(
            f"expected a NeuronModel (from hedonic_neurons.models.load_model), got {type(model).__name__}: "
            "the coalition explorer needs its tokenizer and reference weights"
        )
    return model


def _members(partition: Any, coalition: Any, n: int) -> tuple[list[int], int | None]:
    """(sorted members, index in the partition or None)."""
    coalitions = _coalitions(partition)
    if isinstance(coalition, (int, np.integer)) and not isinstance(coalition, bool):
        if not -len(coalitions) <= int(coalition) < len(coalitions):
            raise DataError(
                f"coalition {coalition} is out of range: the partition has {len(coalitions)} coalitions"
            )
        index = int(coalition) % len(coalitions)
        members = coalitions[index]
    else:
        try:
            members = [int(i) for i in coalition]
        except TypeError:
            raise DataError(
                f"{arg('coalition')} must be a coalition index or a list of neuron indices, got "
                f"{type(coalition).__name__}"
            ) from None
        index = next((k for k, c in enumerate(coalitions) if sorted(c) == sorted(members)), None)
    return _check_members(members, n), index


def _check_members(members: Sequence[int], n: int) -> list[int]:
    members = sorted(int(i) for i in members)
    if not members:
        raise DataError("the coalition is empty; expected at least one neuron")
    if members[0] < 0 or members[-1] >= n:
        raise DataError(
            f"coalition members must be neuron indices in 0..{n - 1}, got {members[0]}..{members[-1]}"
        )
    if len(set(members)) != len(members):
        raise DataError("the coalition lists a neuron twice; expected distinct neuron indices")
    return members


def _coalitions(partition: Any) -> list[list[int]]:
    coalitions = getattr(partition, "coalitions", partition)
    if coalitions is None or isinstance(coalitions, (str, bytes)):
        raise DataError("partition must be a Partition (with .coalitions) or a list of neuron lists")
    try:
        return [[int(i) for i in c] for c in coalitions]
    except TypeError:
        raise DataError(
            "partition must be a Partition (with .coalitions) or a list of neuron lists; got "
            f"{type(partition).__name__}"
        ) from None


def _phi(phi: Any, n: int) -> np.ndarray | None:
    if phi is None:
        return None
    from hedonic_neurons.artifacts import validate_phi

    if isinstance(phi, torch.Tensor):
        phi = phi.detach().cpu().numpy()
    arr = validate_phi(phi)
    if arr.shape[0] != n:
        raise DataError(f"phi is {arr.shape[0]} x {arr.shape[0]}; expected {n} x {n} (the layer's neurons)")
    return arr


def mean_pairwise_phi(phi: np.ndarray, members: Sequence[int]) -> float | None:
    """Mean of φ_ij over ordered pairs of distinct members (None for a single neuron)."""
    idx = np.asarray(members, dtype=np.int64)
    if idx.size < 2:
        return None
    block = np.asarray(phi[np.ix_(idx, idx)], dtype=np.float64)
    return float((block.sum() - np.trace(block)) / (idx.size * (idx.size - 1)))


# ------------------------------------------------------------------------------ the measurements


def _batches(nm: NeuronModel, plain: list[str] | None, queries, passages, batch_size: int):
    """``(index of the first input, encoded batch)`` per ``batch_size`` inputs: the texts
    ``plain`` tokenised as they are, or the (query, passage) pairs by :func:`pair_batches`."""
    from hedonic_neurons.models.neuron_model import pair_batches

    if plain is None:
        for b, (_, batch) in enumerate(pair_batches(nm, zip(queries, passages), batch_size)):
            yield b * batch_size, dict(batch)
        return
    for start in range(0, len(plain), batch_size):
        batch = nm.tokenizer(
            plain[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=nm.input_format.max_length,
            padding_side=nm.input_format.padding_side,
            return_tensors="pt",
        )
        yield start, {k: v.to(nm.device) for k, v in batch.items()}


@dataclass
class _Recorded:
    tokens: Any  # TokenRecord
    readout: list[int]  # per input: index of the readout token among its tokens


def _record(nm: NeuronModel, layer: int, batches: list[tuple[int, dict]]) -> _Recorded:
    from hedonic_neurons.neurons.recording import readout_positions, record

    readout: list[int] = []
    with record(nm.model, [layer], pooling="none", moments=False, stop_after=True) as rec:
        for _, batch in batches:
            rec(batch)
            mask = batch["attention_mask"]
            pos = readout_positions(nm.model, mask)
            within = (mask.long().cumsum(-1) - 1).gather(1, pos[:, None])[:, 0]
            readout.extend(int(x) for x in within.tolist())
    return _Recorded(rec.tokens, readout)


def _coalition_values(recorded: _Recorded, coalitions: list[list[int]]) -> dict[str, np.ndarray]:
    """Per coalition and input: activation at the readout token, max and mean over tokens."""
    n_in = len(recorded.tokens)
    out = {k: np.zeros((len(coalitions), n_in)) for k in ("readout", "max", "mean")}
    for i in range(n_in):
        acts = recorded.tokens[i].activations.astype(np.float64)
        for c, members in enumerate(coalitions):
            per_token = acts[:, members].mean(1)
            out["readout"][c, i] = per_token[recorded.readout[i]]
            out["max"][c, i] = per_token.max()
            out["mean"][c, i] = per_token.mean()
    return out


def _top_inputs(
    nm: NeuronModel,
    recorded: _Recorded,
    members: list[int],
    values: dict[str, np.ndarray],
    c: int,
    rank_by: str,
    top: int,
    plain,
    queries,
    passages,
) -> list[dict[str, Any]]:
    scores = values[rank_by][c]
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:top]
    rows = []
    for i in order:
        rec = recorded.tokens[i]
        per_token = rec.activations[:, members].astype(np.float64).mean(1)
        row = {
            "input": i,
            "text": plain[i] if plain is not None else f"{queries[i]} | {passages[i]}",
            "score": float(scores[i]),
            "readout_activation": float(values["readout"][c, i]),
            "max_activation": float(values["max"][c, i]),
            "mean_activation": float(values["mean"][c, i]),
            "tokens": list(nm.tokenizer.convert_ids_to_tokens(rec.token_ids.tolist())),
            "token_ids": rec.token_ids.tolist(),
            "positions": rec.positions.tolist(),
            "activations": [float(v) for v in per_token],
            "readout_position": recorded.readout[i],
        }
        if plain is None:
            row["query"], row["passage"] = queries[i], passages[i]
        rows.append(row)
    return rows


def _weight_change(
    nm: NeuronModel, layer: int, coalitions: list[list[int]], notes: list[str]
) -> list[dict | None]:
    """Per coalition: its share of the layer's ‖W - W_ref‖² (see the module docstring)."""
    if not nm.has_reference:
        notes.append(
            "weight change: the model has no reference weights (no LoRA adapter or reference checkpoint)"
        )
        return [None] * len(coalitions)
    cur, ref = nm.mlp_weights(layer), nm.reference_mlp_weights(layer)
    per_neuron = torch.zeros(nm.n_neurons, dtype=torch.float64)
    for role in ("up", "gate"):
        w = getattr(cur, role)
        if w is not None:
            diff = w.detach().double().cpu() - getattr(ref, role).double().cpu()
            per_neuron += (diff**2).sum(1)
    diff = cur.down.detach().double().cpu() - ref.down.double().cpu()
    per_neuron += (diff**2).sum(0)
    total = float(per_neuron.sum())
    if total == 0.0:
        notes.append(f"weight change: layer {layer}'s MLP was not changed by the fine-tuning")
        return [None] * len(coalitions)
    out = []
    for members in coalitions:
        part = float(per_neuron[members].sum())
        share, neuron_share = part / total, len(members) / nm.n_neurons
        out.append(
            {
                "share": share,
                "neuron_share": neuron_share,
                "enrichment": share / neuron_share,
                "coalition_sq": part,
                "layer_sq": total,
            }
        )
    return out


def _ablation(
    nm: NeuronModel,
    layer: int,
    coalitions: list[list[int]],
    batches: list[tuple[int, dict]],
    mode: str | None,
    notes: list[str],
) -> list[dict | None]:
    from hedonic_neurons.evaluate.stats import mean_ci
    from hedonic_neurons.neurons.ablation import MODES, ablation_logits

    if mode is None:
        mode = "reference" if nm.has_reference else "zero"
    if mode not in MODES or mode in ("mean", "resample"):
        raise ConfigError(f"{arg('ablation')} must be 'reference' or 'zero', got {mode!r}")
    if mode == "reference" and not nm.has_reference:
        raise ModelError(
            "ablation 'reference' needs reference weights; load the model with an adapter or pass "
            f"{arg('ablation')}'zero'"
        )
    reference = nm.reference_mlp_weights(layer) if mode == "reference" else None
    sets = [[], *coalitions]
    base, deltas = [], []
    for _, batch in batches:
        logits = (
            ablation_logits(
                nm.model, batch, layer, sets, mode=mode, reference=reference, score_token_id=nm.score_token_id
            )
            .double()
            .cpu()
        )
        base.append(logits[0])
        deltas.append(logits[1:] - logits[0])
    base_all, delta_all = torch.cat(base), torch.cat(deltas, 1)
    out = []
    for c in range(len(coalitions)):
        est = mean_ci(delta_all[c].tolist())
        out.append(
            {
                "mode": mode,
                "readout": "full",
                "mean": est.mean,
                "low": est.low,
                "high": est.high,
                "n": est.n,
                "unablated_mean": float(base_all.mean()),
                "unablated_sd": float(base_all.std()) if len(base_all) > 1 else 0.0,
            }
        )
    return out


def _correlations(x: np.ndarray, features: dict[str, np.ndarray]) -> dict[str, dict[str, float | None]]:
    from scipy import stats

    out: dict[str, dict[str, float | None]] = {}
    for name, y in features.items():
        if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
            out[name] = {"pearson": None, "spearman": None}
            continue
        out[name] = {
            "pearson": float(stats.pearsonr(x, y).statistic),
            "spearman": float(stats.spearmanr(x, y).statistic),
        }
    return out


# ------------------------------------------------------------------------------------ public API


def coalition_summaries(
    model: NeuronModel,
    partition: Any,
    texts: Sequence[Any],
    layer: int,
    top_k: int = 10,
    *,
    coalitions: Sequence[Any] | None = None,
    phi: Any = None,
    top: int = 10,
    min_size: int = 2,
    rank_by: str = "readout",
    ablation: str | None = None,
    batch_size: int = 16,
    method: str | None = None,
    out: str | os.PathLike | None = None,
) -> list[CoalitionSummary]:
    """:class:`CoalitionSummary` of each of the ``top_k`` largest coalitions of size ≥ ``min_size``
    of ``partition`` (ties: smaller first member), or of the given ``coalitions`` (indices into
    the partition or member lists), measured on ``texts`` at ``layer``.

    One per-token recording and one batched ablation per batch serve every coalition. ``out``: a
    run folder; the summaries are written to ``out/explorer/<method>-L<layer>.json``
    (:func:`write_summaries`; ``method`` defaults to "coalitions"). Other arguments: see
    :func:`inspect_coalition`.
    """
    nm = _check_model(model)
    layer = nm.check_layer(layer)
    if rank_by not in RANKINGS:
        raise ConfigError(f"{arg('rank_by')} must be one of {', '.join(RANKINGS)}, got {rank_by!r}")
    for name, value in (("top", top), ("top_k", top_k), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{arg(name)} must be a positive integer, got {value!r}")
    if coalitions is None:
        ranked = [(c, k) for k, c in enumerate(_coalitions(partition)) if len(c) >= min_size]
        ranked.sort(key=lambda ck: (-len(ck[0]), min(ck[0])))
        chosen = [(_check_members(c, nm.n_neurons), k) for c, k in ranked[:top_k]]
        if not chosen:
            raise DataError(f"the partition has no coalition of size >= {min_size}; lower {arg('min_size')}")
    else:
        chosen = [_members(partition, c, nm.n_neurons) for c in coalitions]
    members = [m for m, _ in chosen]
    plain, queries, passages = _texts(texts)
    phi_arr = _phi(phi, nm.n_neurons)
    notes: list[str] = []
    batches = list(_batches(nm, plain, queries, passages, batch_size))
    recorded = _record(nm, layer, batches)
    values = _coalition_values(recorded, members)
    weights = _weight_change(nm, layer, members, notes)
    effects = _ablation(nm, layer, members, batches, ablation, notes)
    features = None
    if plain is None:
        from hedonic_neurons.data.heuristics import FEATURES, heuristic_features

        feats = heuristic_features(_pairs(texts, queries, passages))
        features = {name: np.asarray(feats[name]) for name in FEATURES}
    else:
        notes.append("heuristic correlations: the texts are not (query, passage) pairs")
    summaries = []
    for c, (m, index) in enumerate(chosen):
        summaries.append(
            CoalitionSummary(
                layer=layer,
                members=m,
                n_neurons=nm.n_neurons,
                n_texts=len(recorded.tokens),
                rank_by=rank_by,
                top=_top_inputs(nm, recorded, m, values, c, rank_by, top, plain, queries, passages),
                index=index,
                method=method,
                mean_phi=None if phi_arr is None else mean_pairwise_phi(phi_arr, m),
                weight_change=weights[c],
                ablation=effects[c],
                heuristics=None if features is None else _correlations(values["mean"][c], features),
                notes=list(notes) + ([] if phi_arr is not None else ["mean φ: no phi given"]),
            )
        )
    if out is not None:
        write_summaries(Path(out) / "explorer" / f"{method or 'coalitions'}-L{layer}.json", summaries)
    return summaries


def inspect_coalition(
    model: NeuronModel,
    partition: Any,
    coalition: Any,
    texts: Sequence[Any],
    *,
    layer: int,
    phi: Any = None,
    top: int = 10,
    rank_by: str = "readout",
    ablation: str | None = None,
    batch_size: int = 16,
    method: str | None = None,
) -> CoalitionSummary:
    """Summarise one coalition of ``layer`` on ``texts`` (see the module docstring).

    ``model``: a NeuronModel. ``partition``: a Partition (anything with ``.coalitions``) or a
    list of neuron lists; ``coalition``: an index into it or a list of member neurons.
    ``texts``: strings, or (query, passage) pairs (tuples or ``Pair``; then the model's input
    format encodes them and the heuristic correlations are computed). ``phi``: the layer's
    (n, n) φ, for the mean φ among members. ``top``: how many top-activating inputs to keep;
    ``rank_by``: ``"readout"`` (activation at the token the head reads) or ``"max"`` (largest over
    tokens). ``ablation``: ``"reference"`` or ``"zero"`` (default: reference when the model has
    reference weights). Returns a :class:`CoalitionSummary` (``to_dict()``, ``_repr_html_()``).
    """
    nm = _check_model(model)
    layer = nm.check_layer(layer)
    members, index = _members(partition, coalition, nm.n_neurons)
    (summary,) = coalition_summaries(
        nm,
        [members],
        texts,
        layer,
        coalitions=[0],
        phi=phi,
        top=top,
        rank_by=rank_by,
        ablation=ablation,
        batch_size=batch_size,
        method=method,
    )
    summary.index = index
    return summary


def explorer_section(
    model: NeuronModel,
    partitions: Mapping[str, Any],
    texts: Sequence[Any],
    layer: int,
    top_k: int = 5,
    *,
    out: str | os.PathLike | None = None,
    **kwargs: Any,
) -> dict[str, list[dict[str, Any]]]:
    """``{method: [summary dicts]}`` for the report's ``results["explorer"]``: the
    :func:`coalition_summaries` of the ``top_k`` largest coalitions of each partition in
    ``partitions`` (``{method: partition}``), each also written to
    ``out/explorer/<method>-L<layer>.json`` when ``out`` is given. ``kwargs`` go to
    :func:`coalition_summaries` (``phi``, ``top``, ``min_size``, ``rank_by``, ``ablation``,
    ``batch_size``)."""
    return {
        method: [
            s.to_dict()
            for s in coalition_summaries(model, part, texts, layer, top_k, method=method, out=out, **kwargs)
        ]
        for method, part in partitions.items()
    }


def write_summaries(path: str | os.PathLike, summaries: Sequence[CoalitionSummary | dict]) -> Path:
    """Write summaries as one JSON document ``{"format", "coalitions": [summary dicts]}``."""
    from hedonic_neurons.artifacts import provenance, write_json

    docs = [s.to_dict() if isinstance(s, CoalitionSummary) else dict(s) for s in summaries]
    return write_json(path, {"format": SUMMARIES_FORMAT, "coalitions": docs, "provenance": provenance()})


def load_summaries(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The summary dicts of a file written by :func:`write_summaries`."""
    from hedonic_neurons.artifacts import read_json

    doc = read_json(path)
    if not isinstance(doc, dict) or doc.get("format") != SUMMARIES_FORMAT:
        raise DataError(f"{path} is not a coalition summary file (expected format {SUMMARIES_FORMAT})")
    return list(doc["coalitions"])


# ------------------------------------------------------------------------------------- rendering


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}g}"


def summary_sentence(doc: dict[str, Any]) -> str:
    """One plain sentence of what a summary dict says (used by the report)."""
    size, n = doc.get("size", len(doc["members"])), doc["n_neurons"]
    parts = [f"{doc.get('name') or 'This coalition'} has {size} neurons ({100 * size / n:.1f}% of the layer)"]
    top = doc.get("top") or []
    if top:
        best = top[0]
        scores = best["activations"]
        peak = int(np.argmax(scores)) if scores else 0
        token = display_tokens(best["tokens"])[peak].strip() if best["tokens"] else "?"
        parts.append(f"it is most active on input {best['input']} (peak at token “{token}”)")
    ab = doc.get("ablation")
    if ab and ab.get("n", 0) > 1 and ab.get("low") is not None:
        clear = ab["low"] > 0 or ab["high"] < 0
        parts.append(
            f"ablating it ({ab['mode']}) changes the output by {_num(ab['mean'])} on average "
            f"(95% CI {_num(ab['low'])} to {_num(ab['high'])}, "
            + ("clearly not zero" if clear else "not distinguishable from zero")
            + f"; the unablated output has sd {_num(ab.get('unablated_sd'))})"
        )
    wc = doc.get("weight_change")
    if wc:
        parts.append(
            f"it carries {100 * wc['share']:.1f}% of the layer's fine-tuning weight change "
            f"({wc['enrichment']:.2f}× its share of neurons)"
        )
    heur = doc.get("heuristics") or {}
    scored = [(k, v["pearson"]) for k, v in heur.items() if v.get("pearson") is not None]
    if scored:
        name, r = max(scored, key=lambda kv: abs(kv[1]))
        parts.append(f"its mean activation correlates most with {name} (Pearson r = {r:.2f})")
    if doc.get("mean_phi") is not None:
        parts.append(f"mean pairwise φ {_num(doc['mean_phi'])}")
    return "; ".join(parts) + "."


def display_tokens(tokens: Sequence[str]) -> list[str]:
    """Token strings for reading: WordPiece '##x' joins the previous token, byte-level BPE markers
    (Ġ, ▁) become spaces, other WordPiece tokens get a leading space."""
    bpe = any(t.startswith(("Ġ", "▁")) for t in tokens)
    out = []
    for k, t in enumerate(tokens):
        if bpe:
            out.append(t.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "⏎"))
        elif t.startswith("##"):
            out.append(t[2:])
        else:
            out.append(t if k == 0 else " " + t)
    return out


def _colour(value: float, scale: float) -> str:
    alpha = min(1.0, abs(value) / scale) if scale > 0 else 0.0
    rgb = "255,140,0" if value >= 0 else "30,120,255"
    return f"rgba({rgb},{alpha:.3f})"


SUMMARY_CSS = (
    ".hn-coal{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;margin:1em 0;font-size:14px}"
    ".hn-coal h3{margin:.2em 0 .4em;font-size:16px}.hn-coal table{border-collapse:collapse;margin:.4em 0}"
    ".hn-coal td,.hn-coal th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}"
    ".hn-tok{border-radius:3px;padding:0 1px;white-space:pre-wrap}.hn-key{border-radius:3px;padding:0 3px}"
    ".hn-readout{outline:1px solid #333}"
    ".hn-members{font-family:monospace;font-size:12px;word-break:break-all}"
    ".hn-stats th{min-width:12em;max-width:22em}"
)
SHOWN_MEMBERS = 40


def _members_html(members: Sequence[int]) -> str:
    """The member list; beyond :data:`SHOWN_MEMBERS`, the rest folds into a ``<details>``."""
    text = ", ".join(str(m) for m in members[:SHOWN_MEMBERS])
    if len(members) <= SHOWN_MEMBERS:
        return f'<span class="hn-members">{text}</span>'
    rest = ", ".join(str(m) for m in members[SHOWN_MEMBERS:])
    return (
        f'<span class="hn-members">{text}, …</span><details><summary>all {len(members)} members</summary>'
        f'<span class="hn-members">{text}, {rest}</span></details>'
    )


def summary_html(doc: dict[str, Any], *, css: bool = True) -> str:
    """HTML of one summary dict: the numbers, the members, and the top inputs with every token's
    background coloured by the coalition's activation there (orange positive, blue negative;
    opacity ∝ |activation| / the largest |activation| among the shown tokens; the readout token is
    outlined; hovering a token shows its value)."""
    size, n = doc.get("size", len(doc["members"])), doc["n_neurons"]
    name = doc.get("name") or f"L{doc['layer']}"
    rows = [
        ("size", f"{size} neurons ({100 * size / n:.1f}% of {n})"),
        ("members", _members_html(doc["members"])),
    ]
    if doc.get("mean_phi") is not None:
        rows.append(("mean pairwise φ", _num(doc["mean_phi"])))
    ab = doc.get("ablation")
    if ab:
        rows.append(
            (
                f"ablation effect ({html.escape(ab['mode'])}, mean Δ output, 95% CI, n = {ab['n']})",
                f"{_num(ab['mean'])} [{_num(ab['low'])}, {_num(ab['high'])}] "
                f"(unablated output mean {_num(ab.get('unablated_mean'))}, "
                f"sd {_num(ab.get('unablated_sd'))})",
            )
        )
    wc = doc.get("weight_change")
    if wc:
        rows.append(
            (
                "share of the layer's ‖ΔW‖² (LoRA)",
                f"{100 * wc['share']:.2f}% (neuron share {100 * wc['neuron_share']:.2f}%, "
                f"{wc['enrichment']:.2f}×)",
            )
        )
    heur = doc.get("heuristics")
    if heur:
        rows.append(
            (
                "correlation of mean activation with IR heuristics (Pearson / Spearman)",
                ", ".join(f"{k} {_num(v['pearson'], 2)} / {_num(v['spearman'], 2)}" for k, v in heur.items()),
            )
        )
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    top = doc.get("top") or []
    scale = max((abs(a) for t in top for a in t["activations"]), default=0.0)
    ranking = (
        "activation at the readout token"
        if doc.get("rank_by") == "readout"
        else "largest activation over tokens"
    )
    items = []
    for rank, t in enumerate(top, 1):
        spans = "".join(
            f'<span class="hn-tok{" hn-readout" if k == t["readout_position"] else ""}" '
            f'style="background:{_colour(a, scale)}" title="{html.escape(raw)}: {a:.4g}">'
            f"{html.escape(text)}</span>"
            for k, (raw, text, a) in enumerate(
                zip(t["tokens"], display_tokens(t["tokens"]), t["activations"])
            )
        )
        items.append(
            f"<tr><td>{rank}</td><td>{t['input']}</td><td>{_num(t['score'])}</td><td>{spans}</td></tr>"
        )
    inputs = (
        f"<p>Top {len(top)} of {doc['n_texts']} inputs by the coalition's {ranking} "
        "(the coalition's activation "
        "at a token is its members' mean activation there). Token background: "
        '<span class="hn-key" style="background:rgba(255,140,0,1)">positive</span> / '
        '<span class="hn-key" style="background:rgba(30,120,255,1)">negative</span>, '
        "opacity ∝ |activation| "
        f"(full colour at {_num(scale)}); the outlined token is the one the head reads.</p>"
        "<table><thead><tr><th>#</th><th>input</th><th>score</th><th>tokens</th></tr></thead>"
        f"<tbody>{''.join(items)}</tbody></table>"
    )
    notes = "".join(f"<li>{html.escape(x)}</li>" for x in doc.get("notes") or [])
    style = f"<style>{SUMMARY_CSS}</style>" if css else ""
    return (
        f'{style}<div class="hn-coal"><h3>{html.escape(name)}</h3>'
        f"<p>{html.escape(doc.get('sentence') or summary_sentence(doc))}</p>"
        f'<table class="hn-stats">{table}</table>{inputs}' + (f"<ul>{notes}</ul>" if notes else "") + "</div>"
    )
