"""The ``confprofile`` reward as a batch-level manager (``verl.workers.reward_manager``).

This is the API verl <= 0.7 trainers call (TTRL-style forks): the same group reward as the
reward-loop manager (``reward.confprofile_reward``), gathered by ``uid`` within the batch by
``reward.group_batch.GroupBatchRewardManager``. Options are keyword arguments
(``reward_model.reward_kwargs`` in those trainers), the same names as the ``confprofile:`` block.
"""

from verl.workers.reward_manager import register

from .confprofile_reward import confprofile_reward
from .group_batch import GroupBatchRewardManager


@register("confprofile")
class ConfProfileBatchRewardManager(GroupBatchRewardManager):
    """Conf-Profile reward over a full batch, grouping rollouts by ``uid``."""

    name = "confprofile"
    group_reward = confprofile_reward
