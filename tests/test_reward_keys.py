"""Every rollout reports the same reward_extra_info keys, even when the first one a worker scores fails.

verl 0.9.1 takes a batch's extra-info key set from its first rollout (``RewardLoopManager.
compute_rm_score`` and the agent loop's postprocessing: ``info[key]`` for every key of the first
row), so a rollout reporting fewer keys drops them for the whole batch, or fails the step with a
KeyError when it is not the first. The confprofile reward declares its keys (they depend on the
taxonomy), so a rollout whose functions raise reports all of them at 0.0 even when it is the first
one a reward worker scores.

The confprofile reward here is the shipped one with one change: its ``reward`` raises for a
response holding ``RAISE``. verl loads this file in its reward worker
(``reward.reward_manager.source=importlib``), as a user's own manager is loaded.
"""

from dataclasses import replace

import pytest

from verl_confprofile.reward.confprofile_reward import confprofile_reward
from verl_confprofile.reward.group_loop import GroupRewardManager
from verl_confprofile.reward.local_loop import LocalRewardLoop, Rollout, compose_ppo_config, rollout_batch, stream_item


def raising_confprofile(block):
    spec = confprofile_reward(block)

    def reward(own, group, rollout):
        if "RAISE" in rollout.response:
            raise RuntimeError("a reward that fails on this rollout")
        return spec.reward(own, group, rollout)

    return replace(spec, reward=reward)


class RaisingConfProfile(GroupRewardManager):
    name = "confprofile"  # options from the confprofile: block
    group_reward = raising_confprofile


# The keys of the two-dimension taxonomy (gender, age), written out from the README's list.
FIELDS = ("well_formed", "agree", "weight", "na", "ref_missing", "margin", "share", "labelled", "label_match", "gold", "answered", "correct")
GROUP_KEYS = ("group_members", "group_partial", "group_timeout", "group_overflow", "group_unreachable")
KEYS = {f"{d}/{f}" for d in ("gender", "age") for f in FIELDS} | set(GROUP_KEYS)


def block(dim, tag, score):
    return f"<{dim}><evidence>cues</evidence><tag>{tag}</tag><score>{score}</score></{dim}>"


def row(uid):
    return {
        "data_source": "confprofile",
        "reward_model": {"style": "model", "ground_truth": ""},
        "extra_info": {"split": "train", "index": 0, "ref_confidence": {"gender": 5, "age": 2}},
        "uid": uid,
    }


# The rollout whose reward raises: no uid, so it is a group of itself and scored at once.
RAISING = Rollout(row(None), "RAISE " + block("gender", "Male", 4) + block("age", "old", 3))
# A group of rollout.n = 2, ref {gender 5, age 2} -> w 1.0 and 0.4 (w(C) = 0.2 + 0.2 (C - 1)).
#   gender: Male 4, Male 2 -> Male;  age: old 3, young 5 -> S_young 5 > S_old 3 -> young.
#   r1: Male +1.0, old != young -0.4 = 0.6;  r2: +1.0 +0.4 = 1.4
GROUP = [block("gender", "Male", 4) + block("age", "old", 3), block("gender", "Male", 2) + block("age", "young", 5)]
GROUP_SCORES = [0.6, 1.4]


@pytest.fixture
def fresh_loop(qwen_tokenizer_dir, taxonomy_file, local_ray):
    """A reward loop whose single reward worker has scored nothing yet."""
    config = compose_ppo_config(
        [
            f"actor_rollout_ref.model.path={qwen_tokenizer_dir}",
            "reward.num_workers=1",
            "actor_rollout_ref.rollout.n=2",
            "data.train_batch_size=2",
            "reward.reward_manager.source=importlib",
            "reward.reward_manager.name=RaisingConfProfile",
            f"reward.reward_manager.module.path={__file__}",
            f"+confprofile.taxonomy={taxonomy_file}",
            "+confprofile.group_timeout_s=30",
        ]
    )
    with LocalRewardLoop(config) as loop:
        yield loop


def check_group(results):
    assert [round(r["reward_score"], 6) for r in results] == pytest.approx(GROUP_SCORES)
    assert all(set(r["reward_extra_info"]) == KEYS for r in results)
    assert [r["reward_extra_info"]["age/agree"] for r in results] == [0.0, 1.0]


def test_first_rollout_scored_raising_reports_every_key(fresh_loop, qwen_tokenizer):
    import ray

    (worker,) = fresh_loop.workers
    first = ray.get(worker.compute_score.remote(stream_item(qwen_tokenizer, RAISING)))
    assert first["reward_score"] == 0.0
    assert first["reward_extra_info"] == dict.fromkeys(KEYS, 0.0)
    check_group(fresh_loop.score_streaming([stream_item(qwen_tokenizer, Rollout(row("g-stream"), t)) for t in GROUP]))


def test_chunked_batch_whose_first_row_raises_keeps_every_key(fresh_loop, qwen_tokenizer):
    # verl builds the batch's columns from the first row's keys: all of them are there, 0.0 for it
    results = fresh_loop.score_chunked(rollout_batch(qwen_tokenizer, [RAISING, *(Rollout(row("g-chunk"), t) for t in GROUP)]))
    assert results[0]["reward_score"] == 0.0 and results[0]["reward_extra_info"] == dict.fromkeys(KEYS, 0.0)
    check_group(results[1:])
