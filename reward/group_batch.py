"""Group rewards in verl's batch-level API (``verl.workers.reward_manager``): ``GroupBatchRewardManager``.

This is the API verl <= 0.7 trainers call (TTRL-style forks): ``__call__(data, return_dict)``
sees the whole batch, so each ``uid`` group is gathered directly, without the vote board, and
combined once with the same ``GroupReward`` the reward-loop adapter runs. Options are keyword
arguments (``reward_model.reward_kwargs`` in those trainers), the same names as the ``<name>:``
config block. Rows without a ``uid`` are each their own group; a whole group is in the batch,
so every group is complete (``Group.reason`` "complete"), none partial.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from verl import DataProto
from verl.workers.reward_manager.abstract import AbstractRewardManager

from .group import DescribedReward, Group, Rollout, SafeGroupReward, group_key


class GroupBatchRewardManager(DescribedReward, AbstractRewardManager):
    """A batch-level manager for a ``GroupReward``: subclass with ``name`` and ``group_reward``
    (as ``reward.group_loop.GroupRewardManager``); options are keyword arguments."""

    def __init__(self, tokenizer, num_examine: int = 0, compute_score=None, reward_fn_key: str = "data_source", **options: Any):
        self.tokenizer = tokenizer
        self.num_examine = num_examine
        self.safe = SafeGroupReward(self.described(options), self.reward_name())

    def __call__(self, data: DataProto, return_dict: bool = False) -> torch.Tensor | dict[str, Any]:
        prompt_len = data.batch["prompts"].shape[-1]
        lengths = data.batch["attention_mask"][:, prompt_len:].sum(dim=-1).tolist()
        columns = data.non_tensor_batch
        rollouts = []
        for i, n in enumerate(lengths):
            row = {key: values[i] for key, values in columns.items()}
            text = self.tokenizer.decode(data.batch["responses"][i, :n], skip_special_tokens=True)
            rollouts.append(Rollout(row, text, row.get("raw_prompt")))
        own = [self.safe.contribute(r) for r in rollouts]

        groups: dict[Any, list[int]] = defaultdict(list)
        for i, rollout in enumerate(rollouts):
            uid = group_key(rollout.row.get("uid"))
            groups[("row", i) if uid is None else uid].append(i)
        scored: list[tuple[float, dict]] = [(0.0, {})] * len(rollouts)
        for members in groups.values():
            voting = [i for i in members if self.safe.needs_group(rollouts[i])]
            result, error = self.safe.combine([own[i] for i in voting]) if voting else (None, None)
            voted = Group(result, len(voting), len(members), False, "complete")
            alone = Group(None, 0, len(members), False, None)
            for i in members:
                if i in voting:
                    scored[i] = self.safe.score(own[i], voted, rollouts[i], error)
                else:
                    scored[i] = self.safe.score(own[i], alone, rollouts[i])

        reward_tensor = torch.zeros_like(data.batch["responses"], dtype=torch.float32)
        infos: dict[str, list] = defaultdict(list)
        for i, (score, info) in enumerate(scored):
            reward_tensor[i, max(lengths[i], 1) - 1] = score
            for key, value in info.items():
                infos[key].append(value)
        if return_dict:
            return {"reward_tensor": reward_tensor, "reward_extra_info": dict(infos)}
        return reward_tensor
