"""The ``majority_vote`` manager (TTRL-style) in verl's real reward loop and in the batch API.

Hand-built math groups of four; answers are normalised by verl's ``strip_string``, which
equates \\frac12, \\frac{1}{2}, \\dfrac{1}{2}, 0.5 and 1/2, drops spaces and a leading "x=",
but keeps 0.50 apart from 0.5. The pseudo-label is the most frequent answer, ties to the
smallest in code-point order; reward 1.0 for agreeing with it, else 0.0. The step metrics are
those verl's trainers log through the package's metrics hook (``step_metrics`` of the columns).
"""

import random

import pytest
import ray

from verl_confprofile.reward.extra_metrics import step_metrics
from verl_confprofile.reward.local_loop import LocalRewardLoop, Rollout, compose_ppo_config, rollout_batch, stream_item

pytestmark = pytest.mark.usefixtures("local_ray")

CAUSES = ("timeout", "overflow", "unreachable")
KEYS = (
    "majority_share", "agreed", "answered", "labelled", "label_accuracy", "reward_accuracy",
    "group_members", "group_partial", *(f"group_{c}" for c in CAUSES),
)  # fmt: skip

GROUPS = {
    # Answers \frac{1}{2}, \frac{1}{2}, 0.50, \frac{1}{2} -> label \frac{1}{2} with 3 of 4 (share 0.75).
    # Ground truth "1/2" normalises to \frac{1}{2}: label_accuracy 1. Gold rewards 1,1,0,1 equal
    # the majority rewards: reward_accuracy 1 for every rollout.
    "A": ("1/2", [r"We halve it: \boxed{\frac12}", r"\boxed{\frac{1}{2}}", r"so \boxed{0.50}", r"\boxed{\dfrac{1}{2}}"]),
    # Answers 7, 12, 12, 7 ("x=7" -> 7, " 12 " -> 12): a 2-2 tie goes to "12" < "7" (code points).
    # Ground truth 7: label_accuracy 0; gold rewards 1,0,0,1 vs majority 0,1,1,0: reward_accuracy 0.
    "B": ("7", [r"\boxed{7}", r"\boxed{12}", r"\boxed{ 12 }", r"\boxed{x=7}"]),
    # No answer, 5, \fbox (verl's remove_boxed refuses it: no answer), an empty box (no answer):
    # label 5 with 1 of 4 (share 0.25). Unlabelled (ground truth ""): labelled and accuracies 0.
    "C": ("", ["I cannot solve this.", r"\boxed{5}", r"\fbox{5}", r"\boxed{}"]),
    # Nobody answered (an unclosed box is no answer): no label, every reward 0, share 0.
    # Ground truth 4 (a number): label_accuracy 0; gold rewards are 0 too: reward_accuracy 1.
    "D": (4, ["no idea", r"\boxed{4", "the answer is 4", "I give up"]),
}
EXPECTED = {
    "A": [1.0, 1.0, 0.0, 1.0],
    "B": [0.0, 1.0, 1.0, 0.0],
    "C": [0.0, 1.0, 0.0, 0.0],
    "D": [0.0, 0.0, 0.0, 0.0],
}
# Per group: majority_share, label_accuracy, reward_accuracy, labelled; per rollout: answered.
SHARE = {"A": 0.75, "B": 0.5, "C": 0.25, "D": 0.0}
LABEL_ACCURACY = {"A": 1.0, "B": 0.0, "C": 0.0, "D": 0.0}
REWARD_ACCURACY = {"A": 1.0, "B": 0.0, "C": 0.0, "D": 1.0}
LABELLED = {"A": 1.0, "B": 1.0, "C": 0.0, "D": 1.0}
ANSWERED = {"A": [1.0] * 4, "B": [1.0] * 4, "C": [0.0, 1.0, 0.0, 0.0], "D": [0.0] * 4}


def row(uid, truth, split="train"):
    return {
        "data_source": "lighteval/MATH",
        "reward_model": {"style": "rule", "ground_truth": truth},
        "extra_info": {"split": split, "index": 0},
        "uid": uid,
    }


def rollouts(groups=GROUPS, tag="t"):
    return [Rollout(row(f"{g}-{tag}", truth), text) for g, (truth, texts) in groups.items() for text in texts]


def check(results):
    """Every reward and extra-info value against the hand-worked tables above."""
    assert [r["reward_score"] for r in results] == [x for g in GROUPS for x in EXPECTED[g]]
    info = iter(r["reward_extra_info"] for r in results)
    for g in GROUPS:
        for k in range(4):
            i = next(info)
            assert set(i) == {f"majority_vote/{key}" for key in KEYS}
            assert i["majority_vote/majority_share"] == SHARE[g]
            assert i["majority_vote/agreed"] == EXPECTED[g][k]
            assert i["majority_vote/answered"] == ANSWERED[g][k]
            assert i["majority_vote/label_accuracy"] == LABEL_ACCURACY[g]
            assert i["majority_vote/reward_accuracy"] == REWARD_ACCURACY[g]
            assert i["majority_vote/labelled"] == LABELLED[g]
            assert i["majority_vote/group_members"] == 4.0 and i["majority_vote/group_partial"] == 0.0
            assert all(i[f"majority_vote/group_{c}"] == 0.0 for c in CAUSES)


def columns(results):
    """The reward_extra_info columns of a batch, as the trainers hand them to the metrics hook."""
    return {k: [r["reward_extra_info"][k] for r in results] for k in results[0]["reward_extra_info"]}


def overrides(tokenizer_dir, workers=2, timeout="3"):
    return [
        f"actor_rollout_ref.model.path={tokenizer_dir}",
        f"reward.num_workers={workers}",
        "actor_rollout_ref.rollout.n=4",
        "data.train_batch_size=4",
        "reward.reward_manager.name=majority_vote",
        f"+majority_vote.group_timeout_s={timeout}",
    ]


# First in the module: the reward workers' names are taken while the module's loop is open.
def test_infinite_timeout_is_refused_at_start(qwen_tokenizer_dir):
    config = compose_ppo_config(overrides(qwen_tokenizer_dir, workers=1, timeout="inf"))
    with pytest.raises(ray.exceptions.RayActorError) as err:
        LocalRewardLoop(config)
    assert "majority_vote.group_timeout_s=inf" in str(err.value)


@pytest.fixture(scope="module")
def loop(qwen_tokenizer_dir):
    with LocalRewardLoop(compose_ppo_config(overrides(qwen_tokenizer_dir))) as loop:
        yield loop


def test_plugin_registers_majority_vote_in_both_apis():
    @ray.remote
    def probe():
        import verl  # noqa: F401  (loads the verl.plugins entry points)
        from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER
        from verl.workers.reward_manager.registry import REWARD_MANAGER_REGISTRY

        return REWARD_MANAGER["majority_vote"].__name__, REWARD_MANAGER_REGISTRY["majority_vote"].__name__

    assert ray.get(probe.remote()) == ("MajorityVoteRewardManager", "MajorityVoteBatchRewardManager")


def test_chunked_path_hand_worked(loop, qwen_tokenizer):
    results = loop.score_chunked(rollout_batch(qwen_tokenizer, rollouts(tag="chunked")))
    check(results)
    # The step's metrics over the 16 rollouts: means over rollouts, but the accuracies over the
    # 12 labelled ones (A, B, D): label_accuracy 4 (A) / 12, reward_accuracy 8 (A, D) / 12, where
    # means over all rows would say 4/16 and 8/16. Shares (4*0.75 + 4*0.5 + 4*0.25 + 0) / 16,
    # agreed (3+2+1+0) / 16, answered (4+4+1+0) / 16, labelled 12/16; every group complete.
    assert step_metrics(columns(results)) == pytest.approx(
        {
            "majority_vote/majority_share": 6 / 16,
            "majority_vote/agreed": 6 / 16,
            "majority_vote/answered": 9 / 16,
            "majority_vote/labelled": 12 / 16,
            "majority_vote/label_accuracy": 4 / 12,
            "majority_vote/reward_accuracy": 8 / 12,
            "majority_vote/group/members": 4.0,
            "majority_vote/group/partial": 0.0,
            "majority_vote/group/timeout": 0.0,
            "majority_vote/group/overflow": 0.0,
            "majority_vote/group/unreachable": 0.0,
        }
    )


def test_streaming_path_hand_worked_in_any_order(loop, qwen_tokenizer):
    for seed in range(3):  # arrival order and worker choice differ; the tie in B must not
        items = [stream_item(qwen_tokenizer, r) for r in rollouts(tag=f"s{seed}")]
        check(loop.score_streaming(items, seed=seed))


def test_missing_member_is_combined_after_timeout(loop, qwen_tokenizer):
    # Group B without its last member (x=7): answers 7, 12, 12 -> label 12 with 2 of 3 arrived.
    part = {"B": (GROUPS["B"][0], GROUPS["B"][1][:3])}
    results = loop.score_streaming([stream_item(qwen_tokenizer, r) for r in rollouts(part, "partial")])
    assert [r["reward_score"] for r in results] == [0.0, 1.0, 1.0]
    info = [r["reward_extra_info"] for r in results]
    assert all(i["majority_vote/group_partial"] == 1.0 and i["majority_vote/group_members"] == 3.0 for i in info)
    assert all(i["majority_vote/majority_share"] == pytest.approx(2 / 3) for i in info)
    # the cause is reported: a timeout, not an overflow or an unreachable board
    assert [[i[f"majority_vote/group_{c}"] for c in CAUSES] for i in info] == [[1.0, 0.0, 0.0]] * 3
    metrics = step_metrics(columns(results))
    assert {k: v for k, v in metrics.items() if k.startswith("majority_vote/group/")} == {
        "majority_vote/group/members": 3.0,
        "majority_vote/group/partial": 1.0,
        "majority_vote/group/timeout": 1.0,
        "majority_vote/group/overflow": 0.0,
        "majority_vote/group/unreachable": 0.0,
    }
    # labelled (ground truth 7), the label 12 is wrong; the gold rewards 1, 0, 0 differ from 0, 1, 1
    assert metrics["majority_vote/label_accuracy"] == 0.0 and metrics["majority_vote/reward_accuracy"] == 0.0


def test_batch_api_same_groups_in_any_row_order(qwen_tokenizer):
    import verl  # noqa: F401
    from verl.workers.reward_manager import get_reward_manager_cls

    rows = rollouts(tag="batch")
    order = list(range(len(rows)))
    random.Random(5).shuffle(order)
    batch = rollout_batch(qwen_tokenizer, [rows[i] for i in order])
    out = get_reward_manager_cls("majority_vote")(tokenizer=qwen_tokenizer, num_examine=0)(batch, return_dict=True)
    totals = out["reward_tensor"].sum(-1).tolist()
    unshuffled = [None] * len(rows)
    for position, i in enumerate(order):
        unshuffled[i] = {
            "reward_score": totals[position],
            "reward_extra_info": {k: v[position] for k, v in out["reward_extra_info"].items()},
        }
    check(unshuffled)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"group_timeout_s": float("inf")}, "majority_vote.group_timeout_s=inf"),
        ({"group_timeout_s": float("nan")}, "majority_vote.group_timeout_s=nan"),
        ({"group_timeout_s": 0}, "majority_vote.group_timeout_s=0"),
        ({"voting": "confidence"}, "unknown option(s) voting"),
    ],
)
def test_bad_options_are_refused(qwen_tokenizer, options, message):
    from verl_confprofile.reward.majority_vote import MajorityVoteBatchRewardManager

    with pytest.raises(ValueError) as err:
        MajorityVoteBatchRewardManager(qwen_tokenizer, **options)
    assert message in str(err.value)
