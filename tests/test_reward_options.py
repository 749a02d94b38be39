"""Reward manager options and the start-up capacity rule, without Ray."""

import pytest
from omegaconf import OmegaConf

from verl_confprofile.reward.group_loop import streaming_overflow
from verl_confprofile.reward.options import DEFAULTS, read_options


def test_defaults_are_the_papers():
    options = read_options(None)
    spec = options.spec
    assert (spec.voting, spec.weighting, spec.use_labels) == ("confidence", "frozen", "never")
    assert (spec.format_penalty, spec.weight_min, spec.weight_max) == (-1.0, 0.2, 1.0)
    assert options.taxonomy.keys == ("gender", "age", "industry", "occupation", "education", "life_stage")
    assert set(DEFAULTS) == {
        "taxonomy", "voting", "weighting", "format_penalty", "weight_min", "weight_max", "use_labels", "group_timeout_s"
    }


def test_options_from_an_omegaconf_block():
    options = read_options(OmegaConf.create({"voting": "majority", "weight_min": 0.1, "group_timeout_s": 5}))
    assert options.spec.voting == "majority" and options.spec.weight_min == 0.1 and options.group_timeout_s == 5.0


@pytest.mark.parametrize(
    "block, message",
    [
        ({"votng": "majority"}, "unknown option(s) votng"),
        ({"voting": "plurality"}, "confprofile.voting='plurality'"),
        ({"weighting": "frozen_ref"}, "confprofile.weighting='frozen_ref'"),
        ({"use_labels": "always"}, "confprofile.use_labels='always'"),
        ({"group_timeout_s": 0}, "confprofile.group_timeout_s=0"),
        ({"weight_min": 0.9, "weight_max": 0.5}, "weight_min=0.9 exceeds weight_max=0.5"),
        ({"format_penalty": "high"}, "confprofile.format_penalty='high'"),
        # Values that invert the method: a malformed block paid, a wrong tag free or rewarded.
        ({"format_penalty": 5}, "confprofile.format_penalty=5: must be at most 0"),
        ({"format_penalty": 0.5}, "confprofile.format_penalty=0.5: must be at most 0"),
        ({"weight_min": -5}, "confprofile.weight_min=-5: must be above 0"),
        ({"weight_min": 0, "weight_max": 1.0}, "confprofile.weight_min=0: must be above 0"),
        ({"weight_min": -1, "weight_max": -0.5}, "confprofile.weight_min=-1: must be above 0"),
        ({"taxonomy": "/no/such/taxonomy.yaml"}, "/no/such/taxonomy.yaml"),
    ],
)
def test_bad_options_are_errors_naming_the_option(block, message):
    with pytest.raises(ValueError) as err:
        read_options(block)
    assert message in str(err.value)


def test_a_zero_format_penalty_is_an_ablation_not_an_inversion():
    # 0 pays a malformed block nothing, less than any correct tag (w >= weight_min > 0): allowed.
    assert read_options({"format_penalty": 0}).spec.format_penalty == 0


def config(batch, n, workers, **extra):
    return OmegaConf.create(
        {
            "data": {"train_batch_size": batch},
            "actor_rollout_ref": {"rollout": {"n": n}},
            "reward": {"num_workers": workers, "reward_model": {"enable": False, "enable_resource_pool": False}},
            "algorithm": {"adv_estimator": extra.get("estimator", "grpo")},
        }
    )


def test_capacity_rule_worked_by_hand():
    # T = 128 x 32 = 4096. W=8: mean 512, sd sqrt(4096 * 1/8 * 7/8) = 21.17, 512 + 127 = 639 < 1000: accepted.
    assert streaming_overflow(config(128, 32, 8)) is None
    # W=4: 1024 + ... >= 1000: refused; W=5 is the first accepted (819.2 + 6 * 25.6 = 972.8).
    message = streaming_overflow(config(128, 32, 4))
    assert "reward.num_workers=4" in message and "Fix: set reward.num_workers=5" in message
    # REMAX adds one greedy rollout per prompt: T = 128 x 8 + 128 = 1152 on one worker (sd 0) -> refused;
    # W=2: 576 + 6 * sqrt(1152 / 4) = 576 + 101.8 = 677.8 -> the fix says 2.
    assert "Fix: set reward.num_workers=2" in streaming_overflow(config(128, 8, 1, estimator="remax"))
    assert streaming_overflow(config(128, 7, 1)) is None  # 896 < 1000 with one worker (sd 0)


def test_no_capacity_limit_when_rewards_are_computed_in_chunks():
    cfg = config(128, 32, 1)
    cfg.reward.reward_model.enable = True  # colocated reward model: one compute_rm_score call per worker
    assert streaming_overflow(cfg) is None
