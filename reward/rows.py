"""What the reward managers read from an RL row, and the per-rollout info they report to verl.

Rows follow verl's RLHFDataset schema as written by ``confprofile build-rl``:
``reward_model.ground_truth`` is a JSON object {dimension: label} or "" when unlabelled, and
``extra_info.ref_confidence`` is {dimension: 1..5}; ``extra_info.split`` names the split.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from verl_confprofile.profile_format import Profile
from verl_confprofile.scoring import RolloutReward, rollout_reward, targets
from verl_confprofile.taxonomy import Taxonomy
from verl_confprofile.voting import Vote

from .group import VAL_SPLITS, is_validation  # noqa: F401  (the split rule is the group mechanism's)
from .options import Options


def labels_of(ground_truth: Any) -> dict | None:
    """Gold labels of a row, or None when unlabelled or unreadable (never raises).

    A JSON text nested deeper than the decoder's recursion limit is unreadable, not an error.
    """
    if isinstance(ground_truth, Mapping):
        return dict(ground_truth) or None
    if isinstance(ground_truth, (str, bytes)) and ground_truth.strip():
        try:
            value = json.loads(ground_truth)
        except (ValueError, RecursionError):
            return None
        return value if isinstance(value, dict) and value else None
    return None


def ref_confidence_of(extra_info: Any) -> Mapping | None:
    ref = extra_info.get("ref_confidence") if isinstance(extra_info, Mapping) else None
    return ref if isinstance(ref, Mapping) else None


def covered_by_labels(labels: Mapping | None, taxonomy: Taxonomy) -> bool:
    """True when every dimension has a valid gold label (so no vote is needed)."""
    return bool(labels) and all(d.canonical(labels.get(d.key)) is not None for d in taxonomy)


def score_row(
    parsed: Profile,
    votes: Mapping[str, Vote],
    labels: Mapping | None,
    row_extra_info: Any,
    options: Options,
    *,
    members: int,
    partial: bool,
) -> tuple[float, dict[str, float]]:
    """Eq. 7-8 for one rollout of a row against its group's votes, and its reward_extra_info.

    Both managers score through this, whether the group was voted on the board or in the batch.
    """
    tax, spec = options.taxonomy, options.spec
    reward = rollout_reward(parsed, targets(votes, labels, spec, tax), ref_confidence_of(row_extra_info), spec, tax)
    return reward.total, extra_info(reward, votes, labels, tax, members=members, partial=partial)


def extra_info(
    reward: RolloutReward,
    votes: Mapping[str, Vote],
    labels: Mapping | None,
    taxonomy: Taxonomy,
    *,
    members: int,
    partial: bool,
) -> dict[str, float]:
    """``reward_extra_info`` of one rollout: flat numeric keys, identical for every rollout.

    Per dimension: well_formed, agree (with the target), weight used, na (answered NA), the
    group's vote margin, labelled (the row has a valid gold label) and label_match (the quasi
    ground truth equals it: pseudo-label accuracy is sum(label_match) / sum(labelled)).
    Per rollout: the group members voted, partial (voted before all expected members arrived)
    and ref_missing (dimensions lacking a reference confidence).
    """
    info: dict[str, float] = {}
    for dim in taxonomy:
        part = reward.parts[dim.key]
        vote = votes.get(dim.key)
        label = dim.canonical(labels.get(dim.key)) if labels else None
        prefix = f"confprofile/{dim.key}/"
        info[prefix + "well_formed"] = float(part.well_formed)
        info[prefix + "agree"] = float(part.agree)
        info[prefix + "weight"] = part.weight
        info[prefix + "na"] = float(part.is_na)
        info[prefix + "margin"] = float(vote.margin) if vote else 0.0
        info[prefix + "labelled"] = float(label is not None)
        info[prefix + "label_match"] = float(label is not None and vote is not None and vote.tag == label)
    info["confprofile/group_members"] = float(members)
    info["confprofile/partial"] = float(partial)
    info["confprofile/ref_missing"] = float(sum(p.ref_missing for p in reward.parts.values()))
    return info
