"""Options and start-up checks of the confprofile manager, each in a reward loop of its own.

Uses the hand-worked groups of test_reward_loop.py (EXPECTED_VARIANT is worked out there).
"""

import pytest
import ray

from test_reward_loop import EXPECTED_VARIANT, expected, overrides, rollouts, scores
from verl_confprofile.reward.local_loop import LocalRewardLoop, compose_ppo_config, stream_item

pytestmark = pytest.mark.usefixtures("local_ray")


def test_options_and_importlib_source(qwen_tokenizer_dir, taxonomy_file, qwen_tokenizer):
    extra = [
        "reward.reward_manager.source=importlib",
        "reward.reward_manager.name=ConfProfileRewardManager",
        "reward.reward_manager.module.path=pkg://verl_confprofile.reward.manager",
        "+confprofile.voting=majority",
        "+confprofile.weighting=self",
        "+confprofile.use_labels=when_present",
    ]
    config = compose_ppo_config(overrides(qwen_tokenizer_dir, taxonomy_file, workers=1, extra=extra))
    with LocalRewardLoop(config) as loop:
        results = loop.score_streaming([stream_item(qwen_tokenizer, r) for r in rollouts()])
    assert scores(results) == pytest.approx(expected(EXPECTED_VARIANT))


@pytest.mark.parametrize("workers", [1, 2])
def test_streaming_config_that_would_overflow_is_refused_at_start(qwen_tokenizer_dir, taxonomy_file, workers):
    # 128 prompts x 32 rollouts = 4096 per step. One worker's share is Binomial(4096, 1/W); the
    # smallest W with mean + 6 sd < 1000 slots: W=4 -> 1024 + ... no; W=5 -> 819.2 + 6*25.6 = 972.8.
    config = compose_ppo_config(overrides(qwen_tokenizer_dir, taxonomy_file, workers, n=32, batch=128))
    with pytest.raises(ray.exceptions.RayActorError) as err:
        LocalRewardLoop(config)
    assert "Fix: set reward.num_workers=5" in str(err.value)


def test_unknown_option_is_refused_at_start(qwen_tokenizer_dir, taxonomy_file):
    config = compose_ppo_config(overrides(qwen_tokenizer_dir, taxonomy_file, 1, extra=["+confprofile.votng=majority"]))
    with pytest.raises(ray.exceptions.RayActorError) as err:
        LocalRewardLoop(config)
    assert "unknown option(s) votng" in str(err.value)
