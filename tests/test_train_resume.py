"""``pipeline train`` resumes after SIGKILL: the same command continues from ``RUN.resume`` and
ends with the weights and metrics of an uninterrupted run (CPU, one thread: bit for bit).

Four runs are killed as a preempted job is, by the test-only hook ``PIPELINE_TEST_KILL_AT``
(stage2_train/resume.py): mid-epoch in the second seed, between the seeds, while the run
folder is complete under its temporary name (before its rename), and after the rename
before the state is deleted. They run as subprocesses at the same time, while the
uninterrupted reference runs here; each is then resumed here by the same command.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
NODES = 45
# 2 seeds, 5 epochs of 4 batches of 8 targets, dropout and 2-hop neighbour draws (both RNG streams used),
# the state written after every epoch
FLAGS = ["--seeds", "0,1", "--epochs", "5", "--patience", "5", "--batch-size", "8", "--hidden-channels", "16",
         "--rungs", "0,3,6", "--num-threads", "1", "--state-every", "0"]
KILLS = {"mid-epoch": "seed 1 epoch 3 batch 2", "between-seeds": "after seed 0", "commit": "commit", "committed": "committed"}
TIMING = ("epoch_s_mean", "epoch_s", "train_s", "cost", "gpu_peak_memory_bytes")  # wall times differ run to run


def untimed(value):
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def train_process(cache: Path, out: Path, *extra: str, **env: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **env}
    return subprocess.Popen([sys.executable, "-m", "pipeline", "train", str(cache), "--out", str(out), *FLAGS, *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_files(run: Path) -> tuple[dict, list[dict], dict, dict]:
    summary = untimed(json.loads((run / "summary.json").read_text()))
    metrics = [untimed(json.loads(line)) for line in (run / "metrics.jsonl").read_text().splitlines()]
    weights = {p.parent.name: {k: (str(t.dtype), tuple(t.shape), t.numpy().tobytes()) for k, t in load_file(str(p)).items()}
               for p in sorted(run.glob("seed_*/model.safetensors"))}  # bit for bit
    # every file byte for byte, but the measured cost.json and the two that name --out
    files = {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
             if p.is_file() and p.name not in ("cost.json", "train_config.json", "checkpoint.json")}
    return summary, metrics, weights, files


@pytest.fixture(scope="module")
def cache(cora_cache) -> Path:
    return cora_cache(NODES, max_length=32, block_size=16)[1]


def test_killed_runs_resume_to_the_uninterrupted_result(cache, tmp_path, cli):
    for name in KILLS:
        (tmp_path / name).mkdir()
    killed = {name: train_process(cache, tmp_path / name / "run", PIPELINE_TEST_KILL_AT=point) for name, point in KILLS.items()}
    reference = tmp_path / "reference"
    res = cli("--quiet", "train", cache, "--out", reference, *FLAGS)  # meanwhile, the uninterrupted run
    assert res.exit_code == 0, res.output
    assert res.stderr == ""  # --quiet: no log lines
    assert not (tmp_path / "reference.resume").exists()
    expected = run_files(reference)

    for name, proc in killed.items():
        log = proc.communicate(timeout=300)[0]
        assert proc.returncode == -signal.SIGKILL, f"{name}: {log}"
    state = {name: json.loads((tmp_path / name / "run.resume" / "state.json").read_text()) for name in KILLS}
    assert state["mid-epoch"]["current"]["seed"] == 1 and state["mid-epoch"]["current"]["epoch"] == 2
    assert sorted(state["mid-epoch"]["finished"]) == sorted(state["between-seeds"]["finished"]) == ["0"]
    assert state["between-seeds"]["current"] is None and sorted(state["commit"]["finished"]) == ["0", "1"]
    assert not (tmp_path / "commit" / "run").exists() and (tmp_path / "committed" / "run").is_dir()

    resumed_logs = {}
    for name in KILLS:
        out = tmp_path / name / "run"
        res = cli("train", cache, "--out", out, *FLAGS)  # the same command again
        assert res.exit_code == 0, f"{name}: {res.output}"
        resumed_logs[name] = res.stderr
        assert run_files(out) == expected, name  # same metrics, bit-identical weights
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["run"], name  # no state, no temporary folder left
    assert "s): seeds [0] finished, seed 1 continues after epoch 2" in resumed_logs["mid-epoch"]
    # the cost ledger counts the killed attempt too: its seed 1 time up to the saved epoch, its peak memory
    mid = state["mid-epoch"]
    assert mid["current"]["elapsed_s"] >= sum(mid["current"]["epoch_times"]) > 0 and mid["peaks"][0] > 0
    cost = json.loads((tmp_path / "mid-epoch" / "run" / "cost.json").read_text())
    (seed1,) = [entry for entry in cost["per_seed"] if entry["seed"] == 1]
    assert seed1["train_s"] >= max(mid["current"]["elapsed_s"], sum(seed1["epoch_s_each"])), (seed1, mid["current"])
    assert cost["cost"]["peak_memory_bytes"] >= mid["peaks"][0]
    assert "seed 0: finished before the run was interrupted" in resumed_logs["between-seeds"]
    assert "seed 0: best epoch" not in resumed_logs["between-seeds"]  # a finished seed is never trained again
    assert "seeds [0, 1] finished" in resumed_logs["commit"]
    assert "already complete (it was stopped after writing it, before deleting its resumable state)" in resumed_logs["committed"]


def test_changed_flags_and_damaged_state_are_refused(cache, tmp_path, cli):
    out = tmp_path / "run"
    proc = train_process(cache, out, PIPELINE_TEST_KILL_AT="seed 0 epoch 2 batch 1")
    assert proc.communicate(timeout=300)[0] is not None and proc.returncode == -signal.SIGKILL
    folder = tmp_path / "run.resume"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    res = cli("train", cache, "--out", out, *FLAGS, "--epochs", "7", "--lr", "0.01")
    assert res.exit_code == 2, res.output
    assert res.stderr == (
        f"Error: {folder}: an interrupted `pipeline train` with other flags: --epochs 5 there, 7 now; --lr 0.0003 there, 0.01 now. "
        f"Run it with its own flags to resume it (they are in {folder / 'state.json'}, \"flags\"), or delete {folder} to start over\n"
    )
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before and not out.exists()  # nothing changed

    start_over = f"delete {folder} and run the same command again to start over (its finished seeds are lost)"
    state = json.loads(before["state.json"])
    assert state["current"]["elapsed_s"] > 0 and state["peaks"][0] > 0
    for damaged, problem in (({**state, "current": {**state["current"], "elapsed_s": "soon"}},
                               "the in-flight seed's elapsed_s is 'soon', not a number of seconds"),
                              ({**state, "peaks": [-1, 5]}, "peaks is [-1, 5], not two byte counts")):
        (folder / "state.json").write_text(json.dumps(damaged))
        res = cli("train", cache, "--out", out, *FLAGS)
        assert res.exit_code == 2, res.output
        assert res.stderr == f"Error: {folder / 'state.json'}: {problem}; {start_over}\n"
    (folder / "state.json").write_bytes(before["state.json"])
    (tensors,) = folder.glob("tensors-*.safetensors")
    tensors.write_bytes(tensors.read_bytes()[:100])
    res = cli("train", cache, "--out", out, *FLAGS)
    assert res.exit_code == 2, res.output
    assert res.stderr == f"Error: {tensors}: its sha256 differs from the one {folder / 'state.json'} records (damaged); {start_over}\n"

    (folder / "state.json").write_text(json.dumps({**state, "format_version": 2}))
    res = cli("train", cache, "--out", out, *FLAGS)
    assert res.exit_code == 2, res.output
    assert res.stderr == f"Error: {folder / 'state.json'}: format version 2, this version of the pipeline reads 1; {start_over}\n"

    (folder / "state.json").write_text('{"format_version": 1, "fla')
    res = cli("train", cache, "--out", out, *FLAGS)
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith(f"Error: {folder / 'state.json'}: is not valid JSON (")
    assert res.stderr.endswith(f"; {start_over}\n") and not out.exists()

    shutil.rmtree(folder)  # what the message says: the run starts over
    res = cli("train", cache, "--out", out, *FLAGS)
    assert res.exit_code == 0, res.output
    assert not folder.exists() and (out / "summary.json").is_file()


def test_a_second_run_on_the_same_out_is_refused_while_the_first_runs(cache, tmp_path, cli):
    from stage2_train.run_lock import exclusive_run

    out, folder = tmp_path / "run", tmp_path / "run.resume"
    with exclusive_run(out):  # what a running `pipeline train --out RUN` holds
        assert folder.is_dir() and list(folder.iterdir()) == []
        res = cli("train", cache, "--out", out, *FLAGS)
        assert res.exit_code == 2, res.output
        assert res.stderr == (f"Error: --out {out}: another `pipeline train` is writing this run now (it holds {folder}); "
                              "wait for it to end, or choose another --out\n")
        assert list(folder.iterdir()) == [] and not out.exists()  # the running one's files untouched, nothing written
    assert not folder.exists()  # a holder that saved nothing leaves nothing
    res = cli("train", cache, "--out", out, *FLAGS)  # once it ends, the same command runs
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    refused = cli("train", cache, "--out", tmp_path / "other", *FLAGS, "--rung-weights", "1,1")  # refused after taking the lock
    assert refused.exit_code == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["run"], refused.output
