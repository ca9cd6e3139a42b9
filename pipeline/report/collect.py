"""Find a run's artifacts by their files and read them into plain records (no torch).

What counts as what (recursively under each RUN_DIR):

    cache       a folder with ``manifest.json`` and ``zarr.json``            (pipeline encode)
    checkpoint  a folder with ``summary.json`` and ``metrics.jsonl``         (pipeline train)
    infer       a folder with ``predictions.parquet``                        (pipeline infer)
    bench       a file ``bench*.json``, its kind told by its keys            (pipeline bench ...)

A piece that cannot be read (cut short, older format) becomes a *problem* line in the
report instead of an error: the report always shows what is there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.errors import InputError


@dataclass
class CacheInfo:
    path: Path
    manifest: dict
    blocks_done: int
    blocks_total: int
    disk_bytes: int


@dataclass
class TrainRun:
    """A checkpoint folder: ``config`` (its checkpoint.json), ``summary``, ``metrics`` (JSONL lines);
    ``encoder``: the LLM named in its copy of the cache manifest."""

    path: Path
    config: dict
    summary: dict
    metrics: list[dict]
    encoder: str = "?"

    @property
    def arch(self) -> str:
        return str(self.summary.get("arch") or self.config.get("arch") or "?")

    @property
    def dataset(self) -> str:
        return dataset_name(self.config.get("graph_source") or self.config.get("cache"))


@dataclass
class InferRun:
    """An infer output folder; ``exit_layers`` (M,) and ``exit_rungs`` (M,) from the parquet."""

    path: Path
    summary: dict
    exit_layers: list[int]
    exit_rungs: list[int]


@dataclass
class Bench:
    kind: str  # encode | train | infer
    path: Path
    data: dict


@dataclass
class Collected:
    roots: list[Path]
    caches: list[CacheInfo] = field(default_factory=list)
    runs: list[TrainRun] = field(default_factory=list)
    infers: list[InferRun] = field(default_factory=list)
    benches: list[Bench] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "PATH: what is wrong"

    @property
    def empty(self) -> bool:
        return not (self.caches or self.runs or self.infers or self.benches)

    def bench(self, kind: str) -> list[Bench]:
        return [b for b in self.benches if b.kind == kind]


def dataset_name(source) -> str:
    """``cora`` for a built-in name, the folder name for a graph folder."""
    if not source:
        return "?"
    return Path(str(source).rstrip("/")).name or str(source)


def read_cache(folder: Path) -> CacheInfo:
    from stage1_encode.cache.geometry import disk_bytes
    from stage1_encode.cache.reader import open_cache

    reader = open_cache(folder)
    total = reader.num_blocks
    return CacheInfo(folder, reader.manifest, total - len(reader.missing_blocks()), total, disk_bytes(folder))


def read_train_run(folder: Path) -> TrainRun:
    from stage2_train.checkpoint import read_run

    run = read_run(folder)
    for key in ("test_acc_mean", "per_seed"):
        if key not in run.summary:
            raise ValueError(f"summary.json has no '{key}' (not a finished training run)")
    return TrainRun(folder, run.config, run.summary, run.metrics, str(run.manifest.get("model") or "?"))


def read_infer(folder: Path) -> InferRun:
    from stage3_infer.predictions import SUMMARY_FILE, read_predictions, read_summary

    table = read_predictions(folder)
    summary = read_summary(folder) if (folder / SUMMARY_FILE).is_file() else {}
    return InferRun(folder, summary, table.column("exit_layer").to_pylist(), table.column("exit_rung").to_pylist())


def _walk(root: Path):
    """Yield (folder, file names) under ``root``; skips hidden/temporary folders and cache internals."""
    from stage1_encode.cache.manifest import CACHE_MARKS

    for folder, dirs, files in os.walk(root):
        names = set(files)
        if all(m in names for m in CACHE_MARKS):
            dirs[:] = []  # inside a Zarr group: thousands of chunk files, nothing of ours
        else:
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield Path(folder), names


def collect(roots: list[Path]) -> Collected:
    """Everything found under ``roots``; unreadable pieces are listed in ``problems``."""
    from stage1_encode.cache.manifest import CACHE_MARKS
    from stage2_train.checkpoint import RUN_MARKS
    from stage3_infer.predictions import PREDICTIONS_FILE

    found = Collected(roots=list(roots))
    seen: set[Path] = set()
    for root in roots:
        for folder, names in _walk(root):
            if folder.resolve() in seen:
                continue
            seen.add(folder.resolve())
            readers = []
            if all(m in names for m in CACHE_MARKS):
                readers.append((read_cache, found.caches, "encode cache"))
            if all(m in names for m in RUN_MARKS):
                readers.append((read_train_run, found.runs, "training run"))
            if PREDICTIONS_FILE in names:
                readers.append((read_infer, found.infers, "infer output"))
            for read, into, what in readers:
                try:
                    into.append(read(folder))
                except Exception as err:  # a broken piece is reported, never fatal
                    found.problems.append(f"{folder}: {what} could not be read ({_short(err)})")
            for name in sorted(n for n in names if n.startswith("bench") and n.endswith(".json")):
                _add_bench(found, folder / name)
    return found


def _add_bench(found: Collected, path: Path) -> None:
    from pipeline.core.bench_json import read_bench

    try:
        kind, figures = read_bench(path)
    except (OSError, ValueError, InputError) as err:
        found.problems.append(f"{path}: benchmark JSON could not be read ({_short(err)})")
        return
    found.benches.append(Bench(kind, path, figures))


def _short(err: Exception) -> str:
    text = getattr(err, "message", None) or str(err) or type(err).__name__
    return text.splitlines()[0][:200]
