"""Errors that end a command with a clear message and a documented exit status.

Exit statuses (documented in ``pipeline --help``):
  0 success, 2 bad input or usage (nothing written), 1 failure while running,
  3 a ``--status`` query (encode, infer) found the work incomplete.
"""

from __future__ import annotations

import functools

import typer

# typer >= 0.26 vendors click, and a typer app only catches (and exits with the status of) its
# own ClickException class, not the one of a separately installed click; older typer re-exports
# click's. typer.BadParameter derives from the right one in both cases.
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_INCOMPLETE = 3  # a status query: the work is not finished yet (schedulers read this, not the text)


class PipelineError(_ClickException):
    """A failure the user can act on; click prints ``Error: <message>`` and exits."""

    exit_code = EXIT_FAILURE


class InputError(PipelineError):
    """Bad input, flag or usage: exit status 2, nothing is written."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str | list[str]):
        if isinstance(message, list):
            message = "\n".join(f"- {m}" for m in message) if len(message) > 1 else message[0]
        super().__init__(message)


class ConfigErrors:
    """Collects config problems so that all of them are reported at once (LitGPT style)."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, problem: str) -> None:
        if problem not in self.problems:  # checks shared by several configs report it once
            self.problems.append(problem)

    def check(self, condition: bool, problem: str) -> None:
        if not condition:
            self.add(problem)

    def raise_if_any(self) -> None:
        if self.problems:
            raise InputError(self.problems)


def plain_errors(func):
    """Print a command's :class:`PipelineError` as plain ``Error: ...`` lines (no panel, no
    wrapping: batch logs keep every problem on its own line) and exit with its status."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except PipelineError as err:
            typer.echo(f"Error: {err.format_message()}", err=True)
            raise typer.Exit(err.exit_code) from err
        except Exception as err:
            full = disk_full(err)
            if full is not None:  # a full disk is the user's to fix: exit 2, like bad input
                where = f"{full.filename}: " if getattr(full, "filename", None) else ""
                typer.echo(f"Error: {where}no space left on device; free some space and rerun (what this command was "
                           "writing was removed: outputs are written whole or not at all)", err=True)
                raise typer.Exit(EXIT_BAD_INPUT) from err
            if not isinstance(err, OSError):
                raise
            # the disk or the OS refused while running (lost mount, permissions): no traceback
            where = f"{err.filename}: " if err.filename else ""
            typer.echo(f"Error: {where}{err.strerror or err} (while running; outputs are written whole or not at all)", err=True)
            raise typer.Exit(EXIT_FAILURE) from err

    return wrapper


DISK_FULL_TEXTS = ("no space left on device", "os error 28", "disk quota exceeded")  # libraries that wrap ENOSPC in their own errors


def disk_full(err: BaseException) -> BaseException | None:
    """The error of ``err``'s chain that says the disk is full (ENOSPC or EDQUOT, or a library's
    wrapper of them: safetensors, zarr, arrow), else None."""
    import errno

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return err
        if any(t in str(err).lower() for t in DISK_FULL_TEXTS):
            return err
        err = err.__cause__ or err.__context__
    return None
