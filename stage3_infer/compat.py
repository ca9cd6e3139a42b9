"""Is this model, this cache, the one the checkpoint was trained on? Refuse clearly if not.

A ladder only makes sense on the LLM states it was trained on: the same model (weights),
the same layer numbering and the same rungs. The checkpoint keeps a copy of its cache's
manifest; here it is compared with the model about to be loaded (name, weights hash, state
count, hidden size) and with the cache that known neighbours would be read from.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from pipeline.core.errors import InputError
from pipeline.core.progress import warn
from stage1_encode.cache.reader import memory_budget

def manifest_model(manifest: dict) -> str:
    """The model a cache was encoded with (the manifest's ``model``, as ``pipeline encode`` writes it)."""
    name = manifest.get("model")
    if name is None:
        raise InputError("checkpoint manifest names no model; pass --model NAME (the model the cache was encoded with)")
    return str(name)


def check_model(spec, manifest: dict, layers: list[int], checkpoint: Path, stepper=None) -> None:
    """Refuse a model other than the manifest's, or one whose states cannot feed these rungs.

    Called twice: before loading (name and weights hash) and after (state count, width).
    """
    from stage1_encode.models import weights_hash

    want = manifest_model(manifest)
    fix = f"run without --model (uses '{want}'), or retrain on a cache encoded with `pipeline encode GRAPH --model {spec.name}`"
    problems = []
    cached_layers = [int(x) for x in manifest["layers"]]
    if not set(layers) <= set(cached_layers):
        problems.append(f"the rungs read LLM states {layers}, the cache manifest holds {cached_layers}")
    if stepper is None:
        recorded = manifest.get("weights_sha256")
        if recorded is not None:
            if weights_hash(spec.path) != recorded:
                raise InputError(
                    f"--checkpoint {checkpoint}: its cache manifest names model '{want}' (weights sha256 {recorded[:12]}), "
                    f"but the model loaded is '{spec.name}' with other weights; {fix}"
                )
        elif spec.name != want:
            raise InputError(f"--checkpoint {checkpoint}: its cache manifest names model '{want}', but the model loaded is '{spec.name}'; {fix}")
    else:
        if max(layers) >= stepper.num_states:
            problems.append(f"the rungs read LLM states {layers}, the loaded model has only 0..{stepper.num_states - 1}")
        hidden = manifest.get("hidden_size")
        if hidden is not None and int(hidden) != stepper.hidden_size:
            problems.append(f"the manifest's hidden size is {hidden}, the loaded model's {stepper.hidden_size}")
    if problems:
        raise InputError(
            f"--checkpoint {checkpoint}: its layer set does not match model '{spec.name}': " + "; ".join(problems) + f"; {fix}"
        )


def check_cache(ckpt, graph) -> "CacheRows | None":
    """Reader of the known nodes' rungs from the checkpoint's cache, or None if the cache is gone.

    A cache that exists but was encoded differently from the checkpoint's manifest (other
    model, weights or layers) is refused rather than silently mixed with fresh states.
    """
    from stage1_encode.cache.reader import open_cache

    path = Path(ckpt.cache_path)
    if not path.exists():
        return None
    from stage2_train import cache_binding

    fix = ("retrain on it (`pipeline train " + str(path) + " --out NEW_RUN`), or pass --no-cache-neighbours to run "
           "neighbours through the LLM")
    cache_binding.check_bound(path, ckpt.config.get(cache_binding.KEY), f"the run {ckpt.path}", fix)
    reader = open_cache(path)
    reader.check_complete()
    theirs, ours = dict(reader.manifest), ckpt.manifest
    for what, key in (("model", "model"), ("weights", "weights_sha256")):
        if theirs.get(key) != ours.get(key):
            raise InputError(
                f"cache {path}: was re-encoded since training ({what} {theirs.get(key)!r}, the checkpoint's {ours.get(key)!r}); "
                "re-train on it, or pass --no-cache-neighbours to run neighbours through the LLM"
            )
    cached_layers = [int(x) for x in reader.layers]
    missing = [x for x in ckpt.layers if x not in cached_layers]
    if missing:
        raise InputError(f"cache {path}: holds LLM states {cached_layers}, not the rungs' {missing}; pass --no-cache-neighbours")
    if hasattr(reader, "check_graph"):
        reader.check_graph(graph)
    return CacheRows(reader, [cached_layers.index(x) for x in ckpt.layers], path)


class CacheRows:
    """``rows(nodes (n,)) -> (n, S, H)`` float32 rungs of known nodes from the cache.

    Read whole into memory when small (sequential reads are what Zarr is fast at), else per
    call with the unique rows in index order (chunk order), docs/design.md section 3.
    """

    def __init__(self, reader, positions: list[int], path: Path) -> None:
        self.reader, self.positions = reader, positions
        self.states = None
        if reader.rungs_nbytes(len(positions)) <= memory_budget():
            states = np.ascontiguousarray(reader.read(rungs=positions))  # (N, S, H) as read (int8 dequantized), may be the reader's read-only copy
            with warnings.catch_warnings():  # only ever read here: sharing beats copying the whole array
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                self.states = torch.from_numpy(states)
            step = 1 << 16  # check in slices: a whole-array isfinite peaked at +1.6 GB on a 1M-node cache
            if not all(torch.isfinite(self.states[i : i + step]).all() for i in range(0, len(self.states), step)):
                warn(f"cache {path}: holds non-finite values; targets next to those nodes get unreliable answers")

    def __call__(self, nodes: torch.Tensor) -> torch.Tensor:
        if self.states is not None:
            return self.states[nodes].float()
        uniq, inverse = torch.unique(nodes, return_inverse=True)
        rows = self.reader.read(nodes=uniq.numpy(), rungs=self.positions)
        return torch.from_numpy(np.asarray(rows)).float()[inverse]
