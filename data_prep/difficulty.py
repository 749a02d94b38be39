"""Confidence-based difficulty filtering (section 4.3, Table 3): reshape the RL pool by difficulty.

Difficulty of a user: its aggregated confidence, the mean of its per-dimension frozen reference
confidence levels (1..5, the saved calibrator applied to the student's votes), turned into a
level 1..5 by the equal-frequency rule of ``calibration.equal_frequency_cuts`` fitted on the
pool: level 1 is the fifth of the pool where the student is least sure of itself (hardest),
level 5 the fifth where it is surest (easiest); tied means share a level, so the fifths are
approximate. Equal frequency rather than the rounded mean because a mean of K levels
concentrates: on 3,000 simulated users (SimulatedPopulation, seed 0, 10 samples each, the
calibrator fitted on them) the rounded mean puts 3, 478, 1,774, 732 and 13 users on levels 1..5,
so every shape that weighs the ends keeps a handful of users (uniform: 15), while the
equal-frequency levels hold 704, 611, 330, 874 and 481.

A shape is five non-negative weights, the target proportions of levels 1..5. Presets:

    uniform     1 1 1 1 1
    v           3 2 1 2 3   (high at both ends)
    inverted_v  1 2 3 2 1   (high in the middle)
    m           1 3 2 3 1   (peaks at levels 2 and 4: the paper's default)
    original    the pool's own counts (no reshaping; with --size, a stratified subsample)

Sampling rule. With available users a_l and proportions p_l = w_l / sum(w), the largest size the
shape allows is N_max = min over weighted levels of floor(a_l / p_l). The size is ``size`` when
given (an error when above N_max) and N_max otherwise. Level l gets n_l = floor(N p_l), and the
N - sum(n_l) users still missing go one each to the levels with the largest remainders N p_l -
n_l (ties: lower level first); n_l <= a_l always holds. Within a level, n_l users are drawn with
``random.Random(seed)`` (levels in order 1..5, each from its users in record order), and the
selection keeps record order. Weights are exact fractions, so the counts never depend on float
rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from random import Random
from typing import Iterable, Sequence

from verl_confprofile import calibration
from verl_confprofile.calibration import equal_frequency_cuts

LEVELS = tuple(range(1, calibration.LEVELS + 1))  # the levels 1..5, of difficulty as of confidence
ORIGINAL = "original"
SHAPES: dict[str, tuple[int, ...]] = {
    "uniform": (1, 1, 1, 1, 1),
    "v": (3, 2, 1, 2, 3),
    "inverted_v": (1, 2, 3, 2, 1),
    "m": (1, 3, 2, 3, 1),
}


def parse_shape(text: str) -> tuple[Fraction, ...] | None:
    """Weights of a preset name or of "w1,w2,w3,w4,w5"; None for ``original`` (no reshaping)."""
    if text == ORIGINAL:
        return None
    if text in SHAPES:
        return tuple(Fraction(w) for w in SHAPES[text])
    parts = text.split(",")
    try:
        weights = tuple(Fraction(p.strip()) for p in parts)
    except (ValueError, ZeroDivisionError):
        weights = ()
    if len(weights) != len(LEVELS) or any(w < 0 for w in weights) or not any(weights):
        names = ", ".join((ORIGINAL, *SHAPES))
        raise ValueError(f"--shape {text!r}: expected one of {names} or five non-negative weights 'w1,w2,w3,w4,w5', not all 0")
    return weights


def aggregate_confidence(levels: Iterable[int]) -> float:
    """A user's aggregated confidence: the mean of its per-dimension levels."""
    levels = list(levels)
    return sum(levels) / len(levels)


def difficulty_levels(confidences: Sequence[float]) -> tuple[list[int], list[float]]:
    """The equal-frequency level 1..5 of each aggregated confidence in the pool, and the four cut points."""
    cuts, level_of = equal_frequency_cuts(confidences)
    return [level_of[c] for c in confidences], cuts


def max_size(available: Sequence[int], weights: Sequence[Fraction]) -> int:
    """The largest N such that every weighted level has its share of N users available."""
    total = sum(weights)
    return min(int(a * total / w) for a, w in zip(available, weights) if w > 0)


def apportion(size: int, weights: Sequence[Fraction]) -> list[int]:
    """Split ``size`` over the levels by the largest-remainder rule (ties: lower level first)."""
    total = sum(weights)
    quotas = [size * w / total for w in weights]
    counts = [int(q) for q in quotas]
    by_remainder = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: size - sum(counts)]:
        counts[i] += 1
    return counts


@dataclass
class Selection:
    """The users kept (indices into the pool, in pool order) and how the counts were reached."""

    indices: list[int]
    available: list[int]
    target: list[int]
    max_size: int
    weights: list[Fraction]


def select(levels: Sequence[int], weights: Sequence[Fraction] | None, size: int | None, seed: int) -> Selection:
    """Pick users whose difficulty levels (``levels``, one per user) follow the shape ``weights``."""
    pools: dict[int, list[int]] = {lv: [] for lv in LEVELS}
    for i, lv in enumerate(levels):
        pools[lv].append(i)
    available = [len(pools[lv]) for lv in LEVELS]
    weights = list(weights) if weights is not None else [Fraction(a) for a in available]
    if not any(weights):
        raise ValueError("no user to select from")
    limit = max_size(available, weights)
    if limit == 0:
        empty = [lv for lv, a, w in zip(LEVELS, available, weights) if w > 0 and a * sum(weights) < w]
        raise ValueError(
            f"the shape needs users at difficulty level(s) {empty}, which have too few; users per level 1..5: {available}"
        )
    if size is not None and not 0 < size <= limit:
        raise ValueError(f"--size {size}: this shape allows 1..{limit} users (users per level 1..5: {available})")
    target = apportion(size if size is not None else limit, weights)
    rng = Random(seed)
    chosen = [i for lv, n in zip(LEVELS, target) for i in rng.sample(pools[lv], n)]
    return Selection(sorted(chosen), available, target, limit, weights)
