"""The training-run checkpoint: the only module that knows its format (writer and reader).

Layout of ``RUN_DIR`` (written into a temporary sibling and renamed at the end, so a
failed run leaves nothing behind, and a killed one only a temporary folder that the next run
on the same ``--out`` removes)::

    train_config.json        the flags of the `pipeline train` run (replay: --config FILE)
    checkpoint.json          resolved TrainConfig + "model" (what rebuilds the network),
                             "layers" (LLM state of each rung), "label_names", cache path,
                             graph source, "format_version" (1; another is refused)
    manifest.json            copy of the cache manifest (model, pooling, max length, ...)
    metrics.jsonl            one line per epoch and seed: loss, val accuracy of every head
    summary.json             test/val mean and std, per-seed results, every head, gates
    cost.json                what was measured, not computed: wall times (per epoch, per
                             seed), peak memory, device, the memory budget found free
                             (the cost ledger, ``stage2_train/ledger.py``)
    seed_{s}/model.safetensors   weights of seed s (safetensors only, never pickle); for the
                             fine-tuning archs the adapter (or every LLM weight for
                             ``finetune``) and the head, never the frozen base weights
    .pipeline-artifact.json  the ownership marker (kind "run"; pipeline/core/ownership.py)

Every file but ``cost.json`` is a function of the command, its inputs and the thread count: the
same command gives the same bytes (``docs/design.md``, "Reproducibility"). ``read_run`` merges
``cost.json`` back into the summary it returns, so readers see one summary.

While training, the resumable state lives next to the run, in ``RUN_DIR.resume/``
(:mod:`stage2_train.resume`), and is deleted once the run is in place.

``read_run(RUN_DIR)`` reads the JSON files (the report uses it); ``load_checkpoint(RUN_DIR)`` rebuilds the model of the seed chosen on validation
(``summary["default_seed"]``), or of ``seed=``; ``pipeline infer`` needs nothing else.
``warm_start_weights(RUN_DIR, ...)`` gives ``pipeline train --init RUN_DIR`` its starting weights.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from pipeline.core import atomic, guarded, ownership
from pipeline.core.errors import InputError
from pipeline.core.format_version import FORMAT_VERSION, check_version
from pipeline.core.config_file import save_resolved_config
from pipeline.core.options import SEED_MAX, config_file_name
from stage1_encode.cache.manifest import MANIFEST_KEYS, check_manifest_values, are_state_indices
from stage2_train.config import CACHE_ARCHS, SAMPLER_SETTINGS, SAMPLERS, sampler_problems
CONFIG, MANIFEST, METRICS, SUMMARY, WEIGHTS = "checkpoint.json", "manifest.json", "metrics.jsonl", "summary.json", "model.safetensors"
COST = "cost.json"
FLAGS = config_file_name("train")
RUN_MARKS = (SUMMARY, METRICS)  # the files by which a folder is recognised as a run


def build_model(spec: dict, device: str = "cpu") -> nn.Module:
    """The network described by ``config["model"]`` (arch, channels, rungs, gnn, ...); for a
    fine-tuning arch, the LLM it names with a fresh adapter (or its base weights) and head."""
    from stage2_train.baselines import NodeBaseline
    from stage2_train.config import FINETUNE_ARCHS
    from stage2_train.ladder import GLadder

    if spec["arch"] in FINETUNE_ARCHS:
        from stage2_train.finetune_model import build_classifier

        return build_classifier(spec, device)

    if spec["arch"] == "ladder":
        return GLadder(
            spec["in_channels"], spec["hidden_channels"], spec["out_channels"], spec["num_rungs"],
            gnn=spec["gnn"], num_layers=spec["num_layers"], dropout=spec["dropout"], temperature=spec["temperature"],
            standardize=spec["standardize"], readout=spec["readout"], rung_grad=spec["rung_grad"],
            activation=spec["rung_activation"], norm=spec["rung_norm"],
        )
    return NodeBaseline(
        spec["arch"], spec["in_channels"], spec["hidden_channels"], spec["out_channels"],
        num_layers=spec["num_layers"], dropout=spec["dropout"], standardize=spec["standardize"],
    )


def _json(path: Path, data) -> None:
    def clean(v):  # JSON has no NaN: write null
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    path.write_text(json.dumps(clean(data), indent=2, sort_keys=True) + "\n")


def claim(out: Path, overwrite: bool, inputs=()) -> bool:
    """Check ``--out`` before training (see :func:`pipeline.core.ownership.claim_output`)."""
    return ownership.claim_output(out, "run", "--out", overwrite=overwrite, inputs=inputs)


class CheckpointWriter:
    """Writes a run into a temporary sibling of ``RUN_DIR`` and renames it on :meth:`commit`."""

    def __init__(self, out: Path, overwrite: bool = False) -> None:
        self.out, self.overwrite = Path(out), overwrite
        claim(self.out, overwrite)
        self.staged = atomic.StagedFolder(self.out)
        self.tmp = self.staged.path
        ownership.write_marker(self.tmp, "run")

    def __enter__(self) -> "CheckpointWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.staged.abort()

    def write_config(self, config: dict, manifest: dict, flags: dict) -> None:
        """``config``: the resolved run description; ``flags``: the command's flags (replayable)."""
        _json(self.tmp / CONFIG, {**config, "format_version": FORMAT_VERSION})
        save_resolved_config(self.tmp / FLAGS, flags)
        _json(self.tmp / MANIFEST, manifest)

    def append_metrics(self, line: dict) -> None:
        with open(self.tmp / METRICS, "a") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")

    def save_weights(self, seed: int, state_dict: dict) -> None:
        from safetensors.torch import save_file

        folder = self.tmp / f"seed_{seed}"
        folder.mkdir(exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
        # one metadata key: safetensors writes its metadata map in hash order, so two keys
        # would come out in either order and the same weights in different bytes
        save_file(tensors, str(folder / WEIGHTS), metadata={"format_version": str(FORMAT_VERSION)})

    def write_summary(self, summary: dict, cost: dict) -> None:
        """``summary``: the results (deterministic); ``cost``: what was measured (cost.json)."""
        _json(self.tmp / SUMMARY, summary)
        _json(self.tmp / COST, cost)

    def commit(self) -> Path:
        return self.staged.commit(ownership.replacer("run", "--out", self.overwrite))


CONFIG_KEYS = ("model", "layers", "label_names", "cache", "graph_source", "graph_fingerprint", "eval_batch_size")
SAMPLER_KEYS = ("sampler", *SAMPLER_SETTINGS)  # of the runs trained on cached states


def retrain_hint(path: Path, config: dict | None = None) -> str:
    """The command that rebuilds a damaged run (its cache when the run's description names it)."""
    cache = config.get("cache") if isinstance(config, dict) and isinstance(config.get("cache"), str) else "CACHE_DIR"
    return f"retrain it with `pipeline train {cache} --out {path} --overwrite`"


@dataclass
class Checkpoint:
    """A loaded run: the model (eval mode) of one seed and everything recorded with it.

    layers: LLM state index feeding each rung (S,); the model expects states (n, S, H) in
    that order. sampler: keyword arguments of ``Sampler(graph.edge_index, graph.num_nodes, **sampler)``
    that rebuild the training-time sampler (evaluation draws are deterministic).
    """

    model: nn.Module
    config: dict
    manifest: dict
    seed: int
    layers: list[int]
    label_names: list[str]
    cache_path: Path
    graph_source: str
    sampler: dict | None  # None: a fine-tuning run (no graph sampler)
    summary: dict
    path: Path


@dataclass
class RunFiles:
    """The JSON files of a finished run (no weights loaded)."""

    path: Path
    config: dict  # CONFIG
    config_file: str  # CONFIG's name
    manifest: dict
    summary: dict
    metrics: list[dict]


def split_cost(summary: dict) -> tuple[dict, dict]:
    """``(results, cost)``: the measured entries of a summary (``MEASURED`` keys, and the same
    keys of each ``per_seed`` row) moved into ``cost``; :func:`merge_cost` undoes it."""
    results = {k: v for k, v in summary.items() if k not in MEASURED}
    cost = {k: summary[k] for k in MEASURED if k in summary}
    if "per_seed" in summary:
        results["per_seed"] = [{k: v for k, v in row.items() if k not in MEASURED} for row in summary["per_seed"]]
        cost["per_seed"] = [{"seed": row.get("seed"), **{k: row[k] for k in MEASURED if k in row}} for row in summary["per_seed"]]
    return results, cost


def merge_cost(summary: dict, cost: dict) -> dict:
    """The summary with ``cost.json``'s entries put back (rows matched by seed)."""
    if not isinstance(cost, dict):
        return summary
    merged = {**summary, **{k: v for k, v in cost.items() if k != "per_seed"}}
    rows = {row.get("seed"): row for row in cost.get("per_seed") or [] if isinstance(row, dict)}
    if isinstance(summary.get("per_seed"), list):
        merged["per_seed"] = [{**row, **{k: v for k, v in rows.get(row.get("seed"), {}).items() if k != "seed"}}
                              if isinstance(row, dict) else row for row in summary["per_seed"]]
    return merged


# Summary entries that are measured (wall times, memory, where it ran), not computed from the
# inputs: they live in cost.json so that summary.json is the same on every run.
MEASURED = ("cost", "epoch_s_mean", "epoch_s", "epoch_s_each", "train_s", "device", "gpu_peak_memory_bytes", "memory_limit_bytes")


def read_run(path: str | Path) -> RunFiles:
    """Read a run folder's JSON files; what is missing is named with the command that creates it."""
    path = Path(path)
    hint = f"create it with `pipeline train CACHE_DIR --out {path}`"
    if not path.is_dir():
        raise InputError(f"checkpoint {path}: no such directory; {hint}")
    config_file = CONFIG
    for name in (config_file, MANIFEST, SUMMARY):
        if not (path / name).is_file():
            raise InputError(f"checkpoint {path}: missing {name} (not a finished training run); {hint}")
    config = guarded.read_json(path / config_file, retrain_hint(path))
    hint = retrain_hint(path, config)
    check_version(config, path / config_file, hint)
    summary, manifest = guarded.read_json(path / SUMMARY, hint), guarded.read_json(path / MANIFEST, hint)
    guarded.require(manifest, MANIFEST_KEYS, path / MANIFEST, hint)  # the cache's manifest as training read it
    check_manifest_values(manifest, path / MANIFEST, hint)
    if (path / COST).is_file():
        summary = merge_cost(summary, guarded.read_json(path / COST, hint))
    metrics = read_metrics(path) if (path / METRICS).is_file() else []
    return RunFiles(path, config, config_file, manifest, summary, metrics)


def read_checked_run(path: str | Path) -> RunFiles:
    """:func:`read_run`, its description refused as damage unless it holds what infer reads, of the
    kinds train writes (:data:`CONFIG_KEYS`, :func:`check_stored_values`)."""
    run = read_run(path)
    where, hint = run.path / run.config_file, retrain_hint(run.path, run.config)
    guarded.require(run.config, CONFIG_KEYS, where, hint)
    if not isinstance(run.config["model"], dict):
        raise guarded.damaged(where, f"its \"model\" entry {run.config['model']!r} is not a description of a network", hint)
    check_stored_values(run.config, where, hint)
    return run


def load_checkpoint(path: str | Path, seed: int | None = None, device: str = "cpu") -> Checkpoint:
    """Load and validate a run directory; what is missing is named with the command that creates it."""
    run = read_checked_run(path)
    path, config, summary = run.path, run.config, run.summary
    hint = retrain_hint(path, config)
    sampler = stored_sampler(config, path / run.config_file, hint) if config["model"].get("arch") in CACHE_ARCHS else None
    layers, label_names = stored_layers(config, path / run.config_file, hint), stored_label_names(config, path / run.config_file, hint)
    guarded.require(summary, ("default_seed",), path / SUMMARY, hint)
    if seed is None:
        seed = summary["default_seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
            raise guarded.damaged(path / SUMMARY, f"default_seed {seed!r} is not a seed", hint)
    weights = path / f"seed_{seed}" / WEIGHTS
    if not weights.is_file():
        have = sorted(p.name for p in path.glob("seed_*"))
        raise InputError(f"checkpoint {path}: no weights for seed {seed} ({weights.name}; have {have}); train it with `pipeline train ... --seeds {seed}`")
    try:
        model = build_model(config["model"], device)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as err:
        raise guarded.damaged(path / run.config_file, f"its \"model\" entry cannot build a network ({type(err).__name__}: {err})", hint) from None
    mismatch = load_weights(model, guarded.load_safetensors(weights, hint))
    if mismatch is not None:
        raise InputError(f"checkpoint {path}: weights {weights.relative_to(path)} do not match the network {run.config_file} describes "
                         f"({mismatch}); {hint}")
    depth = seed_depth(summary, seed, len(layers), path / SUMMARY, hint) if config["model"].get("arch") == "ladder" else len(layers)
    if depth < len(layers):  # --depth val: this seed answers with head depth - 1 and never climbs past it
        model.keep_rungs(depth)
        layers = layers[:depth]
    model.to(device).eval()
    return Checkpoint(
        model=model,
        config=config,
        manifest=run.manifest,
        seed=seed,
        layers=layers,
        label_names=label_names,
        cache_path=Path(config["cache"]),
        graph_source=str(config["graph_source"]),
        # the graph sampler of a run trained on cached states; a fine-tuning run reads each node's text alone
        sampler=sampler,
        summary=summary,
        path=path,
    )


def stored_sampler(config: dict, where: Path, hint: str) -> dict:
    """``Sampler`` keyword arguments from a run's stored settings, refused as damage unless they
    are settings ``pipeline train`` accepts (a changed sampler would silently change answers)."""
    guarded.require(config, SAMPLER_KEYS, where, hint)
    problems = [] if config["sampler"] in SAMPLERS else [f"--sampler {config['sampler']!r}: not one of {', '.join(SAMPLERS)}"]
    problems += sampler_problems(config)
    if problems:
        raise guarded.damaged(where, f"its sampler settings are not ones `pipeline train` writes ({'; '.join(problems)})", hint)
    return {"mode": config["sampler"], **{k: config[k] for k in SAMPLER_SETTINGS}}


def check_stored_values(config: dict, where: Path, hint: str) -> None:
    """Refuse as damage the stored values infer reads that are not of the kind train writes."""
    kinds = {"cache": (str,), "graph_source": (str,), "graph_fingerprint": (str,), "split": (str, type(None))}
    for key, types in kinds.items():
        if not isinstance(config.get(key), types):
            raise guarded.damaged(where, f"its {key!r} {config.get(key)!r} is not {'a string' if types == (str,) else 'a string or null'}", hint)
    batch = config["eval_batch_size"]
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise guarded.damaged(where, f"its 'eval_batch_size' {batch!r} is not a positive integer", hint)


def stored_layers(config: dict, where: Path, hint: str) -> list[int]:
    """The run's LLM state indices (its rungs, bottom up): distinct integers >= 0, or refused as damage."""
    layers = config["layers"]
    if not are_state_indices(layers):
        raise guarded.damaged(where, f"its \"layers\" {layers!r} are not distinct LLM state indices", hint)
    return list(layers)


def stored_label_names(config: dict, where: Path, hint: str) -> list[str]:
    """The run's class names, one per output of its head: distinct strings, or refused as damage."""
    names, outputs = config["label_names"], config["model"].get("out_channels")
    if (not isinstance(names, list) or not names or any(not isinstance(n, str) for n in names) or len(set(names)) != len(names)
            or (isinstance(outputs, int) and len(names) != outputs)):
        raise guarded.damaged(where, f"its \"label_names\" are not {outputs if isinstance(outputs, int) else 'the'} distinct class names "
                                     "of its head", hint)
    return list(names)


def seed_depth(summary: dict, seed: int, num_rungs: int, where: Path, hint: str) -> int:
    """The rungs seed ``seed`` keeps (``per_seed[...]["depth"]``, which every ladder run stores);
    a missing row or a value that is not a rung count of this ladder is refused as damage."""
    rows = summary.get("per_seed")
    row = next((r for r in rows if isinstance(r, dict) and r.get("seed") == seed), None) if isinstance(rows, list) else None
    if row is None:
        raise guarded.damaged(where, f"holds no results for seed {seed} (damaged or not written by this pipeline)", hint)
    depth = row.get("depth")
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= num_rungs:
        raise guarded.damaged(where, f"seed {seed}'s depth {depth!r} is not a rung count in 1..{num_rungs}", hint)
    return depth


def run_arch(path: str | Path) -> str | None:
    """The arch of a run folder, read without loading any weights; None when the folder holds
    no readable run description (``load_checkpoint`` then says what is missing)."""
    try:
        return json.loads((Path(path) / CONFIG).read_text())["model"]["arch"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


# what a warm start needs to match: key of config["model"] -> the flag (or input) that sets it
WARM_START_KEYS = {
    "arch": "--arch", "hidden_channels": "--hidden-channels", "gnn": "--gnn", "num_layers": "--num-layers",
    "rung_norm": "--rung-norm", "rung_activation": "--rung-activation",
    "num_rungs": "--rungs", "in_channels": "the cache's LLM width (the encode --model)", "out_channels": "classes",
}


# cache settings a warm start needs unchanged (new, edited and removed nodes are what it is for)
WARM_START_CACHE_KEYS = ("weights_sha256", "pooling", "max_length", "compute_dtype", "storage_dtype")


def warm_start_weights(path: str | Path, spec: dict, layers: list[int], label_names: list[str], manifest: dict, seed: int) -> dict:
    """Weights of run ``path`` to start seed ``seed`` from (its own seed when trained, else its
    default seed); InputError naming every difference in architecture, rungs, classes or LLM.

    ``spec``: this run's ``config["model"]``; ``layers`` (S,) LLM state per rung; ``manifest``: this run's cache manifest.
    """
    try:
        run = read_run(path)
    except InputError as err:
        raise InputError(f"--init {err.message}") from err
    path, config, old_manifest, summary = run.path, run.config, run.manifest, run.summary
    hint = "retrain it, or start without --init"
    guarded.require(config, ("model", "layers", "label_names"), path / run.config_file, hint)
    for key, kind in (("model", dict), ("layers", list), ("label_names", list)):
        if not isinstance(config[key], kind):
            raise guarded.damaged(path / run.config_file, f'its "{key}" entry is not a JSON {kind.__name__}', hint)
    problems = [
        f"{flag}: {path} has {key} {config['model'].get(key)!r}, this run {spec.get(key)!r}"
        for key, flag in WARM_START_KEYS.items() if config["model"].get(key) != spec.get(key)
    ]
    if list(config["layers"]) != list(layers):
        problems.append(f"--rungs: {path} reads LLM states {config['layers']}, this run {layers}")
    if list(config["label_names"]) != list(label_names):
        problems.append(f"classes: {path} has {config['label_names']}, this graph {label_names}")
    for key in WARM_START_CACHE_KEYS:
        if old_manifest.get(key) != manifest.get(key):
            problems.append(f"cache: {path} was trained on {key} {str(old_manifest.get(key))[:16]!r}, this cache has {str(manifest.get(key))[:16]!r}")
    if problems:
        raise InputError(f"--init {path}: cannot warm-start from it: " + "; ".join(problems))
    chosen = seed if (path / f"seed_{seed}" / WEIGHTS).is_file() else summary.get("default_seed")
    weights = path / f"seed_{chosen}" / WEIGHTS
    if not weights.is_file():
        raise InputError(f"--init {path}: no weights {weights}; the run is damaged, retrain it or start without --init")
    return guarded.load_safetensors(weights, hint)


def load_warm_start(model: nn.Module, state: dict, init: str | Path) -> None:
    """Load ``--init`` weights into a freshly built model; weights that do not fit the network
    its checkpoint.json describes (a damaged run) are refused, naming the run."""
    mismatch = load_weights(model, state)
    if mismatch is not None:
        raise InputError(f"--init {init}: its weights do not match the network its {CONFIG} describes (damaged run: {mismatch}); "
                         "retrain it, or start without --init")


def load_weights(model: nn.Module, state: dict) -> str | None:
    """Load ``state`` into ``model`` (a fine-tuning arch: its adapter, or LLM, and head); None when
    it fits, else the first line of why not."""
    try:
        if hasattr(model, "load_trained_state"):
            model.load_trained_state(state)
        else:
            model.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as err:
        return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return None


def read_metrics(path: str | Path) -> list[dict]:
    """The per-epoch metric lines of a run."""
    return guarded.read_jsonl(Path(path) / METRICS, retrain_hint(Path(path)))
