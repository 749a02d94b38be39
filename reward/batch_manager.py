"""The ``confprofile`` reward as a batch-level manager (``verl.workers.reward_manager``).

This is the API verl <= 0.7 trainers call (TTRL-style forks): ``__call__(data, return_dict)``
sees the whole batch, so each ``uid`` group is voted directly, without the vote board. Options
are keyword arguments (``reward_model.reward_kwargs`` in those trainers), the same names as
the ``confprofile:`` block. Rows without a ``uid`` are each their own group.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from verl import DataProto
from verl.workers.reward_manager import register
from verl.workers.reward_manager.abstract import AbstractRewardManager
from verl_confprofile.profile_format import parse_profile
from verl_confprofile.voting import vote_profile

from .options import read_options
from .rows import labels_of, score_row


@register("confprofile")
class ConfProfileBatchRewardManager(AbstractRewardManager):
    """Conf-Profile reward over a full batch, grouping rollouts by ``uid``."""

    def __init__(self, tokenizer, num_examine: int = 0, compute_score=None, reward_fn_key: str = "data_source", **options: Any):
        self.tokenizer = tokenizer
        self.num_examine = num_examine
        self.options = read_options(options)

    def __call__(self, data: DataProto, return_dict: bool = False) -> torch.Tensor | dict[str, Any]:
        tax, spec = self.options.taxonomy, self.options.spec
        prompt_len = data.batch["prompts"].shape[-1]
        lengths = data.batch["attention_mask"][:, prompt_len:].sum(dim=-1).tolist()
        parsed = [
            parse_profile(self.tokenizer.decode(data.batch["responses"][i, :n], skip_special_tokens=True), tax)
            for i, n in enumerate(lengths)
        ]
        uids = data.non_tensor_batch.get("uid")
        groups: dict[Any, list[int]] = defaultdict(list)
        for i in range(len(data)):
            groups[uids[i] if uids is not None else ("row", i)].append(i)

        reward_tensor = torch.zeros_like(data.batch["responses"], dtype=torch.float32)
        infos: dict[str, list] = defaultdict(list)
        for members in groups.values():
            votes = vote_profile([parsed[i] for i in members], tax, spec.voting)
            for i in members:
                row = data.non_tensor_batch
                labels = labels_of((row["reward_model"][i] or {}).get("ground_truth")) if "reward_model" in row else None
                extra = row["extra_info"][i] if "extra_info" in row else None
                total, info = score_row(parsed[i], votes, labels, extra, self.options, members=len(members), partial=False)
                reward_tensor[i, max(lengths[i], 1) - 1] = total
                for key, value in info.items():
                    infos[key].append(value)
        if return_dict:
            return {"reward_tensor": reward_tensor, "reward_extra_info": dict(infos)}
        return reward_tensor
