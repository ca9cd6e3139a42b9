"""The README's main job: encode -> train (ladder + same-encoder baselines) -> infer -> report.

Each step is skipped on a second run when its output is complete and its configuration is
unchanged (recorded in ``OUT/run_state.json``), so re-running the job is quick. Shapes and
formats belong to the stages; this module only wires their ``run(config)`` functions.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from pipeline.core import atomic, ownership
from pipeline.core.builtin_datasets import DEFAULT_DATASET
from pipeline.core.errors import ConfigErrors, InputError
from pipeline.core.options import config_file_name, device_option, option, out_option, save_flags, seeds_option
from pipeline.core.progress import log
from stage1_encode.config import model_option
from stage1_encode.models import DEFAULT_MODEL
from stage2_train.config import TrainConfig, split_option

BASELINES = ("mlp", "gcn", "sage")


def parse_baselines(text: str, flag: str) -> tuple[str, ...]:
    """``"mlp,gcn"`` -> ("mlp", "gcn"); ``"none"`` or empty -> ()."""
    return () if text.strip() in ("", "none") else tuple(b.strip() for b in text.split(","))

STATE_FILE = "run_state.json"
CACHE_DIR = "cache.zarr"  # the job's encode cache, under its --out
# The side network's tensors are small: a second torch thread only adds synchronisation
# (measured on Cora, 2 cores: 2.5 s per ladder epoch with 1 thread, ~20 s with 2 under load).
TRAIN_THREADS = 1


@dataclass
class MainJobConfig:
    """One end-to-end run. ``out`` None: ``artifacts/runs/<dataset>-<model>``."""

    dataset: str = option(DEFAULT_DATASET, "Built-in dataset name or graph folder.")
    model: str = model_option(DEFAULT_MODEL, "Encoder LLM: built-in name, HF id or local folder.")
    out: Path | None = out_option("the main job's cache, runs, predictions and report (default artifacts/runs/<dataset>-<model>)", None)
    max_length: int = option(  # keeps the CPU main job near ten minutes; full text: 256
        32,
        "Tokens kept per text: 32 (title and first sentence) keeps the CPU job near ten minutes on 2 cores; "
        "`pipeline encode` defaults to 256 (full abstracts).",
    )
    layers: str | None = option(None, "Rungs to cache: all, 0,5,10,... or every:K (default: ~7 spread evenly).")
    split: str | None = split_option()
    seeds: tuple[int, ...] = seeds_option((0,), "Comma-separated seeds; one model per seed.")
    epochs: int = option(200, "Maximum training epochs (early stopping on validation).")
    baselines: tuple[str, ...] = option(
        BASELINES, "Same-encoder baselines to train beside the ladder, or 'none'.", parse=parse_baselines
    )
    exit: str | None = option(  # None: the policy the training run chose on validation
        None, "Early-exit policy for infer: patience:P, confidence:T, layer:I or none (default: the one training chose on validation)."
    )
    infer_split: str = "test"
    device: str = device_option()  # every stage's
    force: bool = option(False, "Redo train and infer even when their outputs are up to date.")
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.out is None:
            self.out = Path("artifacts/runs") / f"{Path(self.dataset).name}-{Path(self.model).name}"
        self.out = Path(self.out)

    def validate(self) -> "MainJobConfig":
        from pipeline.core.devices import device_problem

        errs = ConfigErrors()
        errs.check(device_problem(self.device) is None, device_problem(self.device) or "")
        errs.check(self.max_length >= 1, f"--max-length {self.max_length}: must be >= 1")
        unknown = [b for b in self.baselines if b not in BASELINES]
        errs.check(not unknown, f"--baselines {','.join(unknown)}: choose from {', '.join(BASELINES)} (or 'none')")
        repeated = sorted({b for b in self.baselines if self.baselines.count(b) > 1})
        errs.check(not repeated, f"--baselines {','.join(self.baselines)}: {', '.join(repeated)} given twice")
        known = replace(self, baselines=tuple(b for b in self.baselines if b in BASELINES))
        for train_config in train_configs(known).values():  # their flag checks (seeds, epochs, split) before any encode
            train_config.check_flags(errs)  # the trainings share --seeds, --epochs, --split: each problem is reported once
        from stage2_train.exit_policies import parse_exit

        try:
            if self.exit is not None:
                parse_exit(self.exit)
        except InputError as err:
            errs.add(err.message)
        errs.raise_if_any()
        return self


def train_configs(config: MainJobConfig) -> dict[str, TrainConfig]:
    """The job's trainings by step name: the ladder, then each baseline (TrainConfig each)."""
    def train_config(arch: str, out: Path) -> TrainConfig:
        return TrainConfig(cache=config.out / CACHE_DIR, out=out, arch=arch, split=config.split, seeds=config.seeds,
                           epochs=config.epochs, overwrite=True, num_threads=TRAIN_THREADS, device=config.device)

    steps = {"train ladder": train_config("ladder", config.out / "checkpoint")}
    for arch in config.baselines:
        steps[f"train {arch}"] = train_config(arch, config.out / f"baseline-{arch}")
    return steps


def _digest(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StepLedger:
    """Remembers which step finished with which configuration (``OUT/run_state.json``)."""

    def __init__(self, out: Path, force: bool) -> None:
        self.path = out / STATE_FILE
        self.force = force
        try:
            state = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except (OSError, ValueError):
            state = {}  # a damaged ledger only means every step is redone
        self.state: dict[str, str] = state if isinstance(state, dict) else {}

    def run(self, name: str, output: Path, values: dict[str, Any], step: Callable[[], Any]) -> bool:
        """Run ``step`` unless ``output`` exists from the same ``values``; returns True if it ran."""
        digest = _digest(values)
        if not self.force and output.exists() and self.state.get(name) == digest:
            log(f"{name}: up to date ({output}), skipped")
            return False
        start = time.perf_counter()
        log(f"{name} -> {output}")
        step()
        self.state[name] = digest
        atomic.write_json(self.path, self.state)
        log(f"{name}: done in {time.perf_counter() - start:.1f}s")
        return True


def check_graph_and_splits(config: MainJobConfig) -> None:
    """Refuse a missing or invalid graph, or a --split it cannot give every seed, before the
    job folder is created or anything is encoded (InputError naming the graph and the split)."""
    from pipeline.core.graph import load_graph
    from stage2_train.data import resolve_split

    graph = load_graph(config.dataset)
    for seed in config.seeds:
        resolve_split(graph, config.split, seed)


def run(config: MainJobConfig) -> Path:
    """Run the whole job; returns the report path (or the run folder when no report module)."""
    from stage1_encode.config import EncodeConfig
    from stage1_encode.run import run as encode
    from stage2_train.run import run as train
    from stage3_infer.config import InferConfig
    from stage3_infer.run import run as infer

    from pipeline.core.devices import resolve_device

    config.validate()
    config = replace(config, device=resolve_device(config.device))  # saved resolved; the stages get it as given
    out = config.out
    cache = out / CACHE_DIR
    encode_cfg = EncodeConfig(
        graph=config.dataset, out=cache, model=config.model, layers=config.layers, max_length=config.max_length,
        overwrite=True,  # the run folder is the job's own: other settings replace its cache
        device=config.device,
    )
    # every check that needs no earlier step's output, before the first write
    encode_cfg.validate()
    from pipeline.report.run import check_matplotlib

    check_matplotlib()  # the report is the last step: refuse before hours of work, not after
    from stage1_encode.models import check_max_length, resolve_model

    spec = resolve_model(config.model)
    check_max_length(spec, config.max_length)
    check_graph_and_splits(config)
    inputs = [p for p in (Path(config.dataset), Path(spec.path)) if p.is_dir()]
    if not ownership.claim_output(out, "job", "--out", resume=True, inputs=inputs):
        out.mkdir(parents=True, exist_ok=True)
        ownership.write_marker(out, "job")
    save_flags(out / config_file_name("run"), config)
    ledger = StepLedger(out, config.force)
    started = time.perf_counter()

    # encode is itself resumable and a no-op when complete (same settings): always call it.
    encode(encode_cfg)

    trainings = train_configs(config)
    for step, train_cfg in trainings.items():
        ledger.run(step, train_cfg.out, {**asdict(train_cfg), "cache": asdict(encode_cfg)}, lambda c=train_cfg: train(c))
    checkpoint = trainings["train ladder"].out

    infer_out = out / "infer"
    infer_cfg = InferConfig(checkpoint=checkpoint, out=infer_out, exit=config.exit, split=config.infer_split, overwrite=True,
                            device=config.device)
    ledger.run(
        "infer", infer_out, {**asdict(infer_cfg), "train": ledger.state.get("train ladder")}, lambda: infer(infer_cfg)
    )

    from pipeline.report.run import write_report

    report = write_report([out], out / "report")
    log(f"main job finished in {time.perf_counter() - started:.1f}s; outputs under {out}")
    return report
