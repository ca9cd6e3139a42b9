"""The cost ledger of a training run (``summary.json["cost"]``), the same fields for every arch.

- ``trainable_params``: parameters the optimiser updates;
- ``backward_params``: parameters the backward pass touches, measured on one training batch's
  autograd graph: those receiving a gradient plus the frozen ones whose values the backward
  reads (saved for it), e.g. every frozen LLM weight above the first adapter for LoRA, none of
  the LLM for a model trained on cached states;
- ``peak_memory_bytes``: on CPU the process's peak RSS during the run above its RSS at the
  start (after imports, before data and model are loaded; freed heap memory is first returned
  to the OS and the kernel's peak reset through ``/proc/self/clear_refs``), on GPU
  ``torch.cuda.max_memory_allocated``; a resumed run's is the largest of its attempts' (each
  attempt's up to its last save, and the last attempt's);
- ``encode_peak_memory_bytes``: the encode's peak memory (LLM loaded), from the cache manifest
  (cache archs; None when the cache did not record it); ``pipeline_peak_memory_bytes``: the
  larger of it and training's own peak in the same terms (CPU: training's peak RSS including
  its start, GPU: max allocated), what the machine must hold for encode then train; None when
  the encode's is unknown. For the fine-tuning archs, which run the LLM themselves, it is
  training's peak;
- ``epoch_s_mean``, ``epochs_run`` (per seed), ``train_s`` (per seed: wall time of the seed's
  training, evaluation included, model loading excluded; a resumed seed's counts each attempt
  up to its last saved epoch) and its mean;
- ``encode_s``: the one-off encode time of the cache the run read (cache archs), from the
  cache manifest; None ("unknown") when the manifest lacks it; fine-tuning
  archs do not read the states: None with ``encode_used`` false;
- ``tuning_s``: the fine-tuning wall time of the LLM that encoded the cache when it was
  written by ``pipeline export`` (the cascade tune -> encode -> train), else 0 or None;
- ``total_s``: ``encode_s + tuning_s + train_s_mean`` (what one seed costs from raw texts),
  None when a part is unknown.
"""

from __future__ import annotations

import bisect
import os
import resource

import torch
from torch import nn

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_freed_memory() -> None:
    """Return the C heap's free pages to the OS (glibc ``malloc_trim``; a no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory from construction on (``peak_bytes``); see the module docstring for CPU and GPU."""

    def __init__(self, device: str = "cpu") -> None:
        self.cuda = str(device).startswith("cuda") and torch.cuda.is_available()
        self.kind = "cuda_max_allocated" if self.cuda else "cpu_peak_rss_above_start"
        self.start = 0
        self._reset_ok = False
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return
        _release_freed_memory()  # so that memory freed by earlier work, reused here, shows as this run's growth
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM (peak RSS) to the current RSS
            self._reset_ok = True
        except OSError:
            self._reset_ok = False
        self.start = (_status_kib("VmRSS") or 0) * 1024

    def peak_bytes(self) -> int:
        if self.cuda:
            return int(torch.cuda.max_memory_allocated())
        peak = _status_kib("VmHWM") if self._reset_ok else None
        if peak is None:  # no /proc reset: the process's lifetime peak (an upper bound)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return max(int(peak) * 1024 - self.start, 0)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_backward_params(model: nn.Module, loss: torch.Tensor) -> int:
    """Parameters of ``model`` the backward of ``loss`` touches (call before ``backward``):
    walks the autograd graph, collecting gradient targets and every saved tensor, and counts
    the parameters whose memory those tensors lie in (views such as ``weight.t()`` included)."""
    spans = sorted((p.data_ptr(), p.data_ptr() + p.numel() * p.element_size(), p.numel()) for p in model.parameters() if p.numel())
    starts = [s for s, _, _ in spans]
    touched: set[int] = set()

    def mark(t) -> None:
        if isinstance(t, torch.Tensor) and t.numel():
            i = bisect.bisect_right(starts, t.data_ptr()) - 1
            if i >= 0 and t.data_ptr() < spans[i][1]:
                touched.add(i)
        elif isinstance(t, (tuple, list)):
            for x in t:
                mark(x)

    seen, stack = set(), [loss.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):  # AccumulateGrad: a parameter receiving a gradient
            mark(fn.variable)
        for name in dir(fn):
            if name.startswith("_saved_"):
                try:
                    mark(getattr(fn, name))
                except RuntimeError:  # freed or undefined saved value
                    pass
        stack.extend(f for f, _ in fn.next_functions)
    return int(sum(spans[i][2] for i in touched))


def ledger(per_seed: list[dict], trainable: int, backward: int | None, memory: PeakMemory, manifest: dict, reads_cache: bool,
           max_batches: int | None = None, earlier_peaks: tuple[int, int] = (0, 0)) -> dict:
    """The ``cost`` entry of summary.json. ``per_seed``: dicts with ``train_s``, ``epoch_s``,
    ``epochs_run`` of each seed; ``backward``: None when not measured (torchrun ranks);
    ``manifest``: the cache manifest the run read; ``max_batches``:
    the cap on batches per epoch (``--max-batches``; None: whole epochs); ``earlier_peaks``:
    the peaks (above start, including start) of a resumed run's earlier attempts."""
    train_s = [float(r["train_s"]) for r in per_seed]
    train_mean = sum(train_s) / len(train_s)
    encode_s = manifest.get("encode_s") if reads_cache else None
    tuning = manifest.get("model_tuning") if reads_cache else None
    tuning_s = (tuning or {}).get("train_s") if tuning is not None else 0.0
    known = (not reads_cache or encode_s is not None) and tuning_s is not None
    encode_peak = manifest.get("encode_peak_memory_bytes") if reads_cache else None
    peak = max(int(memory.peak_bytes()), earlier_peaks[0])
    train_peak = max(int(memory.peak_bytes()) + int(memory.start), earlier_peaks[1])  # CPU: RSS above start + start; GPU: start is 0
    pipeline_peak = max(int(encode_peak), train_peak) if encode_peak is not None else (None if reads_cache else train_peak)
    return {
        "trainable_params": int(trainable),
        "backward_params": None if backward is None else int(backward),
        "peak_memory_bytes": peak,
        "peak_memory_kind": memory.kind,
        "encode_peak_memory_bytes": None if encode_peak is None else int(encode_peak),
        "pipeline_peak_memory_bytes": pipeline_peak,
        "epoch_s_mean": sum(float(r["epoch_s"]) for r in per_seed) / len(per_seed),
        "epochs_run": [int(r["epochs_run"]) for r in per_seed],
        "max_batches_per_epoch": max_batches,
        "train_s": train_s,
        "train_s_mean": train_mean,
        "encode_used": bool(reads_cache),
        "encode_s": None if encode_s is None else float(encode_s),
        "tuning_s": None if tuning_s is None else float(tuning_s),
        "tuned_by": (tuning or {}).get("run"),
        "total_s": (float(encode_s or 0.0) + float(tuning_s or 0.0) + train_mean) if known else None,
        "torch_threads": torch.get_num_threads(),
    }
