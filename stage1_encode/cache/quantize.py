"""Storage dtypes of the cached states, and the symmetric int8 quantization.

int8 storage (``--storage-dtype int8``) quantizes each pooled state (one row of H values)
symmetrically: ``scale = absmax / 127`` (float32), ``q = round(x / scale)`` in [-127, 127].
Every reader returns ``q * scale`` as float32 (:func:`dequantize_int8`), so the rest of the
pipeline never sees int8. Error bound per element: ``|x - q * scale| <= scale / 2 +
128 * scale * 2**-24`` (half a step, plus float32 rounding of the division and of the
product; see :func:`quantize_int8`). Bytes per node: S * H + 4 * S.
"""

from __future__ import annotations

import numpy as np

STORAGE_DTYPES = ("float16", "float32", "int8")
INT8_LEVELS = 127  # symmetric int8: q in [-127, 127], so -x quantizes to -q


def stored_bytes_per_node(num_rungs: int, hidden_size: int, storage_dtype: str) -> int:
    """Array bytes a node takes in a cache: S x H values, plus S float32 scales for int8."""
    if storage_dtype == "int8":
        return num_rungs * hidden_size + 4 * num_rungs
    return num_rungs * hidden_size * np.dtype(storage_dtype).itemsize


def value_dtype(storage_dtype: str) -> np.dtype:
    """What readers return for a storage dtype: int8 rows come back dequantized to float32."""
    return np.dtype(np.float32 if storage_dtype == "int8" else storage_dtype)


def quantize_int8(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., H) float32 rows -> (q (..., H) int8, scale (...,) float32), one absmax scale per row.

    ``scale = fl32(absmax / 127)``; ``q = rint(x / scale)`` with the quotient in float64 (exact
    to 2**-53, so q is the nearest step to x). Since ``scale >= absmax / 127 * (1 - 2**-24)``,
    ``|x / scale| < 127.5`` and q never needs clipping. A zero row gets scale 0 and q 0.
    """
    values = np.asarray(values, dtype=np.float32)
    scale = (np.abs(values).max(axis=-1) / np.float32(INT8_LEVELS)).astype(np.float32)  # (...,)
    safe = np.where(scale > 0, scale, np.float32(1)).astype(np.float64)[..., None]
    q = np.rint(values.astype(np.float64) / safe)
    return np.clip(q, -INT8_LEVELS, INT8_LEVELS).astype(np.int8), scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(..., H) int8 rows and their (...,) float32 scales -> float32 ``q * scale`` (one rounding)."""
    return np.multiply(q, scale[..., None], out=out, dtype=np.float32)


def round_like_storage(values, storage_dtype: str):
    """Fresh float32 states (..., H) (numpy or torch) -> the float32 values a cache of
    ``storage_dtype`` gives back for them: what training read, so fresh and cached agree."""
    import torch

    if storage_dtype == "float32":
        return values
    if storage_dtype == "float16":
        return values.half().float() if isinstance(values, torch.Tensor) else values.astype(np.float16).astype(np.float32)
    if storage_dtype == "int8":
        as_numpy = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
        out = dequantize_int8(*quantize_int8(as_numpy))
        return torch.from_numpy(out).to(values.device) if isinstance(values, torch.Tensor) else out
    raise ValueError(f"unknown storage dtype {storage_dtype!r}")
