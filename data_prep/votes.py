"""The per-sample and per-user transforms of build-sft and build-rl, whichever engine runs them.

A samples-file line becomes, with ``read_sample``, the parsed outputs of one sample of a kept
user, or a ``SampleEvent`` (a counted skip or an error). A user's samples are folded, in any
order, into a ``UserTally``, which keeps per dimension the (tag, confidence) pairs voting needs
and, per tag, the evidence of its best sample only (no raw text), and which finishes into the
user's ``UserVote``. ``VoteJob`` is what a vote stage is given and ``VoteStage`` what it returns
(see ``engine`` for where the stage runs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Iterator, NamedTuple, Sequence

from verl_confprofile.jsonl import InputError, field
from verl_confprofile.profile_format import parse_profile
from verl_confprofile.taxonomy import Taxonomy
from verl_confprofile.voting import Vote, vote


class SampleEvent(NamedTuple):
    """A samples-file line that is not voted: a counted skip, or an error that stops the build."""

    line: int
    reason: str  # broken_line, unknown_user, duplicate_sample, or "error"
    message: str


def read_sample(
    line: bytes, path: str, lineno: int, users: dict[str, int], taxonomy: Taxonomy
) -> tuple[int, int, Iterable[Sequence]] | SampleEvent | None:
    """One samples-file line -> (record order, sample_idx, per-dimension outputs), a SampleEvent, or
    None for a blank line.

    A line that is not a JSON object (a writer killed mid-line) is a counted skip, as is a sample
    of a user without a kept record. A JSON object without the sample fields means the wrong file
    was given: that is an error.
    """
    try:
        obj = json.loads(line.decode())
    except ValueError as exc:
        if not line.strip():
            return None
        return SampleEvent(lineno, "broken_line", f"{path}:{lineno}: not a JSON line ({exc}); skipped")
    if type(obj) is not dict:
        return SampleEvent(lineno, "broken_line", f"{path}:{lineno}: expected a JSON object; skipped")
    user, idx, text = obj.get("user_id"), obj.get("sample_idx"), obj.get("text")
    if not (type(user) is str and type(idx) is int and type(text) is str):
        try:  # the slow path: other valid types (an integer user_id), or the message naming the field
            user = field(obj, "user_id", (str, int), path, lineno)
            idx = field(obj, "sample_idx", int, path, lineno)
            text = field(obj, "text", str, path, lineno)
        except InputError as exc:
            return SampleEvent(lineno, "error", str(exc))
    order = users.get(user if type(user) is str else str(user))
    if order is None:
        return SampleEvent(lineno, "unknown_user", f"{path}:{lineno}: user {str(user)!r} has no usable record; sample skipped")
    return order, idx, parse_profile(text, taxonomy).values()


def duplicate_event(path: str, lineno: int, sample_idx: int, user_id: str, first: int) -> SampleEvent:
    return SampleEvent(
        lineno, "duplicate_sample",
        f"{path}:{lineno}: duplicate sample_idx {sample_idx} for user {user_id!r} (first at line {first}); skipped",
    )


class UserVote(NamedTuple):
    """One user's vote per dimension (voting.Vote) over M = ``num_samples`` samples, and the
    evidence of the chosen sample for each voted tag ('' when it gave none)."""

    user_id: str
    num_samples: int
    votes: dict[str, Vote]
    evidence: dict[str, str]


@lru_cache(maxsize=8)
def choice_pairs(taxonomy: Taxonomy) -> tuple[dict[str, tuple], ...]:
    """Per dimension, {label: (None, (label, 1), ..., (label, 5))}: shared (tag, confidence) pairs,
    so a tally holds pointers instead of allocating one pair per sample and dimension."""
    return tuple({label: (None, *((label, s) for s in range(1, 6))) for label in dim.labels} for dim in taxonomy)


class UserTally:
    """One user's samples, folded as they arrive into what voting and the evidence choice need.

    Per dimension: the (tag, confidence) of each well-formed sample, for ``voting.vote``; per tag,
    the evidence of its best sample: non-empty evidence first, then the higher confidence, then
    the lower sample_idx. The choice depends on the samples, not on their order.
    """

    __slots__ = ("lines", "choices", "best", "pairs")

    def __init__(self, taxonomy: Taxonomy):
        self.pairs = choice_pairs(taxonomy)
        self.lines: dict[int, int] = {}
        self.choices: list[list] = [[] for _ in self.pairs]
        self.best: list[dict] = [{} for _ in self.pairs]

    def add(self, sample_idx: int, lineno: int, outputs: Iterable[Sequence]) -> int | None:
        """Fold one sample's (tag, score, evidence, ...) per dimension, in taxonomy order.

        Returns the line of the first occurrence when ``sample_idx`` was seen before; the repeat
        is then not folded.
        """
        first = self.lines.setdefault(sample_idx, lineno)
        if first != lineno:
            return first
        for choices, best, pairs, out in zip(self.choices, self.best, self.pairs, outputs):
            tag = out[0]
            if tag is None:
                continue
            score = out[1]
            choices.append(pairs[tag][score])
            key = (bool(out[2]), score, -sample_idx)
            held = best.get(tag)
            if held is None or key > held[0]:
                best[tag] = (key, out[2])
        return None

    def finish(self, user_id: str, taxonomy: Taxonomy, method: str) -> UserVote:
        votes, evidence = {}, {}
        for dim, choices, best in zip(taxonomy, self.choices, self.best):
            result = vote(choices, dim, method)
            votes[dim.key] = result
            evidence[dim.key] = (best[result.tag][1] or "") if result.tag is not None else ""
        return UserVote(user_id, len(self.lines), votes, evidence)


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
        fh = open(path, "rb")
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
