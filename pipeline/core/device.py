"""Where torch work runs: ``--device`` checked, resolved and announced once per process.

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
import re

from pipeline.core.errors import InputError

_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")
_announced: set[str] = set()


def device_problem(value: str, flag: str = "--device") -> str | None:
    """The message for a malformed ``--device`` value, or None (for ``ConfigErrors.check``)."""
    if _DEVICE_RE.fullmatch(str(value)):
        return None
    return f"{flag} {value}: expected auto, cpu, cuda or cuda:N"


def _local_rank() -> int | None:
    """torchrun's LOCAL_RANK (set for every rank, one process included), else None."""
    try:
        return int(os.environ["LOCAL_RANK"])
    except (KeyError, ValueError):
        return None


def resolve_device(value: str, flag: str = "--device") -> str:
    """``auto``/``cpu``/``cuda``/``cuda:N`` -> the torch device name to use (announced once).

    Refuses (exit 2) a malformed value, CUDA when none is visible, and an index beyond the
    visible devices.
    """
    import torch

    problem = device_problem(value, flag)
    if problem:
        raise InputError(problem)
    requested, local = value, _local_rank()
    if value == "auto":
        value = "cuda" if torch.cuda.is_available() else "cpu"
    if value.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"{flag} {requested}: no CUDA device is visible; use --device cpu (or auto)")
        if value == "cuda" and local is not None:
            value = f"cuda:{local}"
        count = torch.cuda.device_count()
        index = int(value.split(":")[1]) if ":" in value else 0
        if index >= count:
            raise InputError(f"{flag} {requested}: {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})")
    _announce(value, requested)
    return value


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
