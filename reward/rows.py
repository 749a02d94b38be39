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
from .group import Group, group_info, group_keys
from .options import Options

# The per-dimension fields of the extra info, ``<dim>/<field>`` (see ``extra_info``).
FIELDS = (
    "well_formed", "agree", "weight", "na", "ref_missing", "margin", "share",
    "labelled", "label_match", "gold", "answered", "correct",
)  # fmt: skip


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
    group: Group,
) -> tuple[float, dict[str, float]]:
    """Eq. 7-8 for one rollout of a row against its group's votes, and its reward_extra_info.

    Both managers score through this, whether the group was voted on the board or in the batch;
    ``group`` is the rollout's (its ``result`` is not read: the votes are given).
    """
    tax, spec = options.taxonomy, options.spec
    reward = rollout_reward(parsed, targets(votes, labels, spec, tax), ref_confidence_of(row_extra_info), spec, tax)
    return reward.total, extra_info(reward, votes, labels, tax, group)


def extra_keys(taxonomy: Taxonomy) -> tuple[str, ...]:
    """The keys ``extra_info`` writes for a taxonomy, in its order: what the reward declares."""
    return (*(f"{d.key}/{field}" for d in taxonomy for field in FIELDS), *group_keys())


def extra_info(
    reward: RolloutReward,
    votes: Mapping[str, Vote],
    labels: Mapping | None,
    taxonomy: Taxonomy,
    group: Group,
) -> dict[str, float]:
    """``reward_extra_info`` of one rollout: flat numeric keys, identical for every rollout (``extra_keys``).

    Keys carry no section of their own: verl files validation values under the data source
    (``val-aux/<data_source>/<key>/mean@N``) and the training-step metrics under ``confprofile/``
    (``reward.confprofile_metrics`` reduces them; see the README's metrics table). Per dimension
    ``<dim>/...``, each 0/1 unless said:

    - well_formed; agree (its tag equals the target: the quasi ground truth, or the gold label
      under ``use_labels=when_present``); weight (w used, 0 when malformed); na (answered NA);
      ref_missing (well-formed but no valid reference confidence under ``frozen``: w fell to 1);
    - the group's vote: margin, and share (the winner's votes over the group's members);
    - labelled (a valid gold label and a voted quasi ground truth) and label_match (they are
      equal): pseudo-label accuracy is sum(label_match) / sum(labelled);
    - the group's prediction against the gold label, as ``confprofile eval`` scores a user at
      tau = 1: gold (a gold label other than NA), answered (the prediction is a tag other than
      NA) and correct (it equals the gold label). The prediction is the group's vote; a row
      scored without a vote (all its labels are targets, ``use_labels=when_present``) is
      predicted by the rollout's own answer, whose agreement with that target is ``agree``.

    Per rollout, the group mechanism's ``group_info``: group_members (members voted),
    group_partial (voted before all expected members arrived) and, 0/1 each, its cause:
    group_timeout (members missing after group_timeout_s), group_overflow (voted early to free a
    reward worker's call slots) and group_unreachable (the vote board failed: voted alone).
    """
    info: dict[str, float] = {}
    for dim in taxonomy:
        part = reward.parts[dim.key]
        vote = votes.get(dim.key)
        label = dim.canonical(labels.get(dim.key)) if labels else None
        if vote is not None:
            answered = vote.tag is not None and vote.tag != dim.na
            correct = answered and vote.tag == label
        else:
            answered = part.well_formed and not part.is_na
            correct = answered and label is not None and part.agree
        prefix = f"{dim.key}/"
        info[prefix + "well_formed"] = float(part.well_formed)
        info[prefix + "agree"] = float(part.agree)
        info[prefix + "weight"] = part.weight
        info[prefix + "na"] = float(part.is_na)
        info[prefix + "ref_missing"] = float(part.ref_missing)
        info[prefix + "margin"] = float(vote.margin) if vote else 0.0
        info[prefix + "share"] = vote.votes / group.members if vote and group.members else 0.0
        info[prefix + "labelled"] = float(label is not None and vote is not None)
        info[prefix + "label_match"] = float(label is not None and vote is not None and vote.tag == label)
        info[prefix + "gold"] = float(label is not None and label != dim.na)
        info[prefix + "answered"] = float(answered)
        info[prefix + "correct"] = float(correct)
    info.update(group_info(group))
    return info
