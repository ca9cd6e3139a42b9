"""Drive a frozen HF model one layer at a time: the ONE code path for encode and infer.

``pipeline encode`` steps through all selected rungs and pools each; ``pipeline infer``
steps only as deep as each node needs, dropping exited nodes with :meth:`LayerStepper.select`.

How: everything around the layers is computed by the model's OWN ``forward``, the layers by
us. For a batch, :meth:`LayerStepper.start` runs ``forward`` once with every layer replaced by
a stand-in that records what ``forward`` passes to it (masks of its layer type, rotary tables
of its layer type, relative-position bias, ...) and returns its input unchanged: the first
layer's input is state 0 (embeddings, with the family's scaling or multipliers). Stepping
then calls the real layers with exactly those arguments. The last state (after the final norm
and whatever else ``forward`` does after its layers) is ``forward`` once more, the last
stand-in returning the stepped hidden state. So no family's embedding scale, multiplier,
mask or position scheme is re-implemented here, and pooled states equal HF's
``output_hidden_states=True`` (tests/test_encode_families.py checks every state of every
family in stage1_encode/families.py; stage1_encode/self_check.py checks each run's first batch).

State numbering (as HF's ``hidden_states`` tuple): state 0 is the input of the first layer,
state k the output of layer k-1, state L the ``forward``'s last hidden state (after the final
norm for decoders; BERT has none). ``num_states`` is L + 1.

Shapes: B texts in a batch, T tokens (padded, right padding), H hidden size, S selected states.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import Any

import torch

from pipeline.core.errors import InputError
from pipeline.core.options import require_choice
from stage1_encode.config import POOLINGS
from stage1_encode.families import Family, family_of
from stage1_encode.models import LoadedModel

HIDDEN_KWARGS = ("hidden_states", "hidden_state", "x")  # names a layer's input goes by when passed by keyword


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
class LayerCall:
    """What ``forward`` passes to one layer besides its input: ``layer(hidden, *args, **kwargs)``
    (``hidden_kw``: the keyword of the input when ``forward`` passes it by keyword)."""

    args: tuple
    kwargs: dict
    hidden_kw: str | None = None


@dataclass
class StepState:
    """A batch part-way through the model.

    ``hidden`` (B, T, H) is LLM state ``k``; ``rows`` (B,) are the positions of these texts
    in the batch given to ``start`` (``select`` shrinks the batch; ``rows`` keeps track).
    ``input_ids`` (B, T) stay with the state: the model's ``forward`` rebuilds the layers'
    arguments (``calls``) for a smaller batch and computes the last state from them.
    """

    hidden: torch.Tensor
    attention_mask: torch.Tensor  # (B, T) 1 = real token
    k: int
    rows: torch.Tensor  # (B,) int64
    input_ids: torch.Tensor | None = None  # (B, T)
    token_type_ids: torch.Tensor | None = None
    calls: list[LayerCall] = field(default_factory=list)  # one per layer, as the model's forward makes them


def pool_states(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """``hidden`` (B, T, H), ``attention_mask`` (B, T) -> (B, H) float32: masked mean over real
    tokens, or the last real token. Differentiable: fine-tuning pools the same way."""
    require_choice("pooling", pooling, POOLINGS)
    h = hidden.float()
    m = attention_mask
    if pooling == "mean":
        w = m.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
        return (h * w).sum(1) / w.sum(1).clamp_min(1.0)
    last = (m.sum(1) - 1).clamp_min(0)  # "last", right padding: index of the last real token
    return h[torch.arange(h.shape[0], device=h.device), last]


class _Recorded(Exception):
    """Stops a probing forward once the first layer's output is seen."""


class LayerStepper:
    """Runs a loaded model state by state. See the module docstring for how and the numbering.

    ``family``: "decoder" or "encoder" (``families.Family.kind``); ``arch``: the family.
    An unsupported ``model_type``, or a model whose ``forward`` does not call each of its
    layers once, or whose last state is not H wide, is refused with InputError.
    """

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.model = loaded.model
        self.config = self.model.config
        self.architecture = type(self.model).__name__
        model_type = str(getattr(self.config, "model_type", ""))
        self.arch: Family = family_of(model_type, loaded.spec.name, self.architecture)
        self.family = self.arch.kind
        self.num_layers = int(self.config.num_hidden_layers)
        try:
            self.layers = list(attrgetter(self.arch.layers)(self.model))[: self.num_layers]
        except (AttributeError, TypeError):
            self.layers = []
        self.num_states = self.num_layers + 1
        self.hidden_size = int(self.config.hidden_size)
        if len(self.layers) != self.num_layers:
            self._refuse(f"has no list of {self.num_layers} layers at '{self.arch.layers}'")
        self._output_arity = 0  # 0: a layer returns its hidden state; n: a tuple of n, the hidden state first
        self._probe()

    def describe(self) -> str:
        """``"GraniteModel (model_type granite)"``: what messages name."""
        return f"{self.architecture} (model_type {self.arch.model_type})"

    def _refuse(self, why: str) -> None:
        raise InputError(f"--model {self.loaded.spec.name}: {self.describe()} {why}; it cannot be stepped layer by layer")

    @torch.inference_mode()
    def _probe(self) -> None:
        """One forward of a 2-token text: how the layers return (tensor or tuple), and the width
        of the last state (OPT-350m projects it to another width: refused)."""
        seen: dict[str, Any] = {}

        def first_layer_out(module, args, out):
            seen["arity"] = len(out) if isinstance(out, tuple) else 0

        ids = torch.zeros((1, 2), dtype=torch.long, device=self.loaded.device)
        hook = self.layers[0].register_forward_hook(first_layer_out)
        try:
            out = self.model(**self.forward_inputs(TokenBatch(ids, torch.ones_like(ids))), use_cache=False, return_dict=True)
        finally:
            hook.remove()
        self._output_arity = seen["arity"]
        width = int(out.last_hidden_state.shape[-1])
        if width != self.hidden_size:
            self._refuse(f"returns a last state {width} wide, its other states {self.hidden_size}")

    @staticmethod
    def forward_inputs(batch: TokenBatch | StepState) -> dict:
        """The keyword arguments of the model's ``forward`` for a batch's tokens."""
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if batch.token_type_ids is not None:
            inputs["token_type_ids"] = batch.token_type_ids
        return inputs

    def _run_forward(self, state: StepState, last: torch.Tensor | None = None) -> tuple[torch.Tensor, list[LayerCall], torch.Tensor]:
        """The model's ``forward`` on the state's tokens with every layer replaced by a stand-in
        that records its arguments and passes its input on (the last one passes ``last``
        instead, when given). Returns (state 0 (B, T, H), the layers' calls, last hidden state)."""
        calls: list[LayerCall | None] = [None] * self.num_layers
        inputs: list[torch.Tensor | None] = [None] * self.num_layers
        arity = self._output_arity

        def stand_in(i: int):
            def forward(*args, **kwargs):
                if calls[i] is not None:
                    self._refuse(f"calls layer {i} more than once in one forward (shared layers)")
                if args:
                    hidden, rest, key = args[0], args[1:], None
                else:
                    key = next((k for k in HIDDEN_KWARGS if k in kwargs), None)
                    if key is None:
                        self._refuse(f"passes layer {i} its input under none of the names {', '.join(HIDDEN_KWARGS)}")
                    hidden, rest = kwargs.pop(key), ()
                calls[i], inputs[i] = LayerCall(rest, kwargs, key), hidden
                out = last if last is not None and i == self.num_layers - 1 else hidden
                return (out,) + (None,) * (arity - 1) if arity else out

            return forward

        for i, layer in enumerate(self.layers):
            layer.forward = stand_in(i)  # an instance attribute: nn.Module.__call__ finds it first
        try:
            out = self.model(**self.forward_inputs(state), use_cache=False, return_dict=True)
        finally:
            for layer in self.layers:
                del layer.forward
        missing = [i for i, c in enumerate(calls) if c is None]
        if missing:
            self._refuse(f"does not call layer(s) {missing[:5]} in its forward")
        return inputs[0], calls, out.last_hidden_state

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
        """State 0 (the first layer's input, as ``forward`` computes it) and every layer's arguments."""
        rows = torch.arange(batch.input_ids.shape[0], device=batch.input_ids.device)
        state = StepState(None, batch.attention_mask, 0, rows, batch.input_ids, batch.token_type_ids)
        state.hidden, state.calls, _ = self._run_forward(state)  # (B, T, H)
        return state

    def _finish(self, state: StepState) -> None:
        # HF's hidden_states[-1] is forward's last hidden state: after the final norm for decoders.
        state.hidden = self._run_forward(state, last=state.hidden)[2]

    @torch.inference_mode()
    def advance(self, state: StepState, to_state: int) -> StepState:
        """Run layers ``state.k .. to_state-1`` in place; returns the state, now at ``to_state``."""
        if not state.k <= to_state < self.num_states:
            raise ValueError(f"cannot advance from state {state.k} to {to_state} (num_states={self.num_states})")
        for i in range(state.k, to_state):
            call = state.calls[i]
            if call.hidden_kw is None:
                out = self.layers[i](state.hidden, *call.args, **call.kwargs)
            else:
                out = self.layers[i](*call.args, **{call.hidden_kw: state.hidden}, **call.kwargs)
            state.hidden = out[0] if isinstance(out, tuple) else out  # (B, T, H)
            state.k = i + 1
            if state.k == self.num_states - 1:
                self._finish(state)
        return state

    @torch.inference_mode()
    def pool(self, state: StepState, pooling: str = "mean") -> torch.Tensor:
        """(B, T, H) -> (B, H) float32: masked mean over real tokens, or the last real token."""
        return pool_states(state.hidden, state.attention_mask, pooling)

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
            input_ids=state.input_ids[idx, :t],
            token_type_ids=None if state.token_type_ids is None else state.token_type_ids[idx, :t],
        )
        if len(idx):
            new.calls = self._run_forward(new)[1]  # the layers' arguments for the smaller batch
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
