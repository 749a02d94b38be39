"""Conf-Profile's reward (Eq. 6-8) as a ``GroupReward``: what both confprofile managers run.

- contribute: parse the rollout's profile; the contribution is, per taxonomy dimension, its
  (tag, score, error) (tag None when malformed), without the evidence text.
- combine: the group's quasi ground truth, one vote per dimension (Eq. 6) over the well-formed
  members, as {dimension: Vote fields}.
- reward: Eq. 7-8 against the votes (or the row's labels under ``use_labels=when_present``),
  with the row's reference confidence; extra info from ``rows.extra_info``, whose keys depend
  on the taxonomy's dimensions and are declared (``rows.extra_keys``), so a rollout whose
  functions fail reports them all, at 0.0.
- needs_group: a row whose valid labels cover every dimension under ``use_labels=when_present``
  is scored against its labels at once, without a vote.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from verl_confprofile.profile_format import DimensionOutput, Profile, parse_profile
from verl_confprofile.taxonomy import Taxonomy
from verl_confprofile.voting import Vote, vote

from .group import Group, GroupReward, Rollout
from .options import Options, read_options
from .rows import covered_by_labels, extra_keys, labels_of, score_row

# A member's contribution: one (tag, score, error) per dimension in taxonomy order.
Member = tuple[tuple[str | None, int | None, str | None], ...]


def confprofile_reward(block: Any = None) -> GroupReward:
    """The reward for a ``confprofile:`` options block (None: the defaults); bad options raise."""
    options = read_options(block)
    return GroupReward(
        contribute=partial(contribute, options.taxonomy),
        combine=partial(vote_members, options.taxonomy, options.spec.voting),
        reward=partial(reward, options),
        needs_group=partial(needs_vote, options),
        group_timeout_s=options.group_timeout_s,
        extra_keys=extra_keys(options.taxonomy),
    )


def contribute(taxonomy: Taxonomy, rollout: Rollout) -> Member:
    parsed = parse_profile(rollout.response, taxonomy)
    return tuple((parsed[d.key].tag, parsed[d.key].score, parsed[d.key].error) for d in taxonomy)


def vote_members(taxonomy: Taxonomy, voting: str, members: list[Member]) -> dict[str, tuple]:
    """Eq. 6 per dimension over the members (malformed ones do not vote)."""
    return {d.key: tuple(vote((m[i] for m in members), d, voting)) for i, d in enumerate(taxonomy)}


def needs_vote(options: Options, rollout: Rollout) -> bool:
    labels = labels_of(rollout.ground_truth)
    return not (options.spec.use_labels == "when_present" and covered_by_labels(labels, options.taxonomy))


def profile_of(member: Member, taxonomy: Taxonomy) -> Profile:
    """The parsed profile a contribution stands for (evidence left out: the reward never reads it)."""
    return {d.key: DimensionOutput(tag, score, None, error) for d, (tag, score, error) in zip(taxonomy, member)}


def reward(options: Options, own: Member, group: Group, rollout: Rollout) -> tuple[float, dict[str, float]]:
    votes = {k: Vote(*v) for k, v in (group.result or {}).items()}
    return score_row(profile_of(own, options.taxonomy), votes, labels_of(rollout.ground_truth), rollout.extra_info, options, group)
