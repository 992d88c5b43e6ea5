"""The one batching of (query, passage) pairs: NeuronModel.batches / pair_batches / encode_pairs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hedonic_neurons.data.loaders import Pair
from hedonic_neurons.errors import ConfigError, DataError
from hedonic_neurons.models import NeuronModel
from hedonic_neurons.models.neuron_model import as_pair, encode_pairs, pair_batches
from test_loading import WORDS, tiny_tokenizer
from tiny import tiny_model


def _texts(count: int) -> list[tuple[str, str]]:
    """Pairs of different lengths (so batches get padding)."""
    return [
        (" ".join(WORDS[i : i + 1 + i % 3]), " ".join(WORDS[2 * i : 2 * i + 2 + (5 * i) % 7]))
        for i in range(count)
    ]


@pytest.fixture(scope="module", params=["bert", "llama"])
def nm(request) -> NeuronModel:
    return NeuronModel.from_hf(tiny_model(request.param), tiny_tokenizer(request.param))


def _old_loop(nm: NeuronModel, pairs: list[Pair], size: int) -> list[dict[str, torch.Tensor]]:
    """The loop the call-sites had: slice, then encode the chunk's queries and passages."""
    out = []
    for start in range(0, len(pairs), size):
        chunk = pairs[start : start + size]
        out.append(nm.encode([p.query for p in chunk], [p.passage for p in chunk]))
    return out


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


def test_batches_equal_the_old_loop_for_pair_rows_and_tuples_with_a_partial_last_batch(nm):
    texts = _texts(11)
    rows = [Pair(qid=f"q{i}", pid=f"p{i}", query=q, passage=p) for i, (q, p) in enumerate(texts)]
    want = _old_loop(nm, rows, 4)
    assert [b["input_ids"].shape[0] for b in want] == [4, 4, 3]
    assert len({b["input_ids"].shape[1] for b in want}) > 1  # padded to different widths
    for data in (rows, texts, iter(texts), [list(t) for t in texts]):
        got = list(nm.batches(data, 4))
        assert len(got) == len(want)
        for k, ((chunk, batch), ref) in enumerate(zip(got, want)):
            assert [as_pair(item) for item in chunk] == texts[4 * k : 4 * k + 4]
            _same(batch, ref)


def test_batch_size_at_least_the_data_gives_one_batch_and_divisible_sizes_no_empty_one(nm):
    texts = _texts(6)
    (only,) = list(pair_batches(nm, texts, 50))
    _same(only[1], nm.encode([q for q, _ in texts], [p for _, p in texts]))
    assert [len(chunk) for chunk, _ in pair_batches(nm, texts, 3)] == [3, 3]
    assert list(pair_batches(nm, [], 3)) == []


def test_input_format_override_encodes_with_that_format_on_the_device(nm):
    texts = _texts(5)
    short = dataclasses.replace(nm.input_format, max_length=8)
    got = [batch for _, batch in nm.batches(texts, 2, input_format=short)]
    for k, batch in enumerate(got):
        chunk = texts[2 * k : 2 * k + 2]
        ref = short.encode(nm.tokenizer, [q for q, _ in chunk], [p for _, p in chunk])
        _same(batch, {key: v.to(nm.device) for key, v in ref.items()})
    assert max(b["input_ids"].shape[1] for b in got) <= 8
    full = [batch for _, batch in nm.batches(texts, 2)]
    assert max(b["input_ids"].shape[1] for b in full) > 8  # the override did shorten


def test_a_non_pair_item_names_pairs_and_its_index(nm):
    texts: list = [*_texts(5)]
    texts[4] = ("only one string",)
    batches = nm.batches(texts, 2)
    next(batches)
    next(batches)  # the first two chunks are fine: the error comes with the chunk holding item 4
    with pytest.raises(DataError, match=r"pairs=: item 4 is a tuple; expected a Pair"):
        next(batches)
    for bad in (3, "a text", ("q", 7), ("a", "b", "c")):
        with pytest.raises(DataError, match=r"pairs=: item 1 is a "):
            encode_pairs(nm, [texts[0], bad])


@pytest.mark.parametrize("size", [0, -2, 2.0, True])
def test_a_bad_batch_size_names_batch_size(nm, size):
    with pytest.raises(ConfigError, match=r"batch_size=.*expected a positive integer"):
        list(nm.batches(_texts(3), size))
