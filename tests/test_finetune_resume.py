"""The fine-tuning archs resume after SIGKILL as the cache archs do (tests/test_train_resume.py):
the same command continues from ``RUN.resume`` (adapter or LLM and head, AdamW, RNG streams)
and ends with the weights and metrics of an uninterrupted run, bit for bit on CPU. Every
fine-tuning arch is killed mid-epoch in its second seed; LoRA also between the seeds, before
the run folder's rename and after it. Under torchrun the fine-tuning archs are refused.

Real parts: the built-in MiniLM-L6 on 40 Cora texts at 16 tokens, real peft adapters.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from test_train_resume import REPO, run_files

ARCHS = {"lora": "3e-3", "ia3": "3e-2", "prefix": "1e-2", "finetune": "3e-4"}
# 2 seeds, 3 epochs of 2 batches of 8 texts, dropout before the head (the RNG matters), a state after every epoch
FLAGS = ["--seeds", "0,1", "--epochs", "3", "--patience", "3", "--batch-size", "8", "--max-batches", "2", "--num-threads", "1",
         "--state-every", "0"]
LORA_KILLS = {"between-seeds": "after seed 0", "commit": "commit", "committed": "committed"}


@pytest.fixture(scope="module")
def cache(cora_cache):
    return cora_cache(40, model="minilm-l6", max_length=16, block_size=8, batch_tokens=128, storage_dtype="float32")[1]


def _flags(arch: str) -> list[str]:
    return ["--arch", arch, "--lr", ARCHS[arch], *FLAGS]


def train_process(cache, out, *flags: str, **env: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **env}
    return subprocess.Popen([sys.executable, "-m", "pipeline", "train", str(cache), "--out", str(out), *flags],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_every_finetuning_arch_resumes_to_the_uninterrupted_result(cache, tmp_path, cli):
    kills = {(arch, "mid-epoch"): "seed 1 epoch 2 batch 1" for arch in ARCHS} | {("lora", k): p for k, p in LORA_KILLS.items()}
    procs = {}
    for (arch, name), point in kills.items():
        (tmp_path / f"{arch}-{name}").mkdir()
        procs[arch, name] = train_process(cache, tmp_path / f"{arch}-{name}" / "run", *_flags(arch), PIPELINE_TEST_KILL_AT=point)
    expected = {}
    for arch in ARCHS:  # meanwhile, the uninterrupted runs
        res = cli("--quiet", "train", cache, "--out", tmp_path / f"{arch}-reference", *_flags(arch))
        assert res.exit_code == 0, res.output
        assert not (tmp_path / f"{arch}-reference.resume").exists()
        expected[arch] = run_files(tmp_path / f"{arch}-reference")
    for key, proc in procs.items():
        log = proc.communicate(timeout=600)[0]
        assert proc.returncode == -signal.SIGKILL, f"{key}: {log}"

    for (arch, name) in kills:
        folder = tmp_path / f"{arch}-{name}"
        state = json.loads((folder / "run.resume" / "state.json").read_text())
        res = cli("train", cache, "--out", folder / "run", *_flags(arch))  # the same command again
        assert res.exit_code == 0, f"{arch} {name}: {res.output}"
        assert run_files(folder / "run") == expected[arch], (arch, name)  # same metrics, bit-identical weights
        assert sorted(p.name for p in folder.iterdir()) == ["run"], (arch, name)  # no state, no temporary folder left
        if name == "mid-epoch":
            assert (state["current"]["seed"], state["current"]["epoch"], sorted(state["finished"])) == (1, 1, ["0"])
            assert "s): seeds [0] finished, seed 1 continues after epoch 1" in res.stderr
            assert "seed 0: finished before the run was interrupted" in res.stderr
            cost = json.loads((folder / "run" / "cost.json").read_text())  # the killed attempt's time and peak counted
            (seed1,) = [entry for entry in cost["per_seed"] if entry["seed"] == 1]
            assert seed1["train_s"] >= state["current"]["elapsed_s"] >= sum(state["current"]["epoch_times"]) > 0, (arch, seed1)
            assert cost["cost"]["peak_memory_bytes"] >= state["peaks"][0] > 0, arch
        if name == "committed":
            assert "already complete (it was stopped after writing it, before deleting its resumable state)" in res.stderr


def test_a_finetuning_state_with_other_flags_is_refused(cache, tmp_path, cli):
    out = tmp_path / "run"
    proc = train_process(cache, out, *_flags("lora"), PIPELINE_TEST_KILL_AT="seed 0 epoch 2 batch 1")
    assert proc.communicate(timeout=600)[0] is not None and proc.returncode == -signal.SIGKILL
    folder = tmp_path / "run.resume"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    res = cli("train", cache, "--out", out, *_flags("lora")[:3], "1e-3", *FLAGS)
    assert res.exit_code == 2, res.output
    assert res.stderr == (
        f"Error: {folder}: an interrupted `pipeline train` with other flags: --lr 0.003 there, 0.001 now. "
        f"Run it with its own flags to resume it (they are in {folder / 'state.json'}, \"flags\"), or delete {folder} to start over\n"
    )
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before and not out.exists()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_finetuning_under_torchrun_is_refused_before_any_work(cache, tmp_path, cli, monkeypatch, arch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    res = cli("train", cache, "--out", tmp_path / "run", *_flags(arch))
    assert res.exit_code == 2
    assert res.stderr == (f"Error: --arch {arch}: not supported under torchrun (2 ranks): the fine-tuning archs train in one process "
                          "(the LLM in the loop); run the same command without torchrun, with --device cuda on a GPU\n")
    assert list(tmp_path.iterdir()) == []
