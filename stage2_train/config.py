"""The configs of ``pipeline train``: one dataclass per kind of model, each holding only its own fields.

``TrainConfig`` holds what every arch reads; ``CacheTrainConfig`` adds the side network, the
graph sampler and the scale options of the archs trained on cached states; ``LadderConfig``
(``--arch ladder``), ``BaselineConfig`` (mlp, gcn, sage) and ``FinetuneConfig`` (lora, ia3,
prefix, finetune) are the concrete configs. ``TrainConfig(**flags)`` builds the one ``--arch``
names; a flag given (a value other than its default) that its class does not hold is refused,
naming the flag and the archs it is for: the class structure is the rule.

Light on purpose (no torch import): the CLI module imports it at start-up.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from typing import Any
from pathlib import Path

from pipeline.core.errors import ConfigErrors, InputError
from pipeline.core.options import argument, choice_problem, choice_problems, device_option, option, out_option, panels_of, overwrite_option, seeds_option
from stage1_encode.precision import DTYPE_HELP, MISMATCH_HELP
from pipeline.core.parsers import parse_float_list, parse_int_list, parse_random_split, parse_size

CACHE_ARCHS = ("ladder", "mlp", "gcn", "sage")  # trained on the cached states
PEFT_ARCHS = ("lora", "ia3", "prefix")  # peft adapters on the frozen LLM
FINETUNE_ARCHS = (*PEFT_ARCHS, "finetune")  # the LLM in the loop, trained on the node's own text
ARCHS = (*CACHE_ARCHS, *FINETUNE_ARCHS)
# Fine-tuning defaults: learning rates of peft's examples for each method (scripts/finetune_lr_grid.py
# chooses one on validation), batch 16, the head's dropout 0.1, few epochs (an LLM epoch is costly)
# and patience 2 (one noisy epoch does not end the run).
FINETUNE_LR = {"lora": 1e-3, "ia3": 3e-3, "prefix": 1e-2, "finetune": 5e-5}
FINETUNE_DEFAULTS = {"epochs": 3, "patience": 2, "batch_size": 16, "dropout": 0.1}
CACHE_DEFAULTS = {"epochs": 200, "patience": 30, "batch_size": 64, "dropout": 0.5}
# Sane upper bounds: beyond them a flag is a typo, and would reach the allocator or run for ever.
MAX_HIDDEN, MAX_BATCH, MAX_EPOCHS, MAX_FANOUT, MAX_WALK, MAX_THREADS, MAX_SEEDS = 16384, 10**7, 10**6, 10**5, 1024, 4096, 1000
MAX_LR = 1.0  # AdamW's step is about lr per weight: beyond 1, the weights leave any useful range at once
MAX_DIST_TIMEOUT_S = 7 * 24 * 3600  # a week; far larger overflows torch's timedelta
GNNS = ("sage", "gcn", "gat")
SAMPLERS = ("ego", "rwr", "full")
READOUTS = ("target-mean", "ego")  # the ladder's head input: see stage2_train.ladder
LOSSES = ("multi-exit", "last-head")  # ENGINE-Early (every head trained) / plain ENGINE (last head only)
RUNG_GRADS = ("own", "joint")  # each rung trained by its own head only / by every head above it too (the reference)
DEPTHS = ("val", "full")  # the best head on validation answers, deeper rungs dropped / the last head answers (the reference)
RUNG_ACTIVATIONS = ("relu", "elu")  # after the ladder's hidden convolutions (ELU: the ENGINE authors' Cora and CiteSeer)
RUNG_NORMS = ("layer", "none")  # LayerNorm before each of those activations, or none (the authors' Cora and CiteSeer)
# The ego sampler's defaults, 2 hops and at most 5 neighbours per node and hop: the only setting
# that scored best on validation on Cora and CiteSeer, random and few-label splits (256 tokens,
# docs/results.md). --hops 1 --fanout 0 is the reference's ego graph.
EGO_HOPS, EGO_FANOUT = 2, 5
# The help panels of `pipeline train --help`
COMMON, SIDE, LADDER, BASELINES, SCALE = "Common", "Ladder and baselines: side network and sampler", "Ladder", "Baselines (mlp, gcn, sage)", "Scale"
HOPS_HELP = "ego: neighbourhood radius in hops (--hops 1 --fanout 0 is the reference's ego graph)."
FANOUT_HELP = "ego: keep at most this many neighbours per node and hop (a seeded random subset); 0 keeps all."


def split_option() -> Any:
    """``--split`` of train and run; None: ``stage2_train.data.default_split``."""
    return option(
        None,
        "column (the graph's split column), a split name (e.g. random_60_20_20, planetoid_public; NAME_seed{i} is used for "
        "seed i), or random:0.6,0.2,0.2. Default: the split column, else the graph's random_60_20_20 files, else random:0.6,0.2,0.2.",
    )


class _ByArch(type):
    """``TrainConfig(**flags)`` builds the concrete config of ``flags["arch"]`` (see the module docstring)."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is not TrainConfig:
            return super().__call__(*args, **kwargs)
        arch = kwargs.get("arch", "ladder")
        if (problem := choice_problem(_FIELDS["arch"], arch)) is not None:
            raise InputError(problem)
        concrete = config_class(arch)
        own = {f.name for f in fields(concrete)}
        unknown = [name for name in kwargs if name not in _FIELDS]
        if unknown:
            raise TypeError(f"TrainConfig got unexpected keyword arguments {unknown}")
        errs = ConfigErrors()
        for name, declared in _FIELDS.items():  # in --help order
            if name in kwargs and name not in own and kwargs[name] != _field_default(declared):
                errs.add(f"{_flag(name)} is for --arch {'/'.join(archs_holding(name))}; it has no effect with --arch {arch}: leave it out")
        errs.raise_if_any()
        return concrete(*args, **{k: v for k, v in kwargs.items() if k in own})


@dataclass
class TrainConfig(metaclass=_ByArch):
    """What every ``pipeline train`` arch reads: one model per seed, all written under ``out``.

    ``device`` auto: CUDA when available, else CPU (resolved by ``validate``). ``epochs``,
    ``patience``, ``batch_size``, ``dropout`` and ``lr`` None: the concrete class's defaults.
    """

    PANEL = COMMON
    DEFAULTS = CACHE_DEFAULTS  # epochs, patience, batch_size, dropout

    cache: Path = argument(help="Cache folder written by `pipeline encode` (it names its graph).", metavar="CACHE_DIR")
    out: Path = out_option("the run: weights, config, metrics, summary")
    arch: str = option(
        "ladder",
        "ladder (G-Ladder over the cached rungs), a baseline on one cached state (mlp, gcn, sage), or the LLM itself "
        "fine-tuned on each node's text (the cache names model, max length and pooling; its states are not read): "
        "lora, ia3, prefix (peft adapters on the frozen LLM) or finetune (every LLM weight trained: small models only).",
        choices=ARCHS,
    )
    split: str | None = split_option()
    seeds: tuple[int, ...] = seeds_option()
    epochs: int | None = option(None, "Maximum epochs (default 200; 3 for the fine-tuning archs).")
    patience: int | None = option(
        None, "Stop after this many epochs without a better validation accuracy of the answering head (see --depth); default 30, 2 for the fine-tuning archs."
    )
    lr: float | None = option(
        None, "AdamW learning rate (default 3e-4 for the ladder, 1e-2 for the baselines; lora 1e-3, ia3 3e-3, prefix 1e-2, finetune 5e-5)."
    )
    weight_decay: float = option(5e-4, "AdamW weight decay.")
    dropout: float | None = option(None, "Dropout probability (default 0.5; 0.1 before the fine-tuning archs' head).")
    batch_size: int | None = option(
        None, "Target nodes per training batch (default 64, 16 for the fine-tuning archs; ignored by --sampler full: full batch)."
    )
    eval_batch_size: int = 512
    device: str = device_option()
    num_threads: int | None = option(
        None, "Torch CPU threads (default: torch's). The ladder's ops are small: on a busy machine 1 is much faster.", panel=SCALE,
    )
    deterministic: bool = option(
        False, "GPU: torch.use_deterministic_algorithms (and CUBLAS_WORKSPACE_CONFIG=:4096:8), so the same command gives the "
        "same weights on every run, at a cost in speed; ops without a deterministic CUDA kernel are named in a warning. "
        "CPU runs give the same bits without it (docs/design.md, Reproducibility).",
    )
    overwrite: bool = overwrite_option("a run")
    max_batches: int | None = option(
        None, "Cap the training batches of every epoch (a partial epoch, e.g. to fit a fine-tuning run into CPU time); recorded in summary.json.",
        panel=SCALE,
    )
    state_every: float = option(
        60.0, "Seconds between writes of the resumable state (RUN.resume/, also written after every seed) within a seed; "
        "0: after every epoch. Running the same command again continues from it.", metavar="SECONDS", panel=SCALE,
    )
    init: Path | None = option(
        None, "Warm start: begin every seed from the weights of this earlier run (same --arch, --hidden-channels, --gnn, "
        "--num-layers, rungs, classes and LLM; else refused naming what differs), e.g. last night's run on a grown graph.",
        metavar="RUN_DIR",
    )
    extra: dict = field(default_factory=dict)  # free-form notes stored with the config
    # fields given explicitly (command line or --config); None: those differing from their default
    explicit_flags: frozenset[str] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, value in self.DEFAULTS.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.lr is None:
            self.lr = self.default_lr()
        self.cache, self.out = Path(self.cache), Path(self.out)

    def default_lr(self) -> float:
        raise NotImplementedError

    @property
    def reads_cache(self) -> bool:
        """Whether training reads the cache's states (not the live LLM)."""
        return False

    def validate(self) -> "TrainConfig":
        """Collect every problem, naming the flag, and raise them together (InputError)."""
        errs = ConfigErrors()
        self.check_flags(errs)
        self.check_paths(errs)
        errs.raise_if_any()
        from pipeline.core.devices import resolve_device

        self.device = resolve_device(self.device)
        return self

    def check_flags(self, errs: ConfigErrors) -> None:
        """Add the problems of this config's values to ``errs`` (no file is read: the main job
        checks its trainings before it encodes their cache); subclasses add theirs after these."""
        from pipeline.core.devices import device_problem

        for problem in choice_problems(self):
            errs.add(problem)
        errs.check(device_problem(self.device) is None, device_problem(self.device) or "")
        errs.check(len(self.seeds) > 0, "--seeds: give at least one seed, e.g. 0,1,2")
        repeated = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
        errs.check(not repeated, f"--seeds {','.join(map(str, self.seeds))}: "
                   f"{'seed' if len(repeated) == 1 else 'seeds'} {', '.join(map(str, repeated))} {'repeats' if len(repeated) == 1 else 'repeat'}")
        errs.check(self.epochs > 0, f"--epochs {self.epochs}: must be > 0")
        errs.check(self.patience > 0, f"--patience {self.patience}: must be > 0")
        errs.check(0 < self.lr <= MAX_LR, f"--lr {self.lr}: must be > 0 and at most {MAX_LR:g}")
        errs.check(0 <= self.weight_decay < math.inf, f"--weight-decay {self.weight_decay}: must be a finite number >= 0")
        errs.check(0 <= self.dropout < 1, f"--dropout {self.dropout}: must be in [0, 1)")
        errs.check(self.batch_size > 0, f"--batch-size {self.batch_size}: must be > 0")
        errs.check(self.num_threads is None or self.num_threads > 0, f"--num-threads {self.num_threads}: must be > 0")
        errs.check(self.max_batches is None or self.max_batches > 0, f"--max-batches {self.max_batches}: must be > 0")
        if self.split is not None and self.split.startswith("random:"):
            try:
                parse_random_split(self.split)
            except ValueError as err:
                errs.add(f"--split {self.split}: {err}")
        for flag, value, most in (("--batch-size", self.batch_size, MAX_BATCH), ("--epochs", self.epochs, MAX_EPOCHS),
                                  ("--num-threads", self.num_threads or 0, MAX_THREADS), ("--patience", self.patience, MAX_EPOCHS)):
            errs.check(value <= most, f"{flag} {value}: must be <= {most}")
        errs.check(len(self.seeds) <= MAX_SEEDS, f"--seeds: {len(self.seeds)} seeds, at most {MAX_SEEDS}")
        errs.check(self.state_every >= 0, f"--state-every {self.state_every}: must be >= 0 seconds")

    def check_paths(self, errs: ConfigErrors) -> None:
        """Add the problems of the folders this config reads to ``errs``."""
        errs.check(not self.cache.exists() or self.cache.is_dir(), f"CACHE_DIR {self.cache}: not a directory")
        errs.check(self.cache.exists(), f"CACHE_DIR {self.cache}: no such cache; create it with `pipeline encode GRAPH --out {self.cache}`")
        if self.init is not None:
            errs.check(Path(self.init).is_dir(), f"--init {self.init}: no such run folder; give a RUN_DIR written by `pipeline train`")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("explicit_flags")
        return d


@dataclass
class CacheTrainConfig(TrainConfig):
    """The archs trained on the cache's states: a side network fed by the graph sampler, in or
    out of core, on one process or several ``torchrun`` ranks."""

    PANEL = SIDE
    NUM_LAYERS = 2  # --num-layers' default
    SAMPLER = "full"  # --sampler's default

    hidden_channels: int = option(128, "Side width K.")
    num_layers: int | None = option(  # None: NUM_LAYERS
        None, "GNN layers per rung for the ladder (default 1), layers in total for a baseline (default 2)."
    )
    standardize: bool = option(
        False, "Z-score each LLM state with the mean and std of the training nodes (stored with the weights, applied by infer too).",
        flag="--standardize", off_flag="--no-standardize",
    )
    sampler: str | None = option(
        None, "ego (the target's --hops neighbourhood; ladder default), rwr (random walk with restart), full (whole graph; baselines' default).",
        choices=SAMPLERS,
    )
    hops: int = option(EGO_HOPS, HOPS_HELP)
    fanout: int = option(EGO_FANOUT, FANOUT_HELP)
    num_walks: int = option(8, "rwr: walks per target.")
    walk_length: int = option(8, "rwr: steps per walk.")
    restart_p: float = option(0.5, "rwr: restart probability per step.")
    memory_budget: int | None = option(  # bytes; cache rungs larger than this train out of core (None: see out_of_core)
        None,
        "Memory for the cache's features, e.g. 512MB or 2GiB. When the used rungs (N x S x H x 2 bytes) exceed it, "
        "train out of core within it: chunk-ordered batches, a chunk cache of half the budget, batches cut into "
        "micro-batches (gradients accumulated) so the step's working set fits the other half, read-ahead. "
        "Default: 8 GiB or half the available memory, whichever is less.",
        parse=parse_size, metavar="SIZE", panel=SCALE,
    )
    dist_timeout: float = option(
        300.0, "Under torchrun: seconds to wait for the other ranks, when joining and at every collective, before failing.", panel=SCALE,
    )

    def __post_init__(self) -> None:
        if self.num_layers is None:
            self.num_layers = self.NUM_LAYERS
        super().__post_init__()

    @property
    def resolved_sampler(self) -> str:
        return self.sampler if self.sampler is not None else self.SAMPLER

    @property
    def reads_cache(self) -> bool:
        return True

    def check_flags(self, errs: ConfigErrors) -> None:
        super().check_flags(errs)
        errs.check(self.hidden_channels > 0, f"--hidden-channels {self.hidden_channels}: must be > 0")
        errs.check(1 <= self.num_layers <= 4, f"--num-layers {self.num_layers}: must be 1..4")
        for problem in sampler_problems({name: getattr(self, name) for name in SAMPLER_SETTINGS}):
            errs.add(problem)
        errs.check(0 < self.dist_timeout <= MAX_DIST_TIMEOUT_S,
                   f"--dist-timeout {self.dist_timeout}: must be > 0 and at most {MAX_DIST_TIMEOUT_S} seconds (a week)")
        errs.check(self.memory_budget is None or self.memory_budget > 0, f"--memory-budget {self.memory_budget}: must be > 0 bytes")
        errs.check(self.hidden_channels <= MAX_HIDDEN, f"--hidden-channels {self.hidden_channels}: must be <= {MAX_HIDDEN}")
        sampler = self.resolved_sampler
        for name, samplers in SAMPLER_OPTIONS.items():
            if sampler not in samplers and getattr(self, name) != _field_default(_FIELDS[name]):
                errs.add(f"{_flag(name)} is for --sampler {'/'.join(samplers)}; it has no effect with --sampler {sampler} "
                         f"(--arch {self.arch}): leave it out")

    def to_dict(self) -> dict:
        return {**super().to_dict(), "sampler": self.resolved_sampler}


SAMPLER_SETTINGS = ("hops", "fanout", "num_walks", "walk_length", "restart_p")  # beside the sampler's name


def sampler_problems(settings: dict) -> list[str]:
    """What is wrong with the graph sampler's ``SAMPLER_SETTINGS``, a line each naming its flag
    (empty: none). The one rule for ``pipeline train``'s flags and a run's stored settings."""
    problems = []
    for name in SAMPLER_SETTINGS:
        value, kind = settings.get(name), float if name == "restart_p" else int
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
            problems.append(f"{_flag(name)} {value!r}: must be {'a number' if kind is float else 'an integer'}")
    if problems:
        return problems
    hops, fanout, walks, length, restart = (settings[name] for name in SAMPLER_SETTINGS)
    for ok, problem in (
        (fanout >= 0, f"--fanout {fanout}: must be >= 0 (0 keeps every neighbour)"),
        (1 <= hops <= 3, f"--hops {hops}: must be 1..3"),
        (0 <= restart < 1, f"--restart-p {restart}: must be in [0, 1)"),
        (walks > 0 and length > 0, "--num-walks/--walk-length: must be > 0"),
        (fanout <= MAX_FANOUT, f"--fanout {fanout}: must be <= {MAX_FANOUT}"),
        (walks <= MAX_WALK, f"--num-walks {walks}: must be <= {MAX_WALK}"),
        (length <= MAX_WALK, f"--walk-length {length}: must be <= {MAX_WALK}"),
    ):
        if not ok:
            problems.append(problem)
    return problems


# CacheTrainConfig field -> the samplers (resolved_sampler) that read it
SAMPLER_OPTIONS: dict[str, tuple[str, ...]] = {
    "hops": ("ego",), "fanout": ("ego",), "num_walks": ("rwr",), "walk_length": ("rwr",), "restart_p": ("rwr",),
}


@dataclass
class LadderConfig(CacheTrainConfig):
    """``--arch ladder``: G-Ladder over the cached rungs (or, with ``--no-cache``, the live LLM).

    ``rungs`` are LLM state indices present in the cache (None: every cached state). ``dtype``
    (``--no-cache`` only) None: the LLM runs in the compute dtype the cache was encoded in.
    """

    PANEL = LADDER
    NUM_LAYERS = 1
    SAMPLER = "ego"

    rungs: tuple[int, ...] | None = option(
        None, "LLM state indices the ladder reads, e.g. 0,10,20,30 (default: every cached state).", parse=parse_int_list
    )
    gnn: str = option("sage", "GNN of each rung.", choices=GNNS)
    temperature: float = option(0.1, "Gate temperature T in sigmoid(a / T).")
    loss: str = option(
        "multi-exit",
        "multi-exit: every rung's exit head is trained (ENGINE-Early; what early exit needs); last-head: only the last "
        "head's loss (plain ENGINE; the earlier heads stay untrained, so infer then runs full depth).",
        choices=LOSSES,
    )
    # None: own and val, or joint and full with --loss last-head (only the last head is trained)
    rung_grad: str | None = option(
        None,
        "own (default): each rung is trained by its own head only (the rung below enters as a constant), so shallow "
        "rungs are not bent to serve the deeper heads; joint: each head's loss also trains every rung below it (the "
        "reference; the default with --loss last-head).",
        choices=RUNG_GRADS,
    )
    depth: str | None = option(
        None,
        "val (default): each seed answers with its head of best validation accuracy (early stopping watches it too) and "
        "drops the rungs above it, so infer never runs the LLM past that state; full: the last head answers (the "
        "reference; the default with --loss last-head).",
        choices=DEPTHS,
    )
    rung_weights: tuple[float, ...] | None = option(
        None, "--loss multi-exit: weight of each rung's head, comma-separated (default all 1).", parse=parse_float_list
    )
    readout: str = option(
        "target-mean",
        "Head input: target-mean ([z_v || mean of z over v's subgraph], the reference) or ego (also v's own "
        "projected LLM state, untouched by neighbours: for heterophilous graphs).",
        choices=READOUTS,
    )
    rung_activation: str = option(
        "relu", "Activation after each rung's hidden convolutions: relu, or elu (as the ENGINE authors ran Cora and CiteSeer; "
        "the projection keeps ReLU, as theirs).",
        choices=RUNG_ACTIVATIONS,
    )
    rung_norm: str = option(
        "layer", "Normalisation before each of those activations: layer (LayerNorm), or none (as the ENGINE authors ran Cora "
        "and CiteSeer; the projection keeps LayerNorm).",
        choices=RUNG_NORMS,
    )
    exit: str = option(
        "val",
        "The exit policy `pipeline infer` uses by default: val (the cheapest within 1% relative of full-depth "
        "validation accuracy, chosen per seed) or a fixed policy, e.g. patience:1 (the ENGINE authors').",
    )
    preset: str | None = option(
        None,
        "engine: the ENGINE authors' released settings for the cache's graph (cora, citeseer; engine:cora names the "
        "dataset, e.g. for a subset), listed in docs/design.md. Flags given explicitly win over the preset.",
    )
    no_cache: bool = option(False, "Run the frozen LLM inside the loop instead of reading the cache (slow; for comparison).")
    dtype: str | None = option(None, "--no-cache: " + DTYPE_HELP)  # None: the cache's compute dtype
    allow_dtype_mismatch: bool = option(False, "--no-cache: " + MISMATCH_HELP)

    def __post_init__(self) -> None:
        self._preset_problem = None
        if self.preset is not None:
            self._apply_preset()
        reference = self.loss == "last-head"  # plain ENGINE trains the last head alone: the reference's joint rungs and full depth
        self.rung_grad = self.rung_grad or ("joint" if reference else "own")
        self.depth = self.depth or ("full" if reference else "val")
        super().__post_init__()

    def default_lr(self) -> float:
        # chosen on Cora validation accuracy (MiniLM cache, random_60_20_20 seeds 0-4): val 89.89 at 3e-4
        # against 89.11 at 1e-3 (last head peaks by epoch 5) and 89.59 with rwr
        return 3e-4

    def _apply_preset(self) -> None:
        """Set the preset's values on every field not given explicitly."""
        from stage2_train.presets import preset_values

        values, self._preset_problem = preset_values(self.preset, Path(self.cache))
        given = self.explicit_flags
        if given is None:
            given = {f.name for f in fields(self) if f.name in values and f.default is not MISSING and getattr(self, f.name) != f.default}
        for name, value in values.items():
            if name not in given:
                setattr(self, name, value)
        self.explicit_flags = None  # resolved: a copy of this config keeps its values

    @property
    def reads_cache(self) -> bool:
        return not self.no_cache

    def check_flags(self, errs: ConfigErrors) -> None:
        from stage1_encode.precision import dtype_problem

        errs.check(self._preset_problem is None, self._preset_problem or "")
        super().check_flags(errs)
        if self.exit != "val":
            from stage2_train.exit_policies import parse_exit

            try:
                parse_exit(self.exit)
            except InputError as err:  # names --exit and the policies
                errs.add(f"{err}; or val (chosen on validation)")
        errs.check(dtype_problem(self.dtype) is None, dtype_problem(self.dtype) or "")
        errs.check(self.no_cache or (self.dtype is None and not self.allow_dtype_mismatch),
                   "--dtype/--allow-dtype-mismatch are for --no-cache (only then does the LLM run)")
        errs.check(0 < self.temperature < math.inf, f"--temperature {self.temperature}: must be a finite number > 0")
        errs.check(self.memory_budget is None or not self.no_cache, "--memory-budget is for training from the cache, not --no-cache")
        errs.check(self.init is None or not self.no_cache, "--init: not with --no-cache")
        if self.rungs is not None:
            errs.check(len(self.rungs) > 0, "--rungs: give at least one LLM state index")
            given = ",".join(map(str, self.rungs))
            errs.check(len(set(self.rungs)) == len(self.rungs), f"--rungs {given}: indices repeat")
            errs.check(list(self.rungs) == sorted(self.rungs), f"--rungs {given}: give them in increasing order")
        if self.rung_weights is not None:
            errs.check(all(0 <= w < math.inf for w in self.rung_weights), "--rung-weights: weights must be finite and >= 0")
            errs.check(any(w > 0 for w in self.rung_weights), "--rung-weights: all weights are 0, so no head would learn; give at least one > 0")
            errs.check(self.loss == "multi-exit", "--rung-weights weighs the multi-exit loss; --loss last-head trains the last head alone")
        if self.loss == "last-head":
            errs.check(self.depth != "val", "--depth val chooses among trained heads; --loss last-head trains the last head alone: use --depth full")
            errs.check(self.rung_grad != "own",
                       "--rung-grad own with --loss last-head would leave every rung but the last untrained: use --rung-grad joint")


@dataclass
class BaselineConfig(CacheTrainConfig):
    """``--arch mlp/gcn/sage``: a node classifier on one cached state (``layer`` None: the last)."""

    PANEL = BASELINES

    layer: int | None = option(None, "The LLM state a baseline reads (default: the last cached state).")

    def default_lr(self) -> float:
        return 1e-2  # full-batch baselines reach the same or better val accuracy in half the epochs at 1e-2 than at 3e-4


@dataclass
class FinetuneConfig(TrainConfig):
    """``--arch lora/ia3/prefix/finetune``: the LLM itself trained on each node's text (the cache
    names model, max length and pooling; its states are not read). Its own fields are its defaults."""

    DEFAULTS = FINETUNE_DEFAULTS

    def default_lr(self) -> float:
        return FINETUNE_LR[self.arch]


CONFIG_CLASSES: dict[type, tuple[str, ...]] = {
    LadderConfig: ("ladder",), BaselineConfig: tuple(a for a in CACHE_ARCHS if a != "ladder"), FinetuneConfig: FINETUNE_ARCHS,
}
# every field of every concrete config, in `pipeline train --help` order
_FIELDS: dict[str, Field] = {f.name: f for cls in (TrainConfig, CacheTrainConfig, *CONFIG_CLASSES) for f in fields(cls)}


def config_class(arch: str) -> type[TrainConfig]:
    return next(cls for cls, archs in CONFIG_CLASSES.items() if arch in archs)


def arch_panels(arch: str) -> frozenset[str] | None:
    """The `pipeline train --help` panels of ``arch`` (None for an unknown arch: every panel)."""
    return panels_of(config_class(arch)) if arch in ARCHS else None


def archs_holding(name: str) -> list[str]:
    """The archs whose config holds field ``name``."""
    return [a for cls, archs in CONFIG_CLASSES.items() if any(f.name == name for f in fields(cls)) for a in archs]


def train_cli_classes() -> tuple[type, ...]:
    """The classes whose flags `pipeline train` offers (one command for every arch)."""
    return (TrainConfig, CacheTrainConfig, *CONFIG_CLASSES)


def _field_default(f: Field) -> Any:
    return f.default if f.default is not MISSING else f.default_factory()


def _flag(name: str) -> str:
    cli = _FIELDS[name].metadata.get("cli")
    return cli.flag_name(name) if cli is not None else "--" + name.replace("_", "-")

