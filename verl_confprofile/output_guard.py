"""No command writes over one of its inputs: the one check every command makes before it writes.

Each subcommand declares, next to its options, which options name its inputs and which names its
output (a file or a folder) with ``declare``; ``cli.main`` calls ``check_args`` on the parsed
arguments before the command runs. Paths are compared after resolving them (``./x`` and ``x``,
symbolic links, ``..``), and files that exist are also compared by identity, so a hard link
or a second name of the same file is caught too. An output folder may not hold an input at
all: a build owns the files of its folder (it replaces them and removes stale ones), so an
input inside it is one mistake away from being lost.
"""

from __future__ import annotations

import argparse
import os
from typing import Iterable, Mapping, Sequence, Union

from .jsonl import InputError

PathArg = Union[str, os.PathLike, None]


def declare(parser: argparse.ArgumentParser, *, inputs: Sequence[str], out: str | None = "out", folder: bool) -> None:
    """Record on ``parser`` which of its options are inputs and which is the output (a folder or a
    file); ``out=None`` declares a command that writes no file (it only prints)."""
    parser.set_defaults(_guard_inputs=tuple(inputs), _guard_out=(out, folder))


def check_args(args: argparse.Namespace) -> None:
    """``refuse_overwrite`` for the options a subcommand declared (nothing when it declared none)."""
    declared = getattr(args, "_guard_out", None)
    if declared is None:
        return
    out, folder = declared
    if out is None:
        return
    inputs = {f"--{name.replace('_', '-')}": getattr(args, name, None) for name in args._guard_inputs}
    refuse_overwrite(inputs, getattr(args, out), folder=folder, option=f"--{out.replace('_', '-')}")


def _paths(value: PathArg | Sequence[PathArg]) -> Iterable[str]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return [os.fspath(v) for v in value if v is not None]
    return (os.fspath(value),)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_overwrite(inputs: Mapping[str, PathArg | Sequence[PathArg]], out: PathArg, *, folder: bool, option: str = "--out") -> None:
    """Raise InputError when the output ``out`` would write over an input, or is the wrong kind of path.

    ``inputs`` maps an option name (for the message) to a path or a list of paths; inputs that
    do not exist are not files anyone can lose (a model name on a hub, say) and are passed over.
    ``folder``: ``out`` is a folder the command writes several files into (created if missing);
    otherwise it is one file.
    """
    out = os.fspath(out)
    if folder and os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"{option} {out}: exists and is not a folder; give a folder (it is created if missing)")
    if not folder and os.path.isdir(out):
        raise InputError(f"{option} {out}: is a folder; give the path of a file")
    target = os.path.realpath(out)
    for name, value in inputs.items():
        for path in _paths(value):
            if not os.path.exists(path):
                continue
            real = os.path.realpath(path)
            if folder:
                inside = real == target or real.startswith(target.rstrip(os.sep) + os.sep)
                if inside:
                    raise InputError(
                        f"{option} {out}: holds the input {name} {path}; a command replaces the files of its output "
                        f"folder and removes stale ones, so inputs must live elsewhere: choose another {option}"
                    )
            elif real == target or _same_file(path, out):
                raise InputError(
                    f"{option} {out}: is the input {name} {path}; no command writes over its inputs: choose another {option}"
                )
