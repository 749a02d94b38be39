"""``confprofile demo``: the whole method on a simulated population, on CPU, in a few minutes.

Every stage is the real command or component; only the models are replaced by the documented
simulated teacher (``data_prep/simulated.py``), which also stands in for the SFT model's
sampling and for the policy's rollouts. Because the simulated users have known true profiles,
the demo can also measure what the paper can only estimate: how accurate voted labels are.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from .data_prep.outputs import output_file
from .jsonl import InputError, write_line
from .metrics import average_scores, profile_scores
from .output_guard import declare
from .taxonomy import Taxonomy

STAGES = 7
# The RL pool is half the users, and the m-shape filter needs a user at each of the 5 difficulty levels.
MIN_USERS = 10
SAMPLE_FILES = ("teacher_samples.jsonl", "student_samples.jsonl", "eval_samples.jsonl")
# Written first into a demo's --out: a folder holding it is a demo's own, which a later demo may
# replace files in; any other folder that is not empty belongs to someone else.
MARKER = ".confprofile-demo"
GRPO_PROMPTS, GRPO_ROLLOUTS = 16, 8


class DemoError(ValueError):
    """A stage of the demo failed; its own error message is already printed."""


def _users(text: str) -> int:
    """--users: an integer of at least MIN_USERS."""
    value = int(text)
    if value < MIN_USERS:
        raise argparse.ArgumentTypeError(
            f"the demo needs at least {MIN_USERS} users (its RL pool is half of them, and the m-shape filter "
            f"needs a user at each of the 5 difficulty levels), got {text}"
        )
    return value


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on a simulated population (CPU, no network)",
        description="Run every stage of the method on simulated users, with a simulated teacher, student and policy. "
        "--out must be a new or empty folder, or one an earlier demo wrote: the demo replaces the files there.",
    )
    p.add_argument("--out", default="out/demo", help="folder for every artifact: new, empty or an earlier demo's (default: out/demo)")
    p.add_argument("--users", type=_users, default=400,
                   help=f"simulated users in the SFT pool (RL and eval pools: half; at least {MIN_USERS})")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated population and of every sample")
    p.set_defaults(func=run)
    declare(p, inputs=(), folder=True)


def _say(stage: int, text: str) -> None:
    print(f"[{stage}/{STAGES}] {text}", flush=True)


def _command(argv: list[str]) -> None:
    """Run one ``confprofile`` subcommand exactly as a user would type it."""
    from .cli import main

    print("    $ confprofile " + " ".join(argv), flush=True)
    code = main(argv)
    if code == 130:
        raise KeyboardInterrupt
    if code != 0:
        raise DemoError(f"stage `confprofile {argv[0]}` failed (its error is above)")


def claim_folder(out: Path) -> None:
    """Make ``out`` the demo's own folder, refusing one that holds files the demo did not write.

    The demo replaces its files and deletes its samples files on every run, so a folder of
    anyone else's (a project with the recipes' data/ layout, say) must never be taken for it.
    """
    if out.is_dir() and not (out / MARKER).exists() and any(out.iterdir()):
        raise InputError(
            f"--out {out}: is not empty and was not written by the demo (no {MARKER} in it); the demo replaces and "
            "deletes files in its folder, so give a new or empty folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("This folder is written by `confprofile demo`, which replaces its files on every run.\n", encoding="utf-8")


def _write_records(path: Path, population, users: list[str], labels: bool) -> None:
    with output_file(path) as fh:
        for user in users:
            write_line(fh, population.record(user, with_labels=labels))


def voting_comparison(samples_path: Path, population, taxonomy: Taxonomy) -> dict[str, dict]:
    """Table 2 on known truth: voted labels (confidence, majority) against a single sample."""
    from .aggregate import read_samples

    users = read_samples(samples_path, taxonomy)
    gold = [{k: t for k, (t, _) in population.truth(str(u)).items()} for u in users]
    predictions = {
        "single sample": [{k: (c[0][0], 5) for k, c in zip(taxonomy.keys, t.choices)} for t in users.values()],
        "majority vote": [{k: (v.tag, 5) for k, v in t.votes(taxonomy, "majority").items()} for t in users.values()],
        "confidence vote": [{k: (v.tag, 5) for k, v in t.votes(taxonomy, "confidence").items()} for t in users.values()],
    }
    return {name: average_scores(profile_scores(gold, pred, taxonomy)) for name, pred in predictions.items()}


def grpo_step(rl_dir: Path, population, tokenizer_dir: str, prompts: int, n: int) -> dict:
    """One GRPO step's rollouts scored by the confprofile manager inside verl's reward loop."""
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from .reward import confprofile_metrics  # noqa: F401  (registers the family step_metrics uses)
    from .reward.extra_metrics import step_metrics
    from .reward.local_loop import LocalRewardLoop, Rollout, compose_ppo_config, init_ray, stream_item

    rows = pq.read_table(rl_dir / "rl_train.parquet").to_pylist()[:prompts]
    rollouts = [
        Rollout(
            {"data_source": r["data_source"], "reward_model": r["reward_model"], "extra_info": r["extra_info"], "uid": f"step1-{i}"},
            population.sample_text(r["extra_info"]["user_id"], 1000 + k),
            list(r["prompt"]),
        )
        for i, r in enumerate(rows)
        for k in range(n)
    ]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    init_ray(num_cpus=2)
    config = compose_ppo_config(
        [
            f"actor_rollout_ref.model.path={tokenizer_dir}",
            "reward.num_workers=2",
            f"actor_rollout_ref.rollout.n={n}",
            f"data.train_batch_size={len(rows)}",
            "confprofile.group_timeout_s=60",
        ],
        config_dir=_configs_dir(),
        config_name="confprofile_grpo",
    )
    with LocalRewardLoop(config) as loop:
        results = loop.score_streaming([stream_item(tokenizer, r) for r in rollouts])
    infos = [r["reward_extra_info"] for r in results]
    metrics = step_metrics({k: [i[k] for i in infos] for k in infos[0]})  # what the trainer logs
    return {
        "rollouts": len(results),
        "groups": len(rows),
        "mean_reward": statistics.fmean(r["reward_score"] for r in results),
        "reward_std": statistics.pstdev(r["reward_score"] for r in results),
        "well_formed": metrics["confprofile/overall/well_formed"],
        "agree_with_quasi_ground_truth": metrics["confprofile/overall/agree"],
        "partial_groups": metrics["confprofile/group/partial"] * len(rows),
        "pseudo_label_accuracy": metrics.get("confprofile/overall/label_accuracy", 0.0),
    }


def _configs_dir() -> str:
    from importlib import resources

    return str(resources.files("verl_confprofile.configs"))


def run(args: argparse.Namespace) -> None:
    import pyarrow.parquet as pq

    from .data_prep.simulated import SimulatedPopulation
    from .offline_tokenizer import build_qwen_tokenizer

    out = Path(args.out)
    claim_folder(out)
    data = out / "data"
    data.mkdir(exist_ok=True)
    # A demo draws its samples afresh: the files of an earlier demo (another --seed or --users)
    # are not something to resume from, and synthesize would refuse them.
    for name in SAMPLE_FILES:
        (data / name).unlink(missing_ok=True)
    taxonomy = Taxonomy.load()
    population = SimulatedPopulation(taxonomy, seed=args.seed)
    seed = str(args.seed)
    pools = {
        "sft": [f"sft-{i:05d}" for i in range(args.users)],
        "rl": [f"rl-{i:05d}" for i in range(args.users // 2)],
        "eval": [f"eval-{i:05d}" for i in range(args.users // 2)],
    }

    _say(1, f"simulated population: {len(pools['sft'])} SFT users, {len(pools['rl'])} RL users, "
         f"{len(pools['eval'])} labelled eval users (hidden true profiles; RL rows carry them only to log pseudo-label accuracy)")
    for name, users in pools.items():
        _write_records(data / f"{name}_records.jsonl", population, users, labels=name != "sft")
    teacher = data / "teacher_samples.jsonl"
    _command(["synthesize", "--records", str(data / "sft_records.jsonl"), "--out", str(teacher),
              "--backend", "simulated", "--num-samples", "10", "--seed", seed])

    _say(2, "Table 2 on known truth: labels from 10 teacher samples, by aggregation (precision / recall / F1 of means)")
    comparison = voting_comparison(teacher, population, taxonomy)
    for name, avg in comparison.items():
        print(f"    {name:16s} P={100 * avg['precision']:.1f}  R={100 * avg['recall']:.1f}  F1={100 * avg['f1_of_means']:.1f}")

    _say(3, "SFT set: confidence-weighted voting + equal-frequency calibration")
    _command(["build-sft", "--records", str(data / "sft_records.jsonl"), "--samples", str(teacher), "--out", str(out / "sft")])

    _say(4, "RL set: the student's reference pass (simulated) -> frozen confidence, difficulty, m-shape filter")
    student = data / "student_samples.jsonl"
    _command(["synthesize", "--records", str(data / "rl_records.jsonl"), "--out", str(student),
              "--backend", "simulated", "--num-samples", "10", "--seed", seed])
    _command(["build-rl", "--records", str(data / "rl_records.jsonl"), "--samples", str(student),
              "--calibration", str(out / "sft" / "calibration.json"), "--out", str(out / "rl"), "--shape", "m"])

    prompts = min(GRPO_PROMPTS, pq.read_metadata(out / "rl" / "rl_train.parquet").num_rows)
    _say(5, f"one GRPO step: {prompts} prompts x {GRPO_ROLLOUTS} simulated rollouts through verl's RewardLoopManager "
         "with reward.reward_manager.name=confprofile")
    tokenizer_dir = build_qwen_tokenizer(str(out / "tokenizer"))
    step = grpo_step(out / "rl", population, tokenizer_dir, prompts=prompts, n=GRPO_ROLLOUTS)
    with output_file(out / "grpo_step.json") as fh:
        fh.write(json.dumps(step, indent=2) + "\n")
    for key, value in step.items():
        print(f"    {key}: {value:.3f}" if isinstance(value, float) else f"    {key}: {value}")

    _say(6, "evaluation on the labelled users: one simulated model output each, thresholds tau = 1..5")
    outputs = data / "eval_samples.jsonl"
    _command(["synthesize", "--records", str(data / "eval_records.jsonl"), "--out", str(outputs),
              "--backend", "simulated", "--num-samples", "1", "--seed", seed])
    _command(["eval", "--records", str(data / "eval_records.jsonl"), "--samples", str(outputs), "--out", str(out / "eval")])

    _say(7, f"done: every artifact is under {out}{os.sep}")
    print(
        "\nNext, on a GPU cluster (see recipes/ and the README):\n"
        "  export OPENAI_API_KEY=...  # the teacher endpoint\n"
        "  bash recipes/run_sft.sh                                   # teacher samples -> SFT set -> SFT\n"
        "  bash recipes/run_grpo.sh grpo checkpoints/confprofile/sft # student pass -> RL set -> GRPO\n"
        "  bash recipes/run_eval.sh grpo checkpoints/confprofile/grpo # the policy on labelled users -> eval\n"
        "  bash recipes/run_ablation.sh shape_uniform                # any ablation of the paper"
    )
