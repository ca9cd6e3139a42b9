"""``pipeline train --preset engine``: the ENGINE authors' released settings, per dataset.

The values come from the authors' public code (github.com/ZhuYun97/ENGINE, the release with
Zhu et al., IJCAI 2024, arXiv 2401.15569): ``configs/<dataset>/engine.yaml`` for the per-dataset
values, ``main.py`` for what the configs do not set (batch size 256, the projection, AdamW,
ENGINE-Early's summed per-head loss, its exit when a rung agrees with the one below) and
``data/sampling.py`` for the random walk. ``engine`` picks the dataset by the cache's graph
name; ``engine:cora`` names it (a subset of Cora has no name of its own). docs/design.md cites each value. Light (no torch):
``TrainConfig`` applies a preset when it is built.

A flag given explicitly (on the command line, in ``--config`` or as a keyword) wins over the
preset's value; the resolved values are what ``train_config.json`` records.
"""

from __future__ import annotations

import json
from pathlib import Path

PRESETS = ("engine",)

# Shared by both graphs (configs/{cora,citeseer}/engine.yaml and main.py):
_ENGINE_COMMON = {
    "gnn": "sage",  # encoder: SAGE_Encoder
    "hidden_channels": 128,  # k = input_dim / r = 4096 / 32 (the width, not the ratio, is kept)
    "dropout": 0.5,  # dropout: 0.5
    "rung_activation": "elu",  # activation: elu (the convolutions; the projection keeps ReLU, main.py)
    "rung_norm": "none",  # norm: id (the convolutions; the projection keeps LayerNorm, main.py)
    "temperature": 0.1,  # T: 0.1
    "lr": 5e-5,  # lr: 0.00005
    "weight_decay": 5e-4,  # weight_decay: 0.0005
    "epochs": 200,  # epochs: 200
    "patience": 20,  # patience: 20
    "batch_size": 256,  # main.py get_dataloader: batch_size 256
    "loss": "multi-exit",  # main.py efficient_train_eval (--early): the sum of every exit head's loss
    "rung_grad": "joint",  # ... back-propagated through every rung below
    "depth": "full",  # every rung kept; the last head answers a node that never exits
    "exit": "patience:1",  # efficient_eval: exit where a rung's argmax equals the rung below's
}
ENGINE = {
    "cora": {
        **_ENGINE_COMMON,
        "num_layers": 2,  # layer_num: 2
        "sampler": "rwr",  # sampler: rw (data/sampling.py collect_subgraphs: one walk)
        "num_walks": 1,
        "walk_length": 64,  # utils/args.py --walk_steps default 64
        "restart_p": 0.5,  # utils/args.py --restart default 0.5
    },
    "citeseer": {
        **_ENGINE_COMMON,
        "num_layers": 1,  # layer_num: 1
        "sampler": "ego",  # sampler: khop (main.py: ego_graphs_sampler hop=1, every neighbour)
        "hops": 1,
        "fanout": 0,
    },
}


def graph_name(cache: Path) -> str | None:
    """The name of the graph a cache was encoded from: a built-in dataset's name, else its
    folder's ``meta.json`` ``name``; None when the cache or the graph cannot tell."""
    from pipeline.core.builtin_datasets import BUILTINS

    try:
        source = json.loads((Path(cache) / "manifest.json").read_text())["graph_source"]
        if source in BUILTINS:
            return source
        name = json.loads((Path(source) / "meta.json").read_text()).get("name")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def preset_values(preset: str, cache: Path) -> tuple[dict, str | None]:
    """The field values of ``preset`` (``engine``: for the cache's graph; ``engine:DATASET``: for
    DATASET, e.g. a subset of Cora) and, when there are none, the problem to report."""
    name, _, dataset = preset.partition(":")
    if name not in PRESETS:
        return {}, f"--preset {preset}: choose one of {', '.join(PRESETS)} (or {PRESETS[0]}:DATASET)"
    dataset = dataset or graph_name(cache)
    if dataset not in ENGINE:
        told = f"the cache's graph is named {dataset!r}" if dataset else "the cache does not name its graph (meta.json 'name')"
        return {}, (f"--preset {preset}: the ENGINE authors released settings for {', '.join(ENGINE)}; {told}. "
                    f"Name the settings to use with --preset {name}:DATASET, or give them as flags (docs/design.md lists them)")
    return ENGINE[dataset], None
