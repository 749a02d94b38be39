"""One user's samples, folded as they stream in, into what voting and the evidence choice need.

Every reader of a samples file (``confprofile vote`` and ``eval`` through ``aggregate``,
build-sft and build-rl through ``data_prep``) folds each parsed sample into its user's
``UserTally`` and drops it: no raw text and no per-sample object outlives its line, so memory
grows with users, not samples, and the garbage collector has little to walk.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable, NamedTuple, Sequence

from .profile_format import profile_parser
from .taxonomy import Taxonomy
from .voting import Vote, vote

MALFORMED = (None, 0)  # the (tag, confidence) of a sample whose block is malformed: it does not vote


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


def _fold(
    choices: list[list], best: list[dict] | None, pairs: Sequence[dict], outputs: Iterable[Sequence], sample_idx: int, malformed: tuple
) -> None:
    """Fold one sample's (tag, score, evidence, ...) per dimension into a tally's columns.

    choices[i] gets ``malformed`` or the shared pair pairs[i][tag][score]; with ``best``, best[i][tag]
    becomes (has evidence, score, -sample_idx, evidence) when that beats the entry it holds on
    the first three items, the evidence rule of ``UserTally``.
    """
    for i, (column, row, out) in enumerate(zip(choices, pairs, outputs)):
        tag = out[0]
        if tag is None:
            column.append(malformed)
            continue
        score = out[1]
        column.append(row[tag][score])
        if best is None:
            continue
        entry = (bool(out[2]), score, -sample_idx, out[2])
        held = best[i].get(tag)
        if held is None or entry[:3] > held[:3]:
            best[i][tag] = entry


def _fold_canonical(text: object, spec: tuple, choices: list[list], best: list[dict] | None, pairs: Sequence[dict], sample_idx: int) -> bool:
    """The compiled one-pass read-and-fold of a canonical answer; without the extension nothing
    is read in one pass (False) and every text goes through the parser and ``fold``."""
    return False


try:
    from ._speedups import fold, fold_canonical
except ImportError:  # installed without a C compiler
    fold, fold_canonical = _fold, _fold_canonical


class UserTally:
    """One user's samples: per dimension the (tag, confidence) of every sample in arrival order
    (``MALFORMED`` when its block is), and, with ``evidence``, per tag the evidence of its best
    sample: non-empty evidence first, then the higher confidence, then the lower sample_idx. The
    votes and the evidence depend on the samples, not on their order.
    """

    __slots__ = ("lines", "choices", "best", "pairs", "parse")

    def __init__(self, taxonomy: Taxonomy, evidence: bool = True):
        self.pairs = choice_pairs(taxonomy)
        self.parse = profile_parser(taxonomy)
        self.lines: dict[int, int] = {}
        self.choices: list[list[tuple]] = [[] for _ in self.pairs]
        self.best: list[dict] | None = [{} for _ in self.pairs] if evidence else None

    @property
    def num_samples(self) -> int:
        return len(self.lines)

    def add(self, sample_idx: int, lineno: int, outputs: Iterable[Sequence]) -> int | None:
        """Fold one sample's (tag, score, evidence, ...) per dimension, in taxonomy order.

        Returns the line of the first occurrence when ``sample_idx`` was seen before; the repeat
        is then not folded.
        """
        first = self.lines.setdefault(sample_idx, lineno)
        if first != lineno:
            return first
        fold(self.choices, self.best, self.pairs, outputs, sample_idx, MALFORMED)
        return None

    def add_text(self, sample_idx: int, lineno: int, text: object) -> int | None:
        """``add`` of a raw model output: the outputs ``parse_profile`` reads from it, folded.

        A canonical answer (most teacher samples) is read and folded in one compiled pass,
        without building its outputs; anything else goes through the parser's general rules.
        """
        first = self.lines.setdefault(sample_idx, lineno)
        if first != lineno:
            return first
        if not fold_canonical(text, self.parse.spec, self.choices, self.best, self.pairs, sample_idx):
            fold(self.choices, self.best, self.pairs, self.parse(text).values(), sample_idx, MALFORMED)
        return None

    def votes(self, taxonomy: Taxonomy, method: str = "confidence") -> dict[str, Vote]:
        """The vote of every dimension (Eq. 3-5, or majority)."""
        return {dim.key: vote(choices, dim, method) for dim, choices in zip(taxonomy, self.choices)}

    def finish(self, user_id: str, taxonomy: Taxonomy, method: str = "confidence") -> UserVote:
        """The votes with the evidence of each voted tag (of a tally that keeps evidence)."""
        votes = self.votes(taxonomy, method)
        evidence = {
            key: (held[v.tag][3] or "") if v.tag is not None else "" for (key, v), held in zip(votes.items(), self.best)
        }
        return UserVote(user_id, self.num_samples, votes, evidence)
