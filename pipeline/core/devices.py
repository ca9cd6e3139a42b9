"""``--device`` checked before any work: a name torch knows, and a device this machine has."""

from __future__ import annotations

from pipeline.core.errors import InputError


def check_device(device: str, flag: str = "--device") -> None:
    """Refuse a device that is malformed or absent (``cuda`` without a GPU, ``cuda:3`` on two)."""
    import torch

    if device == "auto":
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"{flag} {device}: not a device; use auto, cpu, cuda or cuda:N") from None
    if parsed.type == "cpu":
        return
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{flag} {device}: no CUDA device is visible; use {flag} cpu")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise InputError(f"{flag} {device}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
        return
    if parsed.type == "mps" and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return
    raise InputError(f"{flag} {device}: not available here; use {flag} cpu" + (" or cuda" if torch.cuda.is_available() else ""))


def resolve_device(device: str, flag: str = "--device") -> str:
    """Check ``device`` and turn ``auto`` into ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    check_device(device, flag)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
