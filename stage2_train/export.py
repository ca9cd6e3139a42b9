"""``pipeline export RUN --out MODEL_DIR``: a fine-tuning run's tuned LLM as a Hugging Face folder.

LoRA and IA3 adapters are merged into the base weights; a ``finetune`` run's weights are
written as they are; prefix tuning adds virtual tokens rather than weights, so there is
nothing to merge and it is refused. The folder holds the model, its tokenizer and
``pipeline_export.json`` (source run, arch, seed, training wall time: the cascade's tuning
cost, which ``pipeline encode --model MODEL_DIR`` copies into the cache manifest). So
``export -> encode -> train --arch sage`` is the SimTeG/GLEM cascade; only the training
nodes' labels ever reached the tuned weights (the validation labels chose the epoch kept).

Written into a temporary sibling and renamed, so a failed export leaves nothing behind; an
existing ``--out`` is replaced only when it is an earlier export and ``--overwrite`` is given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.core import atomic, ownership
from pipeline.core.errors import ConfigErrors, InputError
from pipeline.core.format_version import FORMAT_VERSION
from pipeline.core.options import argument, out_option, overwrite_option, seed_option
from pipeline.core.progress import log
from stage1_encode.models import EXPORT_RECORD


@dataclass
class ExportConfig:
    """One export: the tuned LLM of one seed of a fine-tuning run."""

    run: Path = argument(help="A fine-tuning run (`pipeline train --arch lora|ia3|finetune`).", metavar="RUN_DIR")
    out: Path = out_option("the Hugging Face model folder (weights, config, tokenizer)")
    seed: int | None = seed_option(None, "Trained seed to export (default: the one chosen on validation).")
    overwrite: bool = overwrite_option("a model folder")

    def validate(self) -> "ExportConfig":
        self.run, self.out = Path(self.run), Path(self.out)
        errs = ConfigErrors()
        errs.check(self.run.is_dir(), f"RUN {self.run}: no such directory; create it with `pipeline train CACHE --arch lora --out {self.run}`")
        errs.raise_if_any()
        ownership.claim_output(self.out, "model", "--out", overwrite=self.overwrite, inputs=[self.run])
        return self


def run_export(config: ExportConfig) -> Path:
    """Write the tuned LLM of ``config.run`` to ``config.out``; returns ``config.out``."""
    from stage2_train.checkpoint import load_checkpoint, run_arch
    from stage2_train.config import FINETUNE_ARCHS

    config.validate()
    arch = run_arch(config.run)
    if arch is not None and arch not in FINETUNE_ARCHS:
        raise InputError(f"RUN {config.run}: an '{arch}' run trains no LLM weights; export needs a fine-tuning run (--arch lora, ia3 or finetune)")
    if arch == "prefix":
        raise InputError(f"RUN {config.run}: prefix tuning adds virtual tokens, not weights, so it cannot be merged into an HF model; export a lora, ia3 or finetune run")
    ckpt = load_checkpoint(config.run, seed=config.seed)
    model = ckpt.model
    merged = model.merged_llm()
    summary = ckpt.summary
    per_seed = {int(r["seed"]): r for r in summary.get("per_seed", [])}
    record = {
        "format_version": FORMAT_VERSION,
        "run": str(config.run.resolve()),
        "arch": model.arch,
        "seed": ckpt.seed,
        "base_model": ckpt.config["model"]["llm"],
        "base_weights_sha256": ckpt.config["model"].get("weights_sha256"),
        "train_s": per_seed.get(ckpt.seed, {}).get("train_s"),
        "labels_used": "training nodes' labels for the loss; validation labels chose the epoch kept",
        "split": ckpt.config.get("split"),
        "graph_source": ckpt.graph_source,
    }
    with atomic.StagedFolder(config.out) as staged:
        merged.save_pretrained(staged.path, safe_serialization=True)
        model.stepper.loaded.tokenizer.save_pretrained(staged.path)
        (staged.path / EXPORT_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        ownership.write_marker(staged.path, "model")
        staged.commit(ownership.replacer("model", "--out", config.overwrite))
    log(f"export: {model.arch} run {config.run} (seed {ckpt.seed}) -> {config.out}; encode it with `pipeline encode GRAPH --model {config.out}`")
    return config.out
