"""Each command-line option declared once: on its config dataclass field.

A field declared with :func:`option` (or :func:`argument`) carries its flag name, help and,
where the command line spells the value differently from the field (``"0,1,2"`` for a tuple
of seeds, ``"2GiB"`` for bytes), the parser between the two. :func:`command` builds the
typer command from the dataclass, so the flag, its default and its help exist in one place;
:func:`save_flags` writes the flags a run used as ``<command>_config.json``, which
``--config`` replays (keys are the flag names, values in command-line form).

The flags several commands share (``--out``, ``--model``, ``--device``, ``--seeds``,
``--overwrite``, ``--json``) are built by the functions at the end of this module.
"""

from __future__ import annotations

import inspect
import re
import typing
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import typer
from rich.markup import escape

from pipeline.core.config_file import ConfigOption, save_resolved_config
from pipeline.core.errors import InputError, plain_errors
from pipeline.core.parsers import parse_int_list


@dataclass(frozen=True)
class Cli:
    """How one config field appears on the command line."""

    help: str
    flag: str | None = None  # "--name"; None: "--" + the field name with dashes
    off_flag: str | None = None  # a boolean's "--no-..." spelling, when it has one
    argument: bool = False  # positional instead of a flag
    metavar: str | None = None
    parse: Callable[[Any, str], Any] | None = None  # command-line value, flag -> field value
    unparse: Callable[[Any], Any] | None = None  # field value -> command-line value, when to_cli() is not it
    cli_type: Any = None  # what click parses when it differs from the field's type
    show_default: bool | str = True
    required: bool = False  # on the command line, even when the dataclass has a default
    choices: tuple[str, ...] | None = None  # the values the field accepts (None, where allowed, stays None)
    panel: str | None = None  # the --help panel; None: the declaring class's PANEL, else typer's default

    def flag_name(self, name: str) -> str:
        return self.flag or "--" + name.replace("_", "-")


def option(default: Any = MISSING, help: str = "", *, default_factory: Any = MISSING, **cli: Any) -> Any:
    """A dataclass field that is also a command-line flag (see :class:`Cli` for ``cli``)."""
    return field(default=default, default_factory=default_factory, metadata={"cli": Cli(help=help, **cli)})


def argument(default: Any = MISSING, help: str = "", **cli: Any) -> Any:
    """A dataclass field that is also a positional command-line argument."""
    return field(default=default, metadata={"cli": Cli(help=help, argument=True, **cli)})


def cli_fields(config_cls: type) -> list[tuple[Field, Cli]]:
    return [(f, f.metadata["cli"]) for f in fields(config_cls) if "cli" in f.metadata]


def _union_cli_fields(classes: tuple[type, ...]) -> list[tuple[Field, Cli, str | None]]:
    """The flags of ``classes`` (each once, in order) with their help panel."""
    seen: dict[str, tuple[Field, Cli, str | None]] = {}
    for cls in classes:
        for f, cli in cli_fields(cls):
            if f.name not in seen:
                declaring = next((c for c in cls.__mro__ if f.name in c.__dict__.get("__annotations__", {})), cls)
                seen[f.name] = (f, cli, cli.panel or getattr(declaring, "PANEL", None))
    return list(seen.values())


def require_choice(what: str, value: Any, choices: tuple[str, ...]) -> None:
    """ValueError for a library caller passing ``value`` outside ``choices`` (the command line
    refuses it before, by the field's ``choices``)."""
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


def panels_of(config_cls: type) -> frozenset[str]:
    """The --help panels the flags of ``config_cls`` (its inherited ones included) appear in."""
    return frozenset(panel for _, _, panel in _union_cli_fields((config_cls,)) if panel)


def choice_problem(f: Field, value: Any) -> str | None:
    """``--flag VALUE: choose one of ...`` when ``value`` is not among the field's ``choices``."""
    cli = f.metadata.get("cli")
    if cli is None or cli.choices is None or value is None or value in cli.choices:
        return None
    return f"{cli.flag_name(f.name)} {value}: choose one of {', '.join(cli.choices)}"


def choice_problems(config: Any) -> list[str]:
    """One :func:`choice_problem` per field of ``config`` holding a value outside its choices."""
    return [p for f, _ in cli_fields(type(config)) if (p := choice_problem(f, getattr(config, f.name))) is not None]


def to_cli(value: Any) -> Any:
    """A field value in command-line form: tuples as "a,b,c", paths as strings."""
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    return value


def _default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return ...  # required


MAX_CHOICES_METAVAR = 20  # a longer "[a|b|c]" would squeeze every help text of its --help panel


def choices_metavar(name: str, cli: Cli) -> tuple[str | None, str]:
    """The metavar and help text of a field: ``[a|b|c]`` for short choices; for long ones the
    flag's name as metavar, with the choices added to the help when it does not name them all."""
    if cli.metavar or not cli.choices:
        return cli.metavar, cli.help
    short = "[" + "|".join(cli.choices) + "]"
    if len(short) <= MAX_CHOICES_METAVAR:
        return short, cli.help
    named = all(re.search(rf"(?<![\w-]){re.escape(c)}(?![\w-])", cli.help) for c in cli.choices)
    return name.upper(), cli.help if named else f"{cli.help} One of: {', '.join(cli.choices)}."


def command(config_cls: type, runner: Callable[[Any], Any], doc: str | None = None,
            variants: tuple[type, ...] = ()) -> Callable[..., Any]:
    """The typer command of ``config_cls``: one parameter per :func:`option` field of it and of
    ``variants`` (its subclasses, whose flags it also takes), plus ``--config``; it builds
    ``config_cls(**values)`` and calls ``runner`` with it."""
    hints: dict[str, Any] = {}
    for cls in (config_cls, *variants):
        hints.update(typing.get_type_hints(cls))
    params: list[inspect.Parameter] = []
    specs = _union_cli_fields((config_cls, *variants))
    for f, cli, panel in specs:
        default = ... if cli.required else _default(f)
        cli_default = default if default is ... or cli.parse is None else to_cli(default)
        kind = typer.Argument if cli.argument else typer.Option
        decls = [] if cli.argument else ["/".join(filter(None, (cli.flag_name(f.name), cli.off_flag)))]
        # help is plain text: brackets in it are shown, not read as rich markup
        metavar, help_text = choices_metavar(f.name, cli)
        info = kind(cli_default, *decls, help=escape(help_text), metavar=metavar, show_default=cli.show_default,
                    rich_help_panel=panel)
        annotation = cli.cli_type or (str | None if cli.parse is not None else hints[f.name])
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation))
    params.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=ConfigOption, annotation=Path | None))
    takes_explicit = any(f.name == EXPLICIT_FIELD for f in fields(config_cls))
    specs_by_name = [(f, cli) for f, cli, _ in specs]
    if takes_explicit:  # typer passes the click context to a parameter annotated typer.Context
        params.insert(0, inspect.Parameter(CONTEXT_PARAM, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context))

    def run_command(*args: Any, **values: Any) -> Any:
        ctx = args[0] if args else values.pop(CONTEXT_PARAM, None)
        values.pop("config", None)
        for f, cli in specs_by_name:
            if cli.parse is not None and values[f.name] is not None:
                values[f.name] = cli.parse(values[f.name], cli.flag_name(f.name))
        if takes_explicit:  # which values the user gave (a preset fills only the others)
            values[EXPLICIT_FIELD] = given_flags(ctx, list(values))
        return runner(config_cls(**values))

    run_command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run_command.__annotations__ = {p.name: p.annotation for p in params}
    run_command.__doc__ = doc
    run_command.__name__ = f"{config_cls.__name__}_command"
    return plain_errors(run_command)


EXPLICIT_FIELD = "explicit_flags"  # a config field of this name receives the names of the options given explicitly
CONTEXT_PARAM = "_click_context"


def given_flags(ctx: typer.Context, names: list[str]) -> frozenset[str]:
    """Of the parameters ``names`` of the running command, those given on the command line, in
    the environment or in ``--config``: not left at their default."""
    def given(name: str) -> bool:
        source = ctx.get_parameter_source(name)
        return source is not None and source.name != "DEFAULT"

    return frozenset(n for n in names if given(n))


def flag_values(config: Any) -> dict[str, Any]:
    """The command-line flags of ``config`` (keys as the flags, without dashes in front; values
    in command-line form; unset optional flags left out): what ``--config`` reads back."""
    out = {}
    for f, cli in cli_fields(type(config)):
        value = getattr(config, f.name)
        key = f.name if cli.argument else cli.flag_name(f.name).lstrip("-")
        if cli.unparse is not None:
            out[key] = cli.unparse(value)
        elif value is None:
            if _default(f) is not None:  # leaving it out would replay as the default
                raise ValueError(f"{type(config).__name__}.{f.name} is None, which its flag cannot say: give it an unparse")
        else:
            out[key] = to_cli(value) if cli.parse is not None else value
    return out


def save_flags(path: Path, config: Any) -> None:
    """Write ``<command>_config.json``: the flags of ``config``, replayable with ``--config``."""
    save_resolved_config(path, flag_values(config))


def config_file_name(command_name: str) -> str:
    """``encode`` -> ``encode_config.json``: the one naming scheme of saved flags."""
    return f"{command_name}_config.json"


# --- flags several commands share -----------------------------------------------------------

DEVICE_HELP = "Torch device: auto (CUDA when available, else CPU; under torchrun the rank's local GPU), cpu, cuda or cuda:N."


def out_option(what: str, default: Any = MISSING) -> Any:
    """``--out``: the folder a command creates (``what`` says what goes in it)."""
    return option(default, f"Folder to create: {what}.", metavar="DIR")


def device_option(default: str = "auto") -> Any:
    return option(default, DEVICE_HELP)


def seeds_option(default: tuple[int, ...] = (0,), help: str = "Comma-separated seeds; one model per seed, mean ± std reported.") -> Any:
    return option(default, help, parse=_parse_seeds)


def seed_option(default: int | None = 0, help: str = "Seed.") -> Any:
    return option(default, help, parse=_parse_seed, cli_type=int if default is not None else int | None)


def overwrite_option(what: str, target: str = "--out") -> Any:
    """``--overwrite``; ``target`` names the output as the command line spells it (``OUT``
    where the output folder is a positional argument)."""
    return option(False, f"Replace {target} when it holds {what} this command wrote earlier.")


def json_option(what: str = "the figures") -> Any:
    return option(None, f"Also write {what} as JSON to this file.", flag="--json", metavar="FILE")


# numpy's legacy seeding bound: every generator the pipeline seeds (Python's, numpy's, torch's) takes it
SEED_MAX = 2**32 - 1


def _parse_seeds(text: Any, flag: str) -> tuple[int, ...]:
    seeds = parse_int_list(text, flag) or ()
    bad = [s for s in seeds if not 0 <= s <= SEED_MAX]
    if bad:
        raise InputError(f"{flag} {text}: seeds must be in 0..{SEED_MAX} (not {', '.join(map(str, bad))})")
    return seeds


def _parse_seed(value: Any, flag: str) -> int:
    if not 0 <= int(value) <= SEED_MAX:
        raise InputError(f"{flag} {value}: must be in 0..{SEED_MAX}")
    return int(value)


# --- help narrowed by a choosing flag ---------------------------------------------------------

_FORMATTING_HELP = "pipeline.formatting_help"
_HELP_CHOICE = "pipeline.help_choice"


def _flag_value(flag: str, args: list[str]) -> str | None:
    """The last value given to ``flag`` in raw command-line ``args`` (``--flag V`` or ``--flag=V``)."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg[len(flag) + 1 :]
    return value


def help_by_choice(flag: str, panels_for: Callable[[str], frozenset[str] | None]) -> type:
    """A typer command class whose ``--help``, given together with ``flag`` (``--arch gcn``),
    lists only the help panels ``panels_for(value)`` names (options without a panel always);
    without the flag, or for a value ``panels_for`` does not know (None), it lists every panel."""
    from typer.core import TyperCommand

    class NarrowedHelpCommand(TyperCommand):
        def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
            ctx.meta[_HELP_CHOICE] = _flag_value(flag, args)
            return super().parse_args(ctx, args)

        def format_help(self, ctx: Any, formatter: Any) -> None:
            ctx.meta[_FORMATTING_HELP] = True
            try:
                return super().format_help(ctx, formatter)
            finally:
                ctx.meta[_FORMATTING_HELP] = False

        def get_params(self, ctx: Any) -> list[Any]:
            params = super().get_params(ctx)
            choice = ctx.meta.get(_HELP_CHOICE)
            panels = panels_for(choice) if ctx.meta.get(_FORMATTING_HELP) and choice is not None else None
            if panels is None:
                return params
            return [p for p in params if getattr(p, "rich_help_panel", None) in (None, *panels)]

    return NarrowedHelpCommand
