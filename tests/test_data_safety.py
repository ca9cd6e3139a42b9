"""Never lose a user's data; every fault a clear message: the hostile-input corpus.

Each hostile input to the CLI is a case here (outputs that are someone else's or an input,
damaged caches, runs and models, bad devices, sizes, ids and ``--config`` files): the exit
status, the message naming the file or flag and the fix, no traceback, and a snapshot (paths,
sizes, sha256) of the sandbox before and after showing that nothing was lost or half-written.
The sandbox is real and small: a 24-node Cora slice with its shared MiniLM cache
(tests/conftest.py), a ladder trained on it and its predictions, made by the CLI itself.
tests/test_nightly_refusals.py holds the nightly path's (``--init``, ``--new-only``, config
file limits, a full disk).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.core import atomic
from pipeline.core.ownership import MARKER

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--epochs", "1", "--patience", "1", "--hidden-channels", "16", "--batch-size", "16", "--num-threads", "1"]
ENCODE = ["--model", "minilm-l6", "--max-length", "16", "--block-size", "8", "--device", "cpu"]
UNCHANGED = "(nothing was changed)"


def snapshot(*roots: Path) -> dict:
    """path -> (size, sha256) of every file, '<dir>' of every folder, ('link', target) of every
    symbolic link, under ``roots``."""
    out = {}
    for root in roots:
        for p in [root, *sorted(root.rglob("*"))] if root.exists() or root.is_symlink() else []:
            if p.is_symlink():
                out[str(p)] = ("link", os.readlink(p))
            else:
                out[str(p)] = "<dir>" if p.is_dir() else (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory, cora_cache):
    """graph/, cache.zarr/ (the shared 24-node cache, ENCODE's settings), run/ and pred/ made by the CLI."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    graph, cache = cora_cache(24, max_length=16, block_size=8)
    root = tmp_path_factory.mktemp("safety")
    shutil.copytree(graph, root / "graph")
    shutil.copytree(cache, root / "cache.zarr")
    for args in (
        ["train", root / "cache.zarr", "--out", root / "run", *SMALL],
        ["infer", "--checkpoint", root / "run", "--out", root / "pred", "--max-targets", "4"],
    ):
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def sb(base, tmp_path):
    """A private copy of the sandbox whose run and cache point at each other (paths are absolute)."""
    root = tmp_path / "sb"
    shutil.copytree(base, root)
    config = json.loads((root / "run" / "checkpoint.json").read_text())
    config["cache"] = str(root / "cache.zarr")
    (root / "run" / "checkpoint.json").write_text(json.dumps(config))
    return root


def refused(result, message: str) -> None:
    """Exit 2, exactly ``Error: message`` on stderr, and no traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert (result.exit_code, result.stderr) == (2, f"Error: {message}\n"), result.output


def error_of(result) -> str:
    """Exit 2 and no traceback; the stderr from its ``Error: `` on (after any model-loading progress)."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2 and "Error: " in result.stderr, result.output
    return result.stderr[result.stderr.index("Error: "):]


def chunk(root: Path, i: int) -> Path:
    return root / "cache.zarr" / "states" / "c" / str(i) / "0" / "0"


# ------------------------------------------------------------------ 1. infer --out
def test_infer_never_writes_into_a_folder_it_did_not_write(cli, sb):
    mine = sb / "mine"
    mine.mkdir()
    (mine / "summary.json").write_text("my notes")
    before = snapshot(sb)
    refused(cli("infer", "--checkpoint", sb / "run", "--out", mine, "--overwrite"),
            f"--out {mine}: exists and was not written by `pipeline infer` (no {MARKER} marking it a predictions); "
            f"choose a new or empty folder {UNCHANGED}")
    refused(cli("infer", "--checkpoint", sb / "run", "--out", sb / "run"),
            f"--out {sb / 'run'}: is this command's input {sb / 'run'}; choose a separate --out {UNCHANGED}")
    refused(cli("infer", "--checkpoint", sb / "run", "--out", sb / "pred"),
            f"--out {sb / 'pred'}: holds an earlier predictions; pass --overwrite to replace it, or choose another --out {UNCHANGED}")
    assert snapshot(sb) == before
    # its own earlier output is replaced whole with --overwrite; the run still loads
    result = cli("infer", "--checkpoint", sb / "run", "--out", sb / "pred", "--max-targets", "2", "--overwrite")
    assert result.exit_code == 0, result.output
    assert json.loads((sb / "pred" / "summary.json").read_text())["num_targets"] == 2
    assert snapshot(sb / "run") == {k: v for k, v in before.items() if k.startswith(str(sb / "run"))}
    assert not [p for p in sb.iterdir() if p.name.startswith(".")]


def test_infer_output_folder_has_normal_permissions(cli, sb):
    result = cli("infer", "--checkpoint", sb / "run", "--out", sb / "new", "--max-targets", "2")
    assert result.exit_code == 0, result.output
    umask = os.umask(0)
    os.umask(umask)
    assert (sb / "new").stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700


# ------------------------------------------------------------------ 2. train --overwrite
def test_train_overwrite_never_deletes_a_users_folder_or_its_own_cache(cli, sb):
    mine = sb / "thesis"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    before = snapshot(sb)
    refused(cli("train", sb / "cache.zarr", "--out", mine, "--overwrite", *SMALL),
            f"--out {mine}: exists and was not written by `pipeline train` (no {MARKER} marking it a run); "
            f"choose a new or empty folder {UNCHANGED}")
    refused(cli("train", sb / "cache.zarr", "--out", sb / "cache.zarr", "--overwrite", *SMALL),
            f"--out {sb / 'cache.zarr'}: is this command's input {sb / 'cache.zarr'}; choose a separate --out {UNCHANGED}")
    refused(cli("train", sb / "cache.zarr", "--out", sb / "pred", "--overwrite", *SMALL),
            f"--out {sb / 'pred'}: holds a predictions written by `pipeline infer`, not a run; choose another --out {UNCHANGED}")
    assert snapshot(sb) == before
    result = cli("train", sb / "cache.zarr", "--out", sb / "run", "--overwrite", *SMALL)  # its own run: replaced
    assert result.exit_code == 0, result.output


# ------------------------------------------------------------------ 3. encode --overwrite
def test_encode_overwrite_never_deletes_a_folder_that_merely_holds_a_manifest(cli, sb):
    mine = sb / "mine"
    mine.mkdir()
    (mine / "manifest.json").write_text(json.dumps({"format": "engine-encode-cache", "format_version": 1}))
    (mine / "data.csv").write_text("1,2,3")
    before = snapshot(sb)
    refused(cli("encode", sb / "graph", "--out", mine, *ENCODE, "--overwrite"),
            f"--out {mine}: exists and was not written by `pipeline encode` (no {MARKER} marking it a cache); "
            f"choose a new or empty folder {UNCHANGED}")
    refused(cli("encode", sb / "graph", "--out", sb / "graph" / "c.zarr", *ENCODE),
            f"--out {sb / 'graph' / 'c.zarr'}: lies inside this command's input {sb / 'graph'}; choose a separate --out {UNCHANGED}")
    assert snapshot(sb) == before


# ------------------------------------------------------------------ 4. cache integrity
def _lose_chunk(sb: Path) -> str:
    chunk(sb, 1).unlink()
    return f"chunk file {chunk(sb, 1)} is missing"


def _damage_mark(content: bytes):
    def damage(sb: Path) -> str:  # a writer killed inside the mark's write, or a mark copied over
        mark = sb / "cache.zarr" / "blocks" / "000001.done"
        mark.write_bytes(content)
        return f"block mark {mark} is unreadable or names other nodes (cut short or damaged)"
    return damage


@pytest.mark.parametrize("damage", [_lose_chunk, _damage_mark(b""), _damage_mark(b'{"format_version": 1, "nodes": [0, 8]}\n')],
                         ids=["chunk missing", "mark cut short", "mark of another block"])
def test_a_damaged_block_is_refused_reported_and_repaired(cli, sb, damage):
    from stage1_encode.cache.manifest import completion_command
    from stage1_encode.cache.reader import open_cache

    original = open_cache(sb / "cache.zarr").read().copy()
    problem = damage(sb)
    before = snapshot(sb)
    fix = completion_command(json.loads((sb / "cache.zarr" / "manifest.json").read_text()), sb / "cache.zarr")
    refused(cli("train", sb / "cache.zarr", "--out", sb / "r2", *SMALL),
            f"cache {sb / 'cache.zarr'} is incomplete: 1 of 3 blocks missing (nodes 8-15), 1 of them damaged "
            f"(block 1: {problem}); complete it with `{fix}`")
    status = cli("encode", "--status", sb / "cache.zarr")
    assert f"  damaged block 1: {problem}" in status.stdout and "blocks done 2/3" in status.stdout
    assert snapshot(sb) == before  # refusals and --status wrote nothing
    repaired = cli("encode", sb / "graph", "--out", sb / "cache.zarr", *ENCODE)
    assert repaired.exit_code == 0, repaired.output
    assert f"warning: block 1: {problem}; re-encoding it" in repaired.stderr and "encoding 8 of 24 nodes" in repaired.stderr
    reader = open_cache(sb / "cache.zarr")
    reader.check_complete()
    assert np.array_equal(reader.read(), original)  # the very same values, not zeros
    marks = sb / "cache.zarr" / "blocks"
    assert sorted(p.name for p in marks.iterdir()) == ["000000.done", "000001.done", "000002.done"]  # no temporaries
    assert json.loads((marks / "000001.done").read_text())["nodes"] == [8, 16]


def test_a_killed_writers_half_written_mark_is_removed_by_the_next_encode(cli, sb):
    from pipeline.core.atomic import temp_sibling

    mark = sb / "cache.zarr" / "blocks" / "000001.done"
    mark.unlink()  # killed before the mark's rename: the block is not done, its temporary left behind
    left = temp_sibling(mark)
    left = left.with_name(left.name.replace(f"-{os.getpid()}-", "-999999999-"))  # a writer that is gone
    left.write_bytes(b'{"format_ver')
    repaired = cli("encode", sb / "graph", "--out", sb / "cache.zarr", *ENCODE)
    assert repaired.exit_code == 0 and "encoding 8 of 24 nodes" in repaired.stderr, repaired.output
    assert sorted(p.name for p in mark.parent.iterdir()) == ["000000.done", "000001.done", "000002.done"]


def test_a_truncated_chunk_is_not_called_complete(cli, sb):
    from stage1_encode.cache.reader import open_cache

    original = open_cache(sb / "cache.zarr").read().copy()
    with open(chunk(sb, 2), "r+b") as f:
        f.truncate(100)
    status = cli("encode", "--status", sb / "cache.zarr")
    assert "blocks done 2/3" in status.stdout and "has 100 bytes, expected" in status.stdout
    again = cli("encode", sb / "graph", "--out", sb / "cache.zarr", *ENCODE, "--overwrite")
    assert again.exit_code == 0 and "already complete" not in again.stderr and "encoding 8 of 24 nodes" in again.stderr
    assert np.array_equal(open_cache(sb / "cache.zarr").read(), original)


def test_readers_refuse_a_truncated_chunk_rather_than_read_zeros(sb):
    from pipeline.core.errors import InputError
    from stage1_encode.cache.reader import open_cache

    reader = open_cache(sb / "cache.zarr")
    with open(chunk(sb, 0), "r+b") as f:
        f.truncate(10)
    with pytest.raises(InputError) as err:
        reader.read_rows(np.array([1]))
    assert err.value.exit_code == 2 and err.value.message.startswith(f"{chunk(sb, 0)}: chunk file of cache ")
    assert "ends before node row 1 (truncated); repair it with `pipeline encode " in err.value.message
    chunk(sb, 0).unlink()
    with pytest.raises(InputError, match="is missing; repair it with `pipeline encode "):
        reader.read_chunk(0)


# ------------------------------------------------------------------ ids beyond int64
def test_unsigned_ids_beyond_int64_are_refused_never_wrapped(cli, tmp_path, write_graph):
    g = write_graph({"node_id": pa.array([1, 2**63, 2**64 - 1], pa.uint64()), "text": ["a", "b", "c"]},
                    {"src": pa.array([1], pa.uint64()), "dst": pa.array([2**63], pa.uint64())})
    refused(cli("datasets", "check", g),
            f"invalid graph 'g':\n"
            f"- {g}/nodes.parquet: column 'node_id' has 2 id(s) above the int64 maximum 9223372036854775807 at rows [1, 2], "
            f"first: [9223372036854775808, 18446744073709551615]; store such ids as strings\n"
            f"- {g}/edges.parquet: column 'dst' has 1 id(s) above the int64 maximum 9223372036854775807 at rows [0], "
            f"first: [9223372036854775808]; store such ids as strings")
    (tmp_path / "n.csv").write_text(f"node_id,text\n{2**63},hello\n1,world\n")
    (tmp_path / "e.csv").write_text(f"src,dst\n1,{2**63}\n")
    result = cli("datasets", "import", tmp_path / "n.csv", tmp_path / "e.csv", tmp_path / "out", "--id-type", "int")
    assert result.exit_code == 2 and "column 'node_id' has ids outside int64 at rows [0]; use --id-type string" in result.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ preconditions before any write
def test_max_length_is_checked_against_the_model_before_anything_is_written(cli, sb):
    before = snapshot(sb)
    refused(cli("encode", sb / "graph", "--out", sb / "c2.zarr", "--model", "minilm-l6", "--max-length", "100000", "--batch-tokens", "100000"),
            "--max-length 100000: model 'minilm-l6' has 512 positions; use --max-length 512 or less")
    refused(cli("encode", sb / "graph", "--out", sb / "c2.zarr", "--model", "minilm-l6", "--max-length", "2"),
            "--max-length 2: model 'minilm-l6' adds 2 special token(s) to every text; use --max-length 3 or more so text fits")
    refused(cli("run", "--dataset", sb / "graph", "--model", "minilm-l6", "--out", sb / "job", "--max-length", "600"),
            "--max-length 600: model 'minilm-l6' has 512 positions; use --max-length 512 or less")
    assert snapshot(sb) == before  # no cache folder, no run_config.json


def test_a_refused_command_writes_no_hash_memo(cli, sb, monkeypatch):
    from stage1_encode.models import resolve_model

    model = sb / "model"
    shutil.copytree(resolve_model("minilm-l6").path, model)
    monkeypatch.chdir(sb)
    (sb / "f.txt").write_text("keep")
    refused(cli("encode", sb / "graph", "--out", sb / "f.txt", "--model", model, "--max-length", "8"),
            f"--out {sb / 'f.txt'}: is a file; give a folder {UNCHANGED}")
    assert not (sb / "artifacts").exists()  # the relative artifacts/models/ memo was written before


DEVICES_AND_SIZES = [  # (command line, its refusal; None: the cuda:7 refusal of this machine)
    (["train", "{cache}", "--out", "{sb}/r", "--device", "bogus"], "--device bogus: not a device; use auto, cpu, cuda or cuda:N"),
    (["train", "{cache}", "--out", "{sb}/r", "--device", "cuda:7"], None),
    (["infer", "--checkpoint", "{sb}/run", "--out", "{sb}/p", "--device", "gpu"], "--device gpu: not a device; use auto, cpu, cuda or cuda:N"),
    (["encode", "{sb}/graph", "--out", "{sb}/c2.zarr", "--model", "minilm-l6", "--max-length", "8", "--device", "cuda:7"], None),
    (["bench", "infer", "--checkpoint", "{sb}/run", "--device", "tpu"], "--device tpu: not a device; use auto, cpu, cuda or cuda:N"),
    (["train", "{cache}", "--out", "{sb}/r", "--hidden-channels", "100000000"], "--hidden-channels 100000000: must be <= 16384"),
    (["train", "{cache}", "--out", "{sb}/r", "--batch-size", "10000000000"], "--batch-size 10000000000: must be <= 10000000"),
    (["train", "{cache}", "--out", "{sb}/r", "--epochs", "10000000000"], "--epochs 10000000000: must be <= 1000000"),
    (["train", "{cache}", "--out", "{sb}/r", "--fanout", "1000000000"], "--fanout 1000000000: must be <= 100000"),
    (["train", "{cache}", "--out", "{sb}/r", "--fanout", "-1"], "--fanout -1: must be >= 0 (0 keeps every neighbour)"),
    (["train", "{cache}", "--out", "{sb}/r", "--hops", "0"], "--hops 0: must be 1..3"),
    (["train", "{cache}", "--out", "{sb}/r", "--sampler", "rwr", "--num-walks", "100000000"], "--num-walks 100000000: must be <= 1024"),
    (["infer", "--checkpoint", "{sb}/run", "--out", "{sb}/p", "--no-batch-invariant", "--batch-size", "10000000000"], "--batch-size 10000000000: must be in 1..100000"),
    (["datasets", "synth", "{sb}/g2", "--nodes", str(10**12)], "--nodes 1000000000000: must be in 10..100000000"),
    (["encode", "{sb}/graph", "--out", "{sb}/c2.zarr", "--model", "minilm-l6", "--max-length", "8", "--block-size", str(2**40)], "--block-size 1099511627776: must be <= 1048576"),
    (["infer", "--checkpoint", "{sb}/run", "--out", "{sb}/p", "--split", "bogus"], "--split bogus: choose one of test, val, train, all"),
    # seeds: every generator seeded takes 0..2^32-1 (numpy refuses a negative one mid-run)
    (["train", "{cache}", "--out", "{sb}/r", "--split", "random:0.6,0.2,0.2", "--seeds", "0,-1"], "--seeds 0,-1: seeds must be in 0..4294967295 (not -1)"),
    (["train", "{cache}", "--out", "{sb}/r", "--arch", "lora", "--seeds", str(2**64)], f"--seeds {2**64}: seeds must be in 0..4294967295 (not {2**64})"),
    (["run", "--dataset", "{sb}/graph", "--out", "{sb}/j", "--seeds", "-3"], "--seeds -3: seeds must be in 0..4294967295 (not -3)"),
    # the main job checks its trainings' flags before it encodes (minutes on CPU) for them
    (["run", "--dataset", "{sb}/graph", "--out", "{sb}/j", "--seeds", "0,0"], "--seeds 0,0: seed 0 repeats"),
    (["run", "--dataset", "{sb}/graph", "--out", "{sb}/j", "--baselines", "mlp,gcn,mlp"], "--baselines mlp,gcn,mlp: mlp given twice"),
    (["run", "--dataset", "{sb}/graph", "--out", "{sb}/j", "--split", "random:0.9,0.9,0.1"],
     "--split random:0.9,0.9,0.1: expected three non-negative fractions (train > 0) summing to at most 1"),
    (["run", "--dataset", "{sb}/graph", "--out", "{sb}/j", "--epochs", "100000000"], "--epochs 100000000: must be <= 1000000"),
    (["bench", "train", "{sb}/graph", "--cache", "{cache}", "--seeds", str(2**32)], "--seeds 4294967296: seeds must be in 0..4294967295 (not 4294967296)"),
    (["bench", "train-memory", "{cache}", "--memory-budget", "1KB", "--seed", "-1"], "--seed -1: must be in 0..4294967295"),
    (["datasets", "synth", "{sb}/g2", "--nodes", "20", "--seed", "-1"], "--seed -1: must be in 0..4294967295"),
    (["datasets", "subset", "{sb}/graph", "{sb}/g2", "--nodes", "5", "--seed", str(2**40)], "--seed 1099511627776: must be in 0..4294967295"),
    # numbers a training step cannot use: infinite, or sure to wreck the weights at the first step
    (["train", "{cache}", "--out", "{sb}/r", "--lr", "2"], "--lr 2.0: must be > 0 and at most 1"),
    (["train", "{cache}", "--out", "{sb}/r", "--arch", "finetune", "--lr", "inf"], "--lr inf: must be > 0 and at most 1"),
    (["train", "{cache}", "--out", "{sb}/r", "--arch", "gcn", "--weight-decay", "inf"], "--weight-decay inf: must be a finite number >= 0"),
    (["train", "{cache}", "--out", "{sb}/r", "--temperature", "inf"], "--temperature inf: must be a finite number > 0"),
    (["train", "{cache}", "--out", "{sb}/r", "--dist-timeout", "1e9"], "--dist-timeout 1000000000.0: must be > 0 and at most 604800 seconds (a week)"),
    (["train", "{cache}", "--out", "{sb}/r", "--rung-weights", "0,0,0"], "--rung-weights: all weights are 0, so no head would learn; give at least one > 0"),
    (["bench", "encode", "{sb}/graph", "--model", "minilm-l6", "--limit", "-1"], "--limit -1: must be >= 0 (0 encodes every text)"),
]


@pytest.mark.parametrize("args, message", DEVICES_AND_SIZES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in DEVICES_AND_SIZES])
def test_devices_and_sizes_are_checked_before_any_work(cli, sb, args, message):
    import torch

    if message is None:
        message = ("--device cuda:7: no CUDA device is visible; use --device cpu" if not torch.cuda.is_available()
                   else f"--device cuda:7: this machine has {torch.cuda.device_count()} CUDA device(s) (cuda:0..cuda:{torch.cuda.device_count() - 1})")
    before = snapshot(sb)
    refused(cli(*[a.format(sb=sb, cache=sb / "cache.zarr") for a in args]), message)
    assert snapshot(sb) == before


@pytest.mark.parametrize("command", ["train", "infer", "encode", "report", "import"])
@pytest.mark.parametrize("kind", ["a file", "under a file", "a symlink"])
def test_output_paths_the_os_would_refuse_are_refused_first(cli, sb, command, kind):
    (sb / "f.txt").write_text("keep")
    (sb / "real").mkdir()
    (sb / "link").symlink_to(sb / "real")
    (sb / "n.csv").write_text("node_id,text\na,hello\n")
    (sb / "e.csv").write_text("src,dst\n")
    target = {"a file": sb / "f.txt", "under a file": sb / "f.txt" / "out", "a symlink": sb / "link"}[kind]
    args = {
        "train": ["train", sb / "cache.zarr", "--out", target, *SMALL],
        "infer": ["infer", "--checkpoint", sb / "run", "--out", target],
        "encode": ["encode", sb / "graph", "--out", target, *ENCODE],
        "report": ["report", sb / "run", "--out", target],
        "import": ["datasets", "import", sb / "n.csv", sb / "e.csv", target],
    }[command]
    flag = "OUT" if command == "import" else "--out"
    message = {
        "a file": f"{flag} {target}: is a file; give a folder {UNCHANGED}",
        "under a file": f"{flag} {target}: {sb / 'f.txt'} is a file, not a folder; choose another {flag} {UNCHANGED}",
        "a symlink": f"{flag} {target}: is a symbolic link; give the real folder path {UNCHANGED}",
    }[kind]
    before = snapshot(sb)
    refused(cli(*args), message)
    assert snapshot(sb) == before


# ------------------------------------------------------------------ outputs and inputs of every command
def _file(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _link(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return link


def _users_folder(sb: Path, name: str = "thesis.tex") -> Path:
    return _file(sb / "mine" / name, "years of work").parent


def _csv_graph(sb: Path, nodes: str = "node_id,text\na,hello\nb,world\n", edges: str = "src,dst\na,b\n") -> tuple[Path, Path]:
    return _file(sb / "n.csv", nodes), _file(sb / "e.csv", edges)


def _u64_graph(sb: Path) -> Path:
    import pyarrow.parquet as pq

    g = sb / "u64"
    g.mkdir()
    pq.write_table(pa.table({"node_id": pa.array([5, 2**63 + 1], pa.uint64()), "text": ["a b", "c d"], "label": ["x", "y"]}), g / "nodes.parquet")
    pq.write_table(pa.table({"src": pa.array([5], pa.uint64()), "dst": pa.array([2**63 + 1], pa.uint64())}), g / "edges.parquet")
    return g


NOT_ITS_OWN = "exists and was not written by `pipeline {command}` (no .pipeline-artifact.json marking it a {kind}); choose a new or empty folder"
HOSTILE = [  # (case, sb -> command line (writing what it needs), words of its refusal with {sb})
    ("infer --out inside the checkpoint", lambda sb: ["infer", "--checkpoint", sb / "run", "--out", sb / "run" / "p"],
     "--out {sb}/run/p: lies inside this command's input {sb}/run; choose a separate --out " + UNCHANGED),
    ("infer --out a cache", lambda sb: ["infer", "--checkpoint", sb / "run", "--out", shutil.copytree(sb / "cache.zarr", sb / "c2.zarr"), "--overwrite"],
     "--out {sb}/c2.zarr: holds a cache written by `pipeline encode`, not a predictions; choose another --out " + UNCHANGED),
    ("train --out the graph folder", lambda sb: ["train", sb / "cache.zarr", "--out", sb / "graph", "--overwrite", *SMALL],
     "--out {sb}/graph: holds a graph written by `pipeline datasets`, not a run; choose another --out " + UNCHANGED),
    ("train --out inside the cache", lambda sb: ["train", sb / "cache.zarr", "--out", sb / "cache.zarr" / "run", *SMALL],
     "--out {sb}/cache.zarr/run: lies inside this command's input {sb}/cache.zarr; choose a separate --out " + UNCHANGED),
    ("train --out a dangling symlink", lambda sb: ["train", sb / "cache.zarr", "--out", _link(sb / "dangling", sb / "nowhere"), *SMALL],
     "--out {sb}/dangling: is a symbolic link; give the real folder path " + UNCHANGED),
    ("encode --out the graph folder", lambda sb: ["encode", sb / "graph", "--out", sb / "graph", *ENCODE, "--overwrite"],
     "--out {sb}/graph: is this command's input {sb}/graph; choose a separate --out " + UNCHANGED),
    ("encode --out a training run", lambda sb: ["encode", sb / "graph", "--out", sb / "run", *ENCODE, "--overwrite"],
     "--out {sb}/run: holds a run written by `pipeline train`, not a cache; choose another --out " + UNCHANGED),
    ("encode onto its cache with other settings", lambda sb: ["encode", sb / "graph", "--out", sb / "cache.zarr", "--model", "minilm-l6",
                                                              "--max-length", "12", "--block-size", "8"],
     "--out {sb}/cache.zarr: holds a cache of model 'minilm-l6' on graph "),
    ("report --out a user's folder", lambda sb: ["report", sb / "run", "--out", _users_folder(sb)],
     "--out {sb}/mine: " + NOT_ITS_OWN.format(command="report", kind="report") + " " + UNCHANGED),
    ("report --out its input", lambda sb: ["report", sb / "pred", "--out", sb / "pred"],
     "--out {sb}/pred: is this command's input {sb}/pred; choose a separate --out " + UNCHANGED),
    ("run --out a user's folder", lambda sb: ["run", "--dataset", sb / "graph", "--model", "minilm-l6", "--split", "column", "--out",
                                              _users_folder(sb), "--epochs", "1"],
     "--out {sb}/mine: " + NOT_ITS_OWN.format(command="run", kind="job") + " " + UNCHANGED),
    ("datasets import OUT a user's folder", lambda sb: ["datasets", "import", *_csv_graph(sb), _users_folder(sb), "--overwrite"],
     "OUT {sb}/mine: " + NOT_ITS_OWN.format(command="datasets", kind="graph") + " " + UNCHANGED),
    ("datasets subset OUT its input", lambda sb: ["datasets", "subset", sb / "graph", sb / "graph", "--nodes", "5", "--overwrite"],
     "OUT {sb}/graph: is this command's input {sb}/graph; choose a separate OUT " + UNCHANGED),
    ("datasets synth OUT a cache", lambda sb: ["datasets", "synth", sb / "cache.zarr", "--nodes", "20", "--overwrite"],
     "OUT {sb}/cache.zarr: holds a cache written by `pipeline encode`, not a graph; choose another OUT " + UNCHANGED),
    ("datasets check --json onto nodes.parquet", lambda sb: ["datasets", "check", sb / "graph", "--json", sb / "graph" / "nodes.parquet"],
     "--json {sb}/graph/nodes.parquet: exists and was not written by `pipeline datasets check`; choose a new file " + UNCHANGED),
    ("datasets check --json onto a user's file", lambda sb: ["datasets", "check", sb / "graph", "--json", _file(sb / "notes.json", '{"mine": 1}')],
     "--json {sb}/notes.json: exists and was not written by `pipeline datasets check`; choose a new file " + UNCHANGED),
    ("bench --json onto a user's file", lambda sb: ["bench", "train-memory", sb / "cache.zarr", "--memory-budget", "1KB", "--json",
                                                    _file(sb / "notes.txt", "mine")],
     "--json {sb}/notes.txt: exists and was not written by `pipeline bench train-memory`; choose a new file " + UNCHANGED),
    ("encode --status on a graph folder", lambda sb: ["encode", "--status", sb / "graph"],
     "{sb}/graph: not an encode cache (no manifest.json); create one with `pipeline encode GRAPH --out {sb}/graph`"),
    ("report of a run with damaged metrics.jsonl", lambda sb: ["report", _file(sb / "run" / "metrics.jsonl", b"{oops\n").parent, "--out", sb / "rep"],
     "{sb}/run: training run could not be read ({sb}/run/metrics.jsonl: line 1 is not valid JSON ("),
    ("encode a graph with uint64 ids >= 2^63", lambda sb: ["encode", _u64_graph(sb), "--out", sb / "c2.zarr", "--model", "minilm-l6", "--max-length", "8"],
     "- {sb}/u64/nodes.parquet: column 'node_id' has 1 id(s) above the int64 maximum 9223372036854775807 at rows [1], "
     "first: [9223372036854775809]; store such ids as strings"),
    ("datasets import ids >= 2^64", lambda sb: ["datasets", "import", _file(sb / "n.jsonl", f'{{"node_id": {2**64}, "text": "a"}}\n{{"node_id": 1, "text": "b"}}\n'),
                                               _file(sb / "e.csv", "src,dst\n"), sb / "g2"],
     "- {sb}/n.jsonl: column 'node_id' has ids outside int64 at rows [0]; use --id-type string"),
    ("infer --node-ids an id >= 2^64", lambda sb: ["infer", "--checkpoint", sb / "run", "--out", sb / "p2", "--node-ids", _file(sb / "ids.txt", f"{2**64}\n")],
     "--node-ids {sb}/ids.txt: 1 node id(s) not in graph 'graph', first: [18446744073709551616]"),
    ("infer --node-ids not UTF-8", lambda sb: ["infer", "--checkpoint", sb / "run", "--out", sb / "p2", "--node-ids", _file(sb / "ids.txt", b"1\n\xff\xfe\n")],
     "--node-ids {sb}/ids.txt: not UTF-8 text (byte 2); one node id a line"),
    ("infer --nodes not Parquet", lambda sb: ["infer", "--checkpoint", sb / "run", "--out", sb / "p2", "--nodes", _file(sb / "n.parquet", b"PAR1garbage"),
                                             "--edges", _file(sb / "e.parquet", b"PAR1garbage")],
     "- {sb}/n.parquet: not a readable Parquet file (Parquet magic bytes not found in footer."),
]


@pytest.mark.parametrize("command_line, words", [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_inputs_are_refused_naming_the_problem(cli, sb, command_line, words):
    args = command_line(sb)
    before = snapshot(sb)
    error = error_of(cli(*args))
    assert words.format(sb=sb) in error, error
    assert snapshot(sb) == before  # nothing changed, nothing half-written


# ------------------------------------------------------------------ damaged artifacts
def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def _json_edit(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _nan_weight(path: Path) -> None:  # a well-formed file whose first tensor holds a NaN
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    first = sorted(tensors)[0]
    tensors[first].view(-1)[0] = float("nan")
    save_file(tensors, str(path), metadata=metadata)


def _truncate_chunks(sb: Path) -> None:  # every block: a target's neighbours cannot be read
    for i in range(3):
        _truncate(chunk(sb, i), 10)


REBUILD = "rebuild it with `pipeline encode GRAPH --out {sb}/cache.zarr --overwrite`"
CACHE_DAMAGE = [  # (name, damage, the refusal's start: the file, what is wrong, the fix)
    ("manifest.json truncated", lambda sb: _truncate(sb / "cache.zarr" / "manifest.json", 30),
     "{sb}/cache.zarr/manifest.json: is not valid JSON ("),
    ("manifest.json not UTF-8", lambda sb: (sb / "cache.zarr" / "manifest.json").write_bytes(b"\xff{"),
     "{sb}/cache.zarr/manifest.json: is not UTF-8 text (damaged); " + REBUILD),
    ("manifest.json a list", lambda sb: (sb / "cache.zarr" / "manifest.json").write_text("[1]"),
     "{sb}/cache.zarr/manifest.json: expected a JSON object, found list; " + REBUILD),
    ("manifest.json missing keys", lambda sb: _json_edit(sb / "cache.zarr" / "manifest.json", lambda d: d.pop("layers")),
     "{sb}/cache.zarr/manifest.json: lacks layers (damaged or not written by this pipeline); " + REBUILD),
    ("manifest.json with an unknown pooling", lambda sb: _json_edit(sb / "cache.zarr" / "manifest.json", lambda d: d.update(pooling="max")),
     "{sb}/cache.zarr/manifest.json: holds values `pipeline encode` never writes (pooling 'max' is not one of mean, last); " + REBUILD),
    ("manifest.json with bad numbers", lambda sb: _json_edit(sb / "cache.zarr" / "manifest.json", lambda d: d.update(max_length=0, layers=[2, 2])),
     "{sb}/cache.zarr/manifest.json: holds values `pipeline encode` never writes (max_length 0 is not an integer >= 1; "
     "layers [2, 2] are not distinct LLM state indices); " + REBUILD),
    ("states/zarr.json truncated", lambda sb: _truncate(sb / "cache.zarr" / "states" / "zarr.json", 40),
     "{sb}/cache.zarr: the Zarr arrays cannot be read (JSONDecodeError: "),
    ("zarr.json deleted", lambda sb: (sb / "cache.zarr" / "zarr.json").unlink(),
     "{sb}/cache.zarr: the Zarr arrays cannot be read (GroupNotFoundError: "),
    ("node_ids chunk deleted", lambda sb: shutil.rmtree(sb / "cache.zarr" / "node_ids" / "c"),
     "{sb}/cache.zarr/node_ids/c/0: node id chunk of cache {sb}/cache.zarr is missing; rebuild it with `pipeline encode "),
]
RUN_DAMAGE = [
    ("summary.json truncated", lambda sb: _truncate(sb / "run" / "summary.json", 20), "{sb}/run/summary.json: is not valid JSON"),
    ("checkpoint.json truncated", lambda sb: _truncate(sb / "run" / "checkpoint.json", 20), "{sb}/run/checkpoint.json: is not valid JSON"),
    ("checkpoint.json without model", lambda sb: _json_edit(sb / "run" / "checkpoint.json", lambda d: d.pop("model")),
     "{sb}/run/checkpoint.json: lacks model (damaged or not written by this pipeline); retrain it with `pipeline train "),
    ("manifest.json not JSON", lambda sb: (sb / "run" / "manifest.json").write_text("garbage"), "{sb}/run/manifest.json: is not valid JSON"),
    ("model.safetensors truncated", lambda sb: _truncate(sb / "run" / "seed_0" / "model.safetensors", 50),
     "{sb}/run/seed_0/model.safetensors: is not a readable safetensors file"),
    ("model.safetensors zero bytes", lambda sb: _truncate(sb / "run" / "seed_0" / "model.safetensors", 0),
     "{sb}/run/seed_0/model.safetensors: is not a readable safetensors file"),
    ("model.safetensors with a NaN weight", lambda sb: _nan_weight(sb / "run" / "seed_0" / "model.safetensors"),
     "{sb}/run/seed_0/model.safetensors: holds NaN or infinite values (tensor '"),
    ("default_seed a string", lambda sb: _json_edit(sb / "run" / "summary.json", lambda d: d.update(default_seed="x")),
     "{sb}/run/summary.json: default_seed 'x' is not a seed; retrain it with `pipeline train "),
    ("the run's manifest without pooling", lambda sb: _json_edit(sb / "run" / "manifest.json", lambda d: d.pop("pooling")),
     "{sb}/run/manifest.json: lacks pooling (damaged or not written by this pipeline); retrain it with `pipeline train "),
    ("the run's manifest with a string max_length", lambda sb: _json_edit(sb / "run" / "manifest.json", lambda d: d.update(max_length="32")),
     "{sb}/run/manifest.json: holds values `pipeline encode` never writes (max_length '32' is not an integer >= 1); retrain it with "
     "`pipeline train "),
    ("default_seed not a seed", lambda sb: _json_edit(sb / "run" / "summary.json", lambda d: d.update(default_seed=-1)),
     "{sb}/run/summary.json: default_seed -1 is not a seed; retrain it with `pipeline train "),
    ("per_seed not a list", lambda sb: _json_edit(sb / "run" / "summary.json", lambda d: d.update(per_seed=7)),
     "{sb}/run/summary.json: holds no results for seed 0 (damaged or not written by this pipeline); retrain it with `pipeline train "),
    ("no exit policy", lambda sb: _json_edit(sb / "run" / "summary.json", lambda d: d["per_seed"][0].pop("exit_policy")),
     "{sb}/run/summary.json: holds no exit policy for seed 0 (damaged or not written by this pipeline); retrain it with `pipeline train "),
    ("a negative fanout", lambda sb: _json_edit(sb / "run" / "checkpoint.json", lambda d: d.update(fanout=-1)),
     "{sb}/run/checkpoint.json: its sampler settings are not ones `pipeline train` writes (--fanout -1: must be >= 0 (0 keeps every "
     "neighbour)); retrain it with `pipeline train "),
    ("hops a string, no sampler", lambda sb: _json_edit(sb / "run" / "checkpoint.json", lambda d: d.update(hops="2", sampler="walk")),
     "{sb}/run/checkpoint.json: its sampler settings are not ones `pipeline train` writes (--sampler 'walk': not one of ego, rwr, "
     "full; --hops '2': must be an integer); retrain it with `pipeline train "),
    ("no hops", lambda sb: _json_edit(sb / "run" / "checkpoint.json", lambda d: d.pop("hops")),
     "{sb}/run/checkpoint.json: lacks hops (damaged or not written by this pipeline); retrain it with `pipeline train "),
    ("layers repeated", lambda sb: _json_edit(sb / "run" / "checkpoint.json", lambda d: d.update(layers=[1, 1])),
     "{sb}/run/checkpoint.json: its \"layers\" [1, 1] are not distinct LLM state indices; retrain it with `pipeline train "),
    ("a class name missing", lambda sb: _json_edit(sb / "run" / "checkpoint.json", lambda d: d["label_names"].pop()),
     "{sb}/run/checkpoint.json: its \"label_names\" are not 7 distinct class names of its head; retrain it with `pipeline train "),
    ("split a number", lambda sb: _json_edit(sb / "run" / "checkpoint.json", lambda d: d.update(split=7)),
     "{sb}/run/checkpoint.json: its 'split' 7 is not a string or null; retrain it with `pipeline train "),
    ("no graph fingerprint", lambda sb: _json_edit(sb / "run" / "checkpoint.json", lambda d: d.pop("graph_fingerprint")),
     "{sb}/run/checkpoint.json: lacks graph_fingerprint (damaged or not written by this pipeline); retrain it with `pipeline train "),
    ("eval_batch_size 0", lambda sb: _json_edit(sb / "run" / "checkpoint.json", lambda d: d.update(eval_batch_size=0)),
     "{sb}/run/checkpoint.json: its 'eval_batch_size' 0 is not a positive integer; retrain it with `pipeline train "),
    ("a negative gate temperature", lambda sb: _json_edit(sb / "run" / "checkpoint.json", lambda d: d["model"].update(temperature=-1)),
     "{sb}/run/checkpoint.json: its \"model\" entry cannot build a network (ValueError: temperature -1: must be a finite number > 0); "
     "retrain it with `pipeline train "),
    ("a negative rung count", lambda sb: _json_edit(sb / "run" / "checkpoint.json", lambda d: d["model"].update(num_rungs=-1)),
     "{sb}/run/checkpoint.json: its \"model\" entry cannot build a network (RuntimeError: "),
    ("a neighbour's chunk truncated", _truncate_chunks,
     "cache {sb}/cache.zarr is incomplete: 3 of 3 blocks missing (nodes 0-23), 3 of them damaged (block 0: chunk file {sb}/cache.zarr/states/c/0/0/0 has 10 bytes"),
]
DAMAGED = ([(f"train: {n}", d, "train", w) for n, d, w in CACHE_DAMAGE] + [(f"status: {n}", d, "status", w) for n, d, w in CACHE_DAMAGE]
           + [(f"infer: {n}", d, "infer", w) for n, d, w in RUN_DAMAGE])


@pytest.mark.parametrize("damage, command, starts", [c[1:] for c in DAMAGED], ids=[c[0] for c in DAMAGED])
def test_damaged_artifacts_exit_2_naming_the_file_and_the_fix(cli, sb, damage, command, starts):
    damage(sb)
    args = {"train": ["train", sb / "cache.zarr", "--out", sb / "r2", *SMALL], "status": ["encode", "--status", sb / "cache.zarr"],
            "infer": ["infer", "--checkpoint", sb / "run", "--out", sb / "p2"]}[command]
    before = snapshot(sb)
    error = error_of(cli(*args))
    assert error.startswith("Error: " + starts.format(sb=sb)), error
    assert any(fix in error for fix in ("rebuild it with `pipeline encode", "complete it with `pipeline encode", "retrain it with `pipeline train"))
    assert snapshot(sb) == before


@pytest.mark.parametrize("damage, words", [
    (lambda m: _truncate(m / "model.safetensors", 1000), "model.safetensors: is not a readable safetensors file"),
    (lambda m: _truncate(m / "config.json", 30), "config.json: is not valid JSON"),
    (lambda m: _json_edit(m / "config.json", lambda d: d.pop("hidden_size")), "config.json: lacks hidden_size"),
], ids=["weights truncated", "config truncated", "config without hidden_size"])
def test_a_damaged_model_leaves_no_cache_behind(cli, sb, damage, words):
    from stage1_encode.models import resolve_model

    model = sb / "model"
    shutil.copytree(resolve_model("minilm-l6").path, model)
    damage(model)
    before = snapshot(sb)
    result = cli("encode", sb / "graph", "--out", sb / "c2.zarr", "--model", model, "--max-length", "8")
    assert result.exit_code == 2 and result.stderr.startswith(f"Error: {model}/{words}"), result.output
    assert result.stderr.rstrip().endswith(f"restore the model folder {model} (e.g. download it again)")
    assert snapshot(sb) == before


# ------------------------------------------------------------------ --config
@pytest.mark.parametrize("name, content, starts", [
    ("c.yaml", b"epochs: 1\n\xff\n", "--config {cfg}: not UTF-8 text (byte 10); save it as UTF-8\n"),
    ("c.yaml", b"epochs: 1\nwarp: 9\n", "--config {cfg}: unknown key(s) warp; known keys: "),
    ("c.yaml", b"epochs: [1,\n", "--config {cfg}: cannot parse: while parsing a flow node"),
    ("c.toml", b"epochs = = 1\n", "--config {cfg}: cannot parse: Invalid value (at line 1, column 10)\n"),
], ids=["not UTF-8", "unknown key", "bad YAML", "bad TOML"])
def test_config_errors_print_like_every_other_error(cli, sb, name, content, starts):
    cfg = sb / name
    cfg.write_bytes(content)
    result = cli("train", sb / "cache.zarr", "--out", sb / "r2", "--config", cfg)
    assert result.exit_code == 2 and result.stderr.startswith("Error: " + starts.format(cfg=cfg)), result.output
    assert "╭" not in result.output and not (sb / "r2").exists()


# ------------------------------------------------------------------ kills and stale temporary folders
def _pipeline(*args, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "pipeline", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_when(proc, ready, timeout=240.0) -> None:
    start = time.monotonic()
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - start < timeout, "the run never reached the point to kill it"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("command", ["train", "infer"])
def test_a_killed_run_leaves_no_result_and_the_next_run_cleans_up(sb, command):
    out = sb / "out"
    if command == "train":  # killed mid-training: its temporary run folder holds metrics, no summary
        args = ["train", sb / "cache.zarr", "--out", out, "--epochs", "100000", "--patience", "100000", "--hidden-channels", "16",
                "--num-threads", "1"]
        ready = lambda: any((p / "metrics.jsonl").is_file() for p in sb.glob(".out.tmp-*"))  # noqa: E731
        env = None
    else:  # killed with every file written, just before the rename
        args = ["infer", "--checkpoint", sb / "run", "--out", out, "--max-targets", "2"]
        ready = lambda: any((p / "summary.json").is_file() for p in sb.glob(".out.tmp-*"))  # noqa: E731
        env = {atomic.STALL_ENV: "60"}
    _kill_when(_pipeline(*args, env_extra=env), ready)
    stale = list(sb.glob(".out.tmp-*"))
    assert len(stale) == 1 and not out.exists()  # no partial result under the output's name
    # a live writer's temporary folder (this process) and another host's are left alone
    live = atomic.temp_sibling(out)
    live.mkdir()
    other_host = sb / f".out.tmp-otherhost-{os.getpid()}-0123456789ab"
    other_host.mkdir()
    rerun = _pipeline(*(args[:args.index("--epochs")] + SMALL if command == "train" else args))
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    assert sorted(p.name for p in sb.glob(".out.*")) == sorted([live.name, other_host.name])  # the killed one is gone
    assert (out / "summary.json").is_file() and (out / MARKER).is_file()


def test_stale_temps_only_names_dead_writers_on_this_host(tmp_path):
    out = tmp_path / "x"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = atomic._host()
    mine = [tmp_path / f".x.tmp-{host}-{dead.pid}-0123456789ab", tmp_path / f".x.old-{host}-{dead.pid}-abcdef012345"]
    keep = [tmp_path / f".x.tmp-{host}-{os.getpid()}-0123456789ab", tmp_path / f".x.tmp-elsewhere-{dead.pid}-0123456789ab",
            tmp_path / f".x.tmp-{dead.pid}", tmp_path / f".y.tmp-{host}-{dead.pid}-0123456789ab", tmp_path / "user.tmp-notes"]
    for p in mine + keep:
        p.mkdir()
    assert atomic.remove_stale_temps(out) == sorted(mine)
    assert sorted(tmp_path.iterdir()) == sorted(keep)


def test_an_unwritable_place_is_refused_before_any_work(cli, sb, monkeypatch):
    """Root passes every permission test, so the folder's refusal is simulated at os.access."""
    from pipeline.core import ownership

    ro = sb / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(ownership.os, "access", lambda p, mode: False if Path(p) == ro else real_access(p, mode))
    before = snapshot(sb)
    refused(cli("train", sb / "cache.zarr", "--out", ro / "run", *SMALL),
            f"--out {ro / 'run'}: cannot write in {ro} (permission denied); choose a writable --out {UNCHANGED}")
    assert snapshot(sb) == before


def test_a_cache_without_its_marker_is_read_but_never_replaced(cli, sb):
    """The ownership marker alone proves a cache is the pipeline's own: without it the cache is
    still read, but neither resumed nor replaced."""
    (sb / "cache.zarr" / MARKER).unlink()
    before = snapshot(sb)
    refused(cli("encode", sb / "graph", "--out", sb / "cache.zarr", *ENCODE, "--overwrite"),
            f"--out {sb / 'cache.zarr'}: exists and was not written by `pipeline encode` (no {MARKER} marking it a cache); "
            f"choose a new or empty folder {UNCHANGED}")
    assert snapshot(sb) == before
    assert cli("train", sb / "cache.zarr", "--out", sb / "run", "--overwrite", *SMALL).exit_code == 0


def test_outputs_without_a_marker_are_never_replaced(cli, sb):
    """Only the ownership marker proves a folder is the pipeline's own: a run or predictions
    folder without one (or with a damaged one) is refused even with --overwrite, and left as it is."""
    for folder in ("run", "pred"):
        (sb / folder / MARKER).unlink()
    before = snapshot(sb)
    result = cli("train", sb / "cache.zarr", "--out", sb / "run", "--overwrite", *SMALL)
    assert result.exit_code == 2 and f"--out {sb / 'run'}: exists and was not written by `pipeline train`" in result.stderr
    result = cli("infer", "--checkpoint", sb / "run", "--out", sb / "pred", "--max-targets", "2", "--overwrite")
    assert result.exit_code == 2 and "was not written by `pipeline infer`" in result.stderr
    (sb / "run" / MARKER).write_text("{")  # a damaged marker proves nothing either
    result = cli("train", sb / "cache.zarr", "--out", sb / "run", "--overwrite", *SMALL)
    assert result.exit_code == 2 and "exists and was not written by `pipeline train`" in result.stderr
    (sb / "run" / MARKER).unlink()
    assert snapshot(sb) == before


def test_a_marker_of_another_format_version_proves_nothing(cli, sb):
    """A written marker carries format_version 1; a marker of another version is no proof of
    ownership: the folder is refused, naming the marker file and its version, and left as it is."""
    marker = json.loads((sb / "run" / MARKER).read_text())
    assert marker == {"kind": "run", "written_by": "pipeline train", "format_version": 1}
    (sb / "run" / MARKER).write_text(json.dumps({**marker, "format_version": 2}))
    before = snapshot(sb)
    refused(cli("train", sb / "cache.zarr", "--out", sb / "run", "--overwrite", *SMALL),
            f"{sb / 'run' / MARKER}: format version 2, this version of the pipeline reads 1; a marker of another version "
            f"does not prove --out {sb / 'run'} is the pipeline's own; choose a new or empty --out {UNCHANGED}")
    assert snapshot(sb) == before


# ------------------------------------------------------------------ a diverged training
DIVERGE = ["--lr", "1", "--weight-decay", "1e30", "--epochs", "2"]  # AdamW multiplies every weight by 1 - 1e30 a step


@pytest.mark.parametrize("arch", ["ladder", "mlp", "gcn", "sage", "lora"])
def test_a_diverged_training_stops_naming_the_epoch_and_writes_nothing(cli, sb, arch):
    before = snapshot(sb)
    size = [] if arch == "lora" else ["--hidden-channels", "16"]
    result = cli("train", sb / "cache.zarr", "--out", sb / "r2", "--arch", arch, *size, "--batch-size", "16", "--num-threads", "1", *DIVERGE)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1, result.output
    assert result.stderr[result.stderr.index("Error: "):] == (
        f"Error: seed 0, epoch 2: the training loss is nan: training diverged, and nothing was written to --out "
        f"{sb / 'r2'}. To train again, lower --lr (this run's: 1) or --weight-decay (1e+30)\n")
    assert snapshot(sb) == before  # no run, no temporary folder, no resumable state (none was saved yet)


def test_a_diverged_training_names_its_resumable_state(cli, sb):
    result = cli("train", sb / "cache.zarr", "--out", sb / "r2", "--arch", "gcn", "--hidden-channels", "16", "--batch-size", "16", *DIVERGE, "--state-every", "0")
    assert result.exit_code == 1, result.output
    resume = sb / "r2.resume"
    assert result.stderr[result.stderr.index("Error: "):] == (
        f"Error: seed 0, epoch 2: the training loss is nan: training diverged, and nothing was written to --out "
        f"{sb / 'r2'}. To train again, delete {resume}, which holds this run's progress under these flags, and "
        f"lower --lr (this run's: 1) or --weight-decay (1e+30)\n")
    assert resume.is_dir() and not (sb / "r2").exists()
