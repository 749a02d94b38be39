"""Benchmark: one GRPO step (128 prompts x 32 rollouts) through verl's RewardLoopManager.

Both managers score the same step in the same run, each with 8 reward workers:
  baseline: verl's own ``naive`` manager with a trivial regex ``compute_score`` (below);
  confprofile: the Conf-Profile manager (decode, parse six dimensions, cross-worker group vote).
Responses are 300-600 tokens of the real Qwen tokenizer (simulated teacher answers behind a
reasoning section of random length). The step is sent the way the trainer streams it (every
rollout to a random worker) and, separately, through the chunked ``compute_rm_score`` path.
The last line is ``RESULT reward_loop ratio=<confprofile/naive, streamed> ...``.
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
    size = args.prompts * args.n
    print(f"step: {args.prompts} prompts x {args.n} rollouts = {size}, responses {shortest}-{longest} tokens, {args.workers} workers")
    print(f"naive + regex:  streamed {naive[0]:.2f} s, chunked {naive[1]:.2f} s")
    print(f"confprofile:    streamed {ours[0]:.2f} s, chunked {ours[1]:.2f} s")
    print(
        f"RESULT reward_loop ratio={ours[0] / naive[0]:.2f} chunked_ratio={ours[1] / naive[1]:.2f} "
        f"confprofile_s={ours[0]:.2f} naive_s={naive[0]:.2f} target<=1.5"
    )


if __name__ == "__main__":
    main()
