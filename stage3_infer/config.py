"""``InferConfig``: everything ``pipeline infer`` needs, typed and validated in one place.

Light on purpose (no torch import): the CLI module imports it at start-up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.errors import ConfigErrors
FALLBACK_EXIT = "none"  # runs trained before `pipeline train` chose an exit policy on validation: full depth, no surprise drop
SPLITS = ("test", "val", "train", "all")


@dataclass
class InferConfig:
    """One inference run over a trained checkpoint.

    Targets: ``node_ids`` (a file of user ids, one a line; new ids allowed) if given, else
    ``split`` if given, else the new nodes of ``nodes``/``edges`` if given, else the ``test``
    split of the checkpoint's graph (the split training used, same seed).
    ``model`` None: the model named in the checkpoint's cache manifest.
    ``batch_size`` is the number of texts per LLM forward; subgraphs are sampled in the
    training run's evaluation batches so that they are the same subgraphs training saw.
    """

    checkpoint: Path
    out: Path
    exit: str | None = None  # None: the policy the run chose on its validation nodes (stage3_infer.policies.choose_policy)
    split: str | None = None  # None: "test", or the new nodes when --nodes is given
    node_ids: Path | None = None
    nodes: Path | None = None
    edges: Path | None = None
    batch_size: int = 32
    cache_neighbours: bool = True
    model: str | None = None
    seed: int | None = None  # which trained seed; None: the one chosen on validation
    device: str = "cpu"
    max_targets: int | None = None  # keep only the first N targets (quick looks, benchmarks)

    def __post_init__(self) -> None:
        self.checkpoint, self.out = Path(self.checkpoint), Path(self.out)
        for name in ("node_ids", "nodes", "edges"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value))

    def validate(self) -> "InferConfig":
        """Collect every problem, naming the flag, and raise them together (InputError)."""
        from stage3_infer.policies import parse_exit
        from pipeline.errors import InputError

        errs = ConfigErrors()
        try:
            if self.exit is not None:
                parse_exit(self.exit)
        except InputError as err:
            errs.add(err.message)
        errs.check(self.split is None or self.split in SPLITS, f"--split {self.split}: choose one of {', '.join(SPLITS)}")
        errs.check(self.batch_size > 0, f"--batch-size {self.batch_size}: must be > 0")
        errs.check(self.max_targets is None or self.max_targets > 0, f"--max-targets {self.max_targets}: must be > 0")
        errs.check(self.checkpoint.is_dir(), f"--checkpoint {self.checkpoint}: no such directory; create it with `pipeline train CACHE_DIR --out {self.checkpoint}`")
        errs.check((self.nodes is None) == (self.edges is None), "--nodes and --edges go together: give both (the edges may be an empty table)")
        for flag, path in (("--nodes", self.nodes), ("--edges", self.edges), ("--node-ids", self.node_ids)):
            errs.check(path is None or path.is_file(), f"{flag} {path}: file not found")
        chosen = [f for f, v in (("--split", self.split), ("--node-ids", self.node_ids)) if v is not None]
        errs.check(len(chosen) <= 1, f"{' and '.join(chosen)}: choose the targets one way")
        errs.check(not self.out.is_file(), f"--out {self.out}: is a file; give a folder")
        errs.raise_if_any()
        return self

    def to_dict(self) -> dict:
        return asdict(self)
