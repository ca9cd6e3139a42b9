"""``InferConfig``: everything ``pipeline infer`` needs, typed and validated in one place.

Light on purpose (no torch import): the CLI module imports it at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import ConfigErrors
from pipeline.core.options import choice_problems, device_option, json_option, option, out_option, overwrite_option, seed_option
from stage1_encode.config import model_option
from stage1_encode.precision import DTYPE_HELP, MISMATCH_HELP

MAX_BATCH = 100_000  # texts per LLM forward: beyond it a typo that would reach the allocator
SPLITS = ("test", "val", "train", "all")


def checkpoint_option() -> Path:
    return option(help="Training run folder written by `pipeline train`.", metavar="RUN_DIR")


BATCH_TOKENS = 4096


def batch_tokens_option() -> int:
    return option(BATCH_TOKENS, "With --no-batch-invariant: token budget of an LLM batch: texts x padded length, length-sorted as `pipeline encode` batches.")


def batch_size_option() -> int | None:
    return option(None, "With --no-batch-invariant: at most this many texts per LLM batch (default: the token budget alone).")


BATCH_INVARIANT_HELP = (
    "Each target climbs the ladder alone and each text runs through the LLM alone, so a node's prediction is the same "
    "bits in any batch, subset, order or shard (default). --no-batch-invariant packs a batch's texts into LLM "
    "micro-batches under --batch-tokens and --batch-size: faster on a GPU, but a node's confidences can then differ in "
    "the last bits with its batch-mates."
)


def batch_invariant_option() -> bool:
    return option(True, BATCH_INVARIANT_HELP, flag="--batch-invariant", off_flag="--no-batch-invariant")


def packing_problems(batch_invariant: bool, batch_tokens: int, batch_size: int | None) -> list[str]:
    """The packing flags given without --no-batch-invariant (they would do nothing)."""
    if not batch_invariant:
        return []
    given = [f for f, on in (("--batch-tokens", batch_tokens != BATCH_TOKENS), ("--batch-size", batch_size is not None)) if on]
    return [f"{f}: packs LLM micro-batches, which only --no-batch-invariant does (by default every text runs alone); "
            f"add --no-batch-invariant or drop {f}" for f in given]


def dtype_option() -> str | None:
    return option(None, DTYPE_HELP)


def allow_dtype_mismatch_option() -> bool:
    return option(False, MISMATCH_HELP)


@dataclass
class InferConfig:
    """One inference run over a trained checkpoint.

    Targets: ``node_ids`` (a file of user ids, one a line; new ids allowed) if given, else
    ``new_only`` (nodes of the checkpoint's graph absent from that earlier cache or run), else
    ``split`` if given, else the new nodes of ``nodes``/``edges`` if given, else the ``test``
    split of the checkpoint's graph (the split training used, same seed).
    ``model`` None: the model named in the checkpoint's cache manifest.
    ``dtype`` None: the compute dtype the cache manifest records (another one is refused
    unless ``allow_dtype_mismatch``); ``device`` auto: CUDA when available, else CPU.
    ``batch_invariant`` (default): every target climbs alone and every text runs through the LLM
    alone, so a prediction depends on the model, the graph and the node only. Otherwise LLM
    batches hold length-sorted texts under ``batch_tokens`` (texts x padded length), as
    ``pipeline encode`` batches, and at most ``batch_size`` texts when given. Either way a
    target's subgraph is the sampler's keyed evaluation draw, the one training evaluated.
    """

    checkpoint: Path = checkpoint_option()
    out: Path = out_option("predictions.parquet, summary.json and infer_config.json")
    exit: str | None = option(  # None: the policy the run chose on its validation nodes (stage2_train.exit_policies.choose_policy)
        None,
        "Exit policy: patience:P, confidence:T, layer:I or none (full depth). Default: the policy the run chose on its "
        "validation nodes when trained (the cheapest within 1% relative of full-depth accuracy). A fine-tuning run (lora, ia3, "
        "prefix, finetune) predicts at full depth only: none.",
    )
    split: str | None = option(None, "Targets: test (default), val, train or all nodes of the checkpoint's graph.", choices=SPLITS)
    node_ids: Path | None = option(None, "Targets: a text file of node ids, one a line (blank lines and # comments skipped; a repeated id is predicted once).")
    nodes: Path | None = option(None, "New nodes (node_id, text, optional label), never cached; they become the targets.")
    edges: Path | None = option(None, "Edges (src, dst) of the new nodes, to each other or to known nodes.")
    batch_invariant: bool = batch_invariant_option()
    batch_tokens: int = batch_tokens_option()
    batch_size: int | None = batch_size_option()
    cache_neighbours: bool = option(
        True, "Known neighbours read their states from the cache (default) or run through the LLM too.",
        flag="--cache-neighbours", off_flag="--no-cache-neighbours",
    )
    model: str | None = model_option(
        None, "LLM to load (default: the one in the checkpoint's cache manifest); must be the same model."
    )
    seed: int | None = seed_option(None, "Trained seed to use (default: the one chosen on validation).")
    device: str = device_option()
    dtype: str | None = dtype_option()
    allow_dtype_mismatch: bool = allow_dtype_mismatch_option()
    max_targets: int | None = option(None, "Predict only the first N targets (a quick look).")
    new_only: Path | None = option(
        None, "Targets: the nodes of the checkpoint's graph absent from SINCE, an earlier encode cache or training run "
        "(a batch job's new nodes).", metavar="SINCE",
    )
    overwrite: bool = overwrite_option("predictions")
    shard: str | None = option(
        None, "Predict part I of N (0-based) of the targets into OUT.parts/part-I-of-N/, e.g. --shard $SLURM_ARRAY_TASK_ID/16; "
        "auto: part SLURM_ARRAY_TASK_ID of SLURM_ARRAY_TASK_COUNT in a SLURM array, RANK of WORLD_SIZE under torchrun. "
        "A finished part is skipped. Then --assemble joins the parts into OUT.", metavar="I/N|auto",
    )
    status: bool = option(False, "List the parts of OUT done and missing, with the command for each missing one; exit 0 when all are done, 3 when not.")
    assemble: bool = option(False, "Join the finished parts in OUT.parts/ into OUT (refused for parts of different checkpoints or graphs).")

    def __post_init__(self) -> None:
        self.checkpoint, self.out = Path(self.checkpoint), Path(self.out)
        for name in ("node_ids", "nodes", "edges", "new_only"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value))

    def validate(self) -> "InferConfig":
        """Collect every problem, naming the flag, and raise them together (InputError)."""
        from stage2_train.exit_policies import parse_exit
        from pipeline.core.devices import device_problem
        from pipeline.core.errors import InputError
        from stage1_encode.precision import dtype_problem

        errs = ConfigErrors()
        try:
            if self.exit is not None:
                parse_exit(self.exit)
        except InputError as err:
            errs.add(err.message)
        for problem in choice_problems(self):
            errs.add(problem)
        errs.check(device_problem(self.device) is None, device_problem(self.device) or "")
        errs.check(dtype_problem(self.dtype) is None, dtype_problem(self.dtype) or "")
        errs.check(0 < self.batch_tokens, f"--batch-tokens {self.batch_tokens}: must be > 0")
        errs.check(self.batch_size is None or 0 < self.batch_size <= MAX_BATCH, f"--batch-size {self.batch_size}: must be in 1..{MAX_BATCH}")
        errs.check(self.max_targets is None or self.max_targets > 0, f"--max-targets {self.max_targets}: must be > 0")
        for problem in packing_problems(self.batch_invariant, self.batch_tokens, self.batch_size):
            errs.add(problem)
        errs.check(self.checkpoint.is_dir(), f"--checkpoint {self.checkpoint}: no such directory; create it with `pipeline train CACHE_DIR --out {self.checkpoint}`")
        errs.check((self.nodes is None) == (self.edges is None), "--nodes and --edges go together: give both (the edges may be an empty table)")
        for flag, path in (("--nodes", self.nodes), ("--edges", self.edges), ("--node-ids", self.node_ids)):
            errs.check(path is None or path.is_file(), f"{flag} {path}: file not found")
        chosen = [f for f, v in (("--split", self.split), ("--node-ids", self.node_ids), ("--new-only", self.new_only),
                                 ("--nodes", self.nodes if self.new_only else None)) if v is not None]
        errs.check(len(chosen) <= 1, f"{' and '.join(chosen)}: choose the targets one way")
        errs.check(self.new_only is None or self.new_only.is_dir(), f"--new-only {self.new_only}: no such cache or run folder")
        if self.shard is not None:
            from pipeline.core.shards import parse_shard

            try:  # "auto" becomes this process's "I/N", read from the scheduler's variables
                self.shard = "{}/{}".format(*parse_shard(self.shard))
            except InputError as err:
                errs.add(err.message)
        errs.raise_if_any()
        from pipeline.core.devices import resolve_device
        from stage3_infer.predictions import claim

        self.device = resolve_device(self.device)
        claim(self.out, self.overwrite or self.shard is not None, inputs=self.inputs())  # a part writes under OUT.parts/
        return self

    def inputs(self) -> list[Path]:
        """What infer reads, which ``--out`` must not be, contain or lie inside: the checkpoint,
        the files given, and the cache and graph folder the checkpoint names."""
        from pipeline.core import guarded
        from pipeline.core.errors import InputError
        from stage2_train.checkpoint import CONFIG

        found = [self.checkpoint, self.nodes, self.edges, self.node_ids, self.new_only]
        try:  # the run's description
            recorded = guarded.read_json(self.checkpoint / CONFIG, "")
        except InputError:
            recorded = {}  # a damaged checkpoint is refused, naming the file, when it is loaded
        for key in ("cache", "graph_source"):
            value = recorded.get(key)
            if isinstance(value, str) and Path(value).is_dir():
                found.append(Path(value))
        return [p for p in found if p is not None]


@dataclass
class BenchConfig:
    """``pipeline bench infer``: early exit against full depth on the test nodes."""

    checkpoint: Path = checkpoint_option()
    json_path: Path | None = json_option("the table (per policy accuracy, rel_drop, speedup, layer_fraction)")
    max_targets: int | None = option(None, "Use only the first N test (and validation) nodes.")
    batch_invariant: bool = batch_invariant_option()
    batch_tokens: int = batch_tokens_option()
    batch_size: int | None = batch_size_option()
    device: str = device_option()
    dtype: str | None = dtype_option()
    allow_dtype_mismatch: bool = allow_dtype_mismatch_option()
    repeats: int = option(1, "Timed runs per policy; the fastest counts (for noisy shared machines).")

    def validate(self) -> "BenchConfig":
        from pipeline.core.devices import device_problem
        from stage1_encode.precision import dtype_problem

        errs = ConfigErrors()
        errs.check(device_problem(self.device) is None, device_problem(self.device) or "")
        errs.check(dtype_problem(self.dtype) is None, dtype_problem(self.dtype) or "")
        for problem in packing_problems(self.batch_invariant, self.batch_tokens, self.batch_size):
            errs.add(problem)
        errs.check(Path(self.checkpoint).is_dir(), f"--checkpoint {self.checkpoint}: no such directory; create it with `pipeline train CACHE_DIR --out {self.checkpoint}`")
        errs.check(self.max_targets is None or self.max_targets > 0, f"--max-targets {self.max_targets}: must be > 0")
        errs.check(self.batch_tokens > 0, f"--batch-tokens {self.batch_tokens}: must be > 0")
        errs.check(self.batch_size is None or self.batch_size > 0, f"--batch-size {self.batch_size}: must be > 0")
        errs.check(self.repeats > 0, f"--repeats {self.repeats}: must be > 0")
        errs.raise_if_any()
        from pipeline.core.bench_json import claim_bench
        from pipeline.core.devices import resolve_device

        self.device = resolve_device(self.device)
        if self.json_path is not None:
            claim_bench(self.json_path, "infer", inputs=[self.checkpoint])
        return self
