"""The confprofile manager inside verl's real reward loop: Ray actors, RewardLoopManager, composed config.

Groups are hand-built over a two-dimension taxonomy, gender [Female, Male, NA] and age
[young, old, NA] (the ``taxonomy_file`` fixture of conftest.py), and every expected reward is
worked out from Eq. 6-8 in the comments.
w(C) = 0.2 + 0.2 * (C - 1): w(1)=0.2, w(2)=0.4, w(3)=0.6, w(4)=0.8, w(5)=1.0. Format penalty -1.
"""

import json
import os
import time

import pytest
import ray

from verl_confprofile.reward.local_loop import LocalRewardLoop, Rollout, compose_ppo_config, stream_item

pytestmark = pytest.mark.usefixtures("local_ray")


def block(dim, tag, score):
    return f"<{dim}><evidence>seen in the keyphrases</evidence><tag>{tag}</tag><score>{score}</score></{dim}>"


def text(gender, age, preamble="<think>weighing the cues</think>"):
    """A response with the two blocks; (None) for a dimension means a malformed block (no score)."""
    g = block("gender", *gender) if gender else "<gender><tag>Male</tag></gender>"
    a = block("age", *age) if age else "<age><tag>young</tag></age>"
    return f"{preamble}\n{a}\nand\n{g}"  # blocks out of taxonomy order, with text around them


def row(uid, ref=None, labels=None, split="train"):
    extra = {"split": split, "index": 0}
    if ref is not None:
        extra["ref_confidence"] = ref
    return {
        "data_source": "confprofile",
        "reward_model": {"style": "model", "ground_truth": json.dumps(labels) if labels else ""},
        "extra_info": extra,
        "uid": uid,
    }


# Group A, ref {gender 5, age 2} -> w 1.0 and 0.4.
#   gender: Male 5, Male 1, Female 4, Female 4 -> S_Male=6, S_Female=8 -> Female (count tie 2-2 too)
#   age:    old 2, malformed, young 3, young 1 -> S_old=2, S_young=4 -> young
GROUP_A = [(("Male", 5), ("old", 2)), (("Male", 1), None), (("Female", 4), ("young", 3)), (("Female", 4), ("young", 1))]
# Group B, ref {gender 1, age 4} -> w 0.2 and 0.8; the last member is not a profile at all.
#   gender: NA 3, NA 2, Male 4 -> S_NA=5 > S_Male=4 -> NA;  age: old 4, old 5, NA 5 -> S_old=9 > 5 -> old
GROUP_B = [(("NA", 3), ("old", 4)), (("NA", 2), ("old", 5)), (("Male", 4), ("NA", 5)), "I cannot tell."]
# Group C, labelled {gender Male, age old}, no ref_confidence (-> w 1.0, ref_missing 2 per row).
#   gender: Female 5, Female 5, Male 2, Male 1 -> S_Female=10 > S_Male=3 -> Female
#   age:    young 5, old 1, old 1, young 1 -> S_young=6 > S_old=2 -> young
GROUP_C = [(("Female", 5), ("young", 5)), (("Female", 5), ("old", 1)), (("Male", 2), ("old", 1)), (("Male", 1), ("young", 1))]
# Group D, ref {gender 3, age 3} -> w 0.6 (confidence and majority votes differ here).
#   gender: Male 1, Male 1, Female 5, NA 1 -> confidence: S_Female=5 > S_Male=2 -> Female; majority: Male (2 votes)
#   age:    young 2, old 1, young 5, young 4 -> young either way (S 11 vs 1; 3 votes vs 1)
GROUP_D = [(("Male", 1), ("young", 2)), (("Male", 1), ("old", 1)), (("Female", 5), ("young", 5)), (("NA", 1), ("young", 4))]

GROUPS = {
    "A": (GROUP_A, {"gender": 5, "age": 2}, None),
    "B": (GROUP_B, {"gender": 1, "age": 4}, None),
    "C": (GROUP_C, None, {"gender": "Male", "age": "old"}),
    "D": (GROUP_D, {"gender": 3, "age": 3}, None),
}

# Default options (confidence voting, frozen weights, use_labels never):
EXPECTED_DEFAULT = {
    # A: r1 Male!=Female -1.0, old!=young -0.4 = -1.4; r2 -1.0 + format -1 = -2.0; r3, r4 +1.0 +0.4 = 1.4
    "A": [-1.4, -2.0, 1.4, 1.4],
    # B: r1, r2 +0.2 +0.8 = 1.0; r3 Male!=NA -0.2, NA!=old -0.8 = -1.0; r4 two format penalties = -2.0
    "B": [1.0, 1.0, -1.0, -2.0],
    # C (labels only logged; w 1.0): r1 +1 +1 = 2; r2 +1 -1 = 0; r3 -1 -1 = -2; r4 -1 +1 = 0
    "C": [2.0, 0.0, -2.0, 0.0],
    # D: r1 -0.6 +0.6 = 0; r2 -0.6 -0.6 = -1.2; r3 +0.6 +0.6 = 1.2; r4 NA!=Female -0.6, +0.6 = 0
    "D": [0.0, -1.2, 1.2, 0.0],
}
# voting=majority, weighting=self (w of the rollout's own score), use_labels=when_present:
EXPECTED_VARIANT = {
    # A: gender counts tie 2-2 -> S 8>6 -> Female; age young (2 votes vs 1).
    #    r1 Male(5) -1.0, old(2) -0.4 = -1.4; r2 Male(1) -0.2, format -1 = -1.2;
    #    r3 Female(4) +0.8, young(3) +0.6 = 1.4; r4 Female(4) +0.8, young(1) +0.2 = 1.0
    "A": [-1.4, -1.2, 1.4, 1.0],
    # B: NA (2 votes), old (2 votes). r1 +0.6 +0.8 = 1.4; r2 +0.4 +1.0 = 1.4; r3 -0.8 -1.0 = -1.8; r4 -2.0
    "B": [1.4, 1.4, -1.8, -2.0],
    # C: the labels (Male, old) are the targets. r1 Female(5) -1.0, young(5) -1.0 = -2.0;
    #    r2 -1.0, old(1) +0.2 = -0.8; r3 Male(2) +0.4, old(1) +0.2 = 0.6; r4 Male(1) +0.2, young(1) -0.2 = 0
    "C": [-2.0, -0.8, 0.6, 0.0],
    # D: majority gender Male, age young. r1 +0.2 +0.4 = 0.6; r2 +0.2, old(1) -0.2 = 0;
    #    r3 Female(5) -1.0, young(5) +1.0 = 0; r4 NA(1) -0.2, young(4) +0.8 = 0.6
    "D": [0.6, 0.0, 0.0, 0.6],
}


def rollouts(groups=GROUPS, split="train", tag=None):
    """The groups' rollouts; their uids end in ``tag`` (default: the split).

    The board remembers a voted group for group_timeout_s and hands its frozen result to any
    later member of the same uid, so every scoring call in a module needs its own tag, as the
    trainer's fresh uids per step are.
    """
    out = []
    for uid, (members, ref, labels) in groups.items():
        for m in members:
            response = m if isinstance(m, str) else text(*m)
            out.append(Rollout(row(f"{uid}-{tag or split}", ref, labels, split), response))
    return out


def expected(table):
    return [x for uid in GROUPS for x in table[uid]]


def overrides(tokenizer_dir, taxonomy_file, workers, n=4, batch=4, extra=()):
    return [
        f"actor_rollout_ref.model.path={tokenizer_dir}",
        f"reward.num_workers={workers}",
        f"actor_rollout_ref.rollout.n={n}",
        f"data.train_batch_size={batch}",
        "reward.reward_manager.name=confprofile",
        f"+confprofile.taxonomy={taxonomy_file}",
        "+confprofile.group_timeout_s=3",
        *extra,
    ]


@pytest.fixture(scope="module")
def default_loop(qwen_tokenizer_dir, taxonomy_file):
    with LocalRewardLoop(compose_ppo_config(overrides(qwen_tokenizer_dir, taxonomy_file, workers=2))) as loop:
        yield loop


def scores(results):
    return [round(r["reward_score"], 6) for r in results]


CAUSES = ("timeout", "overflow", "unreachable")


def cause_of(result):
    """The cause a result reports for a partial group (None when complete); partial iff a cause."""
    info = result["reward_extra_info"]
    causes = [c for c in CAUSES if info[f"group_{c}"] == 1.0]
    assert all(info[f"group_{c}"] in (0.0, 1.0) for c in CAUSES) and len(causes) <= 1
    assert info["group_partial"] == float(bool(causes))
    return causes[0] if causes else None


def test_plugin_registers_confprofile_inside_ray_workers():
    @ray.remote
    def probe():
        import verl  # noqa: F401  (loads the verl.plugins entry points)
        from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER
        from verl.workers.reward_manager.registry import REWARD_MANAGER_REGISTRY

        return os.getpid(), REWARD_MANAGER["confprofile"].__module__, REWARD_MANAGER_REGISTRY["confprofile"].__module__

    pid, loop_module, batch_module = ray.get(probe.remote())
    assert pid != os.getpid()
    assert loop_module == "verl_confprofile.reward.manager"
    assert batch_module == "verl_confprofile.reward.batch_manager"


def test_chunked_path_hand_worked_rewards(default_loop, qwen_tokenizer):
    from verl_confprofile.reward.local_loop import rollout_batch

    results = default_loop.score_chunked(rollout_batch(qwen_tokenizer, rollouts(tag="chunked")))
    assert scores(results) == pytest.approx(expected(EXPECTED_DEFAULT))


def test_streaming_path_hand_worked_rewards_any_order(default_loop, qwen_tokenizer):
    for seed in range(3):  # different arrival orders and worker choices, each a vote of its own
        items = [stream_item(qwen_tokenizer, r) for r in rollouts(tag=f"s{seed}")]
        results = default_loop.score_streaming(items, seed=seed)
        assert scores(results) == pytest.approx(expected(EXPECTED_DEFAULT))
    info = [r["reward_extra_info"] for r in results]
    a2, b4, c1 = info[1], info[7], info[8]
    assert a2["age/well_formed"] == 0.0 and a2["gender/well_formed"] == 1.0
    assert b4["gender/well_formed"] == 0.0 and b4["age/weight"] == 0.0
    # group A margins: gender 8-6 = 2, age 4-2 = 2; every member sees the same group values
    assert {i["gender/margin"] for i in info[:4]} == {2.0}
    # winners' shares: A gender Female 2 of 4, age young 2 of 4; B age old 2 of 4
    assert {i["gender/share"] for i in info[:4]} == {0.5} and info[4]["age/share"] == 0.5
    assert all(i["group_members"] == 4 and i["group_partial"] == 0.0 for i in info)
    assert all(i[f"group_{cause}"] == 0.0 for i in info for cause in CAUSES)
    # group C is labelled Male/old but voted Female/young: pseudo-label accuracy 0 on both, and
    # as a prediction each is an answer (not NA) that is wrong
    assert c1["gender/labelled"] == 1.0 and c1["gender/label_match"] == 0.0
    assert (c1["gender/gold"], c1["gender/answered"], c1["gender/correct"]) == (1.0, 1.0, 0.0)
    assert c1["gender/ref_missing"] == c1["age/ref_missing"] == 1.0 and info[0]["gender/ref_missing"] == 0.0
    assert info[0]["gender/labelled"] == 0.0 and info[0]["gender/gold"] == 0.0
    # group B voted gender NA: no answer
    assert info[4]["gender/answered"] == 0.0 and info[4]["age/answered"] == 1.0


def test_missing_member_is_voted_after_timeout_and_marked_partial(default_loop, qwen_tokenizer):
    # Only the first three members of group A arrive (n=4): after group_timeout_s=3 the vote is
    # over them: gender Male 5+1=6 vs Female 4 -> Male; age old 2 vs young 3 -> young.
    # r1: Male +1.0, old -0.4 = 0.6; r2: +1.0, format -1 = 0.0; r3: Female -1.0, young +0.4 = -0.6
    partial = {"A": (GROUP_A[:3], {"gender": 5, "age": 2}, None)}
    results = default_loop.score_streaming([stream_item(qwen_tokenizer, r) for r in rollouts(partial, "p")])
    assert scores(results) == pytest.approx([0.6, 0.0, -0.6])
    assert all(r["reward_extra_info"]["group_partial"] == 1.0 for r in results)
    assert all(r["reward_extra_info"]["group_members"] == 3.0 for r in results)
    # the cause is reported: a timeout, not an overflow or an unreachable board
    assert [cause_of(r) for r in results] == ["timeout"] * 3


def test_validation_rows_use_val_group_size(default_loop, qwen_tokenizer):
    # split=test rows are groups of rollout.val_kwargs.n = 1 (verl's default): each is voted on
    # itself at once, although rollout.n = 4. Group B r3 alone: Male, NA agree -> +0.2 +0.8 = 1.0.
    solo = {"B": ([GROUP_B[2]], {"gender": 1, "age": 4}, None)}
    results = default_loop.score_streaming([stream_item(qwen_tokenizer, r) for r in rollouts(solo, "test")])
    assert scores(results) == [1.0]
    assert results[0]["reward_extra_info"]["group_partial"] == 0.0
    assert cause_of(results[0]) is None


def test_unreachable_board_scores_alone_and_says_so(default_loop, qwen_tokenizer):
    # Every reward worker first votes through the board (a validation row: a group of 1, voted
    # at once), then the board actor is killed. Each worker's next rollout is scored against
    # itself, marked partial with the cause "unreachable"; the one after that gets a new board.
    # Group B r3 alone (Male 4, NA 5; ref gender 1, age 4): its own vote, both agree,
    # +0.2 +0.8 = 1.0, whichever way it is voted.
    def score_on(worker, tag):
        item = stream_item(qwen_tokenizer, Rollout(row(f"B-{tag}", {"gender": 1, "age": 4}, split="test"), text(*GROUP_B[2])))
        return ray.get(worker.compute_score.remote(item))

    workers = default_loop.workers
    assert all(cause_of(score_on(w, f"before-{i}")) is None for i, w in enumerate(workers))
    boards = [a for a in ray.util.list_named_actors(all_namespaces=True) if "confprofile_vote_board_" in a["name"]]
    assert boards
    for board in boards:
        ray.kill(ray.get_actor(board["name"], namespace=board["namespace"]))
    deadline = time.monotonic() + 60
    for board in boards:  # wait until each is dead: its name is free again
        while time.monotonic() < deadline:
            try:
                ray.get_actor(board["name"], namespace=board["namespace"])
            except ValueError:
                break
            time.sleep(0.05)
    for i, worker in enumerate(workers):
        result = score_on(worker, f"unreachable-{i}")
        assert result["reward_score"] == pytest.approx(1.0)
        assert cause_of(result) == "unreachable"
        assert result["reward_extra_info"]["group_members"] == 1.0
    after = [score_on(w, f"after-{i}") for i, w in enumerate(workers)]
    assert [r["reward_score"] for r in after] == pytest.approx([1.0] * len(workers))
    assert [cause_of(r) for r in after] == [None] * len(workers)
