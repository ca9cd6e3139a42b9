"""The whole pipeline on one CUDA GPU, as a table of PASS/FAIL checks (run by scripts/gpu_check.sh).

Steps (default: Cora, the built-in SmolLM2-135M, 32 tokens per text; no network; a few minutes):

  1. ``pipeline encode`` with the HF backend in bfloat16 (``--device auto`` picks the GPU);
  2. the same encode with ``--backend vllm`` when vLLM is importable (by ``$VLLM_PYTHON``, else
     this Python), and the two caches compared state by state (largest relative error of a
     pooled state <= ``VLLM_TOL``: bf16 and different kernels, see scripts/gpu_check_vllm.py);
  3. ``pipeline train`` of the ladder (bf16 autocast steps, float32 evaluation);
  4. a 1-process ``torchrun`` of the same training (the rank takes cuda:LOCAL_RANK) and an
     nccl all-reduce under torchrun;
  5. ``pipeline infer --exit none``: the labels training's ladder gives on the cached states
     (replayed in float32), confidences within ``INFER_TOL``;
  6. ``pipeline bench infer``: early exit (patience:1) runs fewer LLM layers, faster;
  7. peak GPU memory and throughput of each stage, read from the stages' own outputs.

Exit status: 0 when every check passes, 1 when one fails, 2 when no CUDA device is visible
(nothing is run or written). Outputs go to ``--out`` (default artifacts/gpu_check/), which the
check replaces only if it holds a previous check's marker file.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = "gpu_check.marker"
VLLM_TOL = 5e-2
INFER_TOL = 1e-4
ENCODE_FLAGS = ["--max-length", "32", "--dtype", "bfloat16"]
BUDGET_S = 280  # the whole check; gpu_check.sh kills it at 300 s, so each step gets what is left
_START = time.monotonic()


@dataclass
class Check:
    name: str
    ok: bool | None  # None: skipped
    detail: str


def table(checks: list[Check]) -> str:
    """The result table, one row a check: PASS, FAIL or SKIP, and what was measured."""
    width = max(len(c.name) for c in checks)
    lines = [f"{'check':<{width}}  result  detail", f"{'-' * width}  ------  ------"]
    for c in checks:
        result = "SKIP" if c.ok is None else ("PASS" if c.ok else "FAIL")
        lines.append(f"{c.name:<{width}}  {result:<6}  {c.detail}")
    return "\n".join(lines)


def exit_status(checks: list[Check]) -> int:
    return 1 if any(c.ok is False for c in checks) else 0


def run(cmd: list[str], log: Path, env: dict | None = None) -> tuple[int, str, float]:
    """Run ``cmd`` in the repo (output kept in ``log``) within what is left of ``BUDGET_S``;
    (exit status, output, seconds); 124 when it ran out of time (the table still prints)."""
    t0 = time.perf_counter()
    left = BUDGET_S - (time.monotonic() - _START)
    try:
        if left < 5:
            raise subprocess.TimeoutExpired(cmd, 0, output="not started: the check's time budget is used up\n")
        proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=left)
        code, out = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        code, out = 124, out + f"\ntimed out: the whole check has {BUDGET_S} s\n"
    log.write_text(out)
    return code, out, time.perf_counter() - t0


def gib(n) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def encode_figures(output: str) -> str:
    """texts/s and peak GPU memory from encode's summary line."""
    rate, peak = re.search(r"\(([\d.]+) texts/s", output), re.search(r"peak GPU memory [\d.]+ GiB", output)
    return f"{rate.group(1)} texts/s, {peak.group(0) if peak else 'peak GPU memory n/a'}" if rate else "no summary line"


def cache_rel_error(a: Path, b: Path) -> float:
    """Largest relative error (row norm) between two caches' pooled states."""
    import numpy as np

    from stage1_encode.cache.reader import open_cache

    x, y = open_cache(a).read().astype(np.float32), open_cache(b).read().astype(np.float32)
    return float((np.linalg.norm(x - y, axis=-1) / np.maximum(np.linalg.norm(x, axis=-1), 1e-12)).max())


def vllm_python() -> str | None:
    """A Python that imports vllm: ``$VLLM_PYTHON``, .venv-vllm, or this one; None if none does."""
    for python in (os.environ.get("VLLM_PYTHON"), str(REPO / ".venv-vllm/bin/python"), sys.executable):
        if python and Path(python).exists():
            if subprocess.run([python, "-c", "import vllm"], capture_output=True).returncode == 0:
                return python
    return None


def replay_training(run_dir: Path, node_ids: list):
    """(labels, confidences) training's ladder gives the targets from the cached states, in float32 on CPU."""
    import numpy as np
    import torch

    from stage2_train.checkpoint import load_checkpoint
    from stage2_train.data import CachedFeatures, open_train_data
    from stage2_train.sampling import Sampler

    ck = load_checkpoint(run_dir)
    data = open_train_data(ck.cache_path, tuple(ck.layers), None, "ladder")
    targets = data.graph.index_of(node_ids)
    sub = Sampler(data.graph.edge_index, data.graph.num_nodes, **ck.sampler).sample(np.asarray(targets))
    with torch.no_grad():
        p = torch.softmax(ck.model(CachedFeatures(data)(sub.nodes), sub)[-1], -1)
    return [ck.label_names[i] for i in p.argmax(-1).tolist()], p.max(-1).values.numpy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="artifacts/gpu_check", help="folder for caches, runs and logs (replaced if a previous check's)")
    ap.add_argument("--json", default=None, help="also write the checks as JSON here")
    ap.add_argument("--graph", default="cora", help="graph to run on (built-in name or folder)")
    ap.add_argument("--model", default="smollm2-135m", help="encoder LLM (built-in name or local folder; no network)")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible; this check needs one GPU (nothing was run)", file=sys.stderr)
        return 2
    from pipeline.core.config_file import read_config_file
    from pipeline.core.options import config_file_name
    from stage1_encode.cache.manifest import read_manifest
    from stage2_train.checkpoint import read_run
    from stage3_infer.predictions import read_predictions, read_summary

    out = Path(args.out)
    if out.exists():
        if not (out / MARKER).is_file():
            print(f"gpu_check: --out {out} exists and is not a previous check's folder; choose another --out", file=sys.stderr)
            return 2
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("written by scripts/gpu_check.py\n")
    py = [sys.executable, "-m", "pipeline"]
    name = torch.cuda.get_device_name(0)
    checks: list[Check] = []

    # 1. HF encode, bf16 on the GPU
    hf = out / "cora-hf-bf16.zarr"
    code, log, secs = run([*py, "encode", args.graph, "--model", args.model, "--out", str(hf), *ENCODE_FLAGS], out / "encode_hf.log")
    ok = (code == 0 and read_manifest(hf)["compute_dtype"] == "bfloat16"
          and read_config_file(hf / config_file_name("encode"))["device"].startswith("cuda"))
    checks.append(Check("encode hf bf16 (cuda)", ok, f"{secs:.0f}s; {encode_figures(log)}" if code == 0 else f"exit {code}, see {out}/encode_hf.log"))

    # 2. vLLM encode and cache equality
    vpy = vllm_python()
    if vpy is None:
        checks.append(Check("encode vllm bf16 = hf", None, "vllm not importable (set VLLM_PYTHON to a Python with vllm)"))
    elif checks[-1].ok:
        vl = out / "cora-vllm-bf16.zarr"
        code, log, secs = run([vpy, "-m", "pipeline", "encode", args.graph, "--model", args.model, "--out", str(vl), "--backend", "vllm", *ENCODE_FLAGS], out / "encode_vllm.log")
        if code == 0:
            err = cache_rel_error(hf, vl)
            checks.append(Check("encode vllm bf16 = hf", err <= VLLM_TOL, f"max rel err {err:.1e} (tol {VLLM_TOL:g}); {secs:.0f}s; {encode_figures(log)}"))
        else:
            checks.append(Check("encode vllm bf16 = hf", False, f"exit {code}, see {out}/encode_vllm.log"))

    # 3. ladder training on the GPU
    run_dir = out / "ladder"
    code, _, secs = run([*py, "train", str(hf), "--out", str(run_dir), "--seeds", "0", "--epochs", "60", "--patience", "15"],
                        out / "train.log")
    trained = code == 0
    if trained:
        ladder = read_run(run_dir)
        summary, config = ladder.summary, ladder.config
        train_n = summary["per_seed"][0]["split_sizes"]["train"]
        ok = config["device"].startswith("cuda") and summary["gpu_peak_memory_bytes"] is not None
        checks.append(Check("train ladder (cuda, bf16 autocast)", ok,
                            f"test {100 * summary['test_acc_mean']:.2f}%, {train_n / summary['epoch_s_mean']:.0f} targets/s, "
                            f"peak GPU memory {gib(summary['gpu_peak_memory_bytes'])}, {secs:.0f}s"))
    else:
        checks.append(Check("train ladder (cuda, bf16 autocast)", False, f"exit {code}, see {out}/train.log"))

    # 4. torchrun: one process, nccl
    tr = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "--master-port", "29531"]
    probe = ("import torch, torch.distributed as d; d.init_process_group('nccl'); torch.cuda.set_device(0); "
             "t = torch.ones(1, device='cuda'); d.all_reduce(t); assert t.item() == 1; d.destroy_process_group(); print('nccl ok')")
    code, log, _ = run([*tr, "--no-python", sys.executable, "-c", probe], out / "nccl.log")
    nccl_ok = code == 0 and "nccl ok" in log
    code, _, secs = run([*tr, "-m", "pipeline", "train", str(hf), "--out", str(out / "ladder-torchrun"), "--seeds", "0", "--epochs", "5"],
                        out / "torchrun.log")
    device = read_run(out / "ladder-torchrun").config["device"] if code == 0 else None
    checks.append(Check("torchrun 1 process (nccl)", nccl_ok and device == "cuda:0",
                        f"nccl all-reduce {'ok' if nccl_ok else 'FAILED'}; train device {device}; {secs:.0f}s"))

    # 5. infer --exit none equals training
    if trained:
        pred = out / "infer-none"
        code, _, secs = run([*py, "infer", "--checkpoint", str(run_dir), "--out", str(pred), "--exit", "none"], out / "infer.log")
        if code == 0:
            t = read_predictions(pred).to_pydict()
            s = read_summary(pred)
            labels, conf = replay_training(run_dir, t["node_id"])
            diff = max(abs(a - b) for a, b in zip(t["confidence"], conf.tolist()))
            same = sum(a == b for a, b in zip(t["predicted_label"], labels))
            checks.append(Check("infer --exit none = training", same == len(labels) and diff <= INFER_TOL and s["compute_dtype"] == "bfloat16",
                                f"{same}/{len(labels)} labels equal, max confidence diff {diff:.1e} (tol {INFER_TOL:g}); "
                                f"{len(labels) / s['wall_time_s']:.0f} texts/s, peak GPU memory {gib(s['gpu_peak_memory_bytes'])}"))
        else:
            checks.append(Check("infer --exit none = training", False, f"exit {code}, see {out}/infer.log"))

        # 6. bench infer: early exit
        bench = out / "bench_infer.json"
        code, _, secs = run([*py, "bench", "infer", "--checkpoint", str(run_dir), "--max-targets", "300", "--json", str(bench)],
                            out / "bench_infer.log")
        if code == 0:
            from pipeline.core.bench_json import read_bench

            b = read_bench(bench)[1]
            p1, none = b["patience:1"], b["none"]
            checks.append(Check("bench infer early exit", p1["layer_fraction"] < 1 and p1["speedup"] > 1,
                                f"patience:1 {p1['speedup']:.2f}x faster, {100 * p1['layer_fraction']:.0f}% of layers, rel drop "
                                f"{100 * p1['rel_drop']:.2f}%; none {none['texts_per_s']:.0f} texts/s, peak GPU memory {gib(none['gpu_peak_memory_bytes'])}"))
        else:
            checks.append(Check("bench infer early exit", False, f"exit {code}, see {out}/bench_infer.log"))

    print(f"gpu_check on {name} (torch {torch.__version__}); outputs in {out}")
    print(table(checks))
    if args.json:
        Path(args.json).write_text(json.dumps([c.__dict__ for c in checks], indent=2) + "\n")
    return exit_status(checks)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
