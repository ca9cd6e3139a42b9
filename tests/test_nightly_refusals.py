"""Hostile and everyday cases of the nightly path (issue kinds, one parametrized test each):
quiet nights (no new node), every arch honouring ``--new-only``, options with no effect for the
chosen arch, ``--init`` refusals and the fine-tuning warm start, a run bound to its cache's
content, config files with limits, checkpoint metadata that disagrees with its weights, a
full disk in each writer (a real tmpfs in a private mount namespace), and weaker messages.
Real MiniLM on the 40/48-node Cora slices of the shared ``nights`` fixture (tests/conftest.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from cora_slice import NIGHT_SETTINGS as SETTINGS
from cora_slice import NIGHT_TRAIN as TRAIN
from cora_slice import encode_slice, write_cora_slice
from pipeline.core.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def plain(output: str) -> str:
    return " ".join(output.split())


# --------------------------------------------------------------- quiet nights, --new-only
def test_new_only_with_no_new_node_writes_an_empty_valid_file(nights, tmp_path, cli) -> None:
    v1_cache, run1 = nights.v1_cache, nights.run1
    out = tmp_path / "pred"
    result = cli("infer", "--checkpoint", run1, "--out", out, "--new-only", v1_cache)
    assert result.exit_code == 0, result.output
    table = pq.read_table(out / "predictions.parquet")
    assert table.num_rows == 0 and table.column_names[:2] == ["node_id", "predicted_label"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_targets"] == 0 and summary["accuracy"] is None and summary["mean_exit_layer"] is None
    report = tmp_path / "report"
    result = cli("report", out, "--out", report)  # the report reads a zero-row predictions file too
    assert result.exit_code == 0, result.output
    assert (report / "report.md").is_file()


def test_new_only_refuses_a_run_whose_cache_entry_is_damaged(nights, tmp_path, cli) -> None:
    since = tmp_path / "since_run"
    shutil.copytree(nights.run1, since)
    config = json.loads((since / "checkpoint.json").read_text())
    (since / "checkpoint.json").write_text(json.dumps({**config, "cache": 7}))
    result = cli("infer", "--checkpoint", nights.run1, "--out", tmp_path / "pred", "--new-only", since)
    assert result.exit_code == 2 and not (tmp_path / "pred").exists(), result.output
    assert result.stderr.endswith(f"Error: {since / 'checkpoint.json'}: its 'cache' 7 is not a string; retrain it with "
                                  f"`pipeline train CACHE_DIR --out {since} --overwrite`\n"), result.output


# ------------------------------------------------------------------- no silent no-ops
NO_EFFECT = [  # (arch, field, value, the flag named, what it is for)
    ("lora", "hops", 1, "--hops", "ladder/mlp/gcn/sage"),
    ("lora", "gnn", "gcn", "--gnn", "ladder"),
    ("ia3", "hidden_channels", 64, "--hidden-channels", "ladder/mlp/gcn/sage"),
    ("prefix", "standardize", True, "--standardize", "ladder/mlp/gcn/sage"),
    ("finetune", "num_layers", 2, "--num-layers", "ladder/mlp/gcn/sage"),
    ("lora", "fanout", 3, "--fanout", "ladder/mlp/gcn/sage"),
    ("ia3", "sampler", "rwr", "--sampler", "ladder/mlp/gcn/sage"),
    ("lora", "memory_budget", 1 << 20, "--memory-budget", "ladder/mlp/gcn/sage"),
    ("finetune", "temperature", 0.5, "--temperature", "ladder"),
    ("mlp", "gnn", "gat", "--gnn", "ladder"),
    ("gcn", "temperature", 0.5, "--temperature", "ladder"),
    ("sage", "rungs", (0, 1), "--rungs", "ladder"),
    ("ladder", "layer", 3, "--layer", "mlp/gcn/sage"),
    ("gcn", "no_cache", True, "--no-cache", "ladder"),
]


@pytest.mark.parametrize("arch,name,value,flag,applies", NO_EFFECT, ids=[f"{a}-{f}" for a, f, *_ in NO_EFFECT])
def test_option_without_effect_is_refused(tmp_path, arch, name, value, flag, applies) -> None:
    from stage2_train.config import TrainConfig

    with pytest.raises(InputError) as err:
        TrainConfig(cache=tmp_path, out=tmp_path / "r", arch=arch, **{name: value}).validate()
    assert f"{flag} is for --arch {applies}; it has no effect with --arch {arch}: leave it out" in err.value.message
    assert err.value.exit_code == 2


SAMPLER_NO_EFFECT = [("ladder", "full", "hops", 1), ("ladder", "rwr", "fanout", 3), ("ladder", "ego", "num_walks", 4),
                     ("gcn", None, "hops", 1), ("sage", "ego", "restart_p", 0.2)]


@pytest.mark.parametrize("arch,sampler,name,value", SAMPLER_NO_EFFECT)
def test_sampler_option_without_effect_is_refused(tmp_path, arch, sampler, name, value) -> None:
    from stage2_train.config import TrainConfig

    cfg = TrainConfig(cache=tmp_path, out=tmp_path / "r", arch=arch, sampler=sampler, **{name: value})
    with pytest.raises(InputError, match=f"--{name.replace('_', '-')} is for --sampler .*; it has no effect with "
                                         f"--sampler {cfg.resolved_sampler} \\(--arch {arch}\\)"):
        cfg.validate()


def test_options_that_act_are_accepted(tmp_path) -> None:
    from stage2_train.config import TrainConfig

    TrainConfig(cache=tmp_path, out=tmp_path / "r", arch="lora", epochs=1, lr=1e-3, max_batches=2, init=None).validate()
    TrainConfig(cache=tmp_path, out=tmp_path / "r", arch="sage", sampler="ego", hops=1, fanout=3, layer=2, standardize=True).validate()
    TrainConfig(cache=tmp_path, out=tmp_path / "r", sampler="rwr", num_walks=4, rungs=(0, 1), gnn="gcn").validate()


# ------------------------------------------------------------------ --init refusals
def _damage_weights(run: Path) -> None:
    f = run / "seed_0" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])


def _other_width(run: Path) -> None:  # checkpoint.json says 64 wide, the weights are 32 wide
    config = json.loads((run / "checkpoint.json").read_text())
    config["model"]["hidden_channels"] = 64
    (run / "checkpoint.json").write_text(json.dumps(config))


def _no_model_entry(run: Path) -> None:
    config = json.loads((run / "checkpoint.json").read_text())
    config["model"] = "ladder"
    (run / "checkpoint.json").write_text(json.dumps(config))


INIT_CASES = [  # (damage to a copy of run1, extra train flags, the refusal's words)
    ("hidden-differs", None, ["--hidden-channels", "16"], "--hidden-channels: {run} has hidden_channels 32, this run 16"),
    ("other-arch", None, ["--arch", "mlp", "--lr", "0.01"], "--arch: {run} has arch 'ladder', this run 'mlp'"),
    ("damaged-weights", _damage_weights, [], "model.safetensors: is not a readable safetensors file"),
    ("weights-disagree", _other_width, ["--hidden-channels", "64"], "its weights do not match the network its checkpoint.json describes"),
    ("model-entry", _no_model_entry, [], 'checkpoint.json: its "model" entry is not a JSON dict'),
]


@pytest.mark.parametrize("damage,flags,words", [c[1:] for c in INIT_CASES], ids=[c[0] for c in INIT_CASES])
def test_init_refusals_name_the_problem(nights, tmp_path, cli, damage, flags, words) -> None:
    run1, v2_cache = nights.run1, nights.v2_cache
    init = tmp_path / "init"
    shutil.copytree(run1, init)
    if damage is not None:
        damage(init)
    out = tmp_path / "run2"
    result = cli("train", v2_cache, "--out", out, "--init", init, "--epochs", "1", "--batch-size", "16", "--num-threads", "1",
                 "--hidden-channels", "32", *flags)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert words.format(run=init) in plain(result.output), result.output
    assert not out.exists() and not any(p.name.startswith(".run2") for p in tmp_path.iterdir())


def test_checkpoint_metadata_that_disagrees_with_its_weights_is_refused(nights, tmp_path, cli) -> None:
    run1 = nights.run1
    run = tmp_path / "run"
    shutil.copytree(run1, run)
    _other_width(run)
    result = cli("infer", "--checkpoint", run, "--out", tmp_path / "pred", "--split", "test")
    assert result.exit_code == 2, result.output
    assert f"checkpoint {run}: weights seed_0/model.safetensors do not match the network checkpoint.json describes" in plain(result.output)
    assert not (tmp_path / "pred").exists()


# ------------------------------------------------------------- a run bound to its cache
def _reencode_other_settings(cache: Path) -> str:
    graph = json.loads((cache / "manifest.json").read_text())["graph_source"]
    encode_slice(graph, cache, **{**SETTINGS, "max_length": 12}, overwrite=True)
    return "max_length 16 then, 12 now"


def _other_bytes(cache: Path) -> str:  # same settings, another block's bytes (what a re-encode on other hardware gives)
    mark = sorted((cache / "blocks").glob("*.done"))[0]
    data = json.loads(mark.read_text())
    data["digest"] = "0" * 32
    mark.write_text(json.dumps(data))
    return "its stored states (re-encoded with the same settings, other bytes)"


@pytest.mark.parametrize("change", [_reencode_other_settings, _other_bytes], ids=["other-settings", "other-bytes"])
def test_infer_refuses_a_cache_changed_since_training(nights, tmp_path, cli, change) -> None:
    from stage2_train.config import TrainConfig
    from stage2_train.run import run as train

    v1_cache = nights.v1_cache
    cache = tmp_path / "cache.zarr"
    shutil.copytree(v1_cache, cache)
    run = tmp_path / "run"
    train(TrainConfig(cache=cache, out=run, **dict(TRAIN, epochs=1)))
    recorded = json.loads((run / "checkpoint.json").read_text())["cache_identity"]
    assert recorded["max_length"] == 16 and len(recorded["digest"]) == 32
    what = change(cache)
    result = cli("infer", "--checkpoint", run, "--out", tmp_path / "pred", "--split", "test")
    assert result.exit_code == 2, result.output
    assert f"cache {cache}: changed since the run {run} recorded it ({what})" in plain(result.output), result.output
    assert not (tmp_path / "pred").exists()
    result = cli("bench", "infer", "--checkpoint", run, "--max-targets", "4")
    assert result.exit_code == 2 and what in plain(result.output), result.output


def test_a_cache_rewritten_while_read_is_refused(nights, tmp_path) -> None:
    from stage2_train.cache_binding import check_unchanged, identity_of

    v1_cache = nights.v1_cache
    cache = tmp_path / "cache.zarr"
    shutil.copytree(v1_cache, cache)
    before = identity_of(cache)
    check_unchanged(cache, before, "training")  # unchanged: passes
    assert identity_of(cache) == before
    (sorted((cache / "blocks").glob("*.done"))[-1]).unlink()  # an encode --overwrite half-way
    with pytest.raises(InputError, match=f"cache {cache}: rewritten while training read it .*; nothing was written, run it again"):
        check_unchanged(cache, before, "training")


def test_identical_reencode_keeps_the_identity(nights, tmp_path) -> None:
    from stage2_train.cache_binding import identity_of

    v1_cache = nights.v1_cache
    graph = json.loads((v1_cache / "manifest.json").read_text())["graph_source"]
    again = encode_slice(graph, tmp_path / "again.zarr", **SETTINGS)
    assert identity_of(again)["digest"] == identity_of(v1_cache)["digest"]


# -------------------------------------------------------------------- config files
def _laughs(n: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, n)]
    return "\n".join(lines) + f"\nepochs: *a{n - 1}\n"


CONFIG_CASES = [
    ("billion-laughs.yaml", _laughs(), "YAML aliases (*a0) are not allowed in a config file"),
    ("deep.yaml", "epochs: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than 3 levels deep"),
    ("deep-map.yaml", "".join("  " * i + f"k{i}:\n" for i in range(50)) + "  " * 50 + "v: 1\n", "nested more than 3 levels deep"),
    ("deep.json", '{"epochs": ' + "[" * 100000 + "]" * 100000 + "}", "nested"),
    ("deep.toml", "epochs = " + "[" * 100000 + "]" * 100000 + "\n", "nested too deeply"),
    ("big.yaml", "# " + "x" * (2 << 20) + "\nepochs: 1\n", "more than a config file's 1048576"),
]


@pytest.mark.parametrize("name,text,words", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_hostile_config_files_are_refused(tmp_path, cli, name, text, words) -> None:
    path = tmp_path / name
    path.write_text(text)
    result = cli("train", tmp_path / "cache", "--out", tmp_path / "run", "--config", path)
    assert result.exit_code == 2, result.output[-2000:]
    assert f"--config {path}:" in result.output and words in result.output, result.output[-2000:]
    assert not (tmp_path / "run").exists()


# -------------------------------------------------------------------- a full disk
def _unshare_ok() -> bool:
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=16k tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


def on_full_disk(tmp_path: Path, size: str, prepare: str, args: list) -> tuple[int, str, list[str]]:
    """Run ``pipeline ARGS`` with ``tmp_path/disk`` a ``size`` tmpfs (a private mount namespace,
    so no root is needed where user namespaces are allowed); ``prepare`` copies inputs onto it
    first. Returns (exit status, stderr, what is left on the disk)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    argv = " ".join(f"'{a}'" for a in args)
    script = (f"mount -t tmpfs -o size={size} tmpfs '{disk}' && {prepare} && before=$(cd '{disk}' && find . | sort) && "
              f"{sys.executable} -m pipeline {argv}; rc=$?; echo RC=$rc; echo \"$before\" > /tmp/.before.$$; "
              f"(cd '{disk}' && find . | sort) | grep -vxF -f /tmp/.before.$$ | sed 's/^/LEFT: /'; rm -f /tmp/.before.$$")
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO),
           "HOME": str(tmp_path)}
    proc = subprocess.run(["unshare", "-rm", "bash", "-c", script], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    rc = int(next(line for line in proc.stdout.splitlines() if line.startswith("RC=")).split("=")[1])
    left = [line[6:] for line in proc.stdout.splitlines() if line.startswith("LEFT: ")]
    return rc, proc.stderr, left


DISK_CASES = [  # (writer, tmpfs size, what to copy onto it, the command with DISK for the tmpfs)
    ("train", "24k", "true", ["train", "{v1_cache}", "--out", "DISK/run", "--epochs", "1", "--batch-size", "16",
                              "--hidden-channels", "256", "--num-threads", "1"]),
    ("infer", "8k", "true", ["infer", "--checkpoint", "{run1}", "--out", "DISK/pred", "--split", "all"]),
    ("encode", "48k", "true", ["encode", "{graph}", "--out", "DISK/cache.zarr", "--model", "minilm-l6", "--max-length", "16",
                               "--block-size", "8", "--device", "cpu"]),
    ("report", "4k", "true", ["report", "{run1}", "--out", "DISK/report"]),
    ("datasets-synth", "64k", "true", ["datasets", "synth", "DISK/synth", "--nodes", "3000"]),
]


@pytest.mark.parametrize("writer,size,prepare,args", DISK_CASES, ids=[c[0] for c in DISK_CASES])
def test_a_full_disk_is_refused_with_nothing_half_written(nights, tmp_path, writer, size, prepare, args) -> None:
    if not _unshare_ok():
        pytest.fail("needs `unshare -rm` (a private mount namespace) to mount a small tmpfs; allow user namespaces")
    v1_cache, run1 = nights.v1_cache, nights.run1
    graph = json.loads((v1_cache / "manifest.json").read_text())["graph_source"]
    disk = tmp_path / "disk"
    args = [a.format(v1_cache=v1_cache, run1=run1, graph=graph).replace("DISK", str(disk)) for a in args]
    rc, stderr, left = on_full_disk(tmp_path, size, prepare, args)
    assert rc == 2, stderr[-3000:]
    assert "no space left on device" in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert left == [], left  # nothing half-written: not the output, not a temporary sibling


# ------------------------------------------------------------------ weaker messages
def test_a_folder_that_is_not_a_cache_is_not_called_damaged(tmp_path, cli) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"name": "my shopping list"}))
    result = cli("train", folder, "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    text = plain(result.output)
    assert f"{folder}: not an encode cache" in text and "--overwrite" not in text and "damaged" not in text, text


def test_run_without_splits_trains_on_a_random_split_and_an_unknown_split_fails_before_encoding(tmp_path, cli) -> None:
    own = write_cora_slice(tmp_path / "own", 20).source
    split_free = tmp_path / "plain"
    shutil.copytree(own, split_free)
    nodes = pq.read_table(split_free / "nodes.parquet").drop(["split"])
    pq.write_table(nodes, split_free / "nodes.parquet")
    out = tmp_path / "job"
    result = cli("run", "--dataset", split_free, "--out", out, "--model", "minilm-l6", "--device", "cpu", "--split", "random_60_20_20")
    assert result.exit_code == 2, result.output
    assert "--split random_60_20_20: graph" in plain(result.output) and not out.exists()
    result = cli("run", "--dataset", tmp_path / "missing", "--out", out, "--model", "minilm-l6", "--device", "cpu")
    assert result.exit_code == 2 and not out.exists(), result.output
    result = cli("run", "--dataset", split_free, "--out", out, "--model", "minilm-l6", "--device", "cpu", "--epochs", "2", "--baselines", "none")
    assert result.exit_code == 0, result.output
    assert "split: random:0.6,0.2,0.2 (the default for graph 'plain'; --split chooses another)" in result.stderr


def _unmark_last_block(old: Path) -> None:  # an encode that stopped before its last block's mark
    sorted((old / "blocks").glob("*.done"))[-1].unlink()


def _truncate_last_chunk(old: Path) -> None:  # a chunk cut short: its blocks are unfinished (damaged)
    last = sorted(p for p in (old / "states" / "c").rglob("*") if p.is_file())[-1]
    last.write_bytes(last.read_bytes()[:100])


@pytest.mark.parametrize("unfinish", [_unmark_last_block, _truncate_last_chunk], ids=["unmarked", "truncated"])
def test_reuse_of_an_unfinished_cache_reencodes_its_unfinished_blocks(nights, tmp_path, cli, unfinish) -> None:
    v1_cache = nights.v1_cache
    old = tmp_path / "old.zarr"
    shutil.copytree(v1_cache, old)
    unfinish(old)
    graph = json.loads((old / "manifest.json").read_text())["graph_source"]
    new = tmp_path / "new.zarr"
    result = cli("encode", graph, "--out", new, "--reuse", old, "--model", "minilm-l6", "--max-length", "16", "--block-size", "8",
                 "--batch-tokens", "128", "--storage-dtype", "float32", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "in blocks it never finished" in plain(result.output), result.output
    from stage1_encode.cache.reader import open_cache

    a, b = open_cache(new), open_cache(v1_cache)
    a.check_complete()
    assert torch.allclose(torch.from_numpy(a.read()), torch.from_numpy(b.read()), atol=1e-3)


# ------------------------------------------- fine-tuning archs: --new-only and --init
FINETUNE = dict(arch="lora", lr=3e-3, epochs=1, patience=1, batch_size=16, max_batches=2, num_threads=1, device="cpu")


@pytest.fixture(scope="module")
def lora_v2(nights):
    """A lora run on the 48-node cache."""
    from stage2_train.config import TrainConfig
    from stage2_train.run import run as train

    root, v2_cache = nights.root, nights.v2_cache
    train(TrainConfig(cache=v2_cache, out=root / "lora2", **FINETUNE))
    return root / "lora2"


def test_finetune_infer_honours_new_only(nights, lora_v2, tmp_path, cli) -> None:
    from pipeline.core.graph import load_graph

    v1_cache, v2_cache = nights.v1_cache, nights.v2_cache
    result = cli("infer", "--checkpoint", lora_v2, "--out", tmp_path / "new", "--new-only", v1_cache)
    assert result.exit_code == 0, result.output
    graph = load_graph(json.loads((v2_cache / "manifest.json").read_text())["graph_source"])
    table = pq.read_table(tmp_path / "new" / "predictions.parquet")
    assert table.column("node_id").to_pylist() == graph.node_ids[40:].tolist() or sorted(table.column("node_id").to_pylist()) == sorted(
        set(graph.node_ids.tolist()) - set(load_graph(json.loads((v1_cache / "manifest.json").read_text())["graph_source"]).node_ids.tolist()))
    assert table.num_rows == 8 and table.schema.metadata[b"graph_fingerprint"].decode() == graph.fingerprint
    result = cli("infer", "--checkpoint", lora_v2, "--out", tmp_path / "none", "--new-only", v2_cache)
    assert result.exit_code == 0, result.output
    assert pq.read_table(tmp_path / "none" / "predictions.parquet").num_rows == 0


@pytest.mark.parametrize("flags,flag", [(["--no-batch-invariant", "--batch-tokens", "99"], "--batch-tokens"), (["--no-cache-neighbours"], "--cache-neighbours"),
                                        (["--model", "minilm-l6"], "--model"), (["--dtype", "float32"], "--dtype")])
def test_infer_options_without_effect_on_a_finetune_run(lora_v2, tmp_path, cli, flags, flag) -> None:
    result = cli("infer", "--checkpoint", lora_v2, "--out", tmp_path / "p", *flags)
    assert result.exit_code == 2, result.output
    assert f"{flag} is for --arch ladder; it has no effect with the --arch lora run {lora_v2}: leave it out" in plain(result.output)
    assert not (tmp_path / "p").exists()


def test_finetune_init_warm_starts(nights, lora_v2, tmp_path) -> None:
    from safetensors.torch import load_file

    from stage2_train.config import TrainConfig
    from stage2_train.run import run as train

    v2_cache = nights.v2_cache
    still = dict(FINETUNE, lr=1e-12, weight_decay=0.0, max_batches=1)  # a step too small to move: a run keeps its start
    train(TrainConfig(cache=v2_cache, out=tmp_path / "warm", init=lora_v2, **still))
    train(TrainConfig(cache=v2_cache, out=tmp_path / "cold", **still))
    before, warm, cold = (load_file(str(p / "seed_0" / "model.safetensors")) for p in (lora_v2, tmp_path / "warm", tmp_path / "cold"))
    assert set(warm) == set(before)
    assert all(torch.allclose(warm[k], before[k], atol=1e-6) for k in before)  # it continues from the earlier run
    assert not all(torch.allclose(cold[k], before[k], atol=1e-4) for k in before)  # a fresh run does not
    with pytest.raises(InputError, match=r"--arch: .* has arch 'lora', this run 'ia3'"):
        train(TrainConfig(cache=v2_cache, out=tmp_path / "x", init=lora_v2, **dict(still, arch="ia3")))
