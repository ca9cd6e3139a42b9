"""``pipeline infer --shard I/N``: the targets spread over N processes, joined into one output.

``--shard auto`` takes I and N from the scheduler (``pipeline.core.shards``: a SLURM array
task's ``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``, a torchrun rank's
``RANK``/``WORLD_SIZE``); the config resolves it to ``I/N`` before anything runs.

Part I of N predicts the I-th of N contiguous slices of the targets (in target order, sizes
differing by at most one) into ``OUT.parts/part-I-of-N/``, an ordinary predictions folder
written atomically (:func:`stage3_infer.predictions.write_outputs`); a rerun skips a finished
part. The first part to start records the job's flags in ``OUT.parts/infer_config.json``
(replayable with ``--config``) and N in ``parts.json``; a part with other flags is refused,
naming each one.

``--status`` lists the parts done and missing, with the exact command for each missing one,
and exits 0 when all are done, 3 (``EXIT_INCOMPLETE``) when not. ``--assemble`` joins the
parts, in order, into ``OUT`` (one ``predictions.parquet`` and ``summary.json``), refusing
parts made from other checkpoints, seeds, graphs or policies. Predictions do not depend on
their batch (``--batch-invariant``, the default), so N parts assembled equal one process's
``predictions.parquet`` byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core import atomic, guarded, ownership
from pipeline.core.config_file import save_resolved_config
from pipeline.core.errors import InputError
from pipeline.core.format_version import FORMAT_VERSION, KEY, check_version
from stage3_infer.predictions import CONFIG_FILE, PREDICTIONS_FILE, SUMMARY_FILE, claim, read_predictions

# the flags that say which part, or what to do with the parts: not the job's
PART_FLAGS = ("shard", "status", "assemble", "overwrite")
# summary entries that must agree across parts: else they come from different jobs
PARTS_FILE = "parts.json"  # {"format_version": 1, "parts": N}
SAME = ("checkpoint", "seed", "model", "rung_layers", "graph_fingerprint", "policy")


def parts_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".parts")


def part_dir(out: str | Path, i: int, n: int) -> Path:
    return parts_dir(out) / f"part-{i}-of-{n}"


def part_slice(num_targets: int, i: int, n: int) -> slice:
    """Part ``i`` of ``n``: a contiguous slice of the targets; sizes differ by at most one."""
    return slice(i * num_targets // n, (i + 1) * num_targets // n)


def is_done(folder: Path) -> bool:
    return (folder / PREDICTIONS_FILE).is_file() and (folder / SUMMARY_FILE).is_file()


def job_flags(flags: dict) -> dict:
    """The flags every part of a job shares (those of a part's command, without the part's own)."""
    return {k: v for k, v in json.loads(json.dumps(flags, default=str)).items() if k not in PART_FLAGS}


def start_part(out: Path, flags: dict, n: int) -> None:
    """Record the job's flags and part count in ``OUT.parts/`` (first part), or refuse a part with others."""
    folder, mine = parts_dir(out), job_flags(flags)
    path = folder / CONFIG_FILE
    if path.is_file():
        saved = guarded.read_json(path, f"delete {folder} and run the parts again")
        check_version(saved, path, f"delete {folder} and run the parts again")
        saved = {**{k: v for k, v in saved.items() if k != KEY}, "N of --shard I/N": part_count(out)}
        mine["N of --shard I/N"] = n
        differ = [f"{_flag(k)} {saved.get(k)!r} there, {mine.get(k)!r} here" for k in sorted(set(saved) | set(mine)) if saved.get(k) != mine.get(k)]
        if differ:
            raise InputError(f"{folder}: its parts were made with other flags: {'; '.join(differ)}. "
                             f"Give every part the same flags (they are in {path}), or use another --out")
        return
    folder.mkdir(parents=True, exist_ok=True)
    ownership.write_marker(folder, "predictions")
    atomic.write_json(folder / PARTS_FILE, {KEY: FORMAT_VERSION, "parts": n})
    with atomic.staged_file(path) as tmp:
        save_resolved_config(tmp, mine)


def _flag(key: str) -> str:
    return key if " " in key else f"--{key}"


def part_count(out: Path) -> int:
    folder = parts_dir(out)
    data = guarded.read_json(folder / PARTS_FILE, f"delete {folder} and run the parts again")
    check_version(data, folder / PARTS_FILE, f"delete {folder} and run the parts again")
    n = data.get("parts")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise guarded.damaged(folder / PARTS_FILE, f"\"parts\" {n!r} is not a part count", f"delete {folder} and run the parts again")
    return n


def status(out: Path) -> tuple[str, bool]:
    """``(text, complete)`` for ``--status``: each missing part with the command that makes it."""
    folder = parts_dir(out)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise InputError(f"--out {out}: no parts started ({path} is missing); run `pipeline infer ... --out {out} --shard I/N`")
    n = part_count(out)
    missing = [i for i in range(n) if not is_done(part_dir(out, i, n))]
    lines = [f"predictions {out}: parts done {n - len(missing)}/{n} ({folder})"]
    lines += [f"  missing part {i}: `pipeline infer --config {path} --shard {i}/{n}`" for i in missing]
    lines.append(f"  complete: join them with `pipeline infer --config {path} --assemble`" if not missing else "")
    if (Path(out) / PREDICTIONS_FILE).is_file() and not missing:
        lines[-1] = f"  complete; assembled into {out}"
    return "\n".join(line for line in lines if line), not missing


def assemble(out: Path, overwrite: bool = False) -> dict:
    """Join the parts of ``OUT.parts/`` into ``OUT``; returns the summary."""
    text, complete = status(out)
    if not complete:
        raise InputError(f"--assemble: not every part is done:\n{text}")
    n = part_count(out)
    folders = [part_dir(out, i, n) for i in range(n)]
    tables = [read_predictions(f) for f in folders]
    summaries = [guarded.read_json(f / SUMMARY_FILE, f"delete {f} and run its part again") for f in folders]
    for f, s in zip(folders, summaries):
        check_version(s, f / SUMMARY_FILE, f"delete {f} and run its part again")
    for f, t, s in zip(folders, tables, summaries):
        s["graph_fingerprint"] = (t.schema.metadata or {}).get(b"graph_fingerprint", b"").decode()
        differ = [k for k in SAME if s.get(k) != summaries[0].get(k)]
        if differ:
            raise InputError(f"--assemble: part {f} differs from {folders[0]} in {', '.join(differ)} "
                             f"({'; '.join(f'{k}: {s.get(k)!r} against {summaries[0].get(k)!r}' for k in differ)}): "
                             f"parts of different checkpoints or graphs; delete it and run that part again")
    table = pa.concat_tables(tables).combine_chunks().replace_schema_metadata(tables[0].schema.metadata)
    summary = joined_summary(table, summaries, n)
    claim(out, overwrite)
    with atomic.StagedFolder(out) as staged:
        pq.write_table(table, staged.path / PREDICTIONS_FILE)
        (staged.path / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        (staged.path / CONFIG_FILE).write_bytes((parts_dir(out) / CONFIG_FILE).read_bytes())
        ownership.write_marker(staged.path, "predictions")
        staged.commit(ownership.replacer("predictions", "--out", overwrite))
    return summary


def joined_summary(table: pa.Table, parts: list[dict], n: int) -> dict:
    """What one process's ``summary.json`` says, computed from the joined predictions; counts
    summed over parts; ``wall_time_s`` the longest part's (they run at once)."""
    rungs = table["exit_rung"].to_numpy()
    known = pc.is_valid(table["true_label"])
    right = pc.and_(known, pc.equal(table["predicted_label"], table["true_label"]))
    labelled = int(pc.sum(known.cast(pa.int64())).as_py() or 0)
    evals = sum(int(s["llm_layer_evals"]) for s in parts)
    full = sum(int(s["llm_layer_evals_full_depth"]) for s in parts)
    return {
        **{k: v for k, v in parts[0].items() if k not in ("wall_time_s", "gpu_peak_memory_bytes")},
        "num_targets": len(table),
        "num_labelled": labelled,
        "accuracy": int(pc.sum(pc.fill_null(right, False).cast(pa.int64())).as_py() or 0) / labelled if labelled else None,
        "mean_exit_rung": float(rungs.mean()) if len(rungs) else None,
        "mean_exit_layer": float(np.mean(table["exit_layer"].to_numpy())) if len(rungs) else None,
        "exits_per_rung": np.bincount(rungs, minlength=int(rungs.max()) + 1 if len(rungs) else 0).tolist(),
        "llm_layer_evals": evals,
        "llm_layer_evals_full_depth": full,
        "layer_fraction": evals / full if full else None,
        "wall_time_s": max(float(s["wall_time_s"]) for s in parts),
        "parts": n,
    }
