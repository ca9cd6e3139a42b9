"""``--config FILE`` for every command: YAML or TOML, keys named as the flags.

The file fills click's ``default_map``, so flags given on the command line override it and
every value still goes through the flag's own type conversion and validation.

A config the pipeline saved (``<command>_config.json``, :func:`save_resolved_config`) carries
``format_version: 1``; replaying one of another version is refused. A hand-written config
has no ``format_version`` key and is read as it is.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import click
import typer
import yaml

from pipeline.core.errors import InputError
from pipeline.core.format_version import FORMAT_VERSION, KEY, check_version


# A config file is a flat mapping of flags to scalars or lists of scalars: anything far larger or
# deeper is a mistake or an attack (a "billion laughs" YAML expands aliases exponentially).
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_DEPTH = 3  # the mapping, a list value, and one more level of slack
MAX_CONFIG_NODES = 100_000


def _check_yaml_shape(path: Path, text: str) -> None:
    """Refuse YAML aliases and excessive nesting from the event stream, before anything is built."""
    depth = nodes = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise InputError(f"--config {path}: YAML aliases (*{event.anchor}) are not allowed in a config file; write the values out")
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_CONFIG_DEPTH:
                raise InputError(f"--config {path}: nested more than {MAX_CONFIG_DEPTH} levels deep; a config file maps flag names to values")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
        nodes += 1
        if nodes > MAX_CONFIG_NODES:
            raise InputError(f"--config {path}: more than {MAX_CONFIG_NODES} YAML nodes; a config file maps flag names to values")


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a YAML (.yaml/.yml, or .json) or TOML (.toml) file into a flat dict of flag values,
    refusing files over ``MAX_CONFIG_BYTES``, nested over ``MAX_CONFIG_DEPTH`` or with YAML aliases."""
    if not path.is_file():
        raise InputError(f"--config {path}: file not found")
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise InputError(f"--config {path}: {size} bytes, more than a config file's {MAX_CONFIG_BYTES} (flag names and values only)")
        text = path.read_bytes().decode("utf-8-sig")  # an editor's byte order mark is not content
    except OSError as err:
        raise InputError(f"--config {path}: cannot be read ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise InputError(f"--config {path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml", ".json"):
            _check_yaml_shape(path, text)
            data = yaml.safe_load(text) or {}
        else:
            raise InputError(f"--config {path}: unknown extension '{path.suffix}'; use .yaml, .yml or .toml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as err:
        raise InputError(f"--config {path}: cannot parse: {err}") from err
    except RecursionError:
        raise InputError(f"--config {path}: nested too deeply; a config file maps flag names to values") from None
    if isinstance(data, dict) and _depth(data) > MAX_CONFIG_DEPTH:
        raise InputError(f"--config {path}: nested more than {MAX_CONFIG_DEPTH} levels deep; a config file maps flag names to values")
    if not isinstance(data, dict):
        raise InputError(f"--config {path}: expected a mapping of flag names to values")
    return data


def _load_into_context(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Fill the command's defaults from ``--config``; a bad file prints as a plain ``Error:``
    line (like every other error, no panel) and exits with status 2."""
    if value is None:
        return value
    try:
        return _apply(ctx, value)
    except InputError as err:
        typer.echo(f"Error: {err.format_message()}", err=True)
        raise typer.Exit(err.exit_code) from None


def _apply(ctx: click.Context, value: Path) -> Path:
    data = read_config_file(value)
    if KEY in data:  # a saved config: only its own version replays
        check_version(data, value, f"save it anew: run `pipeline {ctx.command_path.split(' ', 1)[-1]}` with its flags "
                                   f"on this version of the pipeline, or write the config file by hand")
        data = {k: v for k, v in data.items() if k != KEY}
    params = [p for p in ctx.command.params if p.name and p.name != "config"]
    known = {p.name: p for p in params}  # a key may be the parameter's name or any of its flags
    aliases = {o.lstrip("-").replace("-", "_"): p.name for p in params for o in getattr(p, "opts", ()) if o.startswith("--")}
    defaults, unknown = {}, []
    for key, val in data.items():
        name = str(key).lstrip("-").replace("-", "_")
        name = aliases.get(name, name)
        if name not in known:
            unknown.append(str(key))
            continue
        takes_many = getattr(known[name], "multiple", False) or getattr(known[name], "nargs", 1) != 1
        if isinstance(val, list) and not takes_many:
            val = ",".join(str(v) for v in val)  # e.g. `seeds: [0, 1, 2]` for a "0,1,2" flag
        defaults[name] = val
    if unknown:
        flags = ", ".join(sorted(p.opts[0] if p.opts[0].startswith("--") else p.name for p in params))
        raise InputError(f"--config {value}: unknown key(s) {', '.join(unknown)}; known keys: {flags}")
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


ConfigOption = typer.Option(
    None,
    "--config",
    help="YAML or TOML file of flag values (keys named as the flags); flags given here override it.",
    is_eager=True,
    callback=_load_into_context,
    exists=False,
    dir_okay=False,
)


def save_resolved_config(path: Path, values: dict[str, Any]) -> None:
    """Write the resolved configuration next to what a command produced, with its
    ``format_version`` (replayable with ``--config``)."""

    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    from pipeline.core import atomic

    atomic.write_json(path, {**plain(values), KEY: FORMAT_VERSION}, sort_keys=True)
