"""The README's main job: encode -> train (ladder + same-encoder baselines) -> infer -> report.

Each step is skipped on a second run when its output is complete and its configuration is
unchanged (recorded in ``OUT/run_state.json``), so re-running the job is quick. Shapes and
formats belong to the stages; this module only wires their ``run(config)`` functions.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.config_file import save_resolved_config
from pipeline.errors import ConfigErrors
from pipeline.progress import log

BASELINES = ("mlp", "gcn", "sage")
STATE_FILE = "run_state.json"
# The side network's tensors are small: a second torch thread only adds synchronisation
# (measured on Cora, 2 cores: 2.5 s per ladder epoch with 1 thread, ~20 s with 2 under load).
TRAIN_THREADS = 1


@dataclass
class MainJobConfig:
    """One end-to-end run. ``out`` None: ``artifacts/runs/<dataset>-<model>``."""

    dataset: str = "cora"
    model: str = "smollm2-135m"
    out: Path | None = None
    max_length: int = 32  # keeps the CPU main job near ten minutes; full text: 256
    layers: str | None = None
    split: str = "random_60_20_20"
    seeds: tuple[int, ...] = (0,)
    epochs: int = 200
    baselines: tuple[str, ...] = BASELINES
    exit: str | None = None  # None: the policy the training run chose on validation
    infer_split: str = "test"
    force: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.out is None:
            self.out = Path("artifacts/runs") / f"{Path(self.dataset).name}-{Path(self.model).name}"
        self.out = Path(self.out)

    def validate(self) -> "MainJobConfig":
        errs = ConfigErrors()
        errs.check(self.max_length >= 1, f"--max-length {self.max_length}: must be >= 1")
        errs.check(len(self.seeds) > 0, "--seeds: give at least one seed, e.g. 0")
        errs.check(self.epochs > 0, f"--epochs {self.epochs}: must be > 0")
        unknown = [b for b in self.baselines if b not in BASELINES]
        errs.check(not unknown, f"--baselines {','.join(unknown)}: choose from {', '.join(BASELINES)} (or 'none')")
        errs.raise_if_any()
        return self


def _digest(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StepLedger:
    """Remembers which step finished with which configuration (``OUT/run_state.json``)."""

    def __init__(self, out: Path, force: bool) -> None:
        self.path = out / STATE_FILE
        self.force = force
        self.state: dict[str, str] = json.loads(self.path.read_text()) if self.path.is_file() else {}

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
        self.path.write_text(json.dumps(self.state, indent=2) + "\n")
        log(f"{name}: done in {time.perf_counter() - start:.1f}s")
        return True


def run(config: MainJobConfig) -> Path:
    """Run the whole job; returns the report path (or the run folder when no report module)."""
    from stage1_encode.config import EncodeConfig
    from stage1_encode.run import run as encode
    from stage2_train.config import TrainConfig
    from stage2_train.run import run as train
    from stage3_infer.config import InferConfig
    from stage3_infer.run import run as infer

    config.validate()
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    save_resolved_config(out / "run_config.json", asdict(config))
    ledger = StepLedger(out, config.force)
    started = time.perf_counter()

    cache = out / "cache.zarr"
    encode_cfg = EncodeConfig(
        graph=config.dataset, out=cache, model=config.model, layers=config.layers, max_length=config.max_length,
        overwrite=True,  # the run folder is the job's own: other settings replace its cache
    )
    # encode is itself resumable and a no-op when complete (same settings): always call it.
    encode(encode_cfg)

    checkpoint = out / "checkpoint"
    ladder_cfg = TrainConfig(
        cache=cache, out=checkpoint, arch="ladder", split=config.split, seeds=config.seeds,
        epochs=config.epochs, overwrite=True, num_threads=TRAIN_THREADS,
    )
    ledger.run("train ladder", checkpoint, {**asdict(ladder_cfg), "cache": asdict(encode_cfg)}, lambda: train(ladder_cfg))
    for arch in config.baselines:
        base_cfg = TrainConfig(
            cache=cache, out=out / f"baseline-{arch}", arch=arch, split=config.split, seeds=config.seeds,
            epochs=config.epochs, overwrite=True, num_threads=TRAIN_THREADS,
        )
        ledger.run(f"train {arch}", base_cfg.out, {**asdict(base_cfg), "cache": asdict(encode_cfg)}, lambda c=base_cfg: train(c))

    infer_out = out / "infer"
    infer_cfg = InferConfig(checkpoint=checkpoint, out=infer_out, exit=config.exit, split=config.infer_split)
    ledger.run(
        "infer", infer_out, {**asdict(infer_cfg), "train": ledger.state.get("train ladder")}, lambda: infer(infer_cfg)
    )

    from pipeline.report.run import write_report

    report = write_report([out], out / "report")
    log(f"main job finished in {time.perf_counter() - started:.1f}s; outputs under {out}")
    return report
