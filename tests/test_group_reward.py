"""The group mechanism's own rules, without Ray: never raise on a failing user function, options.

The adapters and the board are the real ones; the group rewards are small ones defined here
whose functions fail on purpose.
"""

import asyncio
import logging
import pickle

import pytest

from test_vote_board import clients
from verl_confprofile.reward.group import (
    NO_CONTRIBUTION,
    Group,
    GroupReward,
    Rollout,
    SafeGroupReward,
    describe,
    group_info,
)
from verl_confprofile.reward.group_batch import GroupBatchRewardManager
from verl_confprofile.reward.local_loop import rollout_batch
from verl_confprofile.reward.vote_board import VoteBoard


def contribute(rollout):
    if "boom" in rollout.response:
        raise RuntimeError("cannot read this one")
    return len(rollout.response)


def combine(lengths):
    if 0 in lengths:
        raise ZeroDivisionError("empty response in the group")
    return max(lengths)


def reward(own, group, rollout):
    if "nan" in rollout.response:
        return float("nan"), {"longest": 0.0}
    return float(own == group.result), {"longest": float(own == group.result)}


FRAGILE = GroupReward(contribute, combine, reward)


class Fragile(GroupBatchRewardManager):
    name = "fragile"
    group_reward = FRAGILE


def test_no_contribution_survives_pickling():
    assert pickle.loads(pickle.dumps(NO_CONTRIBUTION)) is NO_CONTRIBUTION


def test_failing_functions_score_zero_with_the_same_keys(qwen_tokenizer):
    # Group g: "abc" (3), "boom!" (contribute raises: arrived, no contribution), "abcdef" (6),
    # "nan..." (reward returns NaN). Longest contribution 7 ("nan-xyz"); "abc" 0, "abcdef" 0,
    # "boom!" 0.0 (failed), "nan-xyz" 0.0 (non-finite reward). Group h: "" has length 0, so
    # combine raises: both its members score 0.0. Keys are the same everywhere.
    texts = [("g", "abc"), ("g", "boom!"), ("g", "abcdef"), ("g", "nan-xyz"), ("h", ""), ("h", "abcd")]
    batch = rollout_batch(qwen_tokenizer, [Rollout({"uid": uid}, text) for uid, text in texts])
    out = Fragile(qwen_tokenizer)(batch, return_dict=True)
    assert out["reward_tensor"].sum(-1).tolist() == [0.0] * 6
    assert out["reward_extra_info"]["longest"] == [0.0] * 6


def test_failing_functions_give_the_reward_when_others_succeed(qwen_tokenizer):
    # Group g: "abc", "boom!" (no contribution), "abcdef": the longest of 3 and 6 is 6 -> 0, 0, 1.
    texts = ["abc", "boom!", "abcdef"]
    batch = rollout_batch(qwen_tokenizer, [Rollout({"uid": "g"}, t) for t in texts])
    out = Fragile(qwen_tokenizer)(batch, return_dict=True)
    assert out["reward_tensor"].sum(-1).tolist() == [0.0, 0.0, 1.0]


def test_board_survives_a_failing_combine():
    async def main():
        board = VoteBoard(combine)
        (client,) = clients(board, 1)
        bad = await asyncio.gather(*(client.vote("bad", n, 2, 30.0) for n in (0, 5)))
        good = await asyncio.gather(*(client.vote("good", n, 2, 30.0) for n in (3, 5)))
        failed = await client.vote("failed", NO_CONTRIBUTION, 1, 30.0)
        return bad, good, failed, board.stats()

    bad, good, failed, stats = asyncio.run(main())
    assert all(r["error"].startswith("ZeroDivisionError") and r["result"] is None for r in bad)
    assert all(r["error"] is None and r["result"] == 5 and r["members"] == 2 for r in good)
    # a group whose only member failed to contribute resolves at once, combining nothing: max([]) fails
    assert failed["members"] == 1 and failed["error"].startswith("ValueError")
    assert stats["combine_errors"] == 2 and stats["groups_complete"] == 3


COMPLETE = Group(3, 1, 1, False, "complete")


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "verl_confprofile.reward.group"]


def test_safe_reward_learns_undeclared_keys_and_says_so(caplog):
    safe = SafeGroupReward(FRAGILE, "fragile")
    assert safe.fallback() == (0.0, {})  # nothing scored yet, no extra_keys declared
    with caplog.at_level(logging.WARNING):
        assert safe.score(3, COMPLETE, Rollout({}, "abc")) == (1.0, {"longest": 1.0})
        assert safe.score(3, COMPLETE, Rollout({}, "abc")) == (1.0, {"longest": 1.0})
    assert safe.fallback() == (0.0, {"longest": 0.0})
    (message,) = warnings_of(caplog)  # once, not per rollout
    assert message.startswith("fragile: the reward's extra-info keys are not declared (GroupReward(extra_keys=...))")


def test_declared_keys_are_reported_whatever_the_reward_returns(caplog):
    # Declared: longest, short. The fallback has both from the start; a reward returning
    # {"longest", "other"} is made to fit: longest kept, short 0.0, other dropped, warned once.
    def odd(own, group, rollout):
        return 1.0, {"other": 5.0, "longest": 1.0}

    safe = SafeGroupReward(GroupReward(contribute, combine, odd, extra_keys=("longest", "short")), "odd")
    assert safe.fallback() == (0.0, {"longest": 0.0, "short": 0.0})
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert safe.score(3, COMPLETE, Rollout({}, "abc")) == (1.0, {"longest": 1.0, "short": 0.0})
    (message,) = warnings_of(caplog)
    assert "missing ['short'] reported as 0.0, unknown ['other'] dropped" in message
    assert safe.failures == 0  # a key mismatch is not a failed rollout: its score stands


def test_declared_keys_returned_as_declared_are_left_alone(caplog):
    safe = SafeGroupReward(GroupReward(contribute, combine, reward, extra_keys=("longest",)), "fragile")
    with caplog.at_level(logging.WARNING):
        assert safe.score(3, COMPLETE, Rollout({}, "abc")) == (1.0, {"longest": 1.0})
    assert warnings_of(caplog) == []


def test_group_info_reports_the_cause_of_a_partial_group():
    # 3 of 4 members, combined early to relieve a worker: partial, cause overflow
    assert group_info(Group(None, 3, 4, True, "overflow"), "mine/group_") == {
        "mine/group_members": 3.0,
        "mine/group_partial": 1.0,
        "mine/group_timeout": 0.0,
        "mine/group_overflow": 1.0,
        "mine/group_unreachable": 0.0,
    }
    # a complete group, and no group at all (needs_group false): no cause
    assert group_info(Group(None, 4, 4, False, "complete")) == {
        "group_members": 4.0, "group_partial": 0.0, "group_timeout": 0.0, "group_overflow": 0.0, "group_unreachable": 0.0
    }  # fmt: skip
    assert group_info(Group(None, 0, 4, False, None))["group_members"] == 0.0


@pytest.mark.parametrize(
    "block, message",
    [
        ({"group_timeout_s": float("inf")}, "fragile.group_timeout_s=inf"),
        ({"group_timeout_s": -1}, "fragile.group_timeout_s=-1"),
        ({"timeout": 3}, "fragile: unknown option(s) timeout"),
        ("fast", "fragile: expected a mapping of options"),
    ],
)
def test_a_fixed_group_reward_takes_only_a_timeout(block, message):
    assert describe(FRAGILE, {"group_timeout_s": 7}, "fragile").group_timeout_s == 7.0
    with pytest.raises(ValueError) as err:
        describe(FRAGILE, block, "fragile")
    assert message in str(err.value)


@pytest.mark.parametrize("module", ["group", "group_loop", "group_batch", "majority_vote"])
def test_managers_are_registered_whichever_module_is_imported_first(module):
    # Importing an adapter module before verl once made verl load this package's plugin while
    # that module was half imported: the plugin failed (verl logs it at debug level only) and
    # reward.reward_manager.name=confprofile was unknown in that process.
    import subprocess
    import sys

    code = (
        f"import verl_confprofile.reward.{module}\n"
        "from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls as loop\n"
        "from verl.workers.reward_manager import get_reward_manager_cls as batch\n"
        "print([f(n).__name__ for f in (loop, batch) for n in ('confprofile', 'majority_vote')])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ConfProfileRewardManager" in out.stdout and "MajorityVoteBatchRewardManager" in out.stdout
