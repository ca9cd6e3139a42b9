"""README.md and docs/*.md cite only repository paths that exist and `pipeline` flags that the
typer app really has (each flag checked against the command it follows on the line)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP = ("pipeline/", "stage1_encode/", "stage2_train/", "stage3_infer/", "scripts/", "tests/", "docs/")
# flags of other programs the docs cite in prose (torchrun, slurm, scripts/scale_e2e.py, scripts/results_*.py)
FOREIGN = {"--nproc-per-node", "--nnodes", "--node-rank", "--rdzv-endpoint", "--rdzv-backend", "--rdzv-id", "--master-addr",
           "--master-port", "--standalone", "--out", "--row", "--check", "--float16", "--int8", "--bench-train", "--settings",
           "--help", "--version", "--dependency", "--array", "--stages", "--train-flags"}


def _commands() -> dict[str, set[str]]:
    """'encode', 'bench infer', 'datasets synth', ... -> its option names."""
    from pipeline.cli import app

    out: dict[str, set[str]] = {}

    def walk(cmd, prefix: str) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, f"{prefix} {name}".strip())
        else:
            out[prefix] = {o for p in cmd.params for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", []) if o.startswith("--")}
            out[prefix].add("--help")

    root = typer.main.get_command(app)
    walk(root, "")
    # the app's own options (e.g. --quiet) go before any command: `pipeline --quiet train ...`
    app_options = {o for p in root.params for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", []) if o.startswith("--")}
    return {name: flags | app_options for name, flags in out.items()}


def _global_flags() -> set[str]:
    """The options of `pipeline` itself (`pipeline --quiet COMMAND`)."""
    from pipeline.cli import app

    return {o for p in typer.main.get_command(app).params for o in p.opts + p.secondary_opts if o.startswith("--")}


COMMANDS = _commands()
ALL_FLAGS = set().union(*COMMANDS.values(), _global_flags())


def _cited_paths(text: str, doc: Path) -> set[tuple[str, Path]]:
    found = set()
    for m in re.finditer(r"`([A-Za-z0-9_./-]+)`", text):
        token = m.group(1)
        if token.startswith(TOP) and not any(c in token for c in "<>*{}$"):
            found.add((token, ROOT / token))
    for m in re.finditer(r"\]\(([^)#\s]+)(#[^)]*)?\)", text):
        target = m.group(1)
        if not re.match(r"[a-z]+://", target):
            found.add((target, (doc.parent / target)))
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_cited_paths_exist(doc):
    missing = sorted(token for token, path in _cited_paths(doc.read_text(), doc) if not path.exists())
    assert not missing, f"{doc.name} cites paths that do not exist: {missing}"


NAMES = "|".join(sorted((re.escape(c) for c in COMMANDS), key=len, reverse=True))
# where a command's flags start: `pipeline CMD`, or CMD right after a backtick, an arrow or a slash
COMMAND_AT = re.compile(rf"(?:pipeline |`|-> |/ )({NAMES})(?![\w-])")
OTHER_PROGRAM = re.compile(r"(?:scripts/\S+\.(?:py|sh)|python |torchrun |srun |sbatch |pip |pytest )")


def _command_at(line: str, start: int) -> str | None:
    """The `pipeline` command whose flags the text at ``start`` is: the last one named before it,
    unless another program is named after that; None when there is none."""
    before = line[:start]
    hits = list(COMMAND_AT.finditer(before))
    if not hits:
        return None
    if OTHER_PROGRAM.search(before, hits[-1].end()):
        return None
    return hits[-1].group(1)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_cited_flags_exist(doc):
    """Flags after a command name are checked against that command; a flag in inline code
    outside code blocks with no command before it, against every command."""
    wrong, in_code = [], False
    for n, line in enumerate(doc.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        inline = [(m.start(), m.end()) for m in re.finditer(r"`[^`]*`", line)]
        for m in re.finditer(r"(?<![\w-])(--[a-z][a-z0-9-]*)(?![\w-])", line):
            flag, cmd = m.group(1), _command_at(line, m.start())
            if cmd is not None:
                if flag not in COMMANDS[cmd] and flag not in FOREIGN:
                    wrong.append(f"line {n}: pipeline {cmd} has no {flag}")
            elif not in_code and any(a < m.start() < b for a, b in inline) and not OTHER_PROGRAM.search(line[: m.start()]):
                if flag not in ALL_FLAGS and flag not in FOREIGN:
                    wrong.append(f"line {n}: no pipeline command has {flag}")
    assert not wrong, f"{doc.name}:\n" + "\n".join(wrong)
