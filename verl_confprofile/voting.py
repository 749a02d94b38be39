"""Voting over samples of one user (Eq. 3-6): the same code votes teacher samples and GRPO groups.

For a dimension, each well-formed sample i contributes its tag A_i with confidence C_i.
S_t = sum_i 1[A_i = t] * C_i (Eq. 3); the voted tag maximises the method's ranking key and
S = S_winner (Eq. 4-5). NA is a candidate like any tag; malformed samples do not vote.

Ranking keys, compared left to right (the tie-break rule, independent of sample order):
    confidence: (S_t, count_t, earlier in taxonomy order)      -- the paper's method
    majority:   (count_t, S_t, earlier in taxonomy order)      -- the ablation of Table 2
The margin is the winner's first key component minus the runner-up's (S for confidence, count
for majority); with a single candidate the runner-up counts as 0.
"""

from __future__ import annotations

from typing import Iterable, Mapping, NamedTuple, Sequence

from .taxonomy import Dimension, Taxonomy

VOTING_METHODS = ("confidence", "majority")
VOTING_HELP = "confidence: Eq. 3-5, tags ranked by their summed confidence S_t; majority: by vote count (ablation)"


class Vote(NamedTuple):
    """Outcome for one dimension; ``tag`` is None when no sample was well-formed."""

    tag: str | None
    score: float
    votes: int
    margin: float
    n_valid: int


NO_VOTE = Vote(None, 0.0, 0, 0.0, 0)
_new_vote = tuple.__new__  # Vote(...) without the Python-level __new__ of a NamedTuple, for the hot loop


def check_method(method: str) -> str:
    if method not in VOTING_METHODS:
        raise ValueError(f"unknown voting method {method!r}; choose one of {', '.join(VOTING_METHODS)}")
    return method


def _tag_totals(choices: Iterable[Sequence]) -> tuple[dict[str, list], int]:
    """({tag: [S_t, count_t]}, number of well-formed choices) over (tag, confidence, ...) items (Eq. 3)."""
    totals: dict[str, list] = {}
    n_valid = 0
    for item in choices:
        tag = item[0]
        if tag is None:
            continue
        n_valid += 1
        cell = totals.get(tag)
        if cell is None:
            totals[tag] = [item[1], 1]
        else:
            cell[0] += item[1]
            cell[1] += 1
    return totals, n_valid


def _winner(choices: Iterable[Sequence], rank: Mapping[str, int], by_count: bool) -> tuple | None:
    """(tag, S, count, margin, n_valid) of the voted tag over (tag, confidence, ...) items, or None
    when none is well-formed; ``rank`` gives each label's position in taxonomy order."""
    totals, n_valid = _tag_totals(choices)
    best = runner = None  # ranking keys (first, second, -rank, tag) of the winner and the runner-up
    for tag, (s_t, count) in totals.items():
        key = (count, s_t, -rank[tag], tag) if by_count else (s_t, count, -rank[tag], tag)
        if best is None or key > best:
            best, runner = key, best
        elif runner is None or key > runner:
            runner = key
    if best is None:
        return None
    first, second, _, tag = best
    s_t, count = (second, first) if by_count else (first, second)
    return tag, float(s_t), int(count), float(first - (runner[0] if runner else 0)), n_valid


try:
    from ._speedups import winner
except ImportError:  # installed without a C compiler
    winner = _winner


def vote(choices: Iterable[Sequence], dim: Dimension, method: str = "confidence") -> Vote:
    """Vote one dimension. ``choices`` yields (tag, confidence, ...) items; tag None = malformed."""
    if method not in VOTING_METHODS:
        check_method(method)
    won = winner(choices, dim._rank, method == "majority")
    return NO_VOTE if won is None else _new_vote(Vote, won)


def vote_profile(
    samples: Sequence[Mapping[str, Sequence]], taxonomy: Taxonomy, method: str = "confidence"
) -> dict[str, Vote]:
    """Vote every dimension over parsed samples ({dim: (tag, confidence, ...)} each)."""
    return {d.key: vote((s[d.key] for s in samples), d, method) for d in taxonomy}
