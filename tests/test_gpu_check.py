"""scripts/gpu_check.sh: what can be checked without a GPU (the refusal, the table, the exit
status), and the whole check itself on a CUDA machine (``-m gpu``)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _script(out: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/gpu_check.sh", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable, **env}, timeout=360)


def test_refuses_without_cuda_and_writes_nothing(tmp_path):
    proc = _script(tmp_path / "check", CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == "gpu_check: no CUDA device visible; this check needs one GPU (nothing was run)"
    assert not (tmp_path / "check").exists()


def test_table_and_exit_status():
    m = _module()
    checks = [m.Check("encode hf bf16 (cuda)", True, "12s"), m.Check("encode vllm bf16 = hf", None, "vllm not importable")]
    assert m.table(checks).splitlines() == [
        "check                  result  detail",
        "---------------------  ------  ------",
        "encode hf bf16 (cuda)  PASS    12s",
        "encode vllm bf16 = hf  SKIP    vllm not importable",
    ]
    assert m.exit_status(checks) == 0
    assert m.exit_status(checks + [m.Check("train", False, "exit 1")]) == 1
    assert m.encode_figures("encoded 2708 nodes in 3.1s (873.5 texts/s, 25000 tokens/s); 77 tokens, padding 1.0%, "
                            "peak GPU memory 1.25 GiB; cache 11.1 MB") == "873.5 texts/s, peak GPU memory 1.25 GiB"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_whole_check_passes_on_a_gpu(tmp_path):
    proc = _script(tmp_path / "check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL" not in proc.stdout
