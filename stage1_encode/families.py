"""The model families the layer stepper supports: the ONE list (README, refusals and tests quote it).

A family is a Hugging Face ``model_type``. The stepper (stage1_encode/stepping.py) lets the
model's own ``forward`` compute everything around the layers (embeddings with their scaling or
multipliers, masks of each layer type, rotary tables of each layer type, relative-position
biases, the final norm) and runs only the layers itself, so a family needs nothing but the
path of its layer list in the base model (``AutoModel``). Each family here is checked state
by state against ``output_hidden_states`` with non-default forward-changing config fields
(tests/test_encode_families.py); any other ``model_type`` is refused by name, and the first
batch of every encode and infer is checked again against the model's own forward
(stage1_encode/self_check.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import InputError


@dataclass(frozen=True)
class Family:
    model_type: str  # HF config.model_type
    name: str  # as users know it
    layers: str  # attribute path of the layer list in the base model
    kind: str  # "decoder" (causal) or "encoder" (bidirectional)


FAMILIES: tuple[Family, ...] = (
    Family("llama", "Llama", "layers", "decoder"),
    Family("mistral", "Mistral", "layers", "decoder"),
    Family("mixtral", "Mixtral", "layers", "decoder"),
    Family("qwen2", "Qwen2", "layers", "decoder"),
    Family("qwen3", "Qwen3", "layers", "decoder"),
    Family("qwen3_moe", "Qwen3-MoE", "layers", "decoder"),
    Family("gemma", "Gemma", "layers", "decoder"),
    Family("gemma2", "Gemma 2", "layers", "decoder"),
    Family("gemma3_text", "Gemma 3 text", "layers", "decoder"),
    Family("phi3", "Phi-3", "layers", "decoder"),
    Family("phi", "Phi-1/2", "layers", "decoder"),
    Family("granite", "Granite", "layers", "decoder"),
    Family("granitemoe", "Granite-MoE", "layers", "decoder"),
    Family("smollm3", "SmolLM3", "layers", "decoder"),
    Family("olmo2", "OLMo 2", "layers", "decoder"),
    Family("cohere2", "Command R7B", "layers", "decoder"),
    Family("starcoder2", "StarCoder2", "layers", "decoder"),
    Family("stablelm", "StableLM", "layers", "decoder"),
    Family("gpt2", "GPT-2", "h", "decoder"),
    Family("gptj", "GPT-J", "h", "decoder"),
    Family("gpt_neox", "GPT-NeoX/Pythia", "layers", "decoder"),
    Family("opt", "OPT", "decoder.layers", "decoder"),
    Family("falcon", "Falcon", "h", "decoder"),
    Family("bloom", "BLOOM", "h", "decoder"),
    Family("bert", "BERT", "encoder.layer", "encoder"),
    Family("roberta", "RoBERTa", "encoder.layer", "encoder"),
    Family("xlm-roberta", "XLM-RoBERTa", "encoder.layer", "encoder"),
    Family("electra", "ELECTRA", "encoder.layer", "encoder"),
    Family("distilbert", "DistilBERT", "transformer.layer", "encoder"),
    Family("mpnet", "MPNet", "encoder.layer", "encoder"),
    Family("deberta-v2", "DeBERTa-v2/v3", "encoder.layer", "encoder"),
    Family("modernbert", "ModernBERT", "layers", "encoder"),
)
BY_MODEL_TYPE: dict[str, Family] = {f.model_type: f for f in FAMILIES}


def supported_text() -> str:
    """``"Llama (llama), Mistral (mistral), ..."``: what a refusal lists, as the README does."""
    return ", ".join(f"{f.name} ({f.model_type})" for f in FAMILIES)


def family_of(model_type: str, model: str, architecture: str | None = None) -> Family:
    """The family of ``model_type``, or InputError naming the model and listing the supported ones."""
    family = BY_MODEL_TYPE.get(model_type)
    if family is None:
        arch = f"architecture {architecture} " if architecture else ""
        raise InputError(
            f"--model {model}: {arch}(model_type '{model_type}') is not a supported family; layer-by-layer "
            f"stepping is checked for: {supported_text()}"
        )
    return family


def check_supported(spec) -> Family | None:
    """Refuse an unsupported model from its ``config.json`` alone (before loading anything).
    ``spec``: a :class:`stage1_encode.models.ModelSpec`; None when config.json is unreadable."""
    try:
        config = json.loads((Path(spec.path) / "config.json").read_text())
    except (OSError, ValueError):
        return None  # a damaged config.json is refused by the model checks, naming the fix
    model_type = str(config.get("model_type", "")) if isinstance(config, dict) else ""
    archs = config.get("architectures") if isinstance(config, dict) else None
    return family_of(model_type, spec.name, archs[0] if isinstance(archs, list) and archs else None)
