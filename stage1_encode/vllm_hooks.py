"""Code that runs INSIDE vLLM's worker: capture selected states, pool them per prompt.

vLLM has no public API for per-layer hidden states. ``LLM.apply_model(fn)`` runs ``fn`` on
the worker's ``nn.Module``; :func:`install` (sent there as a picklable
``functools.partial`` of a module-level function, hence this separate light module) adds

  - forward hooks on the decoder layers that keep the residual stream of each selected
    state for the current step's tokens, and
  - a pooler (replacing the model's) that pools every kept state per prompt and returns
    one flat ``(S * H,)`` vector per prompt, so ``LLM.encode`` yields all rungs at once.

State numbering follows HF's ``hidden_states`` (see ``stage1_encode/stepping.py``):
state 0 is the input of layer 0 (the embedding output); state k, 1 <= k < L, is the
residual stream after layer k-1, which vLLM's fused-residual layers return split in two
parts, ``hidden + residual``; state L is the final-norm output, i.e. exactly the tensor
vLLM hands to the pooler.

Shapes: T tokens of all prompts of one engine step, flattened; B prompts in that step;
S selected states; H hidden size. Requires whole prompts per step (no chunked prefill,
no prefix caching), which :mod:`stage1_encode.vllm_backend` configures.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

HOOKS_ATTR = "_pipeline_state_hooks"


def decoder_parts(model: nn.Module) -> tuple[nn.Module, list[nn.Module]]:
    """(inner model, decoder layers) of a vLLM Llama-style model (``model.model.layers``)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if inner is None or layers is None or not hasattr(inner, "norm"):
        raise RuntimeError(f"vLLM model {type(model).__name__} has no model.layers/model.norm: not a Llama-style decoder")
    start, end = getattr(inner, "start_layer", 0), getattr(inner, "end_layer", len(layers))
    if (start, end) != (0, len(layers)):
        raise RuntimeError("pipeline parallelism is not supported by the state hooks (use one pipeline stage)")
    return inner, list(layers)


def describe(model: nn.Module) -> dict[str, Any]:
    """Facts the driver checks before encoding: class names, layer count, dtype."""
    inner, layers = decoder_parts(model)
    return {
        "model_class": type(model).__name__,
        "num_layers": len(layers),
        "pooler_class": type(getattr(model, "pooler", None)).__name__,
        "dtype": str(next(model.parameters()).dtype),
    }


class StatePooler(nn.Module):
    """Pools the kept states of every prompt of a step: -> (B, S * H) float32.

    Keeps the model's own pooler to answer vLLM's task questions (supported tasks,
    parameter updates), so the engine treats it like the original ``embed`` pooler.
    """

    def __init__(self, original: nn.Module, store: dict[int, torch.Tensor], states: list[int], last_state: int, pooling: str):
        super().__init__()
        self.original = original
        self.store = store
        self.states = list(states)
        self.last_state = last_state
        self.pooling = pooling

    def get_supported_tasks(self):
        return self.original.get_supported_tasks()

    def get_pooling_updates(self, task):
        return self.original.get_pooling_updates(task)

    def forward(self, hidden_states: torch.Tensor, pooling_metadata: Any) -> torch.Tensor:
        cursor = pooling_metadata.get_pooling_cursor()
        if cursor.is_partial_prefill():
            raise RuntimeError("prompt split across engine steps: raise max_num_batched_tokens above the longest prompt")
        first = cursor.first_token_indices_gpu.long()  # (B,)
        last = cursor.last_token_indices_gpu.long()  # (B,)
        # (T, H) per state; state L is the final-norm output vLLM gives the pooler.
        per_state = [hidden_states if k == self.last_state else self.store[k] for k in self.states]
        if self.pooling == "last":
            pooled = torch.stack([h[last].float() for h in per_state], dim=1)  # (B, S, H)
        else:
            lens = last - first + 1  # (B,) tokens per prompt
            seg = torch.repeat_interleave(torch.arange(len(first), device=first.device), lens)  # (T',) prompt of each token
            starts = torch.cumsum(lens, 0) - lens  # (B,) where each prompt starts in the gathered tokens
            tok = first[seg] + torch.arange(len(seg), device=first.device) - starts[seg]  # (T',) token rows
            pooled = []
            for h in per_state:
                sums = torch.zeros(len(first), h.shape[-1], dtype=torch.float32, device=h.device)
                sums.index_add_(0, seg, h[tok].float())  # (B, H) fp32 sums, as HF pools in fp32
                pooled.append(sums / lens.unsqueeze(1).to(torch.float32))
            pooled = torch.stack(pooled, dim=1)  # (B, S, H)
        self.store.clear()
        return pooled.reshape(pooled.shape[0], -1)  # (B, S * H): one flat vector per prompt


def install(model: nn.Module, states: list[int], pooling: str) -> dict[str, Any]:
    """Hook ``model`` (the worker's vLLM module) to pool ``states`` with ``pooling``.

    Idempotent: hooks and pooler from an earlier call are removed first, so the driver can
    change layers or pooling between batches. Returns :func:`describe` of the model.
    """
    _inner, layers = decoder_parts(model)
    uninstall(model)
    last_state = len(layers)
    if any(not 0 <= k <= last_state for k in states):
        raise ValueError(f"states {states} out of range 0..{last_state}")
    store: dict[int, torch.Tensor] = {}
    handles = []

    if 0 in states:
        # The input of layer 0 = embedding output. Cloned: vLLM's fused add+norm kernels
        # update the residual tensor (which starts as this very tensor) in place.
        def keep_input(_module, args, kwargs):
            hidden = args[1] if len(args) > 1 else kwargs["hidden_states"]
            store[0] = hidden.clone()

        handles.append(layers[0].register_forward_pre_hook(keep_input, with_kwargs=True))

    for k in states:
        if 1 <= k < last_state:
            # Layer k-1 returns (hidden, residual); the residual stream is their sum (a new tensor).
            def keep_output(_module, _args, out, k=k):
                hidden, residual = out if isinstance(out, tuple) else (out, None)
                store[k] = hidden.clone() if residual is None else hidden + residual

            handles.append(layers[k - 1].register_forward_hook(keep_output))

    original = model.pooler.original if isinstance(model.pooler, StatePooler) else model.pooler
    model.pooler = StatePooler(original, store, states, last_state, pooling)
    setattr(model, HOOKS_ATTR, handles)
    return describe(model)


def uninstall(model: nn.Module) -> None:
    """Remove the hooks and restore the model's own pooler."""
    for handle in getattr(model, HOOKS_ATTR, []):
        handle.remove()
    setattr(model, HOOKS_ATTR, [])
    if isinstance(getattr(model, "pooler", None), StatePooler):
        model.pooler = model.pooler.original
