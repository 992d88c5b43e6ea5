"""How a (query, passage) pair becomes model input: the one place inputs are formatted.

Two kinds:

- ``text`` (decoder models): one string from ``template`` (default
  ``"query: {query} document: {passage}"``, the training format), then the tokenizer's EOS token
  appended if it has one and does not add it itself (``append_eos``);
- ``pair`` (BERT-style cross-encoders): the tokenizer's own pair encoding, ``tokenizer(query,
  passage)`` (``[CLS] query [SEP] passage [SEP]`` with token type ids).

Only the passage is truncated to fit ``max_length`` (query and template text are kept whole).
``padding_side`` may be ``right`` (default) or ``left``; with left padding the batch also carries
``position_ids`` counted over real tokens, so a model sees the same positions either way.
Every result file records :meth:`InputFormat.to_dict`.
"""

from __future__ import annotations

import re
import string
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

from hedonic_neurons.errors import ConfigError, DataError

DEFAULT_TEMPLATE = "query: {query} document: {passage}"


@dataclass(frozen=True)
class InputFormat:
    """Query/passage template, maximum length and padding side of every model input.

    ``kind``: ``"text"`` (template string, decoders), ``"pair"`` (tokenizer pair encoding,
    BERT-style encoders) or ``"auto"`` (decided by the loader from the architecture).
    ``append_eos``: ``None`` means "if the tokenizer has an EOS token it does not add itself"
    (decided by the loader, see :meth:`resolve`); it only applies to ``text``.
    """

    template: str = DEFAULT_TEMPLATE
    max_length: int = 256
    padding_side: Literal["right", "left"] = "right"
    kind: Literal["auto", "text", "pair"] = "auto"
    append_eos: bool | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("auto", "text", "pair"):
            raise ConfigError(f"input format kind must be 'auto', 'text' or 'pair', got {self.kind!r}")
        if self.padding_side not in ("right", "left"):
            raise ConfigError(f"padding_side must be 'right' or 'left', got {self.padding_side!r}")
        if not isinstance(self.max_length, int) or isinstance(self.max_length, bool) or self.max_length < 8:
            raise ConfigError(f"max_length must be an integer >= 8, got {self.max_length!r}")
        try:
            names = [f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None]
        except ValueError as exc:
            raise ConfigError(
                f"input template {self.template!r} is not a valid format string: {exc}"
            ) from None
        if sorted(names) != ["passage", "query"]:
            raise ConfigError(
                f"input template {self.template!r} must contain {{query}} and {{passage}} once each "
                f"and no other fields, found {names}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description, recorded in every result file."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputFormat:
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown input format field(s) {unknown}; expected some of {sorted(known)}")
        return cls(**data)

    def resolve(self, tokenizer: Any, *, encoder: bool, eos_is_pad: bool = False) -> InputFormat:
        """A copy with ``kind`` and ``append_eos`` decided for this tokenizer and architecture.

        ``eos_is_pad``: the pad token equals EOS; EOS is then never appended, because a model's
        sequence-classification head skips pad-id tokens and would read the token before it.
        """
        kind = self.kind if self.kind != "auto" else ("pair" if encoder else "text")
        if encoder and self.padding_side == "left":
            raise ConfigError(
                "left padding is not supported for encoder (BERT-style) models: their head reads the first "
                "token, which would be padding; use padding_side='right'"
            )
        append = self.append_eos
        if kind == "pair":
            append = False
        elif append is None:
            append = tokenizer.eos_token_id is not None and not eos_is_pad and not _adds_eos(tokenizer)
        elif append and tokenizer.eos_token_id is None:
            raise ConfigError("append_eos=True, but the tokenizer has no EOS token")
        return replace(self, kind=kind, append_eos=bool(append))

    def encode(self, tokenizer: Any, queries: list[str] | str, passages: list[str] | str) -> Any:
        """Tokenize, truncate (passage only) and pad a batch; returns a ``BatchEncoding`` of tensors.

        The format must be resolved (:meth:`resolve`); :meth:`NeuronModel.encode` does that.
        """
        if self.kind == "auto" or self.append_eos is None:
            raise ConfigError(
                "InputFormat.encode needs a resolved format: call .resolve(tokenizer, ...) first"
            )
        queries = [queries] if isinstance(queries, str) else list(queries)
        passages = [passages] if isinstance(passages, str) else list(passages)
        if len(queries) != len(passages):
            raise DataError(
                f"got {len(queries)} queries but {len(passages)} passages; expected one passage per query"
            )
        if not queries:
            raise DataError("nothing to encode: no (query, passage) pairs")
        if self.kind == "pair":
            ids = self._pair_ids(tokenizer, queries, passages)
        else:
            ids = self._text_ids(tokenizer, queries, passages)
        batch = tokenizer.pad(ids, padding=True, padding_side=self.padding_side, return_tensors="pt")
        if self.padding_side == "left":
            mask = batch["attention_mask"]
            batch["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return batch

    # ------------------------------------------------------------------------------ internals

    def _pair_ids(
        self, tokenizer: Any, queries: list[str], passages: list[str]
    ) -> list[dict[str, list[int]]]:
        enc = tokenizer(queries, passages, truncation="only_second", max_length=self.max_length)
        rows = [{k: enc[k][i] for k in enc} for i in range(len(queries))]
        too_long = [i for i, row in enumerate(rows) if len(row["input_ids"]) > self.max_length]
        if too_long:  # the query alone does not fit: cut both
            again = tokenizer(
                [queries[i] for i in too_long],
                [passages[i] for i in too_long],
                truncation="longest_first",
                max_length=self.max_length,
            )
            for j, i in enumerate(too_long):
                rows[i] = {k: again[k][j] for k in again}
        return rows

    def _text_ids(
        self, tokenizer: Any, queries: list[str], passages: list[str]
    ) -> list[dict[str, list[int]]]:
        budget = self.max_length - (1 if self.append_eos else 0)
        texts = [self.template.format(query=q, passage=p) for q, p in zip(queries, passages)]
        rows = []
        for q, p, ids in zip(queries, passages, tokenizer(texts)["input_ids"]):
            if len(ids) > budget:
                ids = self._truncated(tokenizer, q, p, budget)
            if self.append_eos:
                ids = [*ids, tokenizer.eos_token_id]
            rows.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
        return rows

    def _truncated(self, tokenizer: Any, query: str, passage: str, budget: int) -> list[int]:
        """Ids of the template with the longest whitespace-delimited passage prefix that fits."""

        def ids_for(p: str) -> list[int]:
            return tokenizer(self.template.format(query=query, passage=p))["input_ids"]

        cuts = [m.start() for m in re.finditer(r"\s+", passage)]
        lo, hi, best = 0, len(cuts) - 1, ids_for("")
        while lo <= hi:  # binary search over the cut points
            mid = (lo + hi) // 2
            cand = ids_for(passage[: cuts[mid]])
            if len(cand) <= budget:
                best, lo = cand, mid + 1
            else:
                hi = mid - 1
        return best[:budget]  # the query and template alone may exceed the budget: hard cut


def _adds_eos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts its EOS token at the end of an encoded text by itself."""
    eos = tokenizer.eos_token_id
    if eos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[-1] == eos
