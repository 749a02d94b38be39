"""The per-sample and per-user transforms of build-sft and build-rl, whichever engine runs them.

A samples-file line becomes, with ``read_sample``, the raw text of one sample of a kept user,
or a ``SampleEvent`` (a counted skip or an error). A user's samples are parsed and folded, in
any order, into a ``tally.UserTally``, which finishes into the user's ``UserVote``. ``VoteJob`` is
what a vote stage is given and ``VoteStage`` what it returns (see ``engine`` for where the
stage runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, NamedTuple

from verl_confprofile.jsonl import READ_BUFFER, InputError, JSONDecodeError, loads, sample_fields
from verl_confprofile.tally import UserVote
from verl_confprofile.taxonomy import Taxonomy


class SampleEvent(NamedTuple):
    """A samples-file line that is not voted: a counted skip, or an error that stops the build."""

    line: int
    reason: str  # broken_line, unknown_user, duplicate_sample, or "error"
    message: str


def read_sample(line: bytes, path: str, lineno: int, users: dict[str, int]) -> tuple[int, int, str] | SampleEvent | None:
    """One samples-file line -> (record order, sample_idx, raw text) of a kept user's sample, a
    SampleEvent, or None for a blank line.

    A line that is not a JSON object (a writer killed mid-line) is a counted skip, as is a sample
    of a user without a kept record. A JSON object without the sample fields means the wrong file
    was given: that is an error.
    """
    try:
        obj = loads(line)
    except JSONDecodeError as exc:
        if not line.strip():
            return None
        return SampleEvent(lineno, "broken_line", f"{path}:{lineno}: not a JSON line: {exc.msg} (column {exc.colno}); skipped")
    if type(obj) is not dict:
        return SampleEvent(lineno, "broken_line", f"{path}:{lineno}: expected a JSON object; skipped")
    try:
        user, idx, text = sample_fields(obj, path, lineno)
    except InputError as exc:
        return SampleEvent(lineno, "error", str(exc))
    order = users.get(user if type(user) is str else str(user))
    if order is None:
        return SampleEvent(lineno, "unknown_user", f"{path}:{lineno}: user {str(user)!r} has no usable record; sample skipped")
    return order, idx, text


def duplicate_event(path: str, lineno: int, sample_idx: int, user_id: str, first: int) -> SampleEvent:
    return SampleEvent(
        lineno, "duplicate_sample",
        f"{path}:{lineno}: duplicate sample_idx {sample_idx} for user {user_id!r} (first at line {first}); skipped",
    )


@dataclass(frozen=True)
class VoteJob:
    """What the vote stage needs: the samples file and the kept users, in record order."""

    samples: str
    taxonomy: Taxonomy
    voting: str
    user_ids: tuple[str, ...]

    @property
    def users(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.user_ids)}


@dataclass
class VoteStage:
    """Votes of the users that have samples (record order) and the sample lines left out (line order)."""

    votes: list[UserVote]
    lines: int  # non-blank lines of the samples file
    events: list[SampleEvent]


def vote_stage(votes: dict[int, UserVote], lines: int, events: list[SampleEvent]) -> VoteStage:
    """The stage result from votes keyed by record order; the first error (in line order) stops the build."""
    events.sort()
    errors = [e for e in events if e.reason == "error"]
    if errors:
        raise InputError(errors[0].message)
    return VoteStage([votes[o] for o in sorted(votes)], lines, events)


def iter_lines(path: str, start: int = 0, end: int | None = None, first_line: int = 1) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) of the lines starting in [start, end) of a file."""
    try:
        fh = open(path, "rb", buffering=READ_BUFFER)
    except OSError as exc:
        raise InputError(f"{path}: cannot open: {exc.strerror}") from None
    with fh:
        fh.seek(start)
        if end is None:
            yield from enumerate(fh, first_line)
            return
        pos = start
        for lineno, line in enumerate(fh, first_line):
            if pos >= end:
                break
            pos += len(line)
            yield lineno, line
