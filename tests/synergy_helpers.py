"""Shared helpers of the synergy tests: a tiny NeuronModel stand-in and brute-force references."""

from __future__ import annotations

import copy
import zlib
from contextlib import contextmanager

import torch

from hedonic_neurons.models.adapters import check_layer, mlp_modules, mlp_weights, n_neurons
from tiny import tiny_model


@contextmanager
def one_thread():
    """Tiny models run fastest on one thread (and the CI machine is shared); restored on exit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def scaled_tiny(family: str, *, seed: int = 0, std: float = 0.4, **kw) -> torch.nn.Module:
    """A tiny random model with larger weights than HF's init, so the norms are far from linear."""
    model = tiny_model(family, seed=seed, **kw)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(std * torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5 * 4)
            elif "bias" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def finetuned_copy(base: torch.nn.Module, layers, *, scale: float = 0.5, seed: int = 1) -> torch.nn.Module:
    """The base model with the MLP weights of ``layers`` perturbed (a stand-in for a merged LoRA)."""
    tuned = copy.deepcopy(base)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers:
            mods = mlp_modules(tuned, layer)
            for mod in (mods.up, mods.down, mods.gate):
                if mod is None:
                    continue
                mod.weight.add_(scale * mod.weight.std() * torch.randn(mod.weight.shape, generator=gen))
                if mod.bias is not None:
                    mod.bias.add_(0.1 * torch.randn(mod.bias.shape, generator=gen))
    return tuned


class TinyNM:
    """Just enough of NeuronModel for the collectors: a fine-tuned tiny model and its base."""

    def __init__(self, model, base=None, *, vocab: int = 97):
        self.model, self.base, self.vocab = model, base, vocab
        self.n_neurons = n_neurons(model)
        self.d_model = model.config.hidden_size
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.identity = {"model": "tiny", "adapter": None}
        self.input_format = None
        self.has_reference = base is not None

    def mlp_weights(self, layer):
        return mlp_weights(self.model, layer)

    def reference_mlp_weights(self, layer):
        return mlp_weights(self.base, layer)

    def check_layer(self, layer):
        return check_layer(self.model, layer)

    def encode(self, queries, passages):
        """Word ids by hash (right padding; BERT-like models start with a CLS id 2)."""
        rows = []
        for q, p in zip(queries, passages):
            words = f"{q} {p}".split()[:12]
            rows.append([2] + [3 + zlib.crc32(w.encode()) % (self.vocab - 3) for w in words])
        width = max(map(len, rows))
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for b, row in enumerate(rows):
            ids[b, : len(row)] = torch.tensor(row)
            mask[b, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}


@contextmanager
def reverted(model, base, layer, neurons, *, zero: bool = False):
    """Weight surgery in place: ``neurons`` of ``layer`` set to ``base``'s weights (or their down
    columns to zero with ``zero=True``) inside the block, restored on exit."""
    idx = torch.as_tensor(list(neurons), dtype=torch.long)
    mine, ref = mlp_weights(model, layer), mlp_weights(base, layer)
    views = [mine.down] + [t for t in (mine.up, mine.gate, mine.up_bias, mine.gate_bias) if t is not None]
    saved = [v.detach().clone() for v in views]
    try:
        with torch.no_grad():
            if zero:
                mine.down[:, idx] = 0.0
            else:
                for name in ("up", "gate", "up_bias", "gate_bias"):
                    w, w_ref = getattr(mine, name), getattr(ref, name)
                    if w is not None:
                        w[idx] = w_ref[idx]  # views of the parameters (transposed for Conv1D)
                mine.down[:, idx] = ref.down[:, idx]
        yield model
    finally:
        with torch.no_grad():
            for v, old in zip(views, saved):
                v.copy_(old)


def residual_at(model, batch, layer) -> torch.Tensor:
    """The residual after block ``layer`` at the readout position, captured with our own hooks."""
    from hedonic_neurons.neurons import readout_positions

    mods = mlp_modules(model, layer)
    store = {}
    if mods.post_norm is not None:  # BERT: the sum entering the block's output LayerNorm
        handle = mods.post_norm.register_forward_pre_hook(lambda m, args: store.__setitem__("r", args[0]))
    else:
        handle = mods.block.register_forward_hook(
            lambda m, args, out: store.__setitem__("r", out[0] if isinstance(out, tuple) else out)
        )
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        handle.remove()
    pos = readout_positions(model, batch["attention_mask"])
    return store["r"][torch.arange(len(pos)), pos]


def save_scaled_tiny(folder, family: str, *, nan_layer: int | None = None, **kw):
    """A scaled tiny model plus an offline word-level tokenizer, saved to ``folder`` (optionally with
    a NaN in the up projection of ``nan_layer``)."""
    from test_loading import tiny_tokenizer

    model = scaled_tiny(family, **kw)
    if nan_layer is not None:
        with torch.no_grad():
            mlp_modules(model, nan_layer).up.weight[0, 0] = float("nan")
    model.save_pretrained(folder)
    tiny_tokenizer(family).save_pretrained(folder)
    return folder


def write_pairs(path, rows: int = 11, *, seed: int = 0):
    """A top1000-style TSV (qid, pid, query, passage) of random sentences over the tiny vocabulary."""
    import random

    from test_loading import WORDS

    rng = random.Random(seed)
    words = [w for w in WORDS if w.isalpha()]
    lines = []
    for k in range(rows):
        query = " ".join(rng.choices(words, k=rng.randint(2, 5)))
        passage = " ".join(rng.choices(words, k=rng.randint(3, 14)))
        lines.append(f"q{k // 3}\tp{k}\t{query}\t{passage}")
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_neuron_model(root, n: int, rows: int, n_test: int):
    """A scaled tiny LLaMA (``n`` MLP neurons) loaded as a NeuronModel from ``root``, and
    ``rows`` written pairs (queries of 3 pairs) split into (model, the first ``n_test``, the rest)."""
    from hedonic_neurons.data import load_pairs
    from hedonic_neurons.models import load_model

    with one_thread():
        nm = load_model(save_scaled_tiny(root / "llama", "llama", n=n), device="cpu")
    pairs = load_pairs(write_pairs(root / "pairs.tsv", rows=rows))
    return nm, pairs[:n_test], pairs[n_test:]
