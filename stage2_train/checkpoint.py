"""The training-run checkpoint: the only module that knows its format (writer and reader).

Layout of ``RUN_DIR`` (written into a temporary sibling and renamed at the end, so a
failed run leaves nothing behind)::

    config.json              resolved TrainConfig + "model" (what rebuilds the network),
                             "layers" (LLM state of each rung), "label_names", cache path,
                             graph source, "format_version"
    manifest.json            copy of the cache manifest (model, pooling, max length, ...)
    metrics.jsonl            one line per epoch and seed: loss, val accuracy of every head
    summary.json             test/val mean and std, per-seed results, every head, gates
    seed_{s}/model.safetensors   weights of seed s (safetensors only, never pickle)

``load_checkpoint(RUN_DIR)`` rebuilds the model of the seed chosen on validation
(``summary["default_seed"]``), or of ``seed=``; ``pipeline infer`` needs nothing else.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from pipeline.errors import InputError

FORMAT_VERSION = 1
CONFIG, MANIFEST, METRICS, SUMMARY, WEIGHTS = "config.json", "manifest.json", "metrics.jsonl", "summary.json", "model.safetensors"


def build_model(spec: dict) -> nn.Module:
    """The network described by ``config["model"]`` (arch, channels, rungs, gnn, ...)."""
    from stage2_train.baselines import NodeBaseline
    from stage2_train.ladder import GLadder

    if spec["arch"] == "ladder":
        return GLadder(
            spec["in_channels"], spec["hidden_channels"], spec["out_channels"], spec["num_rungs"],
            gnn=spec["gnn"], num_layers=spec["num_layers"], dropout=spec["dropout"], temperature=spec["temperature"],
            standardize=spec.get("standardize", False), readout=spec.get("readout", "target-mean"),  # older runs: the defaults then
        )
    return NodeBaseline(
        spec["arch"], spec["in_channels"], spec["hidden_channels"], spec["out_channels"],
        num_layers=spec["num_layers"], dropout=spec["dropout"], standardize=spec.get("standardize", False),
    )


def _json(path: Path, data) -> None:
    def clean(v):  # JSON has no NaN: write null
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    path.write_text(json.dumps(clean(data), indent=2, sort_keys=True) + "\n")


class CheckpointWriter:
    """Writes a run into ``RUN_DIR.tmp-PID`` and renames it to ``RUN_DIR`` on :meth:`commit`."""

    def __init__(self, out: Path, overwrite: bool = False) -> None:
        self.out, self.overwrite = Path(out), overwrite
        self.tmp = self.out.parent / f".{self.out.name}.tmp-{os.getpid()}"
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)

    def __enter__(self) -> "CheckpointWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def write_config(self, config: dict, manifest: dict) -> None:
        _json(self.tmp / CONFIG, {**config, "format_version": FORMAT_VERSION})
        _json(self.tmp / MANIFEST, manifest)

    def append_metrics(self, line: dict) -> None:
        with open(self.tmp / METRICS, "a") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")

    def save_weights(self, seed: int, state_dict: dict) -> None:
        from safetensors.torch import save_file

        folder = self.tmp / f"seed_{seed}"
        folder.mkdir(exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
        save_file(tensors, str(folder / WEIGHTS), metadata={"seed": str(seed), "format_version": str(FORMAT_VERSION)})

    def write_summary(self, summary: dict) -> None:
        _json(self.tmp / SUMMARY, summary)

    def commit(self) -> Path:
        if self.out.exists():
            if not self.overwrite:
                raise InputError(f"--out {self.out}: appeared while training; choose another folder or pass --overwrite")
            shutil.rmtree(self.out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.tmp, self.out)
        return self.out


@dataclass
class Checkpoint:
    """A loaded run: the model (eval mode) of one seed and everything recorded with it.

    layers: LLM state index feeding each rung (S,); the model expects states (n, S, H) in
    that order. sampler: keyword arguments of ``Sampler(graph.edge_index, graph.num_nodes, **sampler)``
    that rebuild the training-time sampler (evaluation draws are deterministic).
    """

    model: nn.Module
    config: dict
    manifest: dict
    seed: int
    layers: list[int]
    label_names: list[str]
    cache_path: Path
    graph_source: str
    sampler: dict
    summary: dict
    path: Path


def load_checkpoint(path: str | Path, seed: int | None = None, device: str = "cpu") -> Checkpoint:
    """Load and validate a run directory; what is missing is named with the command that creates it."""
    from safetensors.torch import load_file

    path = Path(path)
    hint = f"create it with `pipeline train CACHE_DIR --out {path}`"
    if not path.is_dir():
        raise InputError(f"checkpoint {path}: no such directory; {hint}")
    for name in (CONFIG, MANIFEST, SUMMARY):
        if not (path / name).is_file():
            raise InputError(f"checkpoint {path}: missing {name} (not a finished training run); {hint}")
    config = json.loads((path / CONFIG).read_text())
    if config.get("format_version") != FORMAT_VERSION:
        raise InputError(f"checkpoint {path}: format version {config.get('format_version')}, expected {FORMAT_VERSION}; retrain with `pipeline train`")
    summary = json.loads((path / SUMMARY).read_text())
    seed = int(summary["default_seed"] if seed is None else seed)
    weights = path / f"seed_{seed}" / WEIGHTS
    if not weights.is_file():
        have = sorted(p.name for p in path.glob("seed_*"))
        raise InputError(f"checkpoint {path}: no weights for seed {seed} ({weights.name}; have {have}); train it with `pipeline train ... --seeds {seed}`")
    model = build_model(config["model"])
    state = load_file(str(weights), device="cpu")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise InputError(f"checkpoint {path}: weights do not match config.json: {err}") from err
    model.to(device).eval()
    return Checkpoint(
        model=model,
        config=config,
        manifest=json.loads((path / MANIFEST).read_text()),
        seed=seed,
        layers=list(config["layers"]),
        label_names=list(config["label_names"]),
        cache_path=Path(config["cache"]),
        graph_source=str(config["graph_source"]),
        sampler={"mode": config["sampler"], "hops": config.get("hops", 1),  # checkpoints before --hops: 1
                 **{k: config[k] for k in ("fanout", "num_walks", "walk_length", "restart_p")}},
        summary=summary,
        path=path,
    )


def read_metrics(path: str | Path) -> list[dict]:
    """The per-epoch metric lines of a run."""
    return [json.loads(x) for x in (Path(path) / METRICS).read_text().splitlines() if x.strip()]
