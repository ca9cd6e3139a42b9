"""Hostile inputs against the CLI: bad flags, damaged artifacts, outputs that are someone else's.

Each case runs one ``pipeline`` command in-process on a fresh copy of a small real sandbox
(a 24-node Cora slice, a MiniLM cache, a trained ladder, its predictions) and HOLDS when:
the exit status is the expected one (2 for a refusal), no Python traceback escaped, every
protected path is byte-identical before and after (paths, sizes, sha256), and the case's own
check passes (e.g. a repaired cache reads the original values). Prints one line per case and
the tally; ``--json PATH`` saves it.

    PYTHONPATH=$PWD python scripts/hostile_inputs.py [--only NAME] [--json PATH]

Run it with another checkout on PYTHONPATH to count how many held there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SMALL = ["--epochs", "1", "--patience", "1", "--hidden-channels", "16", "--batch-size", "16", "--num-threads", "1"]


def snapshot(*roots: Path) -> dict:
    """path -> (size, sha256) of every file (and '<dir>' for folders) under ``roots``."""
    out = {}
    for root in roots:
        if root.is_symlink() or root.is_file():
            out[str(root)] = (root.lstat().st_size, hashlib.sha256(root.read_bytes()).hexdigest() if root.is_file() else "link")
            continue
        for p in [root, *sorted(root.rglob("*"))] if root.exists() else []:
            out[str(p)] = "<dir>" if p.is_dir() else (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def invoke(args: list[str]):
    from typer.testing import CliRunner

    from pipeline.cli import app

    r = CliRunner().invoke(app, [str(a) for a in args])
    tb = r.exception is not None and not isinstance(r.exception, SystemExit)
    return r.exit_code, r.output + (r.stderr if hasattr(r, "stderr") and r.stderr_bytes is not None else ""), tb, r.exc_info


def build_base(root: Path) -> None:
    """graph/, cache.zarr/, run/, pred/ made by the CLI itself (works on any version)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from cora_slice import write_cora_slice

    write_cora_slice(root / "graph", 24)
    for args in (
        ["encode", root / "graph", "--out", root / "cache.zarr", "--model", "minilm-l6", "--max-length", "16", "--block-size", "8", "--device", "cpu"],
        ["train", root / "cache.zarr", "--out", root / "run", *SMALL],
        ["infer", "--checkpoint", root / "run", "--out", root / "pred", "--max-targets", "4"],
    ):
        code, out, tb, _ = invoke(args)
        assert code == 0, (args, out)


def chunk(sb: Path, i: int = 0) -> Path:
    return sb / "cache.zarr" / "states" / "c" / str(i) / "0" / "0"


def model_copy(sb: Path) -> Path:
    from stage1_encode.models import resolve_model

    dst = sb / "mymodel"
    shutil.copytree(resolve_model("minilm-l6").path, dst)
    return dst


# name -> (setup(sb) -> (args, protected paths), expected exit, extra check(sb, output) or None)
def cases() -> dict:
    C = {}

    def case(name, expect=2, check=None):
        def deco(fn):
            C[name] = (fn, expect, check)
            return fn
        return deco

    # --- outputs that are not the command's own
    @case("infer --out a user's folder")
    def _(sb):
        (sb / "mine").mkdir()
        (sb / "mine" / "summary.json").write_text("my notes")
        return ["infer", "--checkpoint", sb / "run", "--out", sb / "mine"], [sb / "mine"]

    @case("infer --out the checkpoint folder")
    def _(sb):
        return ["infer", "--checkpoint", sb / "run", "--out", sb / "run"], [sb / "run"]

    @case("infer --out its earlier output without --overwrite")
    def _(sb):
        return ["infer", "--checkpoint", sb / "run", "--out", sb / "pred", "--max-targets", "2"], [sb / "pred"]

    @case("infer --out inside the checkpoint")
    def _(sb):
        return ["infer", "--checkpoint", sb / "run", "--out", sb / "run" / "p"], [sb / "run"]

    @case("infer --out the cache")
    def _(sb):
        return ["infer", "--checkpoint", sb / "run", "--out", sb / "cache.zarr", "--overwrite"], [sb / "cache.zarr"]

    @case("train --out a user's folder --overwrite")
    def _(sb):
        (sb / "mine").mkdir()
        (sb / "mine" / "thesis.tex").write_text("years of work")
        return ["train", sb / "cache.zarr", "--out", sb / "mine", "--overwrite", *SMALL], [sb / "mine"]

    @case("train CACHE --out CACHE --overwrite")
    def _(sb):
        return ["train", sb / "cache.zarr", "--out", sb / "cache.zarr", "--overwrite", *SMALL], [sb / "cache.zarr"]

    @case("train --out the graph folder --overwrite")
    def _(sb):
        return ["train", sb / "cache.zarr", "--out", sb / "graph", "--overwrite", *SMALL], [sb / "graph"]

    @case("train --out inside the cache")
    def _(sb):
        return ["train", sb / "cache.zarr", "--out", sb / "cache.zarr" / "run", *SMALL], [sb / "cache.zarr"]

    @case("train --out a predictions folder --overwrite")
    def _(sb):
        return ["train", sb / "cache.zarr", "--out", sb / "pred", "--overwrite", *SMALL], [sb / "pred"]

    @case("encode --overwrite a user's folder holding a manifest.json")
    def _(sb):
        (sb / "mine").mkdir()
        (sb / "mine" / "manifest.json").write_text('{"format": "engine-encode-cache", "format_version": 1}')
        (sb / "mine" / "data.csv").write_text("1,2,3")
        return ["encode", sb / "graph", "--out", sb / "mine", "--model", "minilm-l6", "--max-length", "8", "--overwrite"], [sb / "mine"]

    @case("encode --out the graph folder --overwrite")
    def _(sb):
        return ["encode", sb / "graph", "--out", sb / "graph", "--model", "minilm-l6", "--max-length", "8", "--overwrite"], [sb / "graph"]

    @case("encode --out inside the graph folder")
    def _(sb):
        return ["encode", sb / "graph", "--out", sb / "graph" / "c.zarr", "--model", "minilm-l6", "--max-length", "8"], [sb / "graph"]

    @case("encode --overwrite a training run")
    def _(sb):
        return ["encode", sb / "graph", "--out", sb / "run", "--model", "minilm-l6", "--max-length", "8", "--overwrite"], [sb / "run"]

    @case("report --out a user's folder")
    def _(sb):
        (sb / "mine").mkdir()
        (sb / "mine" / "a.txt").write_text("x")
        return ["report", sb / "run", "--out", sb / "mine"], [sb / "mine"]

    @case("report --out a RUN_DIR")
    def _(sb):
        return ["report", sb / "pred", "--out", sb / "pred"], [sb / "pred"]

    @case("datasets import OUT a user's folder --overwrite")
    def _(sb):
        (sb / "n.csv").write_text("node_id,text\na,hello\nb,world\n")
        (sb / "e.csv").write_text("src,dst\na,b\n")
        (sb / "mine").mkdir()
        (sb / "mine" / "x.txt").write_text("x")
        return ["datasets", "import", sb / "n.csv", sb / "e.csv", sb / "mine", "--overwrite"], [sb / "mine"]

    @case("datasets subset GRAPH OUT=GRAPH --overwrite")
    def _(sb):
        return ["datasets", "subset", sb / "graph", sb / "graph", "--nodes", "5", "--overwrite"], [sb / "graph"]

    @case("datasets synth OUT a cache --overwrite")
    def _(sb):
        return ["datasets", "synth", sb / "cache.zarr", "--nodes", "20", "--overwrite"], [sb / "cache.zarr"]

    @case("datasets check --json onto nodes.parquet")
    def _(sb):
        return ["datasets", "check", sb / "graph", "--json", sb / "graph" / "nodes.parquet"], [sb / "graph"]

    @case("datasets check --json onto a user's file")
    def _(sb):
        (sb / "notes.json").write_text('{"mine": 1}')
        return ["datasets", "check", sb / "graph", "--json", sb / "notes.json"], [sb / "notes.json"]

    @case("bench train-memory --json onto a user's file")
    def _(sb):
        (sb / "notes.txt").write_text("mine")
        return ["bench", "train-memory", sb / "cache.zarr", "--memory-budget", "1KB", "--json", sb / "notes.txt"], [sb / "notes.txt"]

    @case("run --out a user's folder")
    def _(sb):
        (sb / "mine").mkdir()
        (sb / "mine" / "a.txt").write_text("x")
        return ["run", "--dataset", sb / "graph", "--model", "minilm-l6", "--out", sb / "mine", "--epochs", "1"], [sb / "mine"]

    # --- output paths the OS would refuse
    for cmd in ("train", "infer", "encode", "report", "import"):
        for kind in ("a file", "under a file", "a symlink"):
            def make(sb, cmd=cmd, kind=kind):
                (sb / "f.txt").write_text("keep")
                (sb / "real").mkdir()
                target = {"a file": sb / "f.txt", "under a file": sb / "f.txt" / "out", "a symlink": sb / "link"}[kind]
                if kind == "a symlink":
                    (sb / "link").symlink_to(sb / "real")
                (sb / "n.csv").write_text("node_id,text\na,hello\n")
                (sb / "e.csv").write_text("src,dst\n")
                args = {
                    "train": ["train", sb / "cache.zarr", "--out", target, *SMALL],
                    "infer": ["infer", "--checkpoint", sb / "run", "--out", target],
                    "encode": ["encode", sb / "graph", "--out", target, "--model", "minilm-l6", "--max-length", "8"],
                    "report": ["report", sb / "run", "--out", target],
                    "import": ["datasets", "import", sb / "n.csv", sb / "e.csv", target],
                }[cmd]
                return args, [sb / "f.txt", sb / "real", sb / "link"]
            C[f"{cmd} --out {kind}"] = (make, 2, None)

    # --- damaged cache
    @case("train on a cache with a chunk file deleted")
    def _(sb):
        chunk(sb, 1).unlink()
        return ["train", sb / "cache.zarr", "--out", sb / "r2", *SMALL], []

    @case("encode --status with a chunk file deleted", expect=0, check=lambda sb, out: "damaged block 1" in out and "complete\n" not in out)
    def _(sb):
        chunk(sb, 1).unlink()
        return ["encode", "--status", sb / "cache.zarr"], []

    @case("encode repairs a deleted chunk file", expect=0, check=lambda sb, out: _same_states(sb))
    def _(sb):
        _remember_states(sb)
        chunk(sb, 1).unlink()
        return ["encode", sb / "graph", "--out", sb / "cache.zarr", "--model", "minilm-l6", "--max-length", "16", "--block-size", "8", "--device", "cpu"], []

    @case("encode repairs a truncated chunk file", expect=0, check=lambda sb, out: _same_states(sb))
    def _(sb):
        _remember_states(sb)
        with open(chunk(sb, 2), "r+b") as f:
            f.truncate(100)
        return ["encode", sb / "graph", "--out", sb / "cache.zarr", "--model", "minilm-l6", "--max-length", "16", "--block-size", "8", "--device", "cpu"], []

    @case("infer reading a truncated chunk of a neighbour")
    def _(sb):
        _json_edit(run_description(sb), lambda d: d.update(cache=str(sb / "cache.zarr")))
        for i in range(3):
            with open(chunk(sb, i), "r+b") as f:
                f.truncate(10)
        return ["infer", "--checkpoint", sb / "run", "--out", sb / "p2"], []

    for name, edit in (
        ("manifest.json truncated", lambda sb: _truncate(sb / "cache.zarr" / "manifest.json", 30)),
        ("manifest.json not UTF-8", lambda sb: (sb / "cache.zarr" / "manifest.json").write_bytes(b"\xff\xfe{")),
        ("manifest.json a list", lambda sb: (sb / "cache.zarr" / "manifest.json").write_text("[1]")),
        ("manifest.json missing keys", lambda sb: _json_edit(sb / "cache.zarr" / "manifest.json", lambda d: d.pop("layers"))),
        ("states/zarr.json truncated", lambda sb: _truncate(sb / "cache.zarr" / "states" / "zarr.json", 40)),
        ("zarr.json deleted", lambda sb: (sb / "cache.zarr" / "zarr.json").unlink()),
        ("node_ids chunk deleted", lambda sb: shutil.rmtree(sb / "cache.zarr" / "node_ids" / "c")),
    ):
        C[f"train on a cache with {name}"] = (
            lambda sb, edit=edit: (edit(sb), (["train", sb / "cache.zarr", "--out", sb / "r2", *SMALL], []))[1], 2, None)
        C[f"encode --status on a cache with {name}"] = (
            lambda sb, edit=edit: (edit(sb), (["encode", "--status", sb / "cache.zarr"], []))[1], 2, None)

    # --- damaged run
    for name, edit in (
        ("summary.json truncated", lambda sb: _truncate(sb / "run" / "summary.json", 20)),
        ("its description (checkpoint.json) truncated", lambda sb: _truncate(run_description(sb), 20)),
        ("its description without 'model'", lambda sb: _json_edit(run_description(sb), lambda d: d.pop("model"))),
        ("manifest.json not JSON", lambda sb: (sb / "run" / "manifest.json").write_text("garbage")),
        ("model.safetensors truncated", lambda sb: _truncate(sb / "run" / "seed_0" / "model.safetensors", 50)),
        ("model.safetensors zero bytes", lambda sb: _truncate(sb / "run" / "seed_0" / "model.safetensors", 0)),
        ("summary.json default_seed a string", lambda sb: _json_edit(sb / "run" / "summary.json", lambda d: d.update(default_seed="x"))),
    ):
        C[f"infer on a run with {name}"] = (
            lambda sb, edit=edit: (edit(sb), (["infer", "--checkpoint", sb / "run", "--out", sb / "p2"], [sb / "run"]))[1], 2, None)

    # --- damaged model folder (--model FOLDER)
    for name, edit in (
        ("model.safetensors truncated", lambda m: _truncate(m / "model.safetensors", 1000)),
        ("config.json truncated", lambda m: _truncate(m / "config.json", 30)),
        ("config.json without hidden_size", lambda m: _json_edit(m / "config.json", lambda d: d.pop("hidden_size"))),
    ):
        def make(sb, edit=edit):
            m = model_copy(sb)
            edit(m)
            return ["encode", sb / "graph", "--out", sb / "c2.zarr", "--model", m, "--max-length", "8"], [m]
        C[f"encode with a model folder whose {name}"] = (make, 2, lambda sb, out: not (sb / "c2.zarr").exists())

    # --- preconditions
    @case("encode --max-length above the model's positions", check=lambda sb, out: not (sb / "c2.zarr").exists())
    def _(sb):
        return ["encode", sb / "graph", "--out", sb / "c2.zarr", "--model", "minilm-l6", "--max-length", "100000", "--batch-tokens", "100000"], []

    @case("encode --max-length 2 with [CLS] and [SEP]", check=lambda sb, out: not (sb / "c2.zarr").exists())
    def _(sb):
        return ["encode", sb / "graph", "--out", sb / "c2.zarr", "--model", "minilm-l6", "--max-length", "2"], []

    @case("refused encode writes no hash memo", check=lambda sb, out: not (sb / "artifacts").exists())
    def _(sb):
        os.chdir(sb)
        (sb / "f.txt").write_text("x")
        return ["encode", sb / "graph", "--out", sb / "f.txt", "--model", model_copy(sb), "--max-length", "8"], [sb / "f.txt"]

    @case("refused run writes no run_config.json", check=lambda sb, out: not (sb / "job").exists())
    def _(sb):
        return ["run", "--dataset", sb / "graph", "--model", "minilm-l6", "--out", sb / "job", "--max-length", "100000"], []

    for cmd, dev in (("train", "bogus"), ("train", "cuda"), ("train", "cuda:7"), ("infer", "gpu"), ("infer", "cuda"),
                     ("encode", "cuda:3"), ("bench infer", "tpu")):
        def make(sb, cmd=cmd, dev=dev):
            return {
                "train": ["train", sb / "cache.zarr", "--out", sb / "r2", "--device", dev, *SMALL],
                "infer": ["infer", "--checkpoint", sb / "run", "--out", sb / "p2", "--device", dev],
                "encode": ["encode", sb / "graph", "--out", sb / "c2.zarr", "--model", "minilm-l6", "--max-length", "8", "--device", dev],
                "bench infer": ["bench", "infer", "--checkpoint", sb / "run", "--device", dev],
            }[cmd], []
        C[f"{cmd} --device {dev}"] = (make, 2, lambda sb, out: not any((sb / n).exists() for n in ("r2", "p2", "c2.zarr")))

    for flag, value in (("--hidden-channels", "100000000"), ("--batch-size", "10000000000"), ("--epochs", "10000000000"),
                        ("--num-walks", "100000000"), ("--fanout", "1000000000"), ("--fanout", "-1"), ("--hops", "0")):
        C[f"train {flag} {value}"] = (
            lambda sb, flag=flag, value=value: (["train", sb / "cache.zarr", "--out", sb / "r2", flag, value], []), 2,
            lambda sb, out: not (sb / "r2").exists())
    C["infer --batch-size 10000000000"] = (
        lambda sb: (["infer", "--checkpoint", sb / "run", "--out", sb / "p2", "--batch-size", "10000000000"], []), 2, None)

    # --- ids beyond int64
    @case("datasets check with uint64 ids >= 2^63")
    def _(sb):
        g = sb / "u64"
        g.mkdir()
        pq.write_table(pa.table({"node_id": pa.array([1, 2**63, 2**64 - 1], pa.uint64()), "text": ["a", "b", "c"]}), g / "nodes.parquet")
        pq.write_table(pa.table({"src": pa.array([1], pa.uint64()), "dst": pa.array([2**63], pa.uint64())}), g / "edges.parquet")
        return ["datasets", "check", g], []

    @case("encode a graph with uint64 ids >= 2^63", check=lambda sb, out: not (sb / "c2.zarr").exists())
    def _(sb):
        g = sb / "u64"
        g.mkdir()
        pq.write_table(pa.table({"node_id": pa.array([5, 2**63 + 1], pa.uint64()), "text": ["a b", "c d"], "label": ["x", "y"]}), g / "nodes.parquet")
        pq.write_table(pa.table({"src": pa.array([5], pa.uint64()), "dst": pa.array([2**63 + 1], pa.uint64())}), g / "edges.parquet")
        return ["encode", g, "--out", sb / "c2.zarr", "--model", "minilm-l6", "--max-length", "8"], []

    @case("datasets import --id-type int with ids >= 2^63", check=lambda sb, out: not (sb / "g2").exists())
    def _(sb):
        (sb / "n.csv").write_text(f"node_id,text\n{2**63},hello\n1,world\n")
        (sb / "e.csv").write_text(f"src,dst\n1,{2**63}\n")
        return ["datasets", "import", sb / "n.csv", sb / "e.csv", sb / "g2", "--id-type", "int"], []

    @case("datasets import with ids >= 2^64", check=lambda sb, out: not (sb / "g2").exists())
    def _(sb):
        (sb / "n.jsonl").write_text(f'{{"node_id": {2**64}, "text": "a"}}\n{{"node_id": 1, "text": "b"}}\n')
        (sb / "e.csv").write_text("src,dst\n")
        return ["datasets", "import", sb / "n.jsonl", sb / "e.csv", sb / "g2"], []

    @case("infer --node-ids with an id >= 2^64")
    def _(sb):
        (sb / "ids.txt").write_text(f"{2**64}\n")
        return ["infer", "--checkpoint", sb / "run", "--out", sb / "p2", "--node-ids", sb / "ids.txt"], []

    # --- --config files
    for name, content in (("invalid UTF-8", b"epochs: 1\n\xff\xfe\n"), ("bad YAML", b"epochs: [1,\n"),
                          ("an unknown key", b"epochs: 1\nwarp: 9\n"), ("bad TOML", b"epochs = = 1\n")):
        def make(sb, content=content, name=name):
            cfg = sb / ("c.toml" if "TOML" in name else "c.yaml")
            cfg.write_bytes(content)
            return ["train", sb / "cache.zarr", "--out", sb / "r2", "--config", cfg], []
        C[f"--config with {name}"] = (make, 2, lambda sb, out: "╭" not in out and out.startswith("Error: --config"))

    # --- other inputs
    @case("infer --nodes not a Parquet file")
    def _(sb):
        (sb / "n.parquet").write_bytes(b"PAR1garbage")
        (sb / "e.parquet").write_bytes(b"PAR1garbage")
        return ["infer", "--checkpoint", sb / "run", "--out", sb / "p2", "--nodes", sb / "n.parquet", "--edges", sb / "e.parquet"], []

    @case("report with a damaged predictions.parquet", expect=0, check=lambda sb, out: "could not read" in (sb / "rep" / "report.md").read_text())
    def _(sb):
        _truncate(sb / "pred" / "predictions.parquet", 30)
        return ["report", sb / "pred", sb / "run", "--out", sb / "rep"], [sb / "pred", sb / "run"]

    @case("infer --node-ids not UTF-8")
    def _(sb):
        (sb / "ids.txt").write_bytes(b"1\n\xff\xfe\n")
        return ["infer", "--checkpoint", sb / "run", "--out", sb / "p2", "--node-ids", sb / "ids.txt"], []

    @case("encode onto its cache with other settings, no --overwrite")
    def _(sb):
        return ["encode", sb / "graph", "--out", sb / "cache.zarr", "--model", "minilm-l6", "--max-length", "12", "--block-size", "8"], [sb / "cache.zarr"]

    @case("encode --overwrite its own cache with other settings", expect=0,
          check=lambda sb, out: json.loads((sb / "cache.zarr" / "manifest.json").read_text())["max_length"] == 12)
    def _(sb):
        return ["encode", sb / "graph", "--out", sb / "cache.zarr", "--model", "minilm-l6", "--max-length", "12", "--block-size", "8", "--overwrite"], []

    @case("report of a run whose metrics.jsonl is damaged", check=lambda sb, out: "metrics" not in out or "could not be read" in out)
    def _(sb):
        (sb / "run" / "metrics.jsonl").write_bytes(b"{oops\n")
        return ["report", sb / "run", "--out", sb / "rep"], [sb / "run"]

    @case("datasets synth --nodes 10^12", check=lambda sb, out: not (sb / "g2").exists())
    def _(sb):
        return ["datasets", "synth", sb / "g2", "--nodes", str(10**12)], []

    @case("encode --block-size 2^40", check=lambda sb, out: not (sb / "c2.zarr").exists())
    def _(sb):
        return ["encode", sb / "graph", "--out", sb / "c2.zarr", "--model", "minilm-l6", "--max-length", "8", "--block-size", str(2**40)], []

    @case("infer --split with a damaged split file of the graph")
    def _(sb):
        return ["infer", "--checkpoint", sb / "run", "--out", sb / "p2", "--split", "bogus"], []

    @case("train --out in a folder named by a dangling symlink")
    def _(sb):
        (sb / "dangling").symlink_to(sb / "nowhere")
        return ["train", sb / "cache.zarr", "--out", sb / "dangling", *SMALL], []

    @case("encode --status on a folder that is not a cache")
    def _(sb):
        return ["encode", "--status", sb / "graph"], [sb / "graph"]

    return C


_STATES: dict = {}


def _remember_states(sb: Path) -> None:
    from stage1_encode.cache.reader import open_cache

    _STATES[str(sb)] = open_cache(sb / "cache.zarr").read().copy()


def _same_states(sb: Path) -> bool:
    from stage1_encode.cache.reader import open_cache

    r = open_cache(sb / "cache.zarr")
    r.check_complete()
    return np.array_equal(r.read(), _STATES[str(sb)])


def run_description(sb: Path) -> Path:
    """The run's description: checkpoint.json (config.json in versions before it was renamed)."""
    new = sb / "run" / "checkpoint.json"
    return new if new.is_file() else sb / "run" / "config.json"


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def _json_edit(path: Path, fn) -> None:
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def run_case(base: Path, work: Path, name: str, spec) -> dict:
    setup, expect, check = spec
    sb = work / f"case{abs(hash(name)) % 10**8}"
    shutil.copytree(base, sb, symlinks=True)
    cwd = os.getcwd()
    try:
        args, protected = setup(sb)
        before = snapshot(*protected)
        code, out, tb, exc_info = invoke(args)
        after = snapshot(*protected)
        ok_check = True
        if check is not None:
            try:
                ok_check = bool(check(sb, out))
            except Exception as err:  # the check itself failing counts as not held
                ok_check, out = False, out + f"\n[check raised {type(err).__name__}: {err}]"
        if tb:
            out += "\n" + "".join(traceback.format_exception(*exc_info))[-600:]
        held = code == expect and not tb and before == after and ok_check
        return {"case": name, "held": held, "exit": code, "expected": expect, "traceback": tb, "intact": before == after,
                "check": ok_check, "output": out.strip()[-400:]}
    finally:
        os.chdir(cwd)
        shutil.rmtree(sb, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=None, help="run the cases whose name contains this text")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("-v", action="store_true", help="print each case's output")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="hostile-"))
    try:
        base = work / "base"
        base.mkdir()
        build_base(base)
        rows = []
        for name, spec in cases().items():
            if a.only and a.only not in name:
                continue
            row = run_case(base, work, name, spec)
            rows.append(row)
            print(f"{'held' if row['held'] else 'FAIL'}  exit {row['exit']} (want {row['expected']})"
                  f"{'  TRACEBACK' if row['traceback'] else ''}{'' if row['intact'] else '  DATA CHANGED'}"
                  f"{'' if row['check'] else '  CHECK FAILED'}  {name}", flush=True)
            if a.v or not row["held"]:
                print("      " + row["output"].replace("\n", "\n      "))
        held = sum(r["held"] for r in rows)
        print(f"\n{held} of {len(rows)} hostile cases held")
        if a.json:
            a.json.write_text(json.dumps(rows, indent=1) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
