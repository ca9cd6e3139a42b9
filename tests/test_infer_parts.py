"""``pipeline infer --shard I/N``, ``--status`` and ``--assemble`` on a real checkpoint (45-node
Cora slice, MiniLM): 3 parts assembled equal one process byte for byte; a rerun skips a
finished part; status exit codes and commands; parts of another seed are refused; ``--shard
auto`` reads the SLURM array's or torchrun's variables (pipeline/core/shards.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

NODES = 45


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cora_cache) -> tuple[Path, Path]:
    from stage2_train.config import TrainConfig
    from stage2_train.run import run as train

    root = tmp_path_factory.mktemp("parts")
    _, cache = cora_cache(NODES, max_length=32, block_size=16)
    train(TrainConfig(cache=cache, out=root / "run", seeds=(0, 1), epochs=3, patience=3, batch_size=16, hidden_channels=32,
                      dropout=0.0, num_threads=1))
    return root, root / "run"


def test_parts_assembled_equal_one_process_and_status_names_the_missing(trained, cli):
    root, run = trained
    flags = ["--checkpoint", run, "--split", "all", "--exit", "patience:1"]
    one = cli("infer", *flags, "--out", root / "one")
    assert one.exit_code == 0, one.output
    out = root / "parts"
    parts_json = out.with_name("parts.parts") / "infer_config.json"

    first = cli("infer", *flags, "--out", out, "--shard", "0/3")
    assert first.exit_code == 0, first.output
    st = cli("infer", "--config", parts_json, "--status")
    assert st.exit_code == 3, st.output  # EXIT_INCOMPLETE
    assert st.stdout.splitlines() == [
        f"predictions {out}: parts done 1/3 ({out.with_name('parts.parts')})",
        f"  missing part 1: `pipeline infer --config {parts_json} --shard 1/3`",
        f"  missing part 2: `pipeline infer --config {parts_json} --shard 2/3`",
    ]
    early = cli("infer", "--config", parts_json, "--assemble")
    assert early.exit_code == 2 and "--assemble: not every part is done" in early.stderr, early.output

    res = cli("infer", "--config", parts_json, "--shard", "2/3")  # the exact command status printed
    assert res.exit_code == 0, res.output
    with pytest.MonkeyPatch.context() as env:  # array task 1 of 3: --shard auto reads the scheduler's variables
        env.setenv("SLURM_ARRAY_TASK_ID", "1")
        env.setenv("SLURM_ARRAY_TASK_COUNT", "3")
        res = cli("infer", "--config", parts_json, "--shard", "auto")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.with_name("parts.parts").iterdir()) == [
        ".pipeline-artifact.json", "infer_config.json", "part-0-of-3", "part-1-of-3", "part-2-of-3", "parts.json"]
    again = cli("infer", *flags, "--out", out, "--shard", "0/3")  # a rerun skips the finished part
    assert again.exit_code == 0 and f"part 0/3 is done already ({out.with_name('parts.parts') / 'part-0-of-3'})" in again.stderr
    st = cli("infer", "--config", parts_json, "--status")
    assert st.exit_code == 0 and st.stdout.startswith(f"predictions {out}: parts done 3/3"), st.output

    res = cli("infer", "--config", parts_json, "--assemble")
    assert res.exit_code == 0, res.output
    assert (out / "predictions.parquet").read_bytes() == (root / "one" / "predictions.parquet").read_bytes()
    joined, single = (json.loads((d / "summary.json").read_text()) for d in (out, root / "one"))
    timing = ("wall_time_s", "gpu_peak_memory_bytes", "parts")
    assert {k: v for k, v in joined.items() if k not in timing} == {k: v for k, v in single.items() if k not in timing}
    assert joined["parts"] == 3 and joined["num_targets"] == NODES


def test_other_flags_and_parts_of_another_seed_are_refused(trained, cli):
    root, run = trained
    base = ["--checkpoint", run, "--split", "all", "--exit", "none"]
    mixed, parts = root / "mixed", root / "mixed.parts"
    assert cli("infer", *base, "--seed", "0", "--out", mixed, "--shard", "0/2").exit_code == 0
    res = cli("infer", *base, "--seed", "1", "--out", mixed, "--shard", "1/3")
    assert res.exit_code == 2, res.output
    assert res.stderr == (f"Error: {parts}: its parts were made with other flags: N of --shard I/N 2 there, 3 here; "
                          f"--seed 0 there, 1 here. Give every part the same flags (they are in {parts / 'infer_config.json'}), "
                          f"or use another --out\n")
    # part 1 made by another job (seed 1) and copied in: assembly refuses it
    assert cli("infer", *base, "--seed", "1", "--out", root / "other", "--shard", "1/2").exit_code == 0
    shutil.copytree(root / "other.parts" / "part-1-of-2", parts / "part-1-of-2")
    res = cli("infer", "--config", parts / "infer_config.json", "--assemble")
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith(f"Error: --assemble: part {parts / 'part-1-of-2'} differs from {parts / 'part-0-of-2'} in seed")
    assert "(seed: 1 against 0" in res.stderr  # and the depth each seed kept, when they differ
    assert res.stderr.endswith("parts of different checkpoints or graphs; delete it and run that part again\n")
    assert not mixed.exists()
    # parts.json carries format_version 1; one of another version is refused
    parts_file = parts / "parts.json"
    assert json.loads(parts_file.read_text()) == {"format_version": 1, "parts": 2}
    parts_file.write_text(json.dumps({"format_version": 2, "parts": 2}))
    res = cli("infer", "--config", parts / "infer_config.json", "--status")
    assert (res.exit_code, res.stderr) == (2, f"Error: {parts_file}: format version 2, this version of the pipeline reads 1; "
                                              f"delete {parts} and run the parts again\n"), res.output


@pytest.mark.parametrize("env, part", [
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MAX": "3"}, (3, 4)),
    ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "1"}, (0, 1)),
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, (1, 2)),
])
def test_shard_auto_is_the_scheduler_part(env, part):
    from pipeline.core.shards import parse_shard

    assert parse_shard("auto", environ=env) == part
    assert parse_shard(" 2 / 5 ", environ=env) == (2, 5)  # given explicitly, the variables do not count


@pytest.mark.parametrize("env, message", [
    ({}, "--shard auto: neither a SLURM array task (SLURM_ARRAY_TASK_ID) nor a torchrun rank (RANK) is set; give --shard I/N"),
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "RANK": "0", "WORLD_SIZE": "2"},
     "--shard auto: both a SLURM array task (SLURM_ARRAY_TASK_ID=1) and a torchrun rank (RANK=0) are set; give --shard I/N"),
    ({"SLURM_ARRAY_TASK_ID": "3"},
     "--shard auto: SLURM_ARRAY_TASK_ID='3' and SLURM_ARRAY_TASK_COUNT='': expected two whole numbers; give --shard I/N"),
    ({"RANK": "²", "WORLD_SIZE": "4"},  # a digit to str.isdigit, not to int
     "--shard auto: RANK='²' and WORLD_SIZE='4': expected two whole numbers; give --shard I/N"),
    # a resubmission of tasks 3 and 7 of 16: their count says nothing about N
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MAX": "7"},
     "--shard auto: SLURM_ARRAY_TASK_ID=3 of SLURM_ARRAY_TASK_COUNT=2 (task ids up to 7): the tasks are not numbered 0..N-1, "
     "so N is unknown (a resubmission of some tasks?); give --shard $SLURM_ARRAY_TASK_ID/N with the job's N"),
    ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MAX": "7"},
     "--shard auto: SLURM_ARRAY_TASK_ID=0 of SLURM_ARRAY_TASK_COUNT=2 (task ids up to 7): the tasks are not numbered 0..N-1, "
     "so N is unknown (a resubmission of some tasks?); give --shard $SLURM_ARRAY_TASK_ID/N with the job's N"),
    ({"RANK": "2", "WORLD_SIZE": "2"},
     "--shard auto: RANK=2 of WORLD_SIZE=2: the tasks are not numbered 0..N-1, "
     "so N is unknown (a resubmission of some tasks?); give --shard $RANK/N with the job's N"),
])
def test_shard_auto_refusals_name_the_variables(env, message):
    from pipeline.core.errors import InputError
    from pipeline.core.shards import parse_shard

    with pytest.raises(InputError) as err:
        parse_shard("auto", environ=env)
    assert err.value.message == message


def test_shard_auto_outside_a_scheduler_is_refused_by_the_cli(trained, cli, monkeypatch):
    root, run = trained
    for name in ("SLURM_ARRAY_TASK_ID", "RANK"):
        monkeypatch.delenv(name, raising=False)
    res = cli("infer", "--checkpoint", run, "--out", root / "nowhere", "--shard", "auto")
    assert res.exit_code == 2, res.output
    assert "--shard auto: neither a SLURM array task (SLURM_ARRAY_TASK_ID) nor a torchrun rank (RANK) is set" in res.stderr
    assert not (root / "nowhere.parts").exists()
