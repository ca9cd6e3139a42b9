"""``torchrun --nproc-per-node 2 -m pipeline train``: 2 CPU ranks (gloo) against 1 process.

One real cache (a 160-node Cora slice encoded with MiniLM). Three jobs run at the same time,
to pay the process start-ups (torch imports, ~10 s of CPU each) once: the 2-rank job and a
2-rank job whose rank 1 dies after its first epoch (the ``PIPELINE_TEST_KILL_RANK`` test
hook of ``stage2_train/distributed.py``) as subprocesses, and the 1-process run
in this process (plain ``pipeline train`` through the CLI runner).

Accuracy: training is full batch (one step an epoch on all 96 training targets) without
dropout. Then the 2-rank gradient, the sum of each rank's share divided by the global
count, is the 1-process gradient up to float summation order, and the runs agree to ~1e-6
in loss. Exact equality is not guaranteed (summation order), hence the 0.5-point check.
With mini-batches or dropout the runs differ by design: the ranks' batches are the union
of per-rank shuffles of fixed shares, and dropout masks come from each rank's RNG.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]
NODES = 160
FLAGS = ["--seeds", "0", "--epochs", "10", "--patience", "10", "--batch-size", "512", "--dropout", "0", "--lr", "1e-3",
         "--hidden-channels", "32", "--rungs", "0,3,6", "--num-threads", "1",
         "--hops", "1", "--fanout", "0"]  # every neighbour (a rank's own neighbour draws would differ from one process's),
# one hop (so a rank holds fewer rows than the whole 160-node slice)
FILES = [".pipeline-artifact.json", "checkpoint.json", "cost.json", "manifest.json", "metrics.jsonl", "seed_0/model.safetensors", "summary.json", "train_config.json"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(cache: Path, out: Path, *extra: str, **env: str) -> subprocess.Popen:
    """``python -m torch.distributed.run --nproc-per-node 2 -m pipeline train CACHE --out OUT FLAGS``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **env}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "pipeline", "train", str(cache), "--out", str(out), *FLAGS, *extra]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def cache(cora_cache) -> Path:
    return cora_cache(NODES, max_length=24, block_size=16)[1]


def test_two_ranks_match_one_process_and_a_dead_rank_fails_the_job(cache, tmp_path, cli):
    from stage2_train.checkpoint import load_checkpoint, read_metrics
    from stage2_train.data import CachedFeatures, open_train_data, resolve_split
    from stage2_train.distributed import Group, rows_needed
    from stage2_train.loop import evaluate, make_eval_set
    from stage2_train.sampling import Sampler

    (tmp_path / "two").mkdir()
    (tmp_path / "dead").mkdir()
    two, dead = tmp_path / "two" / "run", tmp_path / "dead" / "run"
    (tmp_path / "killed").mkdir()
    killed = tmp_path / "killed" / "run"
    jobs = {"two": torchrun(cache, two), "dead": torchrun(cache, dead, "--dist-timeout", "20", PIPELINE_TEST_KILL_RANK="1"),
            # both ranks SIGKILLed after the step of epoch 4 (preempted); the state is written after every epoch
            "killed": torchrun(cache, killed, "--state-every", "0", PIPELINE_TEST_KILL_AT="seed 0 epoch 4 batch 1")}
    t0 = time.monotonic()
    one = tmp_path / "one"
    res = cli("train", cache, "--out", one, *FLAGS)  # the 1-process run, meanwhile
    assert res.exit_code == 0, res.output
    logs, ended = {}, {}
    for name, job in jobs.items():
        logs[name] = job.communicate(timeout=240)[0]
        ended[name] = time.monotonic() - t0

    # --- the 2-rank job: same accuracy, same format, only rank 0 wrote and logged
    assert jobs["two"].returncode == 0, logs["two"]
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert abs(s2["test_acc_mean"] - s1["test_acc_mean"]) <= 0.005, (s1["test_acc_mean"], s2["test_acc_mean"])
    m1, m2 = read_metrics(one), read_metrics(two)
    assert [m["epoch"] for m in m2] == [m["epoch"] for m in m1] == list(range(1, 11))
    assert [m["loss"] for m in m2] == pytest.approx([m["loss"] for m in m1], abs=1e-4)
    assert sorted(s2) == sorted(s1) and sorted(s2["per_seed"][0]) == sorted(s1["per_seed"][0])
    assert sorted(m2[0]) == sorted(m1[0])
    c1, c2 = (json.loads((d / "checkpoint.json").read_text()) for d in (one, two))
    assert (c1["world_size"], c2["world_size"]) == (1, 2) and sorted(c1) == sorted(c2)
    assert sorted(str(p.relative_to(two)) for p in two.rglob("*") if p.is_file()) == FILES
    assert sorted(p.name for p in two.parent.iterdir()) == ["run"]  # no rank left a temporary folder
    assert logs["two"].count("seed 0: best epoch") == 1 and "Error" not in logs["two"]  # rank 0 alone logs

    # each rank read the rows of its share's subgraphs only, and says so
    data = open_train_data(cache, (0, 3, 6), None, "ladder")
    split = resolve_split(data.graph, None, 0)
    ck = load_checkpoint(two)
    sampler = Sampler(data.graph.edge_index, data.graph.num_nodes, **ck.sampler)  # the run's own: 1 hop, every neighbour
    for rank in (0, 1):
        mine = Group(rank=rank, world_size=2).shares(split, 0)
        targets = sum(len(v) for v in mine.values())
        rows = len(rows_needed(sampler, [n for v in mine.values() for n in v]))
        assert rows < NODES
        assert f"seed 0, rank {rank}: {targets} targets; holds {rows} of {NODES} cache rows" in logs["two"]

    # the checkpoint loads and predicts what the job measured
    test_set = make_eval_set(sampler, split["test"], data.graph.labels, 512)
    depth = s2["per_seed"][0]["depth"]  # the rungs kept (--depth val, the default): the same on every rank
    assert evaluate(ck.model, CachedFeatures(data), test_set, "cpu") == s2["per_seed"][0]["test_acc_heads"][:depth]

    # --- rank 1 died after its first epoch: the job fails, rank 0 says why, nothing is left behind
    assert jobs["dead"].returncode != 0, logs["dead"]
    assert ended["dead"] < 200  # communicate's limit is 240 s: it ended on its own, it did not hang
    # rank 0 fails either in its collective (gloo sees the closed peer) or on torchrun's SIGTERM,
    # whichever comes first (a race on a loaded machine); both name the rank
    assert ("Error: rank 0 of 2: agreeing on early stopping with the other ranks failed" in logs["dead"]
            or "Error: rank 0 of 2: stopped by SIGTERM (torchrun stops every rank when one fails" in logs["dead"]), logs["dead"]
    assert "rank      : 1 (local_rank: 1)" in logs["dead"]  # torchrun's root cause names the dead rank
    assert list(dead.parent.iterdir()) == []

    # --- the preempted job: the same command again resumes (rank 0 wrote, both ranks restore) and ends as "two"
    assert jobs["killed"].returncode != 0, logs["killed"]
    assert json.loads((tmp_path / "killed" / "run.resume" / "state.json").read_text())["current"]["epoch"] == 3
    resumed = torchrun(cache, killed, "--state-every", "0")
    log = resumed.communicate(timeout=240)[0]
    assert resumed.returncode == 0, log
    assert "resuming from" in log and "seed 0 continues after epoch 3" in log
    assert sorted(p.name for p in killed.parent.iterdir()) == ["run"]
    untimed = lambda s: {k: v for k, v in s.items() if k not in ("epoch_s_mean", "per_seed", "cost")}  # noqa: E731
    s3 = json.loads((killed / "summary.json").read_text())
    assert untimed(s3) == untimed(s2) and s3["per_seed"][0]["test_acc_heads"] == s2["per_seed"][0]["test_acc_heads"]
    assert (killed / "seed_0/model.safetensors").read_bytes() == (two / "seed_0/model.safetensors").read_bytes()


def test_shares_are_disjoint_and_every_rank_steps_alike():
    import numpy as np
    import torch

    from stage2_train.distributed import Group

    split = {"train": np.arange(101), "val": np.arange(200, 207), "test": np.arange(300, 300)}
    groups = [Group(rank=r, world_size=3) for r in range(3)]
    shares = [g.shares(split, seed=5) for g in groups]
    for k, nodes in split.items():
        parts = [s[k] for s in shares]
        assert sorted(np.concatenate(parts).tolist()) == nodes.tolist()  # disjoint and complete
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert [len(s["train"]) for s in shares] == [34, 34, 33]
    assert Group(rank=1, world_size=3).shares(split, seed=5)["train"].tolist() == shares[1]["train"].tolist()  # deterministic
    # --batch-size 16 over 3 ranks: local batches of 6, 6 steps each; rank 2's short share pads with an empty batch
    steps = [g.batches(s["train"], 101, 16, torch.Generator().manual_seed(0)) for g, s in zip(groups, shares)]
    assert [[len(b) for b in st] for st in steps] == [[6, 6, 6, 6, 6, 4], [6, 6, 6, 6, 6, 4], [6, 6, 6, 6, 6, 3]]
    # one process: the targets and batches of the single-process loop, unchanged
    one = Group()
    assert one.shares(split, 5) is split
    assert [len(b) for b in one.batches(split["train"], 101, 16, torch.Generator().manual_seed(0))] == [16] * 6 + [5]


def test_rows_needed_are_the_nodes_of_the_ego_subgraphs(cache):
    import numpy as np
    import torch

    from stage2_train.data import open_train_data
    from stage2_train.distributed import rows_needed
    from stage2_train.sampling import Sampler

    graph = open_train_data(cache, None, None, "ladder").graph
    targets = np.arange(0, NODES, 7)
    for hops in (1, 2):
        sampler = Sampler(graph.edge_index, graph.num_nodes, mode="ego", hops=hops)
        rows = rows_needed(sampler, targets)
        assert rows.tolist() == torch.unique(sampler.sample(targets).nodes).tolist()
        assert len(rows) < NODES
    assert rows_needed(Sampler(graph.edge_index, graph.num_nodes, mode="full"), targets).tolist() == list(range(NODES))


def test_memory_budget_under_torchrun_is_refused(cache, tmp_path, cli, monkeypatch):
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():  # what torchrun sets
        monkeypatch.setenv(name, value)
    res = cli("train", cache, "--out", tmp_path / "run", *FLAGS, "--memory-budget", "1MiB")
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("Error: --memory-budget: not supported under torchrun (2 ranks): each rank holds in memory")
    assert list(tmp_path.iterdir()) == []
