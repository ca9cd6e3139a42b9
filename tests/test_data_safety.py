"""Never lose a user's data; every fault a clear message (issue 17's regression corpus).

Each defect found by trying the CLI as a hostile user is a test here: the exit status, the
exact message, and a snapshot (paths, sizes, sha256) of the disk before and after showing
that nothing was lost. The sandbox is real and small: a 24-node Cora slice, a MiniLM cache,
a trained ladder and its predictions, made by the CLI itself.
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

from cora_slice import write_cora_slice
from pipeline.core import atomic
from pipeline.core.ownership import MARKER

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--epochs", "1", "--patience", "1", "--hidden-channels", "16", "--batch-size", "16", "--num-threads", "1"]
ENCODE = ["--model", "minilm-l6", "--max-length", "16", "--block-size", "8", "--device", "cpu"]
UNCHANGED = "(nothing was changed)"


def snapshot(*roots: Path) -> dict:
    """path -> (size, sha256) of every file, '<dir>' of every folder, under ``roots``."""
    out = {}
    for root in roots:
        for p in [root, *sorted(root.rglob("*"))] if root.exists() else []:
            out[str(p)] = "<dir>" if p.is_dir() else (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from typer.testing import CliRunner

    from pipeline.cli import app

    root = tmp_path_factory.mktemp("safety")
    write_cora_slice(root / "graph", 24)
    for args in (
        ["encode", root / "graph", "--out", root / "cache.zarr", *ENCODE],
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
def test_a_missing_chunk_is_refused_reported_and_repaired(cli, sb):
    from stage1_encode.cache.manifest import completion_command
    from stage1_encode.cache.reader import open_cache

    original = open_cache(sb / "cache.zarr").read().copy()
    lost = chunk(sb, 1)
    lost.unlink()
    before = snapshot(sb)
    fix = completion_command(json.loads((sb / "cache.zarr" / "manifest.json").read_text()), sb / "cache.zarr")
    refused(cli("train", sb / "cache.zarr", "--out", sb / "r2", *SMALL),
            f"cache {sb / 'cache.zarr'} is incomplete: 1 of 3 blocks missing (nodes 8-15), 1 of them damaged "
            f"(block 1: chunk file {lost} is missing); complete it with `{fix}`")
    status = cli("encode", "--status", sb / "cache.zarr")
    assert f"  damaged block 1: chunk file {lost} is missing" in status.stdout and "blocks done 2/3" in status.stdout
    assert snapshot(sb) == before  # refusals and --status wrote nothing
    repaired = cli("encode", sb / "graph", "--out", sb / "cache.zarr", *ENCODE)
    assert repaired.exit_code == 0, repaired.output
    assert f"warning: block 1: chunk file {lost} is missing; re-encoding it" in repaired.stderr
    assert "encoding 8 of 24 nodes" in repaired.stderr
    reader = open_cache(sb / "cache.zarr")
    reader.check_complete()
    assert np.array_equal(reader.read(), original)  # the very same values, not zeros


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


@pytest.mark.parametrize("args, message", [
    (["train", "{cache}", "--out", "{sb}/r", "--device", "bogus"], "--device bogus: not a device; use auto, cpu, cuda or cuda:N"),
    (["train", "{cache}", "--out", "{sb}/r", "--device", "cuda:7"], None),
    (["infer", "--checkpoint", "{sb}/run", "--out", "{sb}/p", "--device", "gpu"], "--device gpu: not a device; use auto, cpu, cuda or cuda:N"),
    (["train", "{cache}", "--out", "{sb}/r", "--hidden-channels", "100000000"], "--hidden-channels 100000000: must be <= 16384"),
    (["infer", "--checkpoint", "{sb}/run", "--out", "{sb}/p", "--batch-size", "10000000000"], "--batch-size 10000000000: must be in 1..100000"),
])
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


# ------------------------------------------------------------------ damaged artifacts
def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


@pytest.mark.parametrize("damage, command, starts", [
    (lambda sb: _truncate(sb / "cache.zarr" / "manifest.json", 30), "train", "{sb}/cache.zarr/manifest.json: is not valid JSON"),
    (lambda sb: (sb / "cache.zarr" / "manifest.json").write_bytes(b"\xff{"), "status", "{sb}/cache.zarr/manifest.json: is not UTF-8 text (damaged); rebuild it with `pipeline encode GRAPH --out {sb}/cache.zarr --overwrite`"),
    (lambda sb: _truncate(sb / "cache.zarr" / "states" / "zarr.json", 40), "train", "{sb}/cache.zarr: the Zarr arrays cannot be read"),
    (lambda sb: shutil.rmtree(sb / "cache.zarr" / "node_ids" / "c"), "status", "{sb}/cache.zarr/node_ids/c/0: node id chunk of cache {sb}/cache.zarr is missing; rebuild it with `pipeline encode "),
    (lambda sb: _truncate(sb / "run" / "summary.json", 20), "infer", "{sb}/run/summary.json: is not valid JSON"),
    (lambda sb: _truncate(sb / "run" / "checkpoint.json", 20), "infer", "{sb}/run/checkpoint.json: is not valid JSON"),
    (lambda sb: _truncate(sb / "run" / "seed_0" / "model.safetensors", 50), "infer", "{sb}/run/seed_0/model.safetensors: is not a readable safetensors file"),
])
def test_damaged_artifacts_exit_2_naming_the_file_and_the_fix(cli, sb, damage, command, starts):
    damage(sb)
    args = {"train": ["train", sb / "cache.zarr", "--out", sb / "r2", *SMALL], "status": ["encode", "--status", sb / "cache.zarr"],
            "infer": ["infer", "--checkpoint", sb / "run", "--out", sb / "p2"]}[command]
    before = snapshot(sb)
    result = cli(*args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2 and result.stderr.startswith("Error: " + starts.format(sb=sb)), result.output
    assert ("rebuild it with `pipeline encode" in result.stderr or "retrain it with `pipeline train" in result.stderr)
    assert snapshot(sb) == before


def test_a_damaged_model_leaves_no_cache_behind(cli, sb):
    from stage1_encode.models import resolve_model

    model = sb / "model"
    shutil.copytree(resolve_model("minilm-l6").path, model)
    _truncate(model / "model.safetensors", 1000)
    before = snapshot(sb)
    result = cli("encode", sb / "graph", "--out", sb / "c2.zarr", "--model", model, "--max-length", "8")
    assert result.exit_code == 2 and result.stderr.startswith(f"Error: {model}/model.safetensors: is not a readable safetensors file")
    assert result.stderr.rstrip().endswith(f"restore the model folder {model} (e.g. download it again)")
    assert snapshot(sb) == before


# ------------------------------------------------------------------ --config
@pytest.mark.parametrize("name, content, message", [
    ("c.yaml", b"epochs: 1\n\xff\n", "--config {cfg}: not UTF-8 text (byte 10); save it as UTF-8"),
    ("c.yaml", b"epochs: 1\nwarp: 9\n", None),
])
def test_config_errors_print_like_every_other_error(cli, sb, name, content, message):
    cfg = sb / name
    cfg.write_bytes(content)
    result = cli("train", sb / "cache.zarr", "--out", sb / "r2", "--config", cfg)
    if message is None:
        assert result.exit_code == 2 and result.stderr.startswith(f"Error: --config {cfg}: unknown key(s) warp; known keys: ")
    else:
        refused(result, message.format(cfg=cfg))
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


def test_outputs_of_earlier_versions_are_recognised_by_their_own_files(cli, sb):
    """No marker (written before it existed): a run with its description, summary and weights,
    and predictions, are still the pipeline's own."""
    for folder in ("run", "pred"):
        (sb / folder / MARKER).unlink()
    assert cli("train", sb / "cache.zarr", "--out", sb / "run", "--overwrite", *SMALL).exit_code == 0
    assert (sb / "run" / MARKER).is_file()  # the replacement carries the marker
    assert cli("infer", "--checkpoint", sb / "run", "--out", sb / "pred", "--max-targets", "2", "--overwrite").exit_code == 0
    # a damaged marker proves nothing: refused even with --overwrite
    (sb / "run" / MARKER).write_text("{")
    result = cli("train", sb / "cache.zarr", "--out", sb / "run", "--overwrite", *SMALL)
    assert result.exit_code == 2 and "exists and was not written by `pipeline train`" in result.stderr
