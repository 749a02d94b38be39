"""A user's own group reward, defined here exactly as in the README, run through verl's real
reward loop with ``reward.reward_manager.source=importlib`` (nothing installed, nothing registered).

The reward pays a correct answer 1.0 when it is no longer than the median length of its group's
correct answers, 0.5 when it is longer, and a wrong one 0.0. verl loads this file in every
reward worker; the ``combine`` function travels to the vote board by value.
"""

# --- the README example, verbatim ---
import statistics

from verl.utils.reward_score.math_reward import compute_score

from verl_confprofile.reward.group import GroupReward
from verl_confprofile.reward.group_loop import GroupRewardManager


def contribute(rollout):  # in the reward worker: is the answer right, and how long is it?
    return compute_score(rollout.response, str(rollout.ground_truth)) == 1.0, len(rollout.response)


def combine(contributions):  # once per group: the median length of the correct answers
    lengths = [length for correct, length in contributions if correct]
    return statistics.median(lengths) if lengths else None


def reward(own, group, rollout):  # each rollout: its own contribution against the group's result
    correct, length = own
    short = correct and (group.result is None or length <= group.result)
    return (1.0 if short else 0.5 if correct else 0.0), {"short_correct/short": float(short)}


class ShortCorrect(GroupRewardManager):
    name = "short_correct"  # options come from a `short_correct:` block (group_timeout_s)
    group_reward = GroupReward(contribute, combine, reward, extra_keys=("short_correct/short",))
# --- end of the example ---


import pytest  # noqa: E402

from verl_confprofile.reward.local_loop import (  # noqa: E402
    LocalRewardLoop,
    Rollout,
    compose_ppo_config,
    rollout_batch,
    stream_item,
)

# Group S, ground truth 3: correct answers of 9 ("\boxed{3}"), 34 and 23 characters; median 23.
#   9 <= 23 -> 1.0; 34 > 23 -> 0.5; 23 <= 23 -> 1.0; "\boxed{4}" is wrong -> 0.0.
# Group W, ground truth 3: no correct answer (median None) -> 0.0 everywhere.
GROUPS = {
    "S": [r"\boxed{3}", r"Adding one and two gives \boxed{3}", r"One plus two: \boxed{3}", r"\boxed{4}"],
    "W": [r"\boxed{1}", r"\boxed{2}", "no idea", r"\boxed{5}"],
}
EXPECTED = [1.0, 0.5, 1.0, 0.0] + [0.0] * 4
SHORT = [1.0, 0.0, 1.0, 0.0] + [0.0] * 4


def test_readme_example_is_the_one_tested():
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    source = Path(__file__).read_text()
    example = source.split("# --- the README example, verbatim ---\n")[1].split("# --- end of the example ---")[0]
    assert example in readme
    assert len(example.strip().splitlines()) < 30


@pytest.fixture(scope="module")
def loop(qwen_tokenizer_dir, local_ray):
    config = compose_ppo_config(
        [
            f"actor_rollout_ref.model.path={qwen_tokenizer_dir}",
            "reward.num_workers=2",
            "actor_rollout_ref.rollout.n=4",
            "data.train_batch_size=2",
            "reward.reward_manager.source=importlib",
            "reward.reward_manager.name=ShortCorrect",
            f"reward.reward_manager.module.path={__file__}",
            "+short_correct.group_timeout_s=30",
        ]
    )
    with LocalRewardLoop(config) as loop:
        yield loop


def rollouts(tag):
    return [
        Rollout({"data_source": "math", "reward_model": {"ground_truth": "3"}, "uid": f"{g}-{tag}"}, text)
        for g, texts in GROUPS.items()
        for text in texts
    ]


def test_user_group_reward_chunked_and_streamed(loop, qwen_tokenizer):
    results = {
        "chunked": loop.score_chunked(rollout_batch(qwen_tokenizer, rollouts("chunked"))),
        "streamed": loop.score_streaming([stream_item(qwen_tokenizer, r) for r in rollouts("streamed")], seed=2),
    }
    for path, out in results.items():
        assert [r["reward_score"] for r in out] == EXPECTED, path
        assert [r["reward_extra_info"]["short_correct/short"] for r in out] == SHORT, path
