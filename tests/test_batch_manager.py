"""The batch-level manager (verl.workers.reward_manager API, as verl <= 0.7 trainers call it).

Same hand-worked groups and expected rewards as test_reward_loop.py (worked out there).
"""

import random

import pytest
import torch

from test_reward_loop import EXPECTED_DEFAULT, EXPECTED_VARIANT, expected, rollouts
from verl_confprofile.reward.local_loop import rollout_batch


def manager(qwen_tokenizer, **options):
    import verl  # noqa: F401  (loads the plugin entry point)
    from verl.workers.reward_manager import get_reward_manager_cls

    return get_reward_manager_cls("confprofile")(tokenizer=qwen_tokenizer, num_examine=0, **options)


def totals(batch, reward_tensor):
    # The reward sits on the last valid response token, as verl's batch managers put it.
    prompt_len = batch.batch["prompts"].shape[-1]
    last = batch.batch["attention_mask"][:, prompt_len:].sum(-1) - 1
    assert torch.count_nonzero(reward_tensor.sum(-1) - reward_tensor[torch.arange(len(batch)), last]) == 0
    return [round(x, 6) for x in reward_tensor.sum(-1).tolist()]


def test_batch_manager_groups_by_uid_in_any_row_order(qwen_tokenizer, taxonomy_file):
    rows = rollouts()
    order = list(range(len(rows)))
    random.Random(3).shuffle(order)  # members of a group need not be contiguous in the batch
    batch = rollout_batch(qwen_tokenizer, [rows[i] for i in order])
    out = manager(qwen_tokenizer, taxonomy=taxonomy_file)(batch, return_dict=True)
    want = expected(EXPECTED_DEFAULT)
    assert totals(batch, out["reward_tensor"]) == pytest.approx([want[i] for i in order])
    info = out["reward_extra_info"]
    assert len(info["gender/agree"]) == len(rows)
    assert set(info["group_members"]) == {4.0}
    # the whole group is in the batch: voted complete, no cause of a partial group
    assert all(set(info[k]) == {0.0} for k in ("group_partial", "group_timeout", "group_overflow", "group_unreachable"))


def test_batch_manager_options_as_keyword_arguments(qwen_tokenizer, taxonomy_file):
    batch = rollout_batch(qwen_tokenizer, rollouts())
    tensor = manager(qwen_tokenizer, taxonomy=taxonomy_file, voting="majority", weighting="self", use_labels="when_present")(batch)
    assert totals(batch, tensor) == pytest.approx(expected(EXPECTED_VARIANT))


def test_batch_manager_rejects_unknown_option(qwen_tokenizer):
    with pytest.raises(ValueError, match="unknown option"):
        manager(qwen_tokenizer, votes="majority")
