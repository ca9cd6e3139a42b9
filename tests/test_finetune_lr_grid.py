"""scripts/finetune_lr_grid.py on a real small slice (MiniLM, 45 Cora nodes, LoRA): seed 0 at
every learning rate of the grid, the rate of best validation accuracy kept, seeds 1 and 2 at it;
LoRA's export -> encode -> SAGE cascade per seed; a second run redoes nothing, a run after a
lost folder redoes only that folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # five LoRA trainings in subprocesses: about a minute

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import results_cost  # noqa: E402
from finetune_lr_grid import GRID  # noqa: E402

PIPELINE = str(Path(sys.executable).parent / "pipeline")


def _grid(cache: Path, root: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "finetune_lr_grid.py"), str(cache), str(root), "--archs", "lora",
                           "--jobs", "2", "--split", "column", "--pipeline", PIPELINE, *extra, "--", "--max-batches", "1"],
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def grid_run(cora_cache, tmp_path_factory):
    _, cache = cora_cache(45, model="minilm-l6", max_length=16, block_size=8, batch_tokens=128, storage_dtype="float32")
    root = tmp_path_factory.mktemp("grid") / "ft"
    result = _grid(cache, root, "--cascade")
    assert result.returncode == 0, result.stdout + result.stderr
    return cache, root, result


def test_the_rate_of_best_seed0_validation_is_kept_and_trained_on_seeds_1_and_2(grid_run):
    _, root, result = grid_run
    vals = {lr: json.loads((root / f"lora-lr{lr}-seed0" / "summary.json").read_text())["val_acc_mean"] for lr in GRID["lora"]}
    best = max(GRID["lora"], key=lambda lr: vals[lr])
    record = json.loads((root / "lora-best.json").read_text())
    assert record == {"arch": "lora", "lr": best, "seed0_val_acc": vals,
                      "runs": [str(root / f"lora-lr{best}-seed{seed}") for seed in (0, 1, 2)]}
    for seed in (1, 2):
        rest = json.loads((root / f"lora-lr{best}-seed{seed}" / "train_config.json").read_text())
        assert (rest["lr"], rest["seeds"], rest["max-batches"]) == (float(best), str(seed), 1)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(
        [f"lora-lr{lr}-seed0" for lr in GRID["lora"]] + [f"lora-lr{best}-seed{seed}" for seed in (1, 2)]
        + [f"cascade-seed{seed}{kind}" for seed in (0, 1, 2) for kind in ("", ".model", ".zarr")])
    row = results_cost.row("cora", "LoRA", str(root / "lora-best.json"))
    assert row == {**results_cost.row("cora", "LoRA", "+".join(record["runs"])), "run": str(root / "lora-best.json"),
                   "lr": f"{best} (best on seed 0's val of 3e-4, 1e-3, 3e-3)"}
    assert row["seeds"] == [0, 1, 2]
    assert f"lora: learning rate {best}" in result.stdout


def test_the_cascade_trains_sage_on_each_seeds_tuned_llm(grid_run):
    _, root, _ = grid_run
    record = json.loads((root / "lora-cascade.json").read_text())
    best = record["lr"]
    assert record["runs"] == [str(root / f"cascade-seed{seed}") for seed in (0, 1, 2)]
    for seed in (0, 1, 2):
        manifest = json.loads((root / f"cascade-seed{seed}" / "manifest.json").read_text())
        assert manifest["model_tuning"]["seed"] == seed
        assert manifest["model_tuning"]["run"] == str((root / f"lora-lr{best}-seed{seed}").resolve())
        config = json.loads((root / f"cascade-seed{seed}" / "train_config.json").read_text())
        assert (config["arch"], config["seeds"], config["cache"]) == ("sage", str(seed), str((root / f"cascade-seed{seed}.zarr").resolve()))
    row = results_cost.row("cora", "LoRA -> export -> encode -> SAGE", str(root / "lora-cascade.json"))
    assert row["seeds"] == [0, 1, 2]
    assert row["lr"] == f"lora {best} (best on seed 0's val of 3e-4, 1e-3, 3e-3), then 1e-2"
    totals = [json.loads((root / f"cascade-seed{seed}" / "cost.json").read_text())["cost"]["total_s"] for seed in (0, 1, 2)]
    assert row["total_s_per_seed"] == round(sum(totals) / 3)  # each seed's own encode + tuning + training, averaged
    assert row["peak_of"] == "tuning, encode and training"
    lora = results_cost.row("cora", "LoRA", str(root / "lora-best.json"))
    assert lora["peak_of"] == "training (the LLM inside)"
    assert row["peak_memory_mib"] >= lora["peak_memory_mib"]  # the cascade's peak includes its LoRA runs


def test_a_second_run_redoes_nothing_and_a_lost_folder_only(grid_run):
    cache, root, _ = grid_run
    again = _grid(cache, root)
    assert again.returncode == 0 and " start " not in again.stdout
    best = json.loads((root / "lora-best.json").read_text())["lr"]
    shutil.rmtree(root / f"lora-lr{best}-seed2")
    redo = _grid(cache, root)
    assert redo.returncode == 0, redo.stdout + redo.stderr
    assert [line.split()[-1] for line in redo.stdout.splitlines() if " start " in line] == [f"lora-lr{best}-seed2"]


def test_an_arch_without_a_grid_is_refused(grid_run):
    cache, root, _ = grid_run
    result = _grid(cache, root, "--archs", "lora,prefix")
    assert result.returncode == 1
    assert "--archs: prefix has no grid; choose from lora, ia3, finetune" in result.stderr
