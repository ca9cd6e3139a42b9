"""Where torch work runs: ``--device`` checked before any work, resolved and announced once.

``--device`` takes ``auto`` (the default of every command: CUDA when a device is visible,
else CPU), ``cpu``, ``cuda`` or ``cuda:N``. Under ``torchrun`` (LOCAL_RANK set) ``auto`` and
``cuda`` mean the rank's own GPU, ``cuda:LOCAL_RANK``. The resolved name is what commands
save in their resolved configuration.

Also the CUDA-only parts of the GPU paths, each a no-op on CPU so that CPU runs cannot be
affected: host-to-device copies from pinned memory without blocking, bf16 autocast for the
small side network, and peak GPU memory for logs and summaries.
"""

from __future__ import annotations

import contextlib
import os

from pipeline.core.errors import InputError

_announced: set[str] = set()


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


def _local_rank() -> int | None:
    """torchrun's LOCAL_RANK (set for every rank, one process included), else None."""
    try:
        return int(os.environ["LOCAL_RANK"])
    except (KeyError, ValueError):
        return None


def device_problem(device: str, flag: str = "--device") -> str | None:
    """The message :func:`check_device` would raise, or None (for ``ConfigErrors.check``)."""
    try:
        check_device(device, flag)
    except InputError as err:
        return err.message
    return None


def resolve_device(device: str, flag: str = "--device") -> str:
    """Check ``device`` and resolve it: ``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``;
    under torchrun ``cuda`` -> ``cuda:LOCAL_RANK``. Announced once per device and process."""
    import torch

    check_device(device, flag)
    requested = device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    local = _local_rank()
    if device == "cuda" and local is not None:
        device = f"cuda:{local}"
        check_device(device, f"{flag} {requested} (LOCAL_RANK {local}):")
    _announce(device, requested)
    return device


def _announce(device: str, requested: str) -> None:
    if device in _announced:
        return
    _announced.add(device)
    from pipeline.core.progress import log

    if device.startswith("cuda"):
        import torch

        props = torch.cuda.get_device_properties(torch.device(device))
        log(f"device: {device} ({props.name}, {props.total_memory / 2**30:.0f} GiB)")
    else:
        log("device: cpu" + (" (no CUDA device visible)" if requested == "auto" else ""))


def is_cuda(device) -> bool:
    return str(device).startswith("cuda")


def to_device(tensor, device):
    """``tensor`` on ``device``; to CUDA through pinned memory with a non-blocking copy (the
    copy overlaps the host's next work), elsewhere a plain ``.to``."""
    if not is_cuda(device) or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def autocast(device):
    """bf16 autocast on CUDA (the side network's matmuls); nothing elsewhere."""
    if not is_cuda(device):
        return contextlib.nullcontext()
    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16)


def reset_peak_memory(device) -> None:
    if is_cuda(device):
        import torch

        torch.cuda.reset_peak_memory_stats(torch.device(device))


def peak_memory(device) -> int | None:
    """Bytes of GPU memory allocated at the peak since the last reset; None off CUDA."""
    if not is_cuda(device):
        return None
    import torch

    return int(torch.cuda.max_memory_allocated(torch.device(device)))


def peak_memory_text(device) -> str:
    """``, peak GPU memory 1.2 GiB`` on CUDA, empty elsewhere (for log lines)."""
    peak = peak_memory(device)
    return "" if peak is None else f", peak GPU memory {peak / 2**30:.2f} GiB"
