"""The ``confprofile`` reward manager for verl's reward loop (verl >= 0.9).

Select it with ``reward.reward_manager.name=confprofile``; options come from the top-level
``confprofile:`` config block (see ``reward.options``). It is the group reward of
``reward.confprofile_reward`` run by ``reward.group_loop.GroupRewardManager``: each rollout is
parsed in its reward worker, its group's quasi ground truth (Eq. 6) is voted once on the vote
board shared by all workers, and each rollout gets its own reward (Eq. 7-8).
"""

from verl.experimental.reward_loop.reward_manager import register

from .confprofile_reward import confprofile_reward
from .group_loop import GroupRewardManager


@register("confprofile")
class ConfProfileRewardManager(GroupRewardManager):
    """Per-rollout Conf-Profile reward with cross-worker quasi-ground-truth voting."""

    name = "confprofile"
    group_reward = confprofile_reward
