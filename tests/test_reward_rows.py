"""The reward path never raises on row data, and bad reward options are refused at start-up.

Row data (``reward_model``, ``extra_info``, ``uid``) reaches the reward as whatever the dataset
holds: any type, any depth. The fuzz runs every reward shipped here (confprofile, majority_vote)
through its own functions, contribute -> combine -> reward, with no safety net around them,
and the group mechanism's own row readers; the adapters are then run on hostile rows too.
"""

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from verl_confprofile.reward.confprofile_reward import confprofile_reward
from verl_confprofile.reward.group import Group, Rollout, group_key, is_validation
from verl_confprofile.reward.majority_vote import MAJORITY_VOTE
from verl_confprofile.reward.options import read_options
from verl_confprofile.reward.rows import labels_of

DEEP = 100_000  # far past Python's recursion limit


def nested(depth, leaf="x"):
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


# --- regressions: each raised before the fix ---


def test_list_split_is_not_validation():
    assert is_validation({"split": ["val"]}) is False  # was TypeError: unhashable type: 'list'
    assert is_validation({"split": np.array(["val"])}) is False
    assert is_validation({"split": {"name": "val"}}) is False
    assert is_validation({"split": "val"}) is True


def test_deeply_nested_ground_truth_is_unlabelled():
    assert labels_of("[" * DEEP + "]" * DEEP) is None  # was RecursionError
    assert labels_of('{"gender": ' + "[" * DEEP + "]" * DEEP + "}") is None
    assert labels_of('{"gender": "Male"}') == {"gender": "Male"}


@pytest.mark.parametrize("reward_model", ["oops", np.array([1, 2]), ["ground_truth"], 7])
def test_reward_model_of_any_type_is_no_ground_truth(reward_model):
    # confprofile read it as (reward_model or {}).get(...): AttributeError or ValueError before.
    rollout = Rollout({"reward_model": reward_model}, "text")
    assert rollout.ground_truth is None
    score_both_rewards(rollout)


@pytest.mark.parametrize(
    "block, message",
    [
        ({"group_timeout_s": float("inf")}, "confprofile.group_timeout_s=inf"),
        ({"group_timeout_s": float("nan")}, "confprofile.group_timeout_s=nan"),
        ({"format_penalty": float("-inf")}, "confprofile.format_penalty=-inf"),
        ({"format_penalty": float("nan")}, "confprofile.format_penalty=nan"),
        ({"weight_min": float("nan")}, "confprofile.weight_min=nan"),
        ({"weight_max": float("inf")}, "confprofile.weight_max=inf"),
        ({"format_penalty": 10**400}, "confprofile.format_penalty=1000"),  # beyond float: the reward overflowed
        ({"group_timeout_s": 10**400}, "confprofile.group_timeout_s=1000"),
    ],
)
def test_nan_and_infinite_options_are_refused(block, message):
    with pytest.raises(ValueError) as err:
        read_options(block)  # each was accepted before
    assert message in str(err.value) and "finite" in str(err.value)


# --- fuzz: any row data, any response ---

leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20), st.binary(max_size=20),
    st.sampled_from(["val", "test", "train", "", '{"gender": "Male"}', "[[[[", "1/2", r"\frac12"]),
)
values = st.recursive(
    leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=25
)
row_fields = st.fixed_dictionaries(
    {},
    optional={
        "reward_model": values | st.fixed_dictionaries({}, optional={"ground_truth": values, "style": values}),
        "extra_info": values
        | st.fixed_dictionaries(
            {}, optional={"split": values, "ref_confidence": values | st.dictionaries(st.sampled_from(["gender", "age"]), values)}
        ),
        "uid": values,
        "data_source": values,
    },
)
responses = st.one_of(
    st.text(max_size=200),
    st.sampled_from(
        [
            r"\boxed{3}", r"\boxed{\frac12}", r"\boxed 5$", r"\fbox{2}", r"\boxed{", r"\boxed{\sqrt}", r"\boxed{\frac}",
            r"\boxed{\text{ a}\text{ b}}", "<gender><tag>Male</tag><score>4</score></gender>",
            "<age><evidence>e</evidence><tag>25-34</tag><score>9</score></age>",
        ]
    ),
)
REWARDS = {
    "confprofile": confprofile_reward(None),
    "when_present": confprofile_reward({"use_labels": "when_present"}),
    "majority_vote": MAJORITY_VOTE,
}


def score_both_rewards(*rollouts):
    """Run every shipped reward over one group of rollouts with no safety net: must not raise."""
    for name, spec in REWARDS.items():
        own = [spec.contribute(r) for r in rollouts]
        result = spec.combine(own)
        for contribution, rollout in zip(own, rollouts):
            needs = spec.needs_group is None or spec.needs_group(rollout)
            group = Group(result, len(own), len(own), False, "complete") if needs else Group(None, 0, len(own), False, None)
            score, info = spec.reward(contribution, group, rollout)
            assert isinstance(score, float) and math.isfinite(score), name
            assert all(isinstance(v, float) and math.isfinite(v) for v in info.values()), name
            assert set(info) == set(spec.extra_keys), name  # the keys it declares, for every rollout


def check_row_readers(rollout):
    """The mechanism's own readers of a row: the split, the group key, the ground truth."""
    assert isinstance(rollout.validation, bool)
    key = group_key(rollout.row.get("uid"))
    assert key is None or isinstance(key, str)
    rollout.ground_truth  # noqa: B018  (must not raise)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(row_fields, responses), min_size=1, max_size=4))
def test_fuzz_rewards_never_raise_on_any_row_or_response(group):
    rollouts = [Rollout(row, text) for row, text in group]
    for rollout in rollouts:
        check_row_readers(rollout)
    score_both_rewards(*rollouts)


@pytest.mark.parametrize(
    "row",
    [
        {"reward_model": {"ground_truth": nested(DEEP)}, "extra_info": nested(DEEP), "uid": nested(DEEP)},
        {"reward_model": {"ground_truth": "[" * DEEP + "]" * DEEP}, "extra_info": {"split": nested(DEEP)}},
        {
            "reward_model": {"ground_truth": json.dumps({"gender": nested(500)})},
            "extra_info": {"ref_confidence": {"gender": nested(DEEP)}},
        },
        {"reward_model": {"ground_truth": b"\xff\xfe"}, "extra_info": {"ref_confidence": {"gender": 10**400, "age": "nan"}}},
    ],
    ids=["deep-objects", "deep-json-text", "deep-labels", "odd-scalars"],
)
def test_deep_row_data_never_raises(row):
    rollout = Rollout(row, r"<gender><tag>Male</tag><score>4</score></gender> \boxed{3}")
    check_row_readers(rollout)
    score_both_rewards(rollout, rollout)


def test_batch_adapters_score_hostile_rows(qwen_tokenizer):
    import verl  # noqa: F401  (loads the plugin entry point)
    from verl.workers.reward_manager import get_reward_manager_cls

    from verl_confprofile.reward.local_loop import rollout_batch

    rows = [
        {"reward_model": "oops", "extra_info": {"split": ["val"]}, "uid": "g"},
        {"reward_model": {"ground_truth": "[" * DEEP + "]" * DEEP}, "extra_info": nested(DEEP), "uid": "g"},
        {"reward_model": np.array([1]), "extra_info": None, "uid": None},
        {"reward_model": {"ground_truth": {"gender": nested(50)}}, "extra_info": {"ref_confidence": [1, 2]}, "uid": nested(DEEP)},
    ]
    text = r"\boxed{3} <gender><tag>Male</tag><score>4</score></gender>"
    batch = rollout_batch(qwen_tokenizer, [Rollout(r, text) for r in rows])
    for name in ("confprofile", "majority_vote"):
        out = get_reward_manager_cls(name)(tokenizer=qwen_tokenizer, num_examine=0)(batch, return_dict=True)
        assert out["reward_tensor"].shape[0] == len(rows)
        assert all(len(v) == len(rows) for v in out["reward_extra_info"].values())
