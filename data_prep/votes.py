"""The per-sample and per-user transforms of build-sft and build-rl, whichever engine runs them.

A samples-file line becomes, with ``read_sample``, the raw text of one sample of a kept user
(and whether it was cut at the token limit), or a ``jsonl.SampleEvent`` (a counted skip or an
error). A user's samples are parsed and
folded, in any order, into a ``tally.UserTally``, which finishes into the user's ``UserVote``.
``VoteJob`` is what a vote stage is given and ``VoteStage`` what it returns (see ``engine``
for where the stage runs).
"""

from __future__ import annotations

from dataclasses import dataclass

from verl_confprofile.jsonl import SampleEvent, sample_line, truncated_event
from verl_confprofile.tally import UserVote
from verl_confprofile.taxonomy import Taxonomy


def read_sample(
    line: bytes, path: str, lineno: int, users: dict[str, int], drop_truncated: bool = False
) -> tuple[int, int, str, bool, str | None] | SampleEvent | None:
    """One samples-file line -> (record order, sample_idx, raw text, truncated, prompt digest) of a
    kept user's sample, a SampleEvent, or None for a blank line.

    The line is read by ``jsonl.sample_line`` (the policy every command shares); a sample of a
    user without a kept record is a counted skip too, and so, with ``drop_truncated``, is a
    sample cut at the token limit.
    """
    got = sample_line(line, path, lineno)
    if got is None or type(got) is SampleEvent:
        return got
    user, idx, text, truncated, digest = got
    order = users.get(user)
    if order is None:
        return SampleEvent(lineno, "unknown_user", f"{path}:{lineno}: user {user!r} has no usable record; sample skipped")
    if truncated and drop_truncated:
        return truncated_event(path, lineno, idx, user, kept=False)
    return order, idx, text, truncated, digest


@dataclass(frozen=True)
class VoteJob:
    """What the vote stage needs: the samples file and the kept users, in record order."""

    samples: str
    taxonomy: Taxonomy
    voting: str
    user_ids: tuple[str, ...]
    strict: bool = False  # broken and repeated sample lines are errors, not counted skips
    drop_truncated: bool = False  # samples cut at the token limit are skipped, not voted

    @property
    def users(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.user_ids)}


@dataclass
class VoteStage:
    """Votes of the users that have samples (record order), the sample lines left out or
    voted but reported (truncated samples, ``SampleEvent.kept``), in line order, and per voted
    user the prompt digests its samples carry (empty when they carry none)."""

    votes: list[UserVote]
    lines: int  # non-blank lines of the samples file
    events: list[SampleEvent]
    digests: list[frozenset[str]]


def vote_stage(
    votes: dict[int, UserVote], lines: int, events: list[SampleEvent], digests: dict[int, set[str]], strict: bool = False
) -> VoteStage:
    """The stage result from votes and digests keyed by record order; the first fatal event (in
    line order) stops the build."""
    events.sort()
    for event in events:
        if event.fatal(strict):
            raise event.error()
    order = sorted(votes)
    return VoteStage([votes[o] for o in order], lines, events, [frozenset(digests.get(o, ())) for o in order])
