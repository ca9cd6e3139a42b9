"""What by-length batches cost against padded ones, side by side in one process.

    python scripts/bench_batching.py [MODEL] [MAX_LENGTH] [TEXTS]   (defaults: minilm-l6 256 256)

Times ``stage1_encode.run.encode_block`` on the first TEXTS Cora texts (one block), once with
the padded batching earlier versions used (texts sorted by length, cut under the token
budget) and once with today's by-length batches (``make_batches``: one token count a batch,
no padding), twice each, best of two; one thread. Prints both times and their ratio.
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.core.graph import load_graph
from stage1_encode import run as encode_run
from stage1_encode.config import EncodeConfig
from stage1_encode.layers import parse_layers
from stage1_encode.models import load_model, resolve_model
from stage1_encode.stepping import LayerStepper


def padded_batches(lengths: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """The earlier batching: positions sorted by length, cut so that B * longest <= batch_tokens."""
    batches, current = [], []
    for i in np.argsort(lengths, kind="stable"):
        if current and (len(current) + 1) * int(lengths[i]) > batch_tokens:
            batches.append(np.asarray(current))
            current = []
        current.append(i)
    if current:
        batches.append(np.asarray(current))
    return batches


def main() -> None:
    model = sys.argv[1] if len(sys.argv) > 1 else "minilm-l6"
    max_length = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 256
    torch.set_num_threads(1)
    texts = list(load_graph("cora").texts[:n])
    stepper = LayerStepper(load_model(resolve_model(model), "cpu", torch.float32))
    layers = parse_layers(None, stepper.num_states)
    config = EncodeConfig("cora", model=model, max_length=max_length)
    by_length = encode_run.make_batches
    encode_run.encode_block(stepper, texts[:16], layers, config, lambda *_: None)  # warm-up
    times: dict[str, list[float]] = {"padded": [], "by-length": []}
    try:
        for _ in range(2):
            for name, batcher in (("padded", padded_batches), ("by-length", by_length)):
                encode_run.make_batches = batcher
                start = time.perf_counter()
                encode_run.encode_block(stepper, texts, layers, config, lambda *_: None)
                times[name].append(time.perf_counter() - start)
    finally:
        encode_run.make_batches = by_length
    best = {k: min(v) for k, v in times.items()}
    print(f"{model}, --max-length {max_length}, {n} texts: padded {best['padded']:.1f}s, by-length {best['by-length']:.1f}s, "
          f"by-length/padded {best['by-length'] / best['padded']:.3f}")


if __name__ == "__main__":
    main()
