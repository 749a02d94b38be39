"""``confprofile build-sft``: records + teacher samples -> the SFT set of section 4.2.

Per user and dimension: the voted tag and S over the teacher's M samples (Eq. 3-5), the
calibrated confidence (``Calibrator`` fitted on the users written, equal-frequency, or the linear
map with ``--no-calibration``) and the evidence of the best sample that voted for the winner
(non-empty evidence first, then higher confidence, then lower sample_idx). The assistant turn
is ``render_profile`` of these (tag, level, evidence) triples.

A dimension with no well-formed sample has no S: it becomes NA with confidence 1 and the
evidence ``NO_EVIDENCE``, is left out of the calibration fit and is counted per dimension in
the report (``unanswered_users``).

With ``--max-length`` every row is counted whole (prompt and target) with ``--tokenizer``, and a
row longer than verl's SFT would accept is skipped and counted; the longest row is reported.

Writes to --out: sft_train.parquet (and sft_val.parquet with --val-fraction), calibration.json,
report.json and confidence.png (Figure 3).
"""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Sequence

from verl_confprofile.calibration import LEVELS, Calibrator
from verl_confprofile.gc_pause import cyclic_gc_paused
from verl_confprofile.jsonl import truncation_summary, write_json
from verl_confprofile.output_guard import declare
from verl_confprofile.profile_format import render_profile
from verl_confprofile.tally import UserVote
from verl_confprofile.taxonomy import Taxonomy

from .budget import PromptBudget, count_conversations, prompt_summary
from .build_args import add_common_arguments, check_val_fraction, common_options, left_out, val_users
from .engine import make_engine
from .outputs import OutputFolder, sft_table, write_parquet
from .prepare import prepare, prompt_report

NO_EVIDENCE = "No usable evidence for this dimension."
# Every file build-sft writes in --out, put in place in this order when the build is complete
# (the report last); an earlier build's copy of one it does not write again is removed.
OUTPUTS = ("sft_train.parquet", "sft_val.parquet", "calibration.json", "confidence.png", "report.json")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "build-sft",
        help="build the SFT set from teacher samples (voting, calibration, evidence)",
        description="Vote each user's teacher samples (Eq. 3-5), calibrate the confidence to levels 1..5 and write the "
        "SFT set verl's SFT trainer reads, with calibration.json (reused by build-rl) and report.json, into --out.",
    )
    p.add_argument("--samples", required=True, help="teacher samples JSONL: user_id, sample_idx, model, text")
    add_common_arguments(p)
    p.add_argument("--no-calibration", action="store_true", help="linear confidence map instead of equal-frequency levels (Table 4 ablation)")
    p.add_argument("--val-fraction", type=float, default=0.0, metavar="F", help="share of users written to sft_val.parquet (default 0: no split)")
    p.add_argument("--max-length", type=int, metavar="N",
                   help="longest row in tokens, prompt and target (verl SFT data.max_length, 6144 in the recipe); "
                   "longer rows are skipped and counted; needs --tokenizer")
    p.set_defaults(func=run)
    declare(p, inputs=("records", "samples", "taxonomy", "tokenizer"), folder=True)


def run(args: argparse.Namespace) -> None:
    report = build_sft(
        args.records,
        args.samples,
        args.out,
        calibrate=not args.no_calibration,
        val_fraction=args.val_fraction,
        max_length=args.max_length,
        tokenizer=args.tokenizer,
        **common_options(args, tokenizer_used=args.max_length is not None),
    )
    counts, rows = report["counts"], report["rows"]
    length = "rows: not counted" if rows["longest_row_tokens"] is None else (
        f"rows: longest {rows['longest_row_tokens']} tokens (limit {rows['max_length']})")
    print(
        f"build-sft: {counts['train_rows']} train + {counts['val_rows']} val rows from {counts['users_with_samples']} users "
        f"with samples (left out: {left_out(report)}; {truncation_summary(report['truncated_samples'])}; "
        f"{prompt_summary(report['prompts'])}; {length}) -> {args.out}"
    )


def fit_calibrator(votes: Sequence[UserVote], taxonomy: Taxonomy, calibrate: bool) -> Calibrator:
    """Equal-frequency cut points fitted on the voted dimensions of ``votes``, or the linear map."""
    if not calibrate:
        return Calibrator.linear(taxonomy.keys)
    scores = {
        dim.key: [(v.votes[dim.key].score, v.num_samples) for v in votes if v.votes[dim.key].tag is not None]
        for dim in taxonomy
    }
    return Calibrator().fit(scores)


def sft_target(user: UserVote, taxonomy: Taxonomy, calibrator: Calibrator) -> dict[str, tuple[str, int, str]]:
    """{dimension: (tag, calibrated level, evidence)} of one user; unanswered dimensions are NA, 1."""
    target = {}
    for dim in taxonomy:
        v = user.votes[dim.key]
        if v.tag is None:
            target[dim.key] = (dim.na, 1, NO_EVIDENCE)
        else:
            target[dim.key] = (v.tag, calibrator.transform(dim.key, v.score, user.num_samples), user.evidence[dim.key])
    return target


def _row_lengths(tokenizer: str, conversations: list[list[dict]], batch: int = 1024) -> list[int]:
    """Tokens of every row (``budget.count_conversations``), a batch of rows per tokenizer call."""
    out: list[int] = []
    for start in range(0, len(conversations), batch):
        out.extend(count_conversations(tokenizer, conversations[start : start + batch]))
    return out


@cyclic_gc_paused()
def build_sft(
    records: str,
    samples: str,
    out: str,
    *,
    taxonomy: Taxonomy,
    voting: str = "confidence",
    calibrate: bool = True,
    val_fraction: float = 0.0,
    seed: int = 0,
    budget: PromptBudget | None = None,
    engine: str = "local",
    strict: bool = False,
    drop_truncated: bool = False,
    allow_mismatch: bool = False,
    max_length: int | None = None,
    tokenizer: str | None = None,
) -> dict:
    """Build the SFT files in ``out`` and return the report (also written to report.json).

    With ``max_length`` (and a tokenizer: ``tokenizer``, else the budget's), every row is counted
    whole, prompt and target, and a row longer than that is skipped and counted
    (``row_too_long``) rather than left for verl's SFT to refuse mid-training; the calibrator
    is still fitted on every voted user.
    """
    check_val_fraction(val_fraction)
    tokenizer = tokenizer or (budget.tokenizer if budget else None)
    if max_length is not None and (max_length <= 0 or tokenizer is None):
        raise ValueError(f"--max-length must be positive and needs --tokenizer, got {max_length}")
    prep = prepare(records, samples, taxonomy, voting, budget, make_engine(engine), strict, drop_truncated, allow_mismatch)
    calibrator = fit_calibrator(prep.votes, taxonomy, calibrate)
    val = val_users(len(prep.votes), val_fraction, seed)
    stats = _DimensionStats(taxonomy)
    rows = []
    for record, user, fit in zip(prep.records, prep.votes, prep.prompts):
        target = sft_target(user, taxonomy, calibrator)
        answer = {"role": "assistant", "content": render_profile(target, taxonomy)}
        rows.append((user, target, {"messages": [*fit.messages, answer], "user_id": record["user_id"]}))
    lengths = _row_lengths(tokenizer, [row["messages"] for _, _, row in rows]) if tokenizer else None
    train_rows, val_rows = [], []
    for i, (user, target, row) in enumerate(rows):
        if max_length is not None and lengths[i] > max_length:
            prep.skips.add("row_too_long", f"{records}: user {row['user_id']!r}: its SFT row has {lengths[i]} tokens, "
                           f"over --max-length {max_length}; skipped")
            continue
        stats.add(user, target)
        (val_rows if i in val else train_rows).append(row)
    if not train_rows:
        raise ValueError(f"no SFT row left to write ({left_out({'skipped': prep.skips.to_dict(), 'dropped_values': prep.dropped.to_dict()})})")
    del rows

    with OutputFolder(out, OUTPUTS) as folder:
        write_parquet(train_rows, folder.file("sft_train.parquet"), sft_table)
        if val_rows:
            write_parquet(val_rows, folder.file("sft_val.parquet"), sft_table)
        calibrator.save(folder.file("calibration.json"))
        report = {
            "command": "build-sft",
            "inputs": {"records": records, "samples": samples, "taxonomy": taxonomy.source},
            "options": {"voting": voting, "calibration": calibrator.method, "val_fraction": val_fraction, "seed": seed, "engine": engine, "strict": strict, "drop_truncated": drop_truncated, "allow_mismatch": allow_mismatch},
            "counts": {**prep.counts, "train_rows": len(train_rows), "val_rows": len(val_rows)},
            "skipped": prep.skips.to_dict(),
            "dropped_values": prep.dropped.to_dict(),
            "sample_match": prep.match.to_dict(),
            "truncated_samples": prep.truncation(),
            "prompts": prompt_report(prep, budget),
            "rows": {
                "max_length": max_length,
                "tokenizer": tokenizer,
                "too_long": prep.skips.counts["row_too_long"],
                "longest_row_tokens": max(lengths, default=None) if lengths is not None else None,
            },
            "dimensions": stats.to_dict(),
            "calibration": calibrator.to_dict(),
        }
        write_json(report, folder.file("report.json"))
        # Free the rows before drawing: matplotlib leaves a reference cycle through this frame (an
        # import error it catches), which would keep them alive until the next full collection.
        del prep, train_rows, val_rows
        from .plots import confidence_figure

        confidence_figure(
            folder.file("confidence.png"), stats.before, stats.after, calibrator.cuts, {d.key: d.name for d in taxonomy}
        )
    return report


class _DimensionStats:
    """Per-dimension distributions of the users written: labels, S/M before and levels after calibration."""

    def __init__(self, taxonomy: Taxonomy):
        self.taxonomy = taxonomy
        self.labels = {d.key: Counter() for d in taxonomy}
        self.before = {d.key: Counter() for d in taxonomy}
        self.after = {d.key: Counter() for d in taxonomy}
        self.malformed = Counter()
        self.unanswered = Counter()

    def add(self, user: UserVote, target: dict[str, tuple[str, int, str]]) -> None:
        for key, (tag, level, _) in target.items():
            v = user.votes[key]
            self.labels[key][tag] += 1
            self.malformed[key] += user.num_samples - v.n_valid
            if v.tag is None:
                self.unanswered[key] += 1
            else:
                self.before[key][round(v.score / user.num_samples, 2)] += 1
                self.after[key][level] += 1

    def to_dict(self) -> dict:
        return {
            d.key: {
                "malformed_samples": self.malformed[d.key],
                "unanswered_users": self.unanswered[d.key],
                "labels": {label: self.labels[d.key][label] for label in d.labels},
                "confidence_before": {f"{s:.2f}": n for s, n in sorted(self.before[d.key].items())},
                "confidence_after": {str(lv): self.after[d.key][lv] for lv in range(1, LEVELS + 1)},
            }
            for d in self.taxonomy
        }
