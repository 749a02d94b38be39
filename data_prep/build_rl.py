"""``confprofile build-rl``: records + the student's samples + the saved calibrator -> the RL set (section 4.3).

The samples are one offline pass of the SFT model over the RL pool (M per user). Per user:

- ``ref_confidence``: the frozen reference confidence of each dimension, the calibrator saved by
  build-sft applied to the S of the student's vote (level 1..5; 1 for a dimension without any
  well-formed sample, the calibrator's level for S = 0);
- ``difficulty``: the equal-frequency level 1..5, over the pool, of the mean of those levels
  (see ``difficulty``);

then ``--val-fraction`` of the pool is held out for validation (drawn with ``random.Random(seed)``,
before any filtering, so validation keeps the pool's difficulty mix) and the rest is filtered by
``--shape`` (and ``--size``, ``--seed``) with ``difficulty.select``.

Rows follow verl's RLHFDataset schema as the reward manager reads them (reward/rows.py):
``data_source`` "confprofile", ``prompt`` (the chat), ``ability`` "profiling", ``reward_model``
{"style": "model", "ground_truth": JSON of the record's labels with canonical spellings, or ""},
``extra_info`` {"user_id", "index" (row number), "split": "train" or "val", "ref_confidence", "difficulty"}.

Writes to --out: rl_train.parquet, rl_val.parquet (with --val-fraction), report.json and difficulty.png.
Validation rows say ``split: val``: the reward manager votes them in groups of
``rollout.val_kwargs.n``, and labelled ones carry their gold labels for scoring.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

from verl_confprofile.calibration import LEVELS, Calibrator
from verl_confprofile.gc_pause import cyclic_gc_paused
from verl_confprofile.jsonl import truncation_summary, write_json
from verl_confprofile.output_guard import declare
from verl_confprofile.tally import UserVote
from verl_confprofile.taxonomy import Taxonomy

from . import difficulty
from .budget import PromptBudget, prompt_summary
from .build_args import add_common_arguments, check_val_fraction, common_options, left_out, val_users
from .engine import make_engine
from .outputs import OutputFolder, write_parquet
from .prepare import prepare, prompt_report

DATA_SOURCE = "confprofile"
ABILITY = "profiling"
# Every file build-rl writes in --out, put in place in this order when the build is complete
# (the report last); an earlier build's copy of one it does not write again is removed.
OUTPUTS = ("rl_train.parquet", "rl_val.parquet", "difficulty.png", "report.json")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "build-rl",
        help="build the RL set from student samples (reference confidence, difficulty filtering)",
        description="From the SFT model's samples of the RL pool: each user's frozen reference confidence (build-sft's "
        "calibration) and difficulty, a --shape filter over the difficulty levels, and the RL parquet verl's GRPO reads, "
        "with report.json, into --out.",
    )
    p.add_argument("--samples", required=True, help="student samples JSONL (one offline pass of the SFT model): user_id, sample_idx, model, text")
    p.add_argument("--calibration", required=True, help="calibration.json written by build-sft")
    add_common_arguments(p)
    p.add_argument("--shape", default=difficulty.ORIGINAL, help=f"difficulty shape: {', '.join((difficulty.ORIGINAL, *difficulty.SHAPES))} or 'w1,w2,w3,w4,w5' (default: original, no filtering)")
    p.add_argument("--size", type=int, metavar="N", help="number of users to keep (default: the most the shape allows)")
    p.add_argument("--val-fraction", type=float, default=0.0, metavar="F",
                   help="share of the pool held out, before filtering, for rl_val.parquet (default 0: none)")
    p.set_defaults(func=run)
    declare(p, inputs=("records", "samples", "calibration", "taxonomy", "tokenizer"), folder=True)


def run(args: argparse.Namespace) -> None:
    report = build_rl(
        args.records,
        args.samples,
        args.calibration,
        args.out,
        shape=args.shape,
        size=args.size,
        val_fraction=args.val_fraction,
        **common_options(args),
    )
    counts = report["counts"]
    print(
        f"build-rl: {counts['rows']} train + {counts['val_rows']} val rows of {counts['users_kept']} eligible users, shape {args.shape} "
        f"(left out: {left_out(report)}; {truncation_summary(report['truncated_samples'])}; {prompt_summary(report['prompts'])}) -> {args.out}"
    )


def ref_confidence(user: UserVote, calibrator: Calibrator) -> dict[str, int]:
    """Frozen reference confidence level of every dimension (1 when it has no well-formed sample)."""
    return {key: calibrator.transform(key, v.score, user.num_samples) for key, v in user.votes.items()}


def ground_truth(labels: dict, taxonomy: Taxonomy) -> tuple[str, int]:
    """``reward_model.ground_truth``: the labels as JSON, canonically spelled ('' when unlabelled),
    and the number of labels outside the taxonomy (kept verbatim; the reward ignores them)."""
    if not labels:
        return "", 0
    out, outside = {}, 0
    for key, raw in labels.items():
        label = taxonomy[key].canonical(raw) if key in taxonomy.keys else None
        outside += label is None
        out[key] = raw if label is None else label
    return json.dumps(out, ensure_ascii=False), outside


@cyclic_gc_paused()
def build_rl(
    records: str,
    samples: str,
    calibration: str,
    out: str,
    *,
    taxonomy: Taxonomy,
    voting: str = "confidence",
    shape: str = difficulty.ORIGINAL,
    size: int | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    budget: PromptBudget | None = None,
    engine: str = "local",
    strict: bool = False,
    drop_truncated: bool = False,
    allow_mismatch: bool = False,
) -> dict:
    """Build rl_train.parquet (and rl_val.parquet) in ``out``; return the report (also written to report.json)."""
    check_val_fraction(val_fraction)
    calibrator = Calibrator.load_for(calibration, taxonomy.keys)
    weights = difficulty.parse_shape(shape)
    prep = prepare(records, samples, taxonomy, voting, budget, make_engine(engine), strict, drop_truncated, allow_mismatch)
    refs = [ref_confidence(v, calibrator) for v in prep.votes]
    means = [difficulty.aggregate_confidence(r.values()) for r in refs]
    levels, cuts = difficulty.difficulty_levels(means)
    held_out = val_users(len(levels), val_fraction, seed)
    pool = [i for i in range(len(levels)) if i not in held_out]
    selection = difficulty.select([levels[i] for i in pool], weights, size, seed)

    labelled, outside = Counter(), 0
    ref_counts = {k: Counter() for k in taxonomy.keys}
    malformed, unanswered = Counter(), Counter()
    splits = {"train": [], "val": []}
    for split, indices in (("train", (pool[j] for j in selection.indices)), ("val", sorted(held_out))):
        rows = splits[split]
        for i in indices:
            record, user, ref = prep.records[i], prep.votes[i], refs[i]
            truth, n_outside = ground_truth(record["labels"], taxonomy)
            labelled[split] += bool(truth)
            outside += n_outside
            if split == "train":
                for key, v in user.votes.items():
                    ref_counts[key][ref[key]] += 1
                    malformed[key] += user.num_samples - v.n_valid
                    unanswered[key] += v.tag is None
            rows.append({
                "data_source": DATA_SOURCE,
                "prompt": prep.prompts[i].messages,
                "ability": ABILITY,
                "reward_model": {"style": "model", "ground_truth": truth},
                "extra_info": {"user_id": record["user_id"], "index": len(rows), "split": split, "ref_confidence": ref, "difficulty": levels[i]},
            })

    with OutputFolder(out, OUTPUTS) as folder:
        write_parquet(splits["train"], folder.file("rl_train.parquet"))
        if splits["val"]:
            write_parquet(splits["val"], folder.file("rl_val.parquet"))
        report = {
            "command": "build-rl",
            "inputs": {"records": records, "samples": samples, "calibration": calibration, "taxonomy": taxonomy.source},
            "options": {"voting": voting, "shape": shape, "size": size, "val_fraction": val_fraction, "seed": seed, "engine": engine, "strict": strict, "drop_truncated": drop_truncated, "allow_mismatch": allow_mismatch},
            "counts": {
                **prep.counts,
                "rows": len(splits["train"]),
                "labelled_rows": labelled["train"],
                "val_rows": len(splits["val"]),
                "labelled_val_rows": labelled["val"],
                "labels_outside_taxonomy": outside,
            },
            "skipped": prep.skips.to_dict(),
            "dropped_values": prep.dropped.to_dict(),
            "sample_match": prep.match.to_dict(),
            "truncated_samples": prep.truncation(),
            "prompts": prompt_report(prep, budget),
            "difficulty": {
                "aggregation": "mean of the per-dimension reference confidence levels, equal-frequency levels over the pool",
                "cuts": cuts,
                "weights": [float(w) for w in selection.weights],
                "max_size": selection.max_size,
                "before": selection.available,
                "after": selection.target,
            },
            "dimensions": {
                key: {
                    "malformed_samples": malformed[key],
                    "unanswered_users": unanswered[key],
                    "ref_confidence": {str(lv): ref_counts[key][lv] for lv in range(1, LEVELS + 1)},
                }
                for key in taxonomy.keys
            },
            "calibration": calibrator.to_dict(),
        }
        write_json(report, folder.file("report.json"))
        # Free the rows before drawing: matplotlib leaves a reference cycle through this frame (an
        # import error it catches), which would keep them alive until the next full collection.
        del prep, refs, rows, splits
        from .plots import difficulty_figure

        difficulty_figure(folder.file("difficulty.png"), selection.available, selection.target, shape)
    return report
