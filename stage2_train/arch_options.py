"""Which ``pipeline infer`` options act on which arch kind of the run it reads.

``pipeline train`` needs no table: each arch kind has its own config class
(stage2_train/config.py), which holds only the options that act on it. ``pipeline infer`` takes
one set of flags for every run, so an option given (a value other than its default) for a run
of an arch kind it has no effect on is refused here, naming the option and the run.
"""

from __future__ import annotations

from dataclasses import MISSING, fields

from stage2_train.config import CONFIG_CLASSES, LadderConfig

# InferConfig field -> the train config classes whose runs it acts on (infer runs ladder and fine-tuning runs)
INFER_OPTION_KINDS: dict[str, tuple[type, ...]] = {
    # the ladder's layer-by-layer climb: LLM micro-batches by tokens, cached neighbours, the LLM loaded anew
    **dict.fromkeys(("batch_tokens", "cache_neighbours", "model", "dtype", "allow_dtype_mismatch", "shard"), (LadderConfig,)),
}


def infer_no_effect_problems(config, arch: str) -> list[str]:
    """One message per option of ``config`` (an InferConfig) given for a run of ``arch`` it has no effect on."""
    kind = next((cls for cls, archs in CONFIG_CLASSES.items() if arch in archs), None)
    if kind is None:
        return []  # an unknown arch is refused on its own
    defaults = {f.name: f.default for f in fields(config) if f.default is not MISSING}
    return [
        f"--{name.replace('_', '-')} is for --arch {'/'.join(a for k in kinds for a in CONFIG_CLASSES[k])}; it has no effect "
        f"with the --arch {arch} run {config.checkpoint}: leave it out"
        for name, kinds in INFER_OPTION_KINDS.items() if kind not in kinds and getattr(config, name) != defaults[name]
    ]
