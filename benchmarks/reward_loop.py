"""Benchmark: one GRPO step (128 prompts x 32 rollouts) through verl's RewardLoopManager.

Two pairs of managers score the same step in the same run, each with 8 reward workers:
  profiles: verl's own ``naive`` manager with a trivial regex ``compute_score`` (below) against
    ``confprofile`` (decode, parse six dimensions, cross-worker group vote); responses are
    simulated teacher answers behind a reasoning section of random length;
  math: ``naive`` with verl's own math ``compute_score`` (``math_reward``, chosen by
    ``data_source``, against the row's ground truth) against ``majority_vote`` (decode, extract
    and normalise the boxed answer with the same helpers, cross-worker majority vote);
    responses are a reasoning section of random length ending in a boxed answer, spelled in
    several equivalent ways.
Responses are 300-600 tokens of the real Qwen tokenizer. The step is sent the way the trainer
streams it (every rollout to a random worker) and, separately, through the chunked
``compute_rm_score`` path. The last lines are ``RESULT reward_loop ratio=<confprofile/naive,
streamed> ...`` and ``RESULT reward_loop_majority ratio=<majority_vote/naive math, streamed> ...``.
"""

from __future__ import annotations

import argparse
import random
import re
import tempfile
import time

_TAG = re.compile(r"<tag>(.*?)</tag>")


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    """The baseline's trivial rule: the share of <tag> fields that are not NA."""
    tags = _TAG.findall(solution_str)
    return sum(t != "NA" for t in tags) / max(len(tags), 1)


def make_step(tokenizer, prompts: int, n: int, seed: int = 0):
    from verl_confprofile.data_prep.simulated import SimulatedPopulation
    from verl_confprofile.reward.local_loop import Rollout
    from verl_confprofile.taxonomy import Taxonomy

    taxonomy = Taxonomy.load()
    population = SimulatedPopulation(taxonomy, seed=seed)
    rng = random.Random(seed)
    filler = "the watched and searched keyphrases point in the same direction while the signature is vague "
    rollouts = []
    for p in range(prompts):
        ref = {d.key: rng.randint(1, 5) for d in taxonomy}
        for k in range(n):
            answer = population.sample_text(f"user{p}", k).split("</think>")[-1]
            text = f"<think>{filler * rng.randint(10, 28)}</think>{answer}"
            row = {
                "data_source": "confprofile",
                "reward_model": {"style": "model", "ground_truth": ""},
                "extra_info": {"split": "train", "ref_confidence": ref},
                "uid": f"step-{seed}-user{p}",
            }
            rollouts.append(Rollout(row, text))
    lengths = [len(tokenizer.encode(r.response)) for r in rollouts[:: max(1, len(rollouts) // 200)]]
    return rollouts, min(lengths), max(lengths)


# Spellings of each answer that verl's strip_string makes equal, and wrong answers.
MATH_ANSWERS = [
    (r"\frac{1}{2}", [r"\frac12", r"\frac{1}{2}", r"\dfrac{1}{2}", "0.5", "1/2"]),
    ("3", ["3", " 3", "x=3"]),
    ("12", ["12", "12 "]),
    (r"\sqrt{2}", [r"\sqrt2", r"\sqrt{2}"]),
]


def make_math_step(tokenizer, prompts: int, n: int, seed: int = 0):
    """A step of math rollouts: each prompt's answer is right for about 60% of its rollouts."""
    from verl_confprofile.reward.local_loop import Rollout

    rng = random.Random(seed)
    filler = "we simplify both sides and check the result against the constraint before going on "
    rollouts = []
    for p in range(prompts):
        truth, spellings = MATH_ANSWERS[p % len(MATH_ANSWERS)]
        wrong = [s for t, ss in MATH_ANSWERS if t != truth for s in ss]
        row = {
            "data_source": "lighteval/MATH",
            "reward_model": {"style": "rule", "ground_truth": truth},
            "extra_info": {"split": "train", "index": p},
            "uid": f"math-{seed}-q{p}",
        }
        for _ in range(n):
            answer = rng.choice(spellings) if rng.random() < 0.6 else rng.choice(wrong)
            text = f"<think>{filler * rng.randint(22, 45)}</think>So the answer is $\\boxed{{{answer}}}$."
            rollouts.append(Rollout(dict(row), text))
    lengths = [len(tokenizer.encode(r.response)) for r in rollouts[:: max(1, len(rollouts) // 200)]]
    return rollouts, min(lengths), max(lengths)


def time_manager(overrides: list[str], tokenizer, rollouts, repeats: int) -> tuple[float, float]:
    from verl_confprofile.reward.local_loop import LocalRewardLoop, compose_ppo_config, rollout_batch, stream_item

    with LocalRewardLoop(compose_ppo_config(overrides)) as loop:
        items = [stream_item(tokenizer, r) for r in rollouts]
        batch = rollout_batch(tokenizer, rollouts)
        loop.score_streaming(items[:64])  # warm-up: actor connections, lazy imports
        streamed, chunked = [], []
        for rep in range(repeats):
            for r, item in zip(rollouts, items):
                item.non_tensor_batch["uid"][0] = f"{r.row['uid']}-s{rep}"  # fresh groups, as each step's uids
            start = time.perf_counter()
            loop.score_streaming(items, seed=rep)
            streamed.append(time.perf_counter() - start)
            batch.non_tensor_batch["uid"][:] = [f"{r.row['uid']}-c{rep}" for r in rollouts]
            start = time.perf_counter()
            loop.score_chunked(batch)
            chunked.append(time.perf_counter() - start)
    return min(streamed), min(chunked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from verl_confprofile.offline_tokenizer import build_qwen_tokenizer
    from verl_confprofile.reward.local_loop import init_ray

    tok_dir = build_qwen_tokenizer(tempfile.mkdtemp(prefix="qwen_tok_") + "/tok")
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    rollouts, shortest, longest = make_step(tokenizer, args.prompts, args.n)
    math_rollouts, math_shortest, math_longest = make_math_step(tokenizer, args.prompts, args.n)
    init_ray()
    common = [
        f"actor_rollout_ref.model.path={tok_dir}",
        f"reward.num_workers={args.workers}",
        f"actor_rollout_ref.rollout.n={args.n}",
        f"data.train_batch_size={args.prompts}",
    ]
    naive = time_manager(
        common
        + [
            "reward.reward_manager.name=naive",
            f"reward.custom_reward_function.path={__file__}",
            "reward.custom_reward_function.name=compute_score",
        ],
        tokenizer,
        rollouts,
        args.repeats,
    )
    ours = time_manager(common + ["reward.reward_manager.name=confprofile"], tokenizer, rollouts, args.repeats)
    naive_math = time_manager(common + ["reward.reward_manager.name=naive"], tokenizer, math_rollouts, args.repeats)
    majority = time_manager(common + ["reward.reward_manager.name=majority_vote"], tokenizer, math_rollouts, args.repeats)
    size = args.prompts * args.n
    print(f"step: {args.prompts} prompts x {args.n} rollouts = {size}, {args.workers} workers")
    print(f"profiles (responses {shortest}-{longest} tokens):")
    print(f"  naive + regex:      streamed {naive[0]:.2f} s, chunked {naive[1]:.2f} s")
    print(f"  confprofile:        streamed {ours[0]:.2f} s, chunked {ours[1]:.2f} s")
    print(f"math (responses {math_shortest}-{math_longest} tokens):")
    print(f"  naive + math_reward: streamed {naive_math[0]:.2f} s, chunked {naive_math[1]:.2f} s")
    print(f"  majority_vote:       streamed {majority[0]:.2f} s, chunked {majority[1]:.2f} s")
    print(
        f"RESULT reward_loop ratio={ours[0] / naive[0]:.2f} chunked_ratio={ours[1] / naive[1]:.2f} "
        f"confprofile_s={ours[0]:.2f} naive_s={naive[0]:.2f} target<=1.5"
    )
    print(
        f"RESULT reward_loop_majority ratio={majority[0] / naive_math[0]:.2f} "
        f"chunked_ratio={majority[1] / naive_math[1]:.2f} majority_vote_s={majority[0]:.2f} "
        f"naive_s={naive_math[0]:.2f} target<=1.5"
    )


if __name__ == "__main__":
    main()
