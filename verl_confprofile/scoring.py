"""The RL reward of section 4.3 (Eq. 6-8) as pure functions of parsed rollouts.

For dimension k of one rollout:
    R_k = format_penalty                           if its block is malformed      (Eq. 8)
    R_k = w(C_k) * (+1 if A_k == target_k else -1)  otherwise                      (Eq. 7)
and R = sum_k R_k. target_k is the group's quasi ground truth (Eq. 6: the vote over the
well-formed rollouts of one prompt), or the row's gold label under use_labels=when_present.
w maps a confidence 1..5 linearly onto [weight_min, weight_max] (0.2..1.0 in the paper). C_k is
the frozen reference confidence (``frozen``), the rollout's own score (``self``), or w = 1
(``none``). A missing or invalid reference confidence under ``frozen`` also gets w = 1 (the
unweighted reward) and is flagged ``ref_missing`` so callers can count it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Mapping, NamedTuple, Sequence

from .profile_format import Profile
from .taxonomy import Taxonomy
from .voting import VOTING_METHODS, Vote, vote_profile

WEIGHTINGS = ("frozen", "self", "none")
USE_LABELS = ("never", "when_present")


@dataclass(frozen=True)
class RewardSpec:
    """Reward options; the verl adapters expose exactly these under ``confprofile:``."""

    voting: str = "confidence"
    weighting: str = "frozen"
    format_penalty: float = -1.0
    weight_min: float = 0.2
    weight_max: float = 1.0
    use_labels: str = "never"

    def __post_init__(self):
        for name, allowed in (("voting", VOTING_METHODS), ("weighting", WEIGHTINGS), ("use_labels", USE_LABELS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"confprofile.{name}={getattr(self, name)!r}: choose one of {', '.join(allowed)}")
        for name in ("format_penalty", "weight_min", "weight_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
                raise ValueError(f"confprofile.{name}={value!r}: expected a finite number")
        # Values that invert the method: a malformed block paid, or a wrong tag rewarded (w <= 0 turns -w into >= 0).
        if self.format_penalty > 0:
            raise ValueError(
                f"confprofile.format_penalty={self.format_penalty}: must be at most 0 (the paper: -1); a positive value "
                "pays a malformed block"
            )
        if self.weight_min <= 0:
            raise ValueError(
                f"confprofile.weight_min={self.weight_min}: must be above 0 (the paper: 0.2); at 0 or below a wrong tag "
                "is not penalised, or is rewarded"
            )
        if self.weight_min > self.weight_max:
            raise ValueError(f"confprofile.weight_min={self.weight_min} exceeds weight_max={self.weight_max}")

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def as_dict(self) -> dict:
        return asdict(self)

    def weight(self, confidence: int) -> float:
        """w(C): 1 -> weight_min, 5 -> weight_max, linear in between."""
        return self.weight_min + (confidence - 1) * (self.weight_max - self.weight_min) / 4


def _finite(value: int | float) -> bool:
    """True for a number a float can hold that is neither NaN nor infinite."""
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond the float range
        return False


class DimensionReward(NamedTuple):
    value: float
    well_formed: bool
    agree: bool
    weight: float
    is_na: bool
    ref_missing: bool


class RolloutReward(NamedTuple):
    total: float
    parts: dict[str, DimensionReward]


def as_confidence(value: object) -> int | None:
    """A reference confidence as an int 1..5, or None when absent or invalid."""
    if isinstance(value, bool):
        return None
    if not isinstance(value, (int, float)):
        try:
            value = float(value)  # numpy scalars and numeric strings
        except (TypeError, ValueError):
            return None
    if value != value or not 1 <= value <= 5 or value != int(value):  # range first: int(inf) raises
        return None
    return int(value)


def targets(votes: Mapping[str, Vote], labels: Mapping[str, str] | None, spec: RewardSpec, taxonomy: Taxonomy) -> dict[str, str | None]:
    """The target tag per dimension: the quasi ground truth, or a valid gold label if allowed."""
    out = {k: v.tag for k, v in votes.items()}
    if spec.use_labels == "when_present" and labels:
        for dim in taxonomy:
            label = dim.canonical(labels.get(dim.key))
            if label is not None:
                out[dim.key] = label
    return out


def rollout_reward(
    parsed: Profile,
    target: Mapping[str, str | None],
    ref_confidence: Mapping[str, object] | None,
    spec: RewardSpec,
    taxonomy: Taxonomy,
) -> RolloutReward:
    """Eq. 7-8 for one rollout against per-dimension targets."""
    parts = {}
    for dim in taxonomy:
        out = parsed[dim.key]
        if out.error is not None:
            parts[dim.key] = DimensionReward(float(spec.format_penalty), False, False, 0.0, False, False)
            continue
        ref_missing = False
        if spec.weighting == "frozen":
            conf = as_confidence(ref_confidence.get(dim.key)) if ref_confidence else None
            ref_missing = conf is None
            weight = 1.0 if ref_missing else spec.weight(conf)
        elif spec.weighting == "self":
            weight = spec.weight(out.score)
        else:
            weight = 1.0
        agree = out.tag == target.get(dim.key)
        parts[dim.key] = DimensionReward(weight if agree else -weight, True, agree, weight, out.tag == dim.na, ref_missing)
    return RolloutReward(sum(p.value for p in parts.values()), parts)


def group_rewards(
    group: Sequence[Profile],
    taxonomy: Taxonomy,
    spec: RewardSpec,
    ref_confidence: Mapping[str, object] | None = None,
    labels: Mapping[str, str] | None = None,
) -> tuple[dict[str, Vote], list[RolloutReward]]:
    """Vote the group's quasi ground truth (Eq. 6), then reward every member (Eq. 7-8)."""
    votes = vote_profile(group, taxonomy, spec.voting)
    goal = targets(votes, labels, spec, taxonomy)
    return votes, [rollout_reward(p, goal, ref_confidence, spec, taxonomy) for p in group]
