"""Encode across jobs: 3 concurrent ``pipeline encode`` shards fill one cache, one of them is
killed (SIGKILL) mid-run and restarted, and the cache equals a single-process one bit for bit.

This is what a SLURM array (``scripts/slurm/encode_array.sh``) does, on one machine. Every
encode runs single-threaded (OMP_NUM_THREADS=1 / ``torch.set_num_threads(1)``), as array
tasks on equal nodes run with equal settings: float results may differ in the last bit
between thread counts. The single-process run runs in this process, in a thread while
the shards run, which saves one process start (imports dominate: ~6 s of CPU each).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
NODES, BLOCK, SHARDS, KILLED = 72, 8, 3, 1  # 9 blocks, 3 per shard; shard 1 is killed
FLAGS = ["--model", "minilm-l6", "--max-length", "32", "--batch-tokens", "256", "--block-size", str(BLOCK), "--device", "cpu"]


def encode(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "encode", *args], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out


def array_script(mode: str, **env: str) -> subprocess.CompletedProcess:
    """``scripts/slurm/encode_array.sh MODE`` with this venv's ``pipeline``."""
    pipeline = Path(sys.executable).parent / "pipeline"
    env = {**os.environ, "PIPELINE": str(pipeline), "VENV": str(Path(sys.executable).parents[1]), **env}
    return subprocess.run(["bash", str(REPO / "scripts/slurm/encode_array.sh"), mode], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def marks(cache: Path, shard: int) -> list[int]:
    """Committed blocks of one shard (block b belongs to shard b % SHARDS)."""
    return sorted(b for b in (int(p.stem) for p in (cache / "blocks").glob("*.done")) if b % SHARDS == shard)


def encode_here(graph: Path, out: Path) -> threading.Thread:
    """The single-process run, ``pipeline encode GRAPH --out OUT FLAGS`` in a thread."""
    import torch

    from stage1_encode.config import EncodeConfig
    from stage1_encode.run import run

    config = EncodeConfig(graph=str(graph), out=out, model="minilm-l6", max_length=32, batch_tokens=256, block_size=BLOCK, device="cpu")

    def work() -> None:
        torch.set_num_threads(1)  # in this thread, like OMP_NUM_THREADS=1 in the shards
        run(config)

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def stored(cache: Path) -> tuple[bytes, np.ndarray, dict]:
    """(states as raw bytes, node ids, identity fields of the manifest)."""
    import zarr

    from stage1_encode.cache import IDENTITY_KEYS, read_manifest

    group = zarr.open_group(str(cache), mode="r")
    manifest = read_manifest(cache)
    states = np.asarray(group["states"][:])
    assert states.shape == (NODES, 7, 384) and states.dtype == np.float16
    return states.tobytes(), np.asarray(group["node_ids"][:]), {k: manifest[k] for k in IDENTITY_KEYS}


@pytest.fixture
def procs():
    """Processes a test starts; any still running at its end (a failed test) are killed."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_three_concurrent_shards_one_killed_equal_one_process(cli, procs, tmp_path: Path) -> None:
    import torch

    graph, shared, single = tmp_path / "graph", tmp_path / "shared.zarr", tmp_path / "single.zarr"
    result = cli("datasets", "subset", "cora", graph, "--nodes", NODES)
    assert result.exit_code == 0, result.output

    shard = {i: encode(str(graph), "--out", str(shared), *FLAGS, "--num-shards", str(SHARDS), "--shard-id", str(i)) for i in range(SHARDS)}
    procs.extend(shard.values())
    threads = torch.get_num_threads()
    reference = encode_here(graph, single)

    # kill shard 1 as soon as it has committed its first block (of 3)
    deadline = time.time() + 240
    while not (shared / "blocks").is_dir() or not marks(shared, KILLED):
        assert shard[KILLED].poll() is None and time.time() < deadline, "shard 1 ended before committing a block"
        time.sleep(0.001)
    shard[KILLED].send_signal(signal.SIGKILL)
    shard[KILLED].communicate()
    assert shard[KILLED].returncode == -signal.SIGKILL
    done_at_kill = marks(shared, KILLED)
    assert 1 <= len(done_at_kill) < 3, done_at_kill  # really killed mid-run

    # the array's status step fails on the incomplete cache, naming how to complete shard 1
    status = array_script("status", NUM_SHARDS=str(SHARDS), OUT=str(shared))
    assert status.returncode == 3, status.stdout + status.stderr  # EXIT_INCOMPLETE
    assert f"--block-size {BLOCK}" in status.stdout and f"--num-shards {SHARDS} --shard-id {KILLED}`" in status.stdout

    restarted = encode(str(graph), "--out", str(shared), *FLAGS, "--num-shards", str(SHARDS), "--shard-id", str(KILLED))
    procs.append(restarted)
    log = finish(restarted)
    left = 3 - len(done_at_kill)
    assert f"encoding {left * BLOCK} of {NODES} nodes (shard {KILLED}/{SHARDS})" in log  # only the unmarked blocks
    for i in (0, 2):
        assert f"encoded {3 * BLOCK} nodes (shard {i}/{SHARDS})" in finish(shard[i])
    reference.join(timeout=300)
    torch.set_num_threads(threads)
    assert (single / "blocks").is_dir() and len(list((single / "blocks").glob("*.done"))) == 9

    status = array_script("status", NUM_SHARDS=str(SHARDS), OUT=str(shared))
    assert status.returncode == 0 and "blocks done 9/9" in status.stdout, status.stdout + status.stderr

    states, ids, identity = stored(shared)
    ref_states, ref_ids, ref_identity = stored(single)
    assert states == ref_states  # bit for bit
    assert ids.tolist() == ref_ids.tolist()
    assert identity == ref_identity
    assert marks(shared, 0) + marks(shared, 1) + marks(shared, 2) == [0, 3, 6, 1, 4, 7, 2, 5, 8]
    assert not list(tmp_path.glob(".shared.zarr.tmp-*"))  # the creators' temp folders are gone


def test_array_script_submits_the_array_then_a_status_job(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text('#!/usr/bin/env bash\necho "sbatch $*" >> "$SBATCH_LOG"\necho $((1000 + $(wc -l < "$SBATCH_LOG")))\n')
    (fake / "sbatch").chmod(0o755)
    log, logs = tmp_path / "sbatch.log", tmp_path / "logs"
    env = dict(PATH=f"{fake}:{os.environ['PATH']}", SBATCH_LOG=str(log), NUM_SHARDS="4", GRAPH="g", OUT="c.zarr", MODEL="m",
               SBATCH_ARGS="--gres=gpu:1 --time=1:00:00", MAX_PARALLEL="2", LOG_DIR=str(logs))
    result = array_script("submit", **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"array job 1001 (shards 0-3%2 of 4), status job 1002; logs in {logs}/\n"
    script = REPO / "scripts/slurm/encode_array.sh"
    assert log.read_text().splitlines() == [
        f"sbatch --parsable --job-name=encode --array=0-3%2 --output={logs}/encode-%A_%a.out --export=ALL,NUM_SHARDS=4 "
        f"--gres=gpu:1 --time=1:00:00 {script} task",
        f"sbatch --parsable --job-name=encode-status --dependency=afterany:1001 --output={logs}/encode-status-%j.out "
        f"--export=ALL,NUM_SHARDS=4 {script} status",
    ]
    # a task runs its shard of NUM_SHARDS (not of the resubmitted array's size)
    env.update(SLURM_ARRAY_TASK_ID="3", SLURM_ARRAY_TASK_COUNT="2", ENCODE_ARGS="--max-length 64", PIPELINE="echo")
    result = subprocess.run(["bash", str(script), "task"], cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True)
    assert result.stdout == "encode g --out c.zarr --model m --max-length 64 --num-shards 4 --shard-id 3\n"


def test_multi_gpu_script_one_process_per_gpu(tmp_path: Path) -> None:
    env = {**os.environ, "DRY_RUN": "1", "GRAPH": "g", "OUT": "c.zarr", "MODEL": "m", "LOG_DIR": "L",
           "CUDA_VISIBLE_DEVICES": "3,5", "PROCS_PER_GPU": "2", "ENCODE_ARGS": "--layers all"}
    result = subprocess.run(["bash", str(REPO / "scripts/slurm/encode_multi_gpu.sh")], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    threads = max(os.cpu_count() // 4, 1)
    assert result.stdout.splitlines() == [
        f"CUDA_VISIBLE_DEVICES={gpu} OMP_NUM_THREADS={threads} pipeline encode g --out c.zarr --model m --layers all "
        f"--device cuda --num-shards 4 --shard-id {i} > L/shard-{i}.log"
        for i, gpu in enumerate(["3", "5", "3", "5"])
    ] + ["pipeline encode --status c.zarr"]
    for name in ("encode_array.sh", "encode_multi_gpu.sh"):
        assert os.access(REPO / "scripts/slurm" / name, os.X_OK)


# ---------------------------------------------------------------------- stage-1 bugs found
# Both were in stage1_encode/cache.py; these tests keep them fixed.


def test_completion_command_keeps_batch_tokens() -> None:
    """The batching changes the last bit of some values (measured: 56 of 43,008 fp16 values
    of 16 Cora texts at --max-length 256, --batch-tokens 256 vs 4096), so the command that
    `--status` prints to complete a shard must repeat the cache's --batch-tokens."""
    from stage1_encode.cache import completion_command

    manifest = {"graph_source": "g", "model": "minilm-l6", "layers": [0, 6], "max_length": 32, "pooling": "mean",
                "compute_dtype": "float32", "storage_dtype": "float16", "block_nodes": 8, "num_shards": 3, "batch_tokens": 256}
    assert "--batch-tokens 256" in completion_command(manifest, "c.zarr", 1)


def test_creation_does_not_delete_another_creators_temp_folder(tmp_path: Path) -> None:
    """Pods of a Kubernetes indexed job (and tasks on different hosts) often have the same
    PID; a creator must not delete another's in-progress temp folder (nor rename it)."""
    from stage1_encode.cache import FORMAT, CacheWriter

    out = tmp_path / "c.zarr"
    other = tmp_path / f".c.zarr.tmp-{os.getpid()}"  # another host's creator, same PID
    other.mkdir()
    (other / "in-progress").write_text("")
    manifest = {"format": FORMAT, "num_nodes": 16, "layers": [0, 1], "hidden_size": 4, "chunk_nodes": 8, "block_nodes": 8,
                "storage_dtype": "float16", "num_shards": 2}
    CacheWriter.create_or_open(out, manifest, np.arange(16), {})
    assert (other / "in-progress").exists()
