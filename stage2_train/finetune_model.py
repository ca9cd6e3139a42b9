"""The fine-tuning baselines' network: the LLM -> pooled last state -> linear head.

``--arch lora|ia3|prefix`` wrap the frozen LLM with a ``peft`` adapter, set as the ENGINE
authors' ``utils/peft.py`` sets them: LoRA r=8, alpha 32, dropout 0.05 on the attention
query/value projections; IA3 on the same projections; prefix tuning with 20 virtual tokens.
``--arch finetune`` trains every LLM weight. The head reads the last LLM state pooled as the cache was (the manifest's
``pooling``), which is the state a baseline on the cache reads, so ``pipeline export`` of a
tuned model gives caches whose last state is this network's pooled feature.

What a checkpoint stores (:meth:`TextClassifier.trained_state`): the adapter weights
(``peft.get_peft_model_state_dict``) or, for ``finetune``, every LLM weight, plus the head;
the base weights of an adapted LLM are never written and never changed.

Shapes: B texts, T tokens, H hidden size, C classes.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from stage2_train.config import PEFT_ARCHS

LORA_RANK, LORA_ALPHA, LORA_DROPOUT = 8, 32, 0.05  # the ENGINE authors' utils/peft.py
PREFIX_TOKENS = 20
LORA_TARGETS = {"decoder": ["q_proj", "v_proj"], "encoder": ["query", "value"]}  # attention query/value projections
HEAD, ADAPTER, LLM = "head.", "adapter.", "llm."  # key prefixes in the saved state


def peft_config(arch: str, family: str):
    """The peft configuration of ``arch`` for a decoder (Llama-style) or encoder (BERT-style) LLM."""
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, TaskType

    task = TaskType.FEATURE_EXTRACTION  # the base model's hidden states, no LM head
    if arch == "lora":
        return LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=LORA_DROPOUT, target_modules=LORA_TARGETS[family], task_type=task)
    if arch == "ia3":
        return IA3Config(target_modules=LORA_TARGETS[family], feedforward_modules=[], task_type=task)
    if arch == "prefix":
        return PrefixTuningConfig(num_virtual_tokens=PREFIX_TOKENS, task_type=task)
    raise ValueError(f"no peft configuration for arch {arch!r}")


# transformers' deprecated names that peft still uses (its setup probes is_gradient_checkpointing,
# prefix tuning passes past_key_values): a FutureWarning in every run's log that a user cannot act on
PEFT_DEPRECATIONS = ("`is_gradient_checkpointing` is deprecated", "`past_key_values` is deprecated")


@contextmanager
def peft_quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        for message in PEFT_DEPRECATIONS:
            warnings.filterwarnings("ignore", message=message, category=FutureWarning)
        yield


class TextClassifier(nn.Module):
    """``forward(TokenBatch) -> (1, B, C)`` logits (one head: the loop's ``(S, B, C)`` with S = 1).

    ``loaded``: stage 1's :class:`~stage1_encode.models.LoadedModel` (its tokenizer and padding
    are the encoder's); ``arch`` in ``PEFT_ARCHS`` wraps the frozen model with an adapter,
    ``finetune`` makes every weight trainable.
    """

    num_rungs = 1

    def __init__(self, loaded, arch: str, num_classes: int, pooling: str, dropout: float) -> None:
        super().__init__()
        from stage1_encode.stepping import LayerStepper

        self.arch, self.pooling = arch, pooling
        self.stepper = LayerStepper(loaded)  # tokenization and padding as `pipeline encode` does them
        if arch in PEFT_ARCHS:
            from peft import get_peft_model

            with peft_quiet():
                self.llm = get_peft_model(loaded.model, peft_config(arch, self.stepper.family))
        else:
            self.llm = loaded.model.requires_grad_(True)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.stepper.hidden_size, num_classes)

    def pooled(self, batch) -> torch.Tensor:
        """Pooled last LLM state of a token batch: (B, H) float32."""
        from stage1_encode.stepping import pool_states

        kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if batch.token_type_ids is not None and self.arch != "prefix":  # peft drops them for prefix tuning: one text, zeros anyway
            kwargs["token_type_ids"] = batch.token_type_ids
        with peft_quiet():
            hidden = self.llm(**kwargs).last_hidden_state  # (B, T, H); decoders: after the final norm, as state L
        return pool_states(hidden, batch.attention_mask, self.pooling)

    def forward(self, batch) -> torch.Tensor:
        return self.head(self.dropout(self.pooled(batch))).unsqueeze(0)  # (1, B, C)

    # -- what a checkpoint holds --------------------------------------------------------
    def trained_state(self) -> dict[str, torch.Tensor]:
        """The weights training changed: adapter (or every LLM weight) and head, on CPU."""
        if self.arch in PEFT_ARCHS:
            from peft import get_peft_model_state_dict

            llm = {ADAPTER + k: v for k, v in get_peft_model_state_dict(self.llm).items()}
        else:
            llm = {LLM + k: v for k, v in self.llm.state_dict().items()}
        head = {HEAD + k: v for k, v in self.head.state_dict().items()}
        return {k: v.detach().cpu().clone() for k, v in {**llm, **head}.items()}

    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`trained_state`; RuntimeError when keys or shapes do not match."""
        head = {k[len(HEAD):]: v for k, v in state.items() if k.startswith(HEAD)}
        self.head.load_state_dict(head)
        if self.arch in PEFT_ARCHS:
            from peft import set_peft_model_state_dict

            adapter = {k[len(ADAPTER):]: v for k, v in state.items() if k.startswith(ADAPTER)}
            expected = {k for k in self._adapter_keys()}
            if set(adapter) != expected:
                raise RuntimeError(f"adapter keys differ: missing {sorted(expected - set(adapter))[:3]}, unexpected {sorted(set(adapter) - expected)[:3]}")
            set_peft_model_state_dict(self.llm, adapter)
        else:
            self.llm.load_state_dict({k[len(LLM):]: v for k, v in state.items() if k.startswith(LLM)})

    def _adapter_keys(self) -> list[str]:
        from peft import get_peft_model_state_dict

        return list(get_peft_model_state_dict(self.llm))

    def base_state(self) -> dict[str, torch.Tensor]:
        """The LLM's base weights under their plain HF names (adapter weights left out)."""
        if self.arch not in PEFT_ARCHS:
            return dict(self.llm.state_dict())
        base = self.llm.get_base_model()
        out = {}
        for k, v in base.state_dict().items():
            if any(tag in k for tag in ("lora_", "ia3_", "prefix_encoder")):
                continue
            out[k.replace(".base_layer.", ".")] = v
        return out

    def merged_llm(self):
        """The tuned LLM as a plain HF model: LoRA/IA3 merged into the base weights (on a copy,
        this network is unchanged), or the fine-tuned model. Prefix tuning has nothing to merge."""
        import copy

        if self.arch == "prefix":
            raise ValueError("prefix tuning adds virtual tokens, not weights: nothing to merge")
        llm = copy.deepcopy(self.llm)
        return llm.merge_and_unload() if self.arch in PEFT_ARCHS else llm


def build_classifier(spec: dict, device: str = "cpu") -> TextClassifier:
    """The network of ``config["model"]`` for a fine-tuning arch: the LLM named by the cache
    manifest (weights checked against its hash), adapted as ``spec["arch"]`` says."""
    from pipeline.core.errors import InputError
    from stage1_encode.models import load_model, resolve_model, weights_hash

    model_spec = resolve_model(spec["llm"])
    if spec.get("weights_sha256") and weights_hash(model_spec.path) != spec["weights_sha256"]:
        raise InputError(
            f"model {spec['llm']}: its weights changed since the run was trained (sha256 differs from the cache manifest's); "
            "retrain with `pipeline train CACHE --arch " + spec["arch"] + "`"
        )
    loaded = load_model(model_spec, device=device)
    model = TextClassifier(loaded, spec["arch"], spec["out_channels"], spec["pooling"], spec["dropout"])
    return model.to(device)
