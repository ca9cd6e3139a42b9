"""The resumable state of ``pipeline train``: what a killed or preempted run continues from.

While it trains, ``pipeline train --out RUN`` keeps ``RUN.resume/`` next to the run folder
(the run folder itself appears only when complete, see :mod:`stage2_train.checkpoint`)::

    state.json               the flags, the world size, every finished seed's results and
                             cost, the metrics lines so far, the in-flight seed's last saved
                             epoch, early-stopping counters and wall time so far, the largest
                             peak memory so far, and the name and sha256 of
    tensors-{n}.safetensors  the finished seeds' best weights (``done.{seed}.*``), the in-flight
                             seed's model (``model.*``; a fine-tuning arch's adapter or LLM and
                             head), AdamW state (``opt.{param}.{key}``),
                             best weights so far (``best.*``) and every rank's RNG streams
                             (``rng.{rank}``, uint8: torch, the training sampler's
                             ``torch.Generator``, CUDA, numpy, Python)

It is written after every finished seed and, within a seed, after an epoch once
``--state-every`` seconds passed since the last write: the tensors under a new name, then
``state.json`` atomically (the commit point), then the previous tensors file is deleted.
Nothing is pickled. Under torchrun rank 0 writes (every rank's RNG gathered to it) and every
rank restores (``RUN.resume`` must be on a file system every rank sees).

Running the same command again continues from it (automatically, as ``encode`` does):
finished seeds are restored, never redone, and the in-flight seed goes on after its last
saved epoch with the RNG streams as they were, so the run ends with the weights and metrics
an uninterrupted run gives. A state written with other flags or another world size, or a
damaged one, is refused (exit 2). It is deleted once ``RUN`` is in place.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import signal
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pipeline.core import atomic, guarded
from pipeline.core.errors import InputError
from pipeline.core.format_version import FORMAT_VERSION, check_version
from pipeline.core.progress import log

STATE_FILE = "state.json"
# flags that do not change what is computed: a rerun may change them
IGNORED_FLAGS = ("overwrite", "dist-timeout", "state-every")
KILL_ENV = "PIPELINE_TEST_KILL_AT"  # tests only: SIGKILL this process at the named point


def state_dir(out: str | Path) -> Path:
    """``RUN.resume``: where ``pipeline train --out RUN`` keeps its resumable state."""
    out = Path(out)
    return out.with_name(out.name + ".resume")


def kill_point(name: str) -> None:
    """Tests only: die here, as a preempted job does, when ``PIPELINE_TEST_KILL_AT`` is ``name``."""
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


# --- RNG streams as bytes (one uint8 tensor a rank)
def _numpy_rng() -> bytes:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return np.asarray(keys, np.uint32).tobytes() + np.array([pos, has_gauss], np.int64).tobytes() + np.array([gauss], np.float64).tobytes()


def _set_numpy_rng(raw: bytes) -> None:
    keys = np.frombuffer(raw[:2496], np.uint32)
    pos, has_gauss = np.frombuffer(raw[2496:2512], np.int64)
    gauss = float(np.frombuffer(raw[2512:2520], np.float64)[0])
    np.random.set_state(("MT19937", keys, int(pos), int(has_gauss), gauss))


def _python_rng() -> bytes:
    version, internal, gauss_next = random.getstate()
    assert version == 3 and len(internal) == 625
    return np.asarray(internal, np.uint32).tobytes() + bytes([gauss_next is not None]) + np.array([gauss_next or 0.0], np.float64).tobytes()


def _set_python_rng(raw: bytes) -> None:
    internal = tuple(int(v) for v in np.frombuffer(raw[:2500], np.uint32))
    gauss = float(np.frombuffer(raw[2501:2509], np.float64)[0]) if raw[2500] else None
    random.setstate((3, internal, gauss))


def rng_bytes(gen: torch.Generator, device: str) -> tuple[torch.Tensor, list[int]]:
    """This process's RNG streams as one uint8 tensor, and the length of each part."""
    parts = [torch.get_rng_state(), gen.get_state()]
    if str(device).startswith("cuda"):
        parts.append(torch.cuda.get_rng_state(device))
    parts += [torch.from_numpy(np.frombuffer(raw, np.uint8).copy()) for raw in (_numpy_rng(), _python_rng())]
    return torch.cat(parts), [len(p) for p in parts]


def set_rng_bytes(raw: torch.Tensor, lengths: list[int], gen: torch.Generator, device: str) -> None:
    parts = [p.clone() for p in torch.split(raw.to(torch.uint8).cpu(), lengths)]  # set_rng_state wants its own storage
    torch.set_rng_state(parts.pop(0))
    gen.set_state(parts.pop(0))
    if str(device).startswith("cuda"):
        torch.cuda.set_rng_state(parts.pop(0), device)
    _set_numpy_rng(parts[0].numpy().tobytes())
    _set_python_rng(parts[1].numpy().tobytes())


# --- the weights a state keeps
def weights(model) -> dict[str, torch.Tensor]:
    """What training changes: a fine-tuning model's :meth:`trained_state` (adapter or LLM, and
    head; not the frozen LLM weights), any other model's whole ``state_dict``."""
    return model.trained_state() if hasattr(model, "trained_state") else model.state_dict()


def load_weights(model, tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`weights`."""
    if hasattr(model, "load_trained_state"):
        model.load_trained_state(tensors)
    else:
        model.load_state_dict(tensors)


# --- optimizer state as named tensors
def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """``opt.{param index}.{key}``: every per-parameter state (AdamW: step, exp_avg, exp_avg_sq);
    the hyperparameters come from the flags, which a resume must repeat."""
    out = {}
    for i, st in opt.state_dict()["state"].items():
        for key, value in st.items():
            out[f"opt.{i}.{key}"] = (value if torch.is_tensor(value) else torch.tensor(value)).detach().cpu().clone()
    return out


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Restore what :func:`optimizer_tensors` saved (names without their ``opt.`` prefix)."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        i, key = name.split(".", 1)
        state.setdefault(int(i), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


@dataclass
class Progress:
    """The in-flight seed where it was last saved: after epoch ``epoch``."""

    epoch: int
    best_val: float
    best_epoch: int
    wait: int
    epoch_times: list[float]
    best_state: dict | None
    best_train: float | None = None  # the fine-tuning archs' running training accuracy of the best epoch


class TrainState:
    """The state of one run (see the module docstring). One process, or rank 0, writes it."""

    def __init__(self, out: Path, flags: dict, group, every_s: float) -> None:
        self.folder, self.group, self.every_s = state_dir(out), group, every_s
        self.flags = comparable(flags, group.world_size)
        self.data = {"format_version": FORMAT_VERSION, "flags": self.flags, "world_size": group.world_size, "finished": {},
                     "metrics": [], "backward_params": None, "current": None, "tensors": None, "sha256": None, "writes": 0}
        self.tensors: dict[str, torch.Tensor] = {}
        self.last_write = time.monotonic()
        self.seed_t0 = time.perf_counter()  # the in-flight seed's start, moved back by its earlier attempts' time
        self.memory = None  # the run's PeakMemory (see watch)

    @property
    def hint(self) -> str:
        return f"delete {self.folder} and run the same command again to start over (its finished seeds are lost)"

    # --- reading
    def load(self) -> "TrainState":
        """Read ``RUN.resume`` when there is one; refuse other flags or damage (InputError, exit 2)."""
        path = self.folder / STATE_FILE
        if not path.is_file():
            return self
        data = guarded.read_json(path, self.hint)
        guarded.require(data, tuple(self.data), path, self.hint)
        check_version(data, path, self.hint)
        differ = [f"--{k} {_show(data['flags'].get(k))} there, {_show(self.flags.get(k))} now"
                  for k in sorted(set(data["flags"]) | set(self.flags)) if data["flags"].get(k) != self.flags.get(k)]
        if differ:
            raise InputError(f"{self.folder}: an interrupted `pipeline train` with other flags: {'; '.join(differ)}. "
                             f"Run it with its own flags to resume it (they are in {path}, \"flags\"), or delete {self.folder} to start over")
        if data["world_size"] != self.group.world_size:
            raise InputError(f"{self.folder}: written by a job of {data['world_size']} process(es), this one has {self.group.world_size}; "
                             f"resume with the same torchrun --nproc-per-node and --nnodes, or delete {self.folder} to start over")
        if data["tensors"] is not None:
            tensors = self.folder / str(data["tensors"])
            if not tensors.is_file():
                raise guarded.damaged(tensors, f"missing (named by {path})", self.hint)
            if _sha256(tensors) != data["sha256"]:
                raise guarded.damaged(tensors, f"its sha256 differs from the one {path} records (damaged)", self.hint)
            self.tensors = guarded.load_safetensors(tensors, self.hint)
        try:
            for row in data["finished"].values():
                SeedRecord(**row)
            if data["current"] is not None:
                _ = data["current"]["seed"], data["current"]["epoch"], data["current"]["rng_lengths"]
        except (TypeError, KeyError, AttributeError) as err:
            raise guarded.damaged(path, f"an entry is not what `pipeline train` writes ({type(err).__name__}: {err})", self.hint) from None
        elapsed = (data["current"] or {}).get("elapsed_s", 0.0)
        if not (_is_number(elapsed) and 0 <= elapsed < math.inf):
            raise guarded.damaged(path, f"the in-flight seed's elapsed_s is {elapsed!r}, not a number of seconds", self.hint)
        peaks = data.get("peaks", [0, 0])
        if not (isinstance(peaks, list) and len(peaks) == 2 and all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in peaks)):
            raise guarded.damaged(path, f"peaks is {peaks!r}, not two byte counts", self.hint)
        self.data = data
        return self

    @property
    def writes(self) -> int:
        return int(self.data["writes"])

    @property
    def metrics(self) -> list[dict]:
        return list(self.data["metrics"])

    @property
    def backward_params(self) -> int | None:
        return self.data["backward_params"]

    def finished(self, seed: int):
        """``(SeedResult, cost)`` of a seed finished before, or None."""
        from stage2_train.loop import SeedResult

        row = self.data["finished"].get(str(seed))
        if row is None:
            return None
        record = SeedRecord(**row)
        result = SeedResult(**record.result, state_dict=_prefixed(self.tensors, f"done.{seed}."))
        return result, record.cost

    def progress(self, seed: int, model, opt, gen: torch.Generator, device: str) -> Progress | None:
        """Restore the in-flight ``seed``'s model, optimizer and RNG streams (this rank's);
        returns where it stopped, or None when ``seed`` was not in flight."""
        current = self.data["current"]
        if current is None or current["seed"] != seed:
            return None
        load_weights(model, _prefixed(self.tensors, "model."))
        load_optimizer(opt, _prefixed(self.tensors, "opt."))
        set_rng_bytes(self.tensors[f"rng.{self.group.rank}"], current["rng_lengths"], gen, device)
        best = _prefixed(self.tensors, "best.")
        return Progress(current["epoch"], current["best_val"], current["best_epoch"], current["wait"], list(current["epoch_times"]),
                        best or None, current.get("best_train"))

    def restore(self, seed: int, writer, results: list, costs: list) -> bool:
        """A seed finished before the run was stopped: its best weights to ``writer``, its result
        and cost appended to ``results`` and ``costs``; True (it is never trained again). False
        when ``seed`` is not finished."""
        done = self.finished(seed)
        if done is None:
            return False
        result, cost = done
        writer.save_weights(seed, result.state_dict)
        results.append(result)
        costs.append(cost)
        log(f"seed {seed}: finished before the run was interrupted (restored from {self.folder})")
        return True

    def start_seed(self, seed: int) -> float:
        """The ``perf_counter`` origin of ``seed``'s wall time: now, less the time its earlier
        attempts spent up to their last saved epoch when it resumes (its ``train_s`` counts every
        attempt's kept work; the work after a saved epoch that a kill lost is not counted)."""
        current = self.data["current"]
        earlier = float(current.get("elapsed_s", 0.0)) if current is not None and current["seed"] == seed else 0.0
        self.seed_t0 = time.perf_counter() - earlier
        return self.seed_t0

    def watch(self, memory) -> None:
        """Record the run's peak memory (``PeakMemory``) with each save, so that a resumed run's
        ledger reports the largest peak of all its attempts (:meth:`earlier_peaks`)."""
        self.memory = memory

    def earlier_peaks(self) -> tuple[int, int]:
        """(peak above start, peak including start) in bytes of the attempts before this one; (0, 0) for none."""
        above, total = self.data.get("peaks") or (0, 0)
        return int(above), int(total)

    # --- writing
    def recorder(self, writer) -> Callable[[dict], None]:
        """Write the metrics lines so far to ``writer``; returns the ``on_epoch`` that appends a
        line to both ``writer`` and the state."""
        for line in self.metrics:
            writer.append_metrics(line)

        def on_epoch(line: dict) -> None:
            writer.append_metrics(line)
            self.add_metrics(line)

        return on_epoch

    def add_metrics(self, line: dict) -> None:
        self.data["metrics"].append(line)

    def save_epoch(self, seed: int, model, opt, gen: torch.Generator, device: str, at: Progress) -> None:
        """After an epoch: save the in-flight seed when ``--state-every`` seconds passed (every
        rank calls this; under torchrun rank 0's clock decides and every rank's RNG is gathered)."""
        due = time.monotonic() - self.last_write >= self.every_s
        if self.group.world_size > 1:
            due = self.group.sum([float(due) if self.group.is_main else 0.0])[0] > 0
        if not due:
            return
        rng, lengths = rng_bytes(gen, device)
        rngs = gather_bytes(self.group, rng)
        state = {f"model.{k}": v for k, v in weights(model).items()}
        state.update({f"best.{k}": v for k, v in (at.best_state or {}).items()})
        state.update(optimizer_tensors(opt))
        state.update({f"rng.{r}": t for r, t in enumerate(rngs)})
        self.tensors = {k: v for k, v in self.tensors.items() if k.startswith("done.")} | state
        self.data["current"] = {"seed": seed, "epoch": at.epoch, "best_val": at.best_val, "best_epoch": at.best_epoch,
                                "wait": at.wait, "epoch_times": at.epoch_times, "rng_lengths": lengths, "best_train": at.best_train,
                                "elapsed_s": time.perf_counter() - self.seed_t0}
        self._write()

    def finish_seed(self, result, cost: dict, backward_params: int | None) -> None:
        """A seed is done: keep its results and best weights, drop the in-flight state."""
        record = SeedRecord({f.name: getattr(result, f.name) for f in fields(result) if f.name != "state_dict"}, cost)
        self.data["finished"][str(result.seed)] = asdict(record)
        self.data["backward_params"] = backward_params
        self.data["current"] = None
        self.tensors = {k: v for k, v in self.tensors.items() if k.startswith("done.")}
        self.tensors.update({f"done.{result.seed}.{k}": v for k, v in result.state_dict.items()})
        self._write()

    def _write(self) -> None:
        self.last_write = time.monotonic()
        self.data["writes"] = self.writes + 1
        if self.memory is not None:
            above = self.memory.peak_bytes()
            earlier = self.earlier_peaks()
            self.data["peaks"] = [max(earlier[0], above), max(earlier[1], above + int(self.memory.start))]
        if not self.group.is_main:
            return
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"tensors-{self.writes}.safetensors"
        with atomic.staged_file(self.folder / name) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.tensors.items()}, str(tmp))
        self.data["tensors"], self.data["sha256"] = name, _sha256(self.folder / name)
        atomic.write_json(self.folder / STATE_FILE, self.data)  # the commit point
        for old in self.folder.glob("tensors-*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def remove(self) -> None:
        """Delete ``RUN.resume`` once the run is in place (only the files this module writes)."""
        if not self.group.is_main or not self.folder.is_dir():
            return
        ours = all(p.name == STATE_FILE or p.name.startswith(("tensors-", f".{STATE_FILE}.tmp-", ".tensors-")) for p in self.folder.iterdir())
        if ours:
            shutil.rmtree(self.folder, ignore_errors=True)


def comparable(flags: dict, world_size: int) -> dict:
    """``flags`` as ``state.json`` holds them (tuples as lists, paths as text), without those a
    rerun may change; under torchrun a rank's ``cuda:LOCAL_RANK`` is just ``cuda``."""
    flags = {k: v for k, v in json.loads(json.dumps(flags, default=str)).items() if k not in IGNORED_FLAGS}
    if world_size > 1 and str(flags.get("device", "")).startswith("cuda:"):
        flags["device"] = "cuda"
    return flags


def finished_leftover(out: str | Path, flags: dict, seeds, world_size: int, is_main: bool) -> dict | None:
    """A run killed after ``RUN`` was renamed into place but before ``RUN.resume`` was deleted:
    ``RUN`` holds that very run (the state's flags, every seed finished). Deletes the state (rank
    0) and returns ``RUN``'s summary; None in every other case."""
    from stage2_train.checkpoint import COST, FLAGS, SUMMARY, merge_cost

    out, folder = Path(out), state_dir(out)
    try:
        data = json.loads((folder / STATE_FILE).read_text())
        saved = json.loads((out / FLAGS).read_text())
        summary = merge_cost(json.loads((out / SUMMARY).read_text()), json.loads((out / COST).read_text()))
    except (OSError, ValueError):
        return None
    mine = comparable(flags, world_size)
    if not (isinstance(data, dict) and isinstance(saved, dict) and saved.pop("format_version", None) == FORMAT_VERSION
            and data.get("flags") == mine == comparable(saved, world_size)
            and sorted(str(s) for s in seeds) == sorted(data.get("finished") or {})):
        return None
    if is_main:
        shutil.rmtree(folder, ignore_errors=True)
    return summary


@dataclass
class SeedRecord:
    """A finished seed in ``state.json``: its ``SeedResult`` fields but the weights, and its cost."""

    result: dict
    cost: dict


def gather_bytes(group, tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's uint8 ``tensor`` (the same length on every rank), in rank order."""
    if group.world_size == 1:
        return [tensor]
    from stage2_train.distributed import gather_stats

    rows = gather_stats(group, tensor.to(torch.float64).tolist())
    return [torch.tensor(row, dtype=torch.float64).to(torch.uint8) for row in rows]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _show(value) -> str:
    return "(unset)" if value is None else json.dumps(value)
