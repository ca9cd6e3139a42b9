"""Drive a frozen HF model one layer at a time: the ONE code path for encode and infer.

``pipeline encode`` steps through all selected rungs and pools each; ``pipeline infer``
steps only as deep as each node needs, dropping exited nodes with :meth:`LayerStepper.select`.
Both run exactly the same modules, masks and position embeddings as the HF ``forward``, so
pooled states equal HF's ``output_hidden_states=True`` (tests check every state).

State numbering (as HF's ``hidden_states`` tuple): state 0 is the embedding output, state k
the output of layer k-1, state L the last layer's output after the final norm for decoders
(BERT has no final norm). ``num_states`` is L + 1.

Supported families: Llama-style decoders (Llama, SmolLM2, Qwen2, Mistral: ``embed_tokens``,
``layers``, ``norm``, ``rotary_emb``) and BERT-style encoders (``embeddings``, ``encoder.layer``).

Shapes: B texts in a batch, T tokens (padded, right padding), H hidden size, S selected states.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from pipeline.core.errors import InputError
from stage1_encode.config import POOLINGS
from stage1_encode.models import LoadedModel


@dataclass
class TokenBatch:
    """Tokenized texts on the model's device. ``input_ids``/``attention_mask``: (B, T)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None = None

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) real (non-pad) tokens per text."""
        return self.attention_mask.sum(1)


@dataclass
class StepState:
    """A batch part-way through the model.

    ``hidden`` (B, T, H) is LLM state ``k``; ``rows`` (B,) are the positions of these texts
    in the batch given to ``start`` (``select`` shrinks the batch; ``rows`` keeps track).
    """

    hidden: torch.Tensor
    attention_mask: torch.Tensor  # (B, T) 1 = real token
    k: int
    rows: torch.Tensor  # (B,) int64
    token_type_ids: torch.Tensor | None = None
    masks: dict[str, Any] = field(default_factory=dict)  # layer type -> HF attention mask (or None)
    position_ids: torch.Tensor | None = None  # (1, T), decoders only
    position_embeddings: Any = None  # RoPE (cos, sin), decoders only


class LayerStepper:
    """Runs a loaded model state by state. See the module docstring for the state numbering."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.model = loaded.model
        self.config = self.model.config
        m = self.model
        if all(hasattr(m, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")):
            self.family = "decoder"
            self.layers = list(m.layers[: self.config.num_hidden_layers])
        elif hasattr(m, "embeddings") and hasattr(getattr(m, "encoder", None), "layer"):
            self.family = "encoder"
            self.layers = list(m.encoder.layer)
        else:
            raise InputError(
                f"--model {loaded.spec.name}: unsupported architecture {type(m).__name__}; "
                "supported: Llama-style decoders (Llama, SmolLM2, Qwen2, Mistral) and BERT-style encoders"
            )
        self.num_states = len(self.layers) + 1
        self.hidden_size = int(self.config.hidden_size)
        if self.family == "decoder":
            types = getattr(self.config, "layer_types", None)
            sliding = getattr(self.config, "sliding_window", None) is not None
            self.layer_types = list(types) if types else ["sliding_attention" if sliding else "full_attention"] * len(self.layers)

    # -- tokens ---------------------------------------------------------------------------
    def tokenize(self, texts: list[str], max_length: int) -> TokenBatch:
        """Raw texts (no template) -> right-padded, truncated token batch on the device."""
        from stage1_encode.text_clip import token_ids

        return self.pad(token_ids(self.loaded.tokenizer, list(texts), max_length))

    def pad(self, ids: list[list[int]]) -> TokenBatch:
        """Token ids of a batch -> right-padded batch on the device, as the tokenizer pads
        (the loader sets right padding and a pad token); encoders get zero token types."""
        width = max((len(r) for r in ids), default=0)
        input_ids = torch.full((len(ids), width), int(self.loaded.tokenizer.pad_token_id), dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        from pipeline.core.devices import to_device

        dev = self.loaded.device
        types = self.family == "encoder" and "token_type_ids" in self.loaded.tokenizer.model_input_names
        return TokenBatch(to_device(input_ids, dev), to_device(mask, dev), to_device(torch.zeros_like(input_ids), dev) if types else None)

    # -- stepping -------------------------------------------------------------------------
    @torch.inference_mode()
    def start(self, batch: TokenBatch) -> StepState:
        """Embedding output (state 0) plus the masks/positions every layer needs."""
        rows = torch.arange(batch.input_ids.shape[0], device=batch.input_ids.device)
        if self.family == "decoder":
            hidden = self.model.embed_tokens(batch.input_ids)  # (B, T, H)
        else:
            hidden = self.model.embeddings(input_ids=batch.input_ids, token_type_ids=batch.token_type_ids)
        state = StepState(hidden, batch.attention_mask, 0, rows, batch.token_type_ids)
        self._prepare(state)
        if self.num_states == 1:
            self._finish(state)
        return state

    def _prepare(self, state: StepState) -> None:
        """(Re)build the attention masks and RoPE for the state's current (B, T), as HF does."""
        from transformers import masking_utils as mu

        h, am = state.hidden, state.attention_mask
        if self.family == "encoder":
            state.masks = {"bidirectional": mu.create_bidirectional_mask(config=self.config, inputs_embeds=h, attention_mask=am)}
            return
        state.position_ids = torch.arange(h.shape[1], device=h.device).unsqueeze(0)  # (1, T)
        kwargs = {"config": self.config, "inputs_embeds": h, "attention_mask": am, "position_ids": state.position_ids}
        params = inspect.signature(mu.create_causal_mask).parameters
        if "cache" in params:
            kwargs["cache"] = None
        else:  # older names: past_key_values (<= 5.19, the vLLM env), plus cache_position (4.x)
            kwargs["past_key_values"] = None
            if "cache_position" in params:
                kwargs["cache_position"] = torch.arange(h.shape[1], device=h.device)
        state.masks = {}
        for kind in set(self.layer_types):
            fn = mu.create_sliding_window_causal_mask if kind == "sliding_attention" else mu.create_causal_mask
            state.masks[kind] = fn(**kwargs)
        state.position_embeddings = self.model.rotary_emb(h, state.position_ids)

    def _finish(self, state: StepState) -> None:
        # HF's hidden_states[-1] for decoders is taken AFTER the final norm.
        if self.family == "decoder":
            state.hidden = self.model.norm(state.hidden)

    @torch.inference_mode()
    def advance(self, state: StepState, to_state: int) -> StepState:
        """Run layers ``state.k .. to_state-1`` in place; returns the state, now at ``to_state``."""
        if not state.k <= to_state < self.num_states:
            raise ValueError(f"cannot advance from state {state.k} to {to_state} (num_states={self.num_states})")
        for i in range(state.k, to_state):
            layer = self.layers[i]
            if self.family == "decoder":
                out = layer(
                    state.hidden,
                    attention_mask=state.masks[self.layer_types[i]],
                    position_ids=state.position_ids,
                    position_embeddings=state.position_embeddings,
                )
            else:
                out = layer(state.hidden, state.masks["bidirectional"])
            state.hidden = out[0] if isinstance(out, tuple) else out  # (B, T, H)
            state.k = i + 1
            if state.k == self.num_states - 1:
                self._finish(state)
        return state

    @torch.inference_mode()
    def pool(self, state: StepState, pooling: str = "mean") -> torch.Tensor:
        """(B, T, H) -> (B, H) float32: masked mean over real tokens, or the last real token."""
        h = state.hidden.float()
        m = state.attention_mask
        if pooling == "mean":
            w = m.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
            return (h * w).sum(1) / w.sum(1).clamp_min(1.0)
        if pooling == "last":
            last = (m.sum(1) - 1).clamp_min(0)  # right padding: index of the last real token
            return h[torch.arange(h.shape[0], device=h.device), last]
        raise InputError(f"--pooling {pooling}: expected one of {', '.join(POOLINGS)}")

    @torch.inference_mode()
    def select(self, state: StepState, rows: torch.Tensor | list[int]) -> StepState:
        """Keep only ``rows`` (positions in the CURRENT batch); trims trailing padding.

        Right padding means dropping all-pad trailing columns changes no real token's result.
        """
        idx = torch.as_tensor(rows, dtype=torch.long, device=state.hidden.device)
        am = state.attention_mask[idx]
        t = max(int(am.sum(1).max()), 1) if len(idx) else 1
        new = replace(
            state,
            hidden=state.hidden[idx, :t],
            attention_mask=am[:, :t],
            rows=state.rows[idx],
            token_type_ids=None if state.token_type_ids is None else state.token_type_ids[idx, :t],
        )
        self._prepare(new)
        return new

    # -- convenience ----------------------------------------------------------------------
    def encode_tokens(self, batch: TokenBatch, layers: list[int], pooling: str = "mean") -> torch.Tensor:
        """Pooled states ``layers`` (ascending) of a token batch -> (B, S, H) float32 on the device."""
        state = self.start(batch)
        pooled = []
        for k in layers:
            self.advance(state, k)
            pooled.append(self.pool(state, pooling))  # (B, H)
        return torch.stack(pooled, dim=1)  # (B, S, H)

    def encode_batch(self, texts: list[str], layers: list[int], pooling: str = "mean", max_length: int = 256) -> torch.Tensor:
        """Texts -> (B, S, H) float32 pooled states of the selected ``layers`` (ascending)."""
        return self.encode_tokens(self.tokenize(texts, max_length), layers, pooling)
