"""End to end at scale: synth -> load -> encode -> train -> infer, each stage measured.

    python scripts/scale_e2e.py --nodes 1000000 --work /tmp/e2e-1m --out artifacts/scale/1m \\
        --model TINY_MODEL_DIR [--encode-shards 2] [--memory-budget 256MB] [--epochs 1]

Every stage is a plain ``pipeline`` command run under ``/usr/bin/time -v``; its wall time,
peak RSS and log go to ``OUT/<stage>.log``, and ``OUT/scale_e2e.json`` + ``scale_e2e.md``
hold, per stage: wall time, throughput (nodes/s), peak RSS, and the cache size on disk.
The model should be tiny (``scripts/make_tiny_model.py``: random weights, H = 64, 4 layers):
this measures the system, not accuracy. Encode runs ``--encode-shards`` processes on one
cache (wall time = until the last one ends; peak RSS = the largest process; throughput =
nodes / wall). Train gets ``--memory-budget`` when ``pipeline train`` has the flag, and
otherwise trains from memory (recorded as ``train_mode``). Large outputs stay in ``--work``;
``--clean`` deletes the graph, cache and run there at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stage2_train.checkpoint import METRICS, read_metrics  # noqa: E402
from stage3_infer.predictions import SUMMARY_FILE, read_summary  # noqa: E402

PY = sys.executable
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def timed(args: list[str], log: Path) -> subprocess.Popen:
    """Start ``args`` under /usr/bin/time -v, stdout and stderr into ``log``."""
    return subprocess.Popen(["/usr/bin/time", "-v", *args], stdout=log.open("w"), stderr=subprocess.STDOUT, env=ENV)


def parse_time(log: Path) -> dict:
    text = log.read_text(errors="replace")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    status = re.search(r"Exit status: (\d+)", text)
    return {"peak_rss_gb": round(int(rss.group(1)) / 1e6, 3) if rss else None, "exit": int(status.group(1)) if status else None}


def run_stage(name: str, commands: list[list[str]], out: Path, nodes: int | None) -> dict:
    """Run commands concurrently (one process each), wait for all; measured figures."""
    logs = [out / (f"{name}.log" if len(commands) == 1 else f"{name}-{i}.log") for i in range(len(commands))]
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(commands[0][2:])}", flush=True)
    start = time.perf_counter()
    procs = [timed(c, log) for c, log in zip(commands, logs)]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - start
    parsed = [parse_time(log) for log in logs]
    row = {
        "stage": name, "command": " ".join(commands[0]), "processes": len(commands), "wall_s": round(wall, 1),
        "peak_rss_gb": max((p["peak_rss_gb"] or 0) for p in parsed), "exit": max(codes),
        "nodes": nodes, "nodes_per_s": round(nodes / wall, 1) if nodes else None,
    }
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {row['wall_s']} s, peak RSS {row['peak_rss_gb']} GB, exit {row['exit']}", flush=True)
    if row["exit"]:
        tail = logs[codes.index(max(codes))].read_text(errors="replace")[-3000:]
        print(tail, file=sys.stderr)
    return row


def has_flag(command: str, flag: str) -> bool:
    text = subprocess.run([PY, "-m", "pipeline", command, "--help"], capture_output=True, text=True, env=ENV).stdout
    return flag in text


def split_sizes(graph: Path) -> dict:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    col = pq.read_table(graph / "nodes.parquet", columns=["split"]).column("split")
    return {v["values"]: int(v["counts"]) for v in pc.value_counts(col).to_pylist() if v["values"]}


def labelled_split(sizes: dict, spec: str) -> dict:
    """Sizes of a ``random:a,b,c`` split of the labelled nodes (synth labels every node)."""
    n = sum(sizes.values())
    fractions = [float(x) for x in spec.split(":", 1)[1].split(",")]
    return {name: int(f * n) for name, f in zip(("train", "val", "test"), fractions)}


def write_report(out: Path, result: dict) -> None:
    (out / "scale_e2e.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"# End to end at {result['nodes']:,} nodes", "",
        f"{result['machine']}; {result['started']} -> {result['finished']}", "",
        "| stage | processes | wall time | nodes | nodes/s | peak RSS | exit |", "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["stages"]:
        nodes = f"{r['nodes']:,}" if r["nodes"] else ""
        lines.append(f"| {r['stage']} | {r['processes']} | {r['wall_s']:.1f} s | {nodes} | {r['nodes_per_s'] or ''} | "
                     f"{r['peak_rss_gb']:.2f} GB | {r['exit']} |")
    lines += ["", *(f"- {k}: {v}" for k, v in result["facts"].items()), ""]
    (out / "scale_e2e.md").write_text("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=1_000_000)
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--text-words", default="150:250", help="synth --text-words")
    p.add_argument("--work", type=Path, required=True, help="folder for the graph, cache and run (large)")
    p.add_argument("--out", type=Path, required=True, help="folder for logs and the report (small)")
    p.add_argument("--model", required=True, help="encode --model: a tiny model folder (scripts/make_tiny_model.py)")
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--encode-shards", type=int, default=1)
    p.add_argument("--memory-budget", default="256MB")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=0, help="train --batch-size (0: the default)")
    p.add_argument("--train-flags", default="",
                   help="more train flags, e.g. '--hops 1 --fanout 0' (the 1-hop ego graph, the sampler of the 2026-11-29 runs)")
    p.add_argument("--train-split", default="", help="train --split, e.g. random:0.05,0.01,0.02 for fewer targets than the split column")
    p.add_argument("--max-targets", type=int, default=0, help="infer --max-targets (0: the whole test split)")
    p.add_argument("--stages", default="synth,load_graph,encode,train,infer,train_in_memory", help="stages to run (the others' outputs in --work are reused)")
    p.add_argument("--clean", action="store_true", help="delete the graph, cache and run in --work at the end")
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)
    graph, cache, run, pred = a.work / "graph", a.work / "cache.zarr", a.work / "run", a.work / "pred"
    pipeline = [PY, "-m", "pipeline"]
    result = {"nodes": a.nodes, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "stages": [], "facts": {},
              "machine": f"{os.cpu_count()} cores (shared), OMP_NUM_THREADS=1, CPU only", "args": {k: str(v) for k, v in vars(a).items()}}
    stages, facts = result["stages"], result["facts"]

    def stage(name, commands, nodes):
        if name not in a.stages.split(","):
            return {}
        row = run_stage(name, commands, a.out, nodes)
        stages.append(row)
        write_report(a.out, result | {"finished": "(running)"})
        if row["exit"]:
            sys.exit(f"{name} failed (exit {row['exit']}); see {a.out}/{name}*.log")
        return row

    if not (graph / "nodes.parquet").is_file() or "synth" in a.stages.split(","):
        stage("synth", [[*pipeline, "datasets", "synth", "--nodes", str(a.nodes), "--classes", str(a.classes), "--seed", "0",
                         "--text-words", a.text_words, "--overwrite", str(graph)]], a.nodes)
    facts["graph_on_disk_mb"] = round(disk_bytes(graph) / 1e6, 1)
    sizes = split_sizes(graph)
    facts["split"] = sizes
    stage("load_graph", [[PY, "-c", f"from pipeline.core.graph import load_graph; g = load_graph({str(graph)!r}); print(g.num_nodes, g.texts)"]], a.nodes)

    encode = [*pipeline, "encode", str(graph), "--model", a.model, "--layers", "all", "--max-length", str(a.max_length), "--out", str(cache)]
    shards = [[*encode, "--num-shards", str(a.encode_shards), "--shard-id", str(i)] for i in range(a.encode_shards)] if a.encode_shards > 1 else [encode]
    stage("encode", shards, a.nodes)
    facts["cache_on_disk_mb"] = round(disk_bytes(cache) / 1e6, 1) if cache.exists() else None

    train = [*pipeline, "train", str(cache), "--out", str(run), "--seeds", "0", "--epochs", str(a.epochs), "--num-threads", "1", "--overwrite"]
    if a.batch_size:
        train += ["--batch-size", str(a.batch_size)]
    if a.train_flags:
        train += shlex.split(a.train_flags)
        facts["train_flags"] = a.train_flags
    if a.train_split:
        train += ["--split", a.train_split]
        sizes = labelled_split(sizes, a.train_split)
        facts["train_split"] = f"{a.train_split}: {sizes}"
    in_memory = list(train)
    if has_flag("train", "--memory-budget"):
        train += ["--memory-budget", a.memory_budget]
        facts["train_mode"] = f"out of core, --memory-budget {a.memory_budget}"
    else:
        facts["train_mode"] = "in memory (this checkout's train has no --memory-budget)"
    row = stage("train", [train], sizes.get("train", 0) * a.epochs)
    metrics = read_metrics(run) if (run / METRICS).is_file() else []
    facts["train_epoch_s"] = [round(m["epoch_s"], 1) for m in metrics if "epoch_s" in m]
    facts["train_val_acc"] = [round(m["val_acc"], 4) for m in metrics if "val_acc" in m]
    if facts["train_epoch_s"] and row:  # train nodes per second of epoch time (the stage wall time adds setup and evaluation)
        row["epoch_nodes_per_s"] = round(sizes.get("train", 0) / (sum(facts["train_epoch_s"]) / len(facts["train_epoch_s"])), 1)

    infer = [*pipeline, "infer", "--checkpoint", str(run), "--out", str(pred), "--split", "test"]
    targets = sizes.get("test", 0)
    if a.max_targets:
        infer += ["--max-targets", str(a.max_targets)]
        targets = min(targets, a.max_targets)
    stage("infer", [infer], targets)
    if (pred / SUMMARY_FILE).is_file():
        facts["infer_summary"] = read_summary(pred)
    if "--memory-budget" in train:  # the same training from memory, for comparison
        in_memory[in_memory.index(str(run))] = str(a.work / "run_in_memory")
        row = stage("train_in_memory", [in_memory], sizes.get("train", 0) * a.epochs)
        path = a.work / "run_in_memory"
        if row and (path / METRICS).is_file():
            epochs = [m["epoch_s"] for m in read_metrics(path) if "epoch_s" in m]
            facts["train_in_memory_epoch_s"] = [round(x, 1) for x in epochs]
            row["epoch_nodes_per_s"] = round(sizes.get("train", 0) / (sum(epochs) / len(epochs)), 1)

    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    write_report(a.out, result)
    if a.clean:
        for path in (graph, cache, run, pred):
            shutil.rmtree(path, ignore_errors=True)
    print((a.out / "scale_e2e.md").read_text())


if __name__ == "__main__":
    main()
