"""``majority_vote``: test-time RL for math (TTRL-style) as a group reward, on the public API only.

Select it with ``reward.reward_manager.name=majority_vote`` (reward loop) or the batch API name
``majority_vote``; options in a top-level ``majority_vote:`` block (``group_timeout_s``).

- A rollout's answer is the content of its last ``\\boxed{...}``, normalised with verl's own
  math helpers (``verl.utils.reward_score.math_reward``: ``last_boxed_only_string``,
  ``remove_boxed``, ``strip_string``; where ``strip_string`` fails on a malformed answer, the
  raw answer is kept, as verl's ``is_equiv`` compares raw strings then). A rollout without a
  boxed answer, or whose answer normalises to nothing, has no answer and does not vote.
- The group's pseudo-label is its most frequent answer; a tie goes to the smallest normalised
  answer in code-point order, so the result does not depend on arrival order. A group where
  no rollout answered has no pseudo-label.
- Reward 1.0 when the rollout's answer equals the pseudo-label, else 0.0 (no answer: 0.0).
- Extra info (``majority_vote/...``): ``majority_share`` (the pseudo-label's votes over the
  group's members, answered or not), ``agreed``, ``answered``; against
  ``reward_model.ground_truth`` (a text or a number; anything else, or an empty text, is no
  ground truth): ``labelled``, ``label_accuracy`` (the pseudo-label equals the normalised ground
  truth) and ``reward_accuracy`` (the reward equals the one the ground truth would give), 0.0
  on unlabelled rows; and the group's ``group_info``: ``group_members``, ``group_partial`` and
  its cause ``group_timeout``, ``group_overflow``, ``group_unreachable``. The ground truth
  never changes the reward.
- Step metrics (its ``MetricFamily``): ``majority_vote/<key>`` is the mean over rollouts of
  ``majority_share``, ``agreed``, ``answered`` and ``labelled``, and over labelled rollouts only
  (their sum over the sum of ``labelled``; absent when none is) of ``label_accuracy`` and
  ``reward_accuracy``; ``majority_vote/group/<field>`` the mean of each group key.
"""

from __future__ import annotations

import numbers
from collections import Counter
from typing import Any, Collection

import numpy as np
from verl.experimental.reward_loop.reward_manager import register as register_loop
from verl.utils.reward_score.math_reward import last_boxed_only_string, remove_boxed, strip_string
from verl.workers.reward_manager import register as register_batch

from .extra_metrics import Columns, MetricFamily, group_metrics, register_family
from .group import Group, GroupReward, Rollout, group_info, group_keys
from .group_batch import GroupBatchRewardManager
from .group_loop import GroupRewardManager

SECTION = "majority_vote"
PER_ROLLOUT = tuple(f"{SECTION}/{k}" for k in ("majority_share", "agreed", "answered", "labelled"))
PER_LABELLED = tuple(f"{SECTION}/{k}" for k in ("label_accuracy", "reward_accuracy"))  # 0.0 when unlabelled
GROUP_PREFIX = f"{SECTION}/group_"
EXTRA_KEYS = (*PER_ROLLOUT, *PER_LABELLED, *group_keys(GROUP_PREFIX))


def normalise(answer: str) -> str | None:
    """An answer as verl's ``strip_string`` normalises it (the raw text where it fails); None if empty."""
    try:
        answer = strip_string(answer)
    except Exception:  # verl's helpers assert and index on some malformed answers
        pass
    return answer or None


def boxed_answer(text: str) -> str | None:
    """The normalised content of the last ``\\boxed{...}`` of ``text``, or None."""
    try:
        boxed = last_boxed_only_string(text)
        return normalise(remove_boxed(boxed)) if boxed is not None else None
    except Exception:  # remove_boxed asserts on an \\fbox or an unclosed box
        return None


def ground_truth_answer(value: Any) -> str | None:
    """A row's ground truth as a normalised answer: texts and real numbers count, nothing else."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = str(value)
    return normalise(value) if isinstance(value, str) else None


def contribute(rollout: Rollout) -> str | None:
    return boxed_answer(rollout.response)


def combine(answers: list[str | None]) -> tuple[str | None, int]:
    """(pseudo-label, its votes): the most frequent answer, ties to the smallest."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None, 0
    label, votes = min(counts.items(), key=lambda item: (-item[1], item[0]))
    return label, votes


def reward(own: str | None, group: Group, rollout: Rollout) -> tuple[float, dict[str, float]]:
    label, votes = group.result if group.result is not None else (None, 0)
    agreed = own is not None and own == label
    score = float(agreed)
    truth = ground_truth_answer(rollout.ground_truth)
    labelled = truth is not None
    gold_score = float(own is not None and own == truth)
    values = (
        votes / group.members if group.members else 0.0,
        float(agreed),
        float(own is not None),
        float(labelled),
        float(labelled and label == truth),
        float(labelled and score == gold_score),
    )
    return score, {**dict(zip(PER_ROLLOUT + PER_LABELLED, values)), **group_info(group, GROUP_PREFIX)}


MAJORITY_VOTE = GroupReward(contribute, combine, reward, extra_keys=EXTRA_KEYS)


def claims(keys: Collection[str]) -> tuple[str, ...]:
    return EXTRA_KEYS if set(EXTRA_KEYS) <= set(keys) else ()


def step(cols: Columns) -> dict[str, float]:
    """Means over rollouts, but the accuracies over labelled rollouts only (see the module docstring)."""
    out = {key: float(np.nanmean(cols[key])) for key in PER_ROLLOUT}
    labelled = float(np.nansum(cols[f"{SECTION}/labelled"]))
    if labelled:
        out.update({key: float(np.nansum(cols[key])) / labelled for key in PER_LABELLED})
    return {**out, **group_metrics(cols, GROUP_PREFIX, SECTION)}


FAMILY = register_family(MetricFamily(SECTION, claims, step))


@register_loop("majority_vote")
class MajorityVoteRewardManager(GroupRewardManager):
    """TTRL-style majority-vote reward in verl's reward loop."""

    name = "majority_vote"
    group_reward = MAJORITY_VOTE


@register_batch("majority_vote")
class MajorityVoteBatchRewardManager(GroupBatchRewardManager):
    """TTRL-style majority-vote reward in the batch-level API (verl <= 0.7 trainers)."""

    name = "majority_vote"
    group_reward = MAJORITY_VOTE
