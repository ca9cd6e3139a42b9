"""Which ``pipeline train`` options act on which arch kind: one declared table, one rule.

An option given (a value other than its default) for an arch kind it has no effect on is
refused, naming the option and the arch, rather than accepted and recorded as if it acted.
The same holds for the sampler's options under a ``--sampler`` that does not read them, and
for ``pipeline infer``'s options on a run of an arch kind they do not act on.

Arch kinds: ``ladder`` (G-Ladder over cached rungs), ``gnn`` (the mlp/gcn/sage baselines on one
cached state), ``finetune`` (the LLM itself trained: lora, ia3, prefix, finetune). An option
absent from :data:`OPTION_KINDS` acts on every kind.
"""

from __future__ import annotations

from dataclasses import MISSING, fields

from stage2_train.config import CACHE_ARCHS, FINETUNE_ARCHS

ARCH_KINDS = {"ladder": ("ladder",), "gnn": tuple(a for a in CACHE_ARCHS if a != "ladder"), "finetune": FINETUNE_ARCHS}
CACHE_KINDS = ("ladder", "gnn")  # trained on the cached states, with a side network and a graph sampler

# TrainConfig field -> the arch kinds it acts on
OPTION_KINDS: dict[str, tuple[str, ...]] = {
    # the ladder's rungs, gates, heads and the live LLM of --no-cache
    **dict.fromkeys(("rungs", "temperature", "loss", "rung_grad", "depth", "rung_weights", "readout", "rung_activation",
                     "rung_norm", "gnn", "no_cache", "dtype", "allow_dtype_mismatch", "exit"), ("ladder",)),
    "layer": ("gnn",),  # the one cached state a baseline reads
    # a side network over cached states, fed by the graph sampler, in or out of core, on torchrun ranks
    **dict.fromkeys(("hidden_channels", "num_layers", "standardize", "sampler", "hops", "fanout", "num_walks", "walk_length",
                     "restart_p", "memory_budget", "dist_timeout", "state_every"), CACHE_KINDS),
}

# TrainConfig field -> the samplers (TrainConfig.resolved_sampler) that read it
SAMPLER_OPTIONS: dict[str, tuple[str, ...]] = {
    "hops": ("ego",), "fanout": ("ego",), "num_walks": ("rwr",), "walk_length": ("rwr",), "restart_p": ("rwr",),
}


# InferConfig field -> the arch kinds of the checkpoint it acts on (infer runs ladder and fine-tuning runs)
INFER_OPTION_KINDS: dict[str, tuple[str, ...]] = {
    # the ladder's layer-by-layer climb: LLM micro-batches by tokens, cached neighbours, the LLM loaded anew
    **dict.fromkeys(("batch_tokens", "cache_neighbours", "model", "dtype", "allow_dtype_mismatch", "shard"), ("ladder",)),
}


def arch_kind(arch: str) -> str | None:
    return next((kind for kind, archs in ARCH_KINDS.items() if arch in archs), None)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _given(config, name: str, defaults: dict) -> bool:
    return getattr(config, name) != defaults[name]


def _table_problems(config, arch: str, table: dict[str, tuple[str, ...]], subject: str = "") -> list[str]:
    kind = arch_kind(arch)
    if kind is None:
        return []  # an unknown --arch is refused on its own
    defaults = {f.name: f.default for f in fields(config) if f.default is not MISSING}
    return [
        f"{_flag(name)} is for --arch {'/'.join(a for k in kinds for a in ARCH_KINDS[k])}; it has no effect with {subject or '--arch ' + arch}: leave it out"
        for name, kinds in table.items() if kind not in kinds and _given(config, name, defaults)
    ]


def infer_no_effect_problems(config, arch: str) -> list[str]:
    """The same rule for ``pipeline infer`` (an InferConfig) on a run of ``arch``."""
    return _table_problems(config, arch, INFER_OPTION_KINDS, f"the --arch {arch} run {config.checkpoint}")


def no_effect_problems(config) -> list[str]:
    """One message per option of ``config`` (a TrainConfig) that was given but would have no effect."""
    kind = arch_kind(config.arch)
    problems = _table_problems(config, config.arch, OPTION_KINDS)
    defaults = {f.name: f.default for f in fields(config) if f.default is not MISSING}
    if kind in OPTION_KINDS["sampler"]:
        sampler = config.resolved_sampler
        for name, samplers in SAMPLER_OPTIONS.items():
            if sampler not in samplers and _given(config, name, defaults):
                problems.append(f"{_flag(name)} is for --sampler {'/'.join(samplers)}; it has no effect with --sampler {sampler} "
                                f"(--arch {config.arch}): leave it out")
    return problems
