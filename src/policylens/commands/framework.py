"""The command framework: the typer ``app``, the ``command`` decorator that turns foreseeable
errors into one sentence, ``open_run``, ``--json`` output and the shared bounds. Every command
module builds on this; none imports another command module."""

from __future__ import annotations

import functools
import inspect
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from policylens.runs import Run

app = typer.Typer(
    help="policylens: mechanistic interpretability for reinforcement-learning agents.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # an error stays one line


BUG_REPORT = "https://github.com/policylens/policylens/issues"
debug_mode = {"on": False}
"""Set by ``--debug``: every error shows its full traceback."""


@app.callback()
def options(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of any error."),
) -> None:
    """policylens: mechanistic interpretability for reinforcement-learning agents."""
    debug_mode["on"] = debug


def command(
    name: str | None = None, typer_app: typer.Typer = app, flags: dict[str, str] | None = None
) -> Callable:
    """Register a command whose foreseeable errors end in one clear sentence, not a traceback.

    The library's errors name option fields (``levels must be >= 1``); a message that starts with
    the name of one of the command's options is shown with its flag instead (``--levels must be
    >= 1``), and ``flags`` maps the fields whose flag has another name (``{"clamp_channels":
    "--clamp-channel"}``). An unexpected exception (a bug) shows its traceback and where to report
    it; ``--debug`` shows the traceback of every error.
    """

    def wrap(fn: Callable) -> Callable:
        names = {**flags_of(fn), **(flags or {})}

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                check_numbers(kwargs, names)
                return fn(*args, **kwargs)
            except (typer.Exit, typer.Abort, KeyboardInterrupt):
                raise
            except Exception as e:
                if debug_mode["on"]:
                    raise
                message = user_error(e)
                if message is None:
                    traceback.print_exc()
                    err_console.print(
                        f"[bold red]This is a bug in policylens[/] ({type(e).__name__}); please "
                        f"report it with the command you ran and the trace above at {BUG_REPORT}",
                        highlight=False,
                    )
                    raise typer.Exit(1) from None
                err_console.print(
                    f"[bold red]error:[/] {in_flags(message, names)}", highlight=False
                )
                raise typer.Exit(2) from None

        return typer_app.command(name)(run)

    return wrap


MAX_INT = 2**62
"""The largest integer any option takes (seeds included): past it NumPy and torch overflow."""


def check_numbers(kwargs: dict[str, Any], flags: dict[str, str]) -> None:
    """Refuse NaN or infinite float options and integers past :data:`MAX_INT` in one sentence
    (click's ranges let NaN through: every comparison with it is false)."""
    import math

    for name, value in kwargs.items():
        for v in value if isinstance(value, list | tuple) else [value]:
            flag = flags.get(name, name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{flag} must be a finite number, got {v}.")
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_INT:
                raise ValueError(f"{flag} {v} is out of range (at most {MAX_INT:,}).")


def flags_of(fn: Callable) -> dict[str, str]:
    """A command's option parameters and their long flags (``n_obs`` -> ``--n-obs``, or the name
    its ``typer.Option`` declares); arguments are positional and have none."""
    found = {}
    for param in inspect.signature(fn).parameters.values():
        default = param.default
        if isinstance(default, typer.models.OptionInfo):
            declared = [d for d in (default.param_decls or ()) if d.startswith("--")]
            found[param.name] = declared[0] if declared else "--" + param.name.replace("_", "-")
    return found


def in_flags(message: str, flags: dict[str, str]) -> str:
    """``message`` with the option field it starts with (``field ...``) named by its flag."""
    field, sep, rest = message.partition(" ")
    return flags[field] + sep + rest if field in flags else message


def user_error(e: Exception) -> str | None:
    """The one sentence for a foreseeable error (bad input, files, disk), or None for a bug."""
    import errno

    from safetensors import SafetensorError

    if isinstance(e, OSError) and e.filename is not None:
        file = e.filename
        if isinstance(e, FileNotFoundError):
            return f"{file} does not exist; check the path"
        if isinstance(e, PermissionError):
            return f"permission denied for {file}; choose a path you can read and write"
        if isinstance(e, NotADirectoryError):
            return f"{file}: part of this path is a file, not a folder; choose another path"
        if isinstance(e, IsADirectoryError):
            return f"{file} is a folder; give a file path"
        if e.errno == errno.ENOSPC:
            return f"no space left on the device writing {file}; free some space and run again"
        if e.errno == errno.EROFS:
            return f"{file} is on a read-only file system; choose a writable path"
        return f"{file}: {e.strerror or e}"
    if isinstance(e, KeyError):
        # a sentence raised as KeyError (an unknown name) is the user's; a bare key is a bug
        text = str(e.args[0]) if e.args else ""
        return text if " " in text else None
    if isinstance(e, ValueError | FileNotFoundError):
        return str(e)
    if isinstance(e, SafetensorError):
        return f"a .safetensors file is corrupt or is not safetensors ({e}); re-save it"
    if isinstance(e, EOFError):
        return f"a file ended early: it is truncated ({e}); write it again"
    return None


MAX_EPISODES = 1_000_000
"""The most episodes (or mazes, or levels) a command plays: about a day of CPU at most."""
MAX_STEPS = 10_000_000_000
"""The most environment steps a training takes (weeks of CPU at policylens's speed); the
trainers' configs refuse more (policylens.train.limits)."""


def open_run(path: Path, world: str | None = None) -> Run:
    """The Run at ``path`` (trained in the world called ``world`` when given: maze, hazards,
    rook, ...), with a note on stderr if it is unfinished."""
    from policylens import worlds
    from policylens.runs import Run

    run = Run(path)
    if world is not None:
        trained_in = worlds.of_run(run).name
        if trained_in != world:
            raise ValueError(
                f"{path} is a run of the {trained_in} world; this command needs a {world} run"
            )
    note = run.unfinished_note()
    if note:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False)
    return run


def note_rounding(config: Any) -> None:
    """Say on stderr when a trainer config's step count is trained rounded up to whole units."""
    note = config.rounding_note() if hasattr(config, "rounding_note") else None
    if note:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False)


def overwrite_option() -> Any:
    """The ``--overwrite`` flag of a command that writes an output file or folder."""
    return typer.Option(
        False, "--overwrite", help="Replace an existing output file (never a run's own files)."
    )


def print_json(data: Any) -> None:
    """Machine-readable output for ``--json``: plain JSON on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=lambda v: v.tolist()) + "\n")


train_app = typer.Typer(help="Train an agent into a run folder.", no_args_is_help=True)
app.add_typer(train_app, name="train")
