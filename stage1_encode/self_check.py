"""Every run checks its first texts against the model's own forward before writing anything.

``pipeline encode`` (both backends) and ``pipeline infer`` compute LLM states by stepping the
model layer by layer (stage1_encode/stepping.py) or through vLLM's kernels; a model whose
``forward`` does something the stepping does not see would give a cache that looks right and
is not. So each run takes its first ``CHECK_TEXTS`` texts (those with at least one token),
pads them into one batch at the run's ``--max-length``, and compares its pooled selected
states with the same states of ``model(..., output_hidden_states=True)`` pooled the same way.

Deviation: the largest relative L2 error ``|ours - ref| / |ref|`` over the batch's pooled
vectors, per state; beyond the tolerance of the backend and compute dtype (``TOLERANCES``)
the run stops with exit 2 naming the architecture, the state and the deviation, before its
output exists. The HF path runs the very modules of ``forward`` with its own arguments, so it
matches to the last bits (0.0 on every family of the matrix in float32, bfloat16 and float16 on
CPU, and on the real Gemma 3 270M past its 512-token sliding window); vLLM's kernels
differ from HF's (the tolerance its equality test uses). The passing record goes into the
cache manifest (``self_check``).

Shapes: B check texts (<= CHECK_TEXTS), T tokens, S selected states, H hidden size.
"""

from __future__ import annotations

import time

import torch

from pipeline.core.errors import InputError

CHECK_TEXTS = 8
# backend -> compute dtype -> largest relative deviation accepted
TOLERANCES = {
    "hf": {"float32": 1e-4, "bfloat16": 1e-2, "float16": 1e-2},
    "vllm": {"float32": 1e-3, "bfloat16": 5e-2, "float16": 2e-2},
}


def first_texts(texts, rows=None, n: int = CHECK_TEXTS * 4) -> list[str]:
    """The first ``n`` texts of ``texts`` (a list or an Arrow-backed column), or of its ``rows``."""
    rows = range(min(len(texts), n)) if rows is None else list(rows)[:n]
    return [str(texts[int(i)]) for i in rows]


def check_batch(stepper, texts: list[str], max_length: int):
    """Up to ``CHECK_TEXTS`` of ``texts`` that tokenize to at least one token, as one padded batch
    (None when none does). ``stepper``: a :class:`stage1_encode.stepping.LayerStepper`."""
    from stage1_encode.text_clip import token_ids

    ids = [row for row in token_ids(stepper.loaded.tokenizer, list(texts), max_length) if row][:CHECK_TEXTS]
    return stepper.pad(ids) if ids else None


@torch.inference_mode()
def reference_states(stepper, batch, layers: list[int], pooling: str) -> torch.Tensor:
    """States ``layers`` of the model's own ``forward`` (``output_hidden_states=True``), pooled:
    (B, S, H) float32."""
    from stage1_encode.stepping import pool_states

    out = stepper.model(**stepper.forward_inputs(batch), output_hidden_states=True, use_cache=False, return_dict=True)
    hidden_states = out.hidden_states
    if hidden_states is None or len(hidden_states) != stepper.num_states:
        got = "none" if hidden_states is None else len(hidden_states)
        raise InputError(
            f"--model {stepper.loaded.spec.name}: {stepper.describe()} returns {got} hidden states for "
            f"{stepper.num_states - 1} layers; its states cannot be checked, so it is not used"
        )
    return torch.stack([pool_states(hidden_states[k], batch.attention_mask, pooling) for k in layers], dim=1)


def deviation(ours: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(S,) largest relative L2 error per state of (B, S, H) pooled states; inf where not finite."""
    ours, ref = ours.float().cpu(), ref.float().cpu()
    rel = (ours - ref).norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-12)  # (B, S)
    rel = torch.where(torch.isfinite(rel), rel, torch.full_like(rel, float("inf")))
    return rel.amax(dim=0)


def judge(what: str, model: str, ours: torch.Tensor, ref: torch.Tensor, layers: list[int], pooling: str,
          backend: str, dtype: str, seconds: float) -> dict:
    """The manifest's record of a passing check, or InputError naming ``what`` (the architecture),
    the worst state and its deviation."""
    tolerance = TOLERANCES[backend][dtype]
    per_state = deviation(ours, ref)  # (S,)
    worst = int(per_state.argmax())
    dev = float(per_state[worst])
    if not dev <= tolerance:
        how = "stepped layer by layer" if backend == "hf" else "computed by vLLM"
        raise InputError(
            f"--model {model}: {what} {how} deviates from the model's own forward at LLM state {layers[worst]} "
            f"({pooling} pooling of {ours.shape[0]} texts): relative error {dev:.2e}, tolerance {tolerance:.0e} for {dtype} "
            f"on --backend {backend}; its states would be wrong, so nothing was written. "
            + ("Use --backend hf for this model." if backend == "vllm" else "This family's forward does something the stepping does not see; use another model.")
        )
    return {
        "texts": int(ours.shape[0]), "layers": [int(k) for k in layers], "pooling": pooling, "backend": backend,
        "compute_dtype": dtype, "max_rel_deviation": dev, "worst_state": int(layers[worst]), "tolerance": tolerance,
        "seconds": round(seconds, 3),
    }


def check_stepper(stepper, texts: list[str], layers: list[int], pooling: str, max_length: int) -> dict | None:
    """Check the HF stepper on the first of ``texts`` (see the module docstring); None when no
    text has a token. ``layers``: the run's states (ascending)."""
    start = time.perf_counter()
    batch = check_batch(stepper, texts, max_length)
    if batch is None:
        return None
    ours = stepper.encode_tokens(batch, layers, pooling)  # (B, S, H)
    ref = reference_states(stepper, batch, layers, pooling)
    dtype = str(stepper.loaded.dtype).replace("torch.", "")
    return judge(stepper.describe(), stepper.loaded.spec.name, ours, ref, layers, pooling, "hf", dtype, time.perf_counter() - start)
