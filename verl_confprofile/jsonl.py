"""JSON Lines input with errors that name the file and line, atomic-per-line output, and JSON reports.

Every command reads its JSONL inputs through ``iter_lines``: byte lines, numbered exactly (a
bad byte never shifts the count), with a UTF-8 byte order mark at the start of the file
ignored (editors on Windows write one). Lines are decoded with orjson (several times faster
than the json module on the long sample lines). It is strict JSON: NaN, Infinity and unpaired
surrogate escapes, which the json module lets through, make a line invalid.

Samples files have one policy in every command (vote, eval, build-sft, build-rl), applied by
``sample_line`` and ``SampleEvent``: a line that is not a JSON object (a writer killed
mid-line) and a repeated (user_id, sample_idx) are skipped, counted and reported (the first
occurrence is used); with ``strict`` they are errors. A JSON object without the sample fields
means the wrong file was given: always an error.

A sample whose ``finish_reason`` is "length" was cut at the completion token limit
(``synthesize`` writes the backend's reason; a line without one is a whole sample). It is
kept: its complete blocks vote and the block it was cut in, like every block after it, is
malformed to the parser. Every kept one is counted and reported (``truncated_event`` with
``kept``); with ``drop_truncated`` such samples are skipped and counted instead
(``truncated_sample``).

User ids are strings or integers, and an integer means the string of its digits: ``7`` and
``"7"`` are one user, written ``"7"`` everywhere an id is output.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from typing import IO, Iterator, NamedTuple

from orjson import JSONDecodeError, loads

MAX_SAMPLE_IDX = 2**63 - 1
READ_BUFFER = 1 << 20  # bytes per read call: the default (the disk block size, often 4 KiB) costs a system call per few lines


class InputError(ValueError):
    """Bad input data; the message starts with ``file:line:``."""


BOM = b"\xef\xbb\xbf"
STRICT_REASONS = ("broken_line", "duplicate_sample")  # the skips ``strict`` turns into errors
STRICT_HELP = "a broken or repeated samples line is an error (default: skipped, counted and reported)"
TRUNCATED = "truncated_sample"  # the reason of a sample cut at the token limit (finish_reason "length")
DROP_TRUNCATED_HELP = ("skip samples cut at the token limit (finish_reason 'length'), counted as truncated_sample "
                       "(default: kept and counted; their complete blocks vote)")


def iter_lines(path: str | os.PathLike, start: int = 0, end: int | None = None, first_line: int = 1) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) of the lines starting in [start, end) of a file; the byte order
    mark of a file that starts with one is not part of its first line."""
    try:
        fh = open(path, "rb", buffering=READ_BUFFER)
    except OSError as exc:
        raise InputError(f"{path}: cannot open: {exc.strerror}") from None
    with fh:
        fh.seek(start)
        if start != 0 or fh.read(len(BOM)) != BOM:
            fh.seek(start)
        if end is None:
            yield from enumerate(fh, first_line)
            return
        pos = fh.tell()
        for lineno, line in enumerate(fh, first_line):
            if pos >= end:
                break
            pos += len(line)
            yield lineno, line


def line_problem(line: bytes, exc: JSONDecodeError, what: str) -> str:
    """Why a line does not decode: its first byte that is not UTF-8 (orjson reports any such
    line as holding surrogates), else ``what`` and orjson's reason."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"not UTF-8 text: {bad.reason} at byte {bad.start + 1}"
    return f"{what}: {exc.msg} (column {exc.colno})"


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; a broken line raises InputError."""
    for lineno, line in iter_lines(path):
        try:
            obj = loads(line)
        except JSONDecodeError as exc:
            if not line.strip():
                continue
            raise InputError(f"{path}:{lineno}: {line_problem(line, exc, 'invalid JSON')}") from None
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def field(obj: dict, name: str, kind: type | tuple[type, ...], path: str | os.PathLike, lineno: int):
    """obj[name] checked against ``kind``; a missing or mistyped field raises InputError."""
    if name not in obj:
        raise InputError(f"{path}:{lineno}: missing field {name!r}")
    value = obj[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        if type(value) is float and int in (kind if isinstance(kind, tuple) else (kind,)) and value.is_integer():
            raise InputError(
                f"{path}:{lineno}: field {name!r} is an integer of more than 64 bits, which JSON readers take for a "
                f"float ({value!r}, digits lost): write it as a string, in quotes"
            )
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InputError(f"{path}:{lineno}: field {name!r} must be {want}, got {type(value).__name__}")
    return value


def sample_fields(obj: dict, path: str | os.PathLike, lineno: int) -> tuple[str, int, str]:
    """(user_id, sample_idx, text) of a samples-file line, checked; a bad field raises InputError.

    Type checks first (the common case, cheap), ``field`` only for other valid types (an integer
    user_id, returned as its string) or for the message naming the bad field. sample_idx counts
    a user's samples from 0 and must fit in 63 bits (the compiled tally keeps it as a C long).
    """
    user, idx, text = obj.get("user_id"), obj.get("sample_idx"), obj.get("text")
    if type(user) is str and type(idx) is int and type(text) is str and 0 <= idx <= MAX_SAMPLE_IDX:
        return user, idx, text
    user, idx, text = field(obj, "user_id", (str, int), path, lineno), field(obj, "sample_idx", int, path, lineno), field(obj, "text", str, path, lineno)
    if not 0 <= idx <= MAX_SAMPLE_IDX:
        raise InputError(f"{path}:{lineno}: field 'sample_idx' must be an integer from 0 to 2**63 - 1, got {idx}")
    return str(user), idx, text


class Sample(NamedTuple):
    """The fields of a samples-file line that a command uses; ``truncated``: finish_reason "length";
    ``prompt_sha256``: the digest of the prompt it was drawn with, as synthesize records it (None
    for a sample written by something else)."""

    user_id: str
    sample_idx: int
    text: str
    truncated: bool
    prompt_sha256: str | None = None


class SampleEvent(NamedTuple):
    """A samples-file line that is not voted (a counted skip, or an error that stops the command),
    or, with ``kept``, one that is voted but reported: a truncated sample."""

    line: int
    reason: str  # broken_line, duplicate_sample, truncated_sample, unknown_user (builds), or "error"
    message: str  # a skip's ends with "; skipped"
    kept: bool = False

    def fatal(self, strict: bool) -> bool:
        """Whether this line stops the command: always an error, with ``strict`` also a skip of STRICT_REASONS."""
        return self.reason == "error" or (strict and self.reason in STRICT_REASONS)

    def error(self) -> "InputError":
        return InputError(self.message.removesuffix("; skipped"))


def sample_line(line: bytes, path: str | os.PathLike, lineno: int) -> Sample | SampleEvent | None:
    """One samples-file line -> its Sample, a SampleEvent, or None for a blank line."""
    try:
        obj = loads(line)
    except JSONDecodeError as exc:
        if not line.strip():
            return None
        return SampleEvent(lineno, "broken_line", f"{path}:{lineno}: {line_problem(line, exc, 'not a JSON line')}; skipped")
    if type(obj) is not dict:
        return SampleEvent(lineno, "broken_line", f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}; skipped")
    try:
        user, idx, text = sample_fields(obj, path, lineno)
    except InputError as exc:
        return SampleEvent(lineno, "error", str(exc))
    digest = obj.get("prompt_sha256")
    return Sample(user, idx, text, obj.get("finish_reason") == "length", digest if type(digest) is str else None)


def duplicate_event(path: str | os.PathLike, lineno: int, sample_idx: int, user_id: str, first: int) -> SampleEvent:
    return SampleEvent(
        lineno, "duplicate_sample",
        f"{path}:{lineno}: duplicate sample_idx {sample_idx} for user {user_id!r} (first at line {first}); skipped",
    )


def truncated_event(path: str | os.PathLike, lineno: int, sample_idx: int, user_id: str, kept: bool) -> SampleEvent:
    """A sample cut at the token limit: kept (voted, reported) or, with ``drop_truncated``, skipped."""
    what = "kept: only its complete blocks vote" if kept else "skipped"
    return SampleEvent(
        lineno, TRUNCATED,
        f"{path}:{lineno}: sample {sample_idx} of user {user_id!r} was cut at the token limit (finish_reason 'length'); {what}",
        kept,
    )


def voted_event(
    path: str | os.PathLike, lineno: int, sample_idx: int, user_id: str, first: int | None, truncated: bool
) -> SampleEvent | None:
    """What a sample line folded into its user's tally reports, the same in every reader: a repeat
    (``first``: the line of the copy already folded) is a duplicate_sample skip, a new sample cut
    at the token limit a kept truncated_sample, any other nothing."""
    if first is not None:
        return duplicate_event(path, lineno, sample_idx, user_id, first)
    return truncated_event(path, lineno, sample_idx, user_id, kept=True) if truncated else None


def truncation_report(skips: "SkipLog", kept: "SkipLog", dropped: bool) -> dict:
    """The ``truncated_samples`` section of a report: how many samples were cut at the token
    limit, whether they were kept or dropped (``dropped``: ``drop_truncated``), the first messages."""
    log = skips if dropped else kept
    return {"count": log.counts[TRUNCATED], "policy": "dropped" if dropped else "kept", "first": log.first.get(TRUNCATED, [])}


def truncation_summary(report: dict) -> str:
    """The truncation part of a summary line, from ``truncation_report``."""
    return f"truncated samples: {report['count']} {report['policy']}" if report["count"] else "truncated samples: none"


class SkipLog:
    """Inputs left out and why: a count per reason and the first messages, each naming its file.

    Every skip is also a warning on stderr (the first ``shown`` of each reason), so a bad input
    is visible where the command runs and counted in its report or summary.
    """

    def __init__(self, shown: int = 5):
        self.shown = shown
        self.counts: Counter = Counter()
        self.first: dict[str, list[str]] = {}

    def add(self, reason: str, message: str, count: int = 1) -> None:
        self.counts[reason] += count
        kept = self.first.setdefault(reason, [])
        if len(kept) < self.shown:
            kept.append(message)
            print(f"warning: {message}", file=sys.stderr)

    def summary(self) -> str:
        """'reason=count, ...', or 'none'."""
        return ", ".join(f"{k}={n}" for k, n in self.counts.items()) or "none"

    def to_dict(self) -> dict:
        return {reason: {"count": n, "first": self.first[reason]} for reason, n in self.counts.items()}


def write_line(fh: IO[str], obj: object) -> None:
    """Write one JSON line in a single write call, so a crash never leaves half a record."""
    fh.write(json.dumps(obj, ensure_ascii=False) + "\n")


def write_json(obj: object, path: str | os.PathLike) -> None:
    """Write ``obj`` as an indented UTF-8 JSON file ending with a newline (the reports)."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
