"""JSON Lines input with errors that name the file and line, atomic-per-line output, and JSON reports.

Input lines are decoded with orjson (several times faster than the json module on the long
sample lines). It is strict JSON: NaN, Infinity and unpaired surrogate escapes, which the json
module lets through, make a line invalid.
"""

from __future__ import annotations

import json
import os
from typing import IO, Iterator

from orjson import JSONDecodeError, loads

MAX_SAMPLE_IDX = 2**63 - 1
READ_BUFFER = 1 << 20  # bytes per read call: the default (the disk block size, often 4 KiB) costs a system call per few lines


class InputError(ValueError):
    """Bad input data; the message starts with ``file:line:``."""


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; a broken line raises InputError."""
    try:
        fh = open(path, encoding="utf-8", buffering=READ_BUFFER)
    except OSError as exc:
        raise InputError(f"{path}: cannot open: {exc.strerror}") from None
    with fh:
        lineno = 0
        try:
            for lineno, line in enumerate(fh, 1):
                try:
                    obj = loads(line)
                except JSONDecodeError as exc:
                    if not line.strip():
                        continue
                    raise InputError(f"{path}:{lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
                if not isinstance(obj, dict):
                    raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                yield lineno, obj
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}:{lineno + 1}: not UTF-8 text: {exc.reason}") from None


def field(obj: dict, name: str, kind: type | tuple[type, ...], path: str | os.PathLike, lineno: int):
    """obj[name] checked against ``kind``; a missing or mistyped field raises InputError."""
    if name not in obj:
        raise InputError(f"{path}:{lineno}: missing field {name!r}")
    value = obj[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InputError(f"{path}:{lineno}: field {name!r} must be {want}, got {type(value).__name__}")
    return value


def sample_fields(obj: dict, path: str | os.PathLike, lineno: int) -> tuple[str | int, int, str]:
    """(user_id, sample_idx, text) of a samples-file line, checked; a bad field raises InputError.

    Type checks first (the common case, cheap), ``field`` only for other valid types (an integer
    user_id) or for the message naming the bad field. sample_idx counts a user's samples from 0
    and must fit in 63 bits (the compiled tally keeps it as a C long).
    """
    user, idx, text = obj.get("user_id"), obj.get("sample_idx"), obj.get("text")
    if type(user) is str and type(idx) is int and type(text) is str and 0 <= idx <= MAX_SAMPLE_IDX:
        return user, idx, text
    user, idx, text = field(obj, "user_id", (str, int), path, lineno), field(obj, "sample_idx", int, path, lineno), field(obj, "text", str, path, lineno)
    if not 0 <= idx <= MAX_SAMPLE_IDX:
        raise InputError(f"{path}:{lineno}: field 'sample_idx' must be an integer from 0 to 2**63 - 1, got {idx}")
    return user, idx, text


def write_line(fh: IO[str], obj: object) -> None:
    """Write one JSON line in a single write call, so a crash never leaves half a record."""
    fh.write(json.dumps(obj, ensure_ascii=False) + "\n")


def write_json(obj: object, path: str | os.PathLike) -> None:
    """Write ``obj`` as an indented UTF-8 JSON file ending with a newline (the reports)."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
