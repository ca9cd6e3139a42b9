"""Guarded readers: an artifact that is missing, unreadable or inconsistent ends the command
with exit 2 and a message naming the file and the command that rebuilds it, never with a
traceback and never read as zeros or defaults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.core.errors import InputError


def damaged(path: str | Path, problem: str, rebuild: str) -> InputError:
    """The one message for a damaged artifact: ``FILE: PROBLEM; REBUILD``."""
    return InputError(f"{path}: {problem}; {rebuild}")


def read_json(path: str | Path, rebuild: str, expect: type = dict) -> Any:
    """Parse a JSON file that the pipeline wrote; ``expect`` is the type of its top level."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise damaged(path, "missing", rebuild) from None
    except OSError as err:
        raise damaged(path, f"cannot be read ({err.strerror or err})", rebuild) from None
    except UnicodeDecodeError:
        raise damaged(path, "is not UTF-8 text (damaged)", rebuild) from None
    except ValueError as err:
        raise damaged(path, f"is not valid JSON ({err})", rebuild) from None
    if not isinstance(data, expect):
        raise damaged(path, f"expected a JSON {'object' if expect is dict else expect.__name__}, found {type(data).__name__}", rebuild)
    return data


def read_jsonl(path: str | Path, rebuild: str) -> list[dict]:
    """One JSON object a line (blank lines skipped)."""
    path = Path(path)
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except FileNotFoundError:
        raise damaged(path, "missing", rebuild) from None
    except (OSError, UnicodeDecodeError) as err:
        raise damaged(path, f"cannot be read ({err})", rebuild) from None
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise damaged(path, f"line {i + 1} is not valid JSON ({err})", rebuild) from None
        if not isinstance(row, dict):
            raise damaged(path, f"line {i + 1} is not a JSON object", rebuild)
        out.append(row)
    return out


def require(data: dict, keys: tuple[str, ...], path: str | Path, rebuild: str) -> None:
    """Refuse a JSON object that lacks one of ``keys``."""
    missing = [k for k in keys if k not in data]
    if missing:
        raise damaged(path, f"lacks {', '.join(missing)} (damaged or not written by this pipeline)", rebuild)


def load_safetensors(path: str | Path, rebuild: str, device: str = "cpu") -> dict:
    """Tensors of a ``.safetensors`` file (never unpickles)."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        tensors = load_file(str(path), device=device)
    except FileNotFoundError:
        raise damaged(path, "missing", rebuild) from None
    except Exception as err:  # safetensors raises its own error types for a bad header or a short file
        raise damaged(path, f"is not a readable safetensors file ({type(err).__name__}: {err})", rebuild) from None
    for name, tensor in tensors.items():  # NaN weights would predict, and look like a model
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise damaged(path, f"holds NaN or infinite values (tensor {name!r})", rebuild)
    return tensors


def read_parquet(path: str | Path, rebuild: str, columns: list[str] | None = None):
    """A Parquet table (pyarrow), refusing a damaged file."""
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        return pq.read_table(path, columns=columns)
    except FileNotFoundError:
        raise damaged(path, "missing", rebuild) from None
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise damaged(path, f"is not a readable Parquet file ({err})", rebuild) from None
