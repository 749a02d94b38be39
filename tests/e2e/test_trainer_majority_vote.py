"""A GRPO step scored by ``majority_vote`` in verl's real v1 trainer, on CPU (``verl_cpu_harness``).

``python -m verl.trainer.main_ppo`` with ``reward.reward_manager.name=majority_vote`` runs one
GRPO step (2 prompts x 4 rollouts) from the random tiny model on a tiny math set in verl's
RLHFDataset schema that the test writes, without validation (the step is what is under test).

The test recomputes every rollout's reward from the dumped response text by the rule itself,
worked here independently of the package: the answer is the last ``\\boxed{}`` normalised with
verl's math helpers, the pseudo-label the most frequent answer (ties to the smallest), reward 1
for agreeing with it, else 0. verl's v1 rollout dump carries no ``reward_extra_info``, so the
text is all there is to recompute from. A random model seldom writes a box, so most rewards are
0; the check is that the trainer logged exactly what the rule gives over complete groups.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from verl.utils.reward_score.math_reward import last_boxed_only_string, remove_boxed, strip_string

from verl_cpu_harness import runner
from verl_cpu_harness.runner import GRPO_TEST_OVERRIDES

ROLLOUT_N = int(next(o for o in GRPO_TEST_OVERRIDES if o.startswith("actor_rollout_ref.rollout.n=")).split("=")[1])
BATCH = int(next(o for o in GRPO_TEST_OVERRIDES if o.startswith("data.train_batch_size=")).split("=")[1])
# question -> ground truth
PROBLEMS = {"What is 2+3?": "5", "What is half of 1?": "\\frac{1}{2}"}
INSTRUCTION = " Put the final answer in \\boxed{}."
MAJORITY_VOTE_OVERRIDES = (
    "reward.reward_manager.name=majority_vote",
    "trainer.total_training_steps=1",
    "trainer.val_before_train=false",
    "trainer.test_freq=-1",
    "data.max_response_length=32",
)


def math_rl_parquet(path: Path) -> str:
    """The problems as verl's RLHFDataset reads them (one row each)."""
    rows = [
        {
            "data_source": "tiny_math",
            "prompt": [{"role": "user", "content": question + INSTRUCTION}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": truth},
            "extra_info": {"split": "train", "index": i},
        }
        for i, (question, truth) in enumerate(PROBLEMS.items())
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def answer(text: str) -> str | None:
    """The last ``\\boxed{}``'s content as verl's ``strip_string`` normalises it (raw where it fails)."""
    boxed = last_boxed_only_string(text)
    if boxed is None:
        return None
    try:
        content = remove_boxed(boxed)
    except AssertionError:  # an \\fbox: no answer
        return None
    try:
        content = strip_string(content)
    except Exception:
        pass
    return content or None


def majority_rewards(texts: list[str]) -> list[float]:
    """Rewards of one group: 1.0 for an answer equal to the most frequent one (ties to the smallest)."""
    answers = [answer(t) for t in texts]
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return [0.0] * len(texts)
    top = max(votes.values())
    label = min(a for a, c in votes.items() if c == top)
    return [float(a == label) for a in answers]


@pytest.fixture(scope="module")
def majority_run(tmp_path_factory, tiny_model) -> runner.GRPORun:
    work = tmp_path_factory.mktemp("majority_vote")
    data = math_rl_parquet(work / "math.parquet")
    return runner.run_main_ppo(work / "run", tiny_model, data, data,
                               overrides=[*GRPO_TEST_OVERRIDES, *MAJORITY_VOTE_OVERRIDES])


def test_grpo_step_is_scored_by_majority_vote(majority_run):
    assert [s["step"] for s in majority_run.steps] == [1]
    rows = majority_run.rollouts(1)
    assert len(rows) == BATCH * ROLLOUT_N
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["input"]].append(row)
    # every prompt came back as one group of rollout.n members
    assert sorted(len(g) for g in groups.values()) == [ROLLOUT_N] * BATCH
    expected: list[float] = []
    for group in groups.values():
        rewards = majority_rewards([r["output"] for r in group])
        # each rollout's reward is the rule's over its complete group (a partial vote could differ)
        assert [r["score"] for r in group] == rewards
        expected += rewards
    step = majority_run.steps[0]
    assert step["critic/score/mean"] == pytest.approx(sum(expected) / len(expected))
    assert step["critic/score/max"] == max(expected)
    assert step["critic/score/min"] == min(expected)
