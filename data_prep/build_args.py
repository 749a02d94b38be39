"""The command-line options build-sft and build-rl share, and what they turn into."""

from __future__ import annotations

import argparse
import random

from verl_confprofile.input_check import ALLOW_MISMATCH_HELP
from verl_confprofile.jsonl import DROP_TRUNCATED_HELP, STRICT_HELP, InputError
from verl_confprofile.taxonomy import Taxonomy
from verl_confprofile.voting import VOTING_HELP, VOTING_METHODS

from .budget import PromptBudget, load_tokenizer
from .engine import ENGINES


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the stages both builds share."""
    parser.add_argument("--records", required=True, help="user records JSONL: user_id, behaviors, demographics, labels")
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--voting", choices=VOTING_METHODS, default="confidence", help=VOTING_HELP)
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (split, sampling)")
    parser.add_argument("--taxonomy", help="taxonomy YAML (default: the bundled ProfileBench taxonomy)")
    parser.add_argument("--tokenizer", help="tokenizer directory used to count tokens (with --max-prompt-length; build-sft: --max-length)")
    parser.add_argument("--max-prompt-length", type=int, metavar="N", help="fit every prompt within N tokens by dropping keyphrases")
    parser.add_argument("--engine", choices=ENGINES, default="local", help="where the per-user stages run (default: local)")
    parser.add_argument("--strict", action="store_true", help=STRICT_HELP)
    parser.add_argument("--drop-truncated", action="store_true", help=DROP_TRUNCATED_HELP)
    parser.add_argument("--allow-mismatch", action="store_true", help=ALLOW_MISMATCH_HELP)


def prompt_budget(tokenizer: str | None, max_prompt_length: int | None, *, tokenizer_used: bool = False) -> PromptBudget | None:
    """The budget asked for on the command line; the tokenizer is loaded now so a bad path fails early.

    ``tokenizer_used``: another option uses --tokenizer (build-sft's --max-length), so it may come
    without --max-prompt-length.
    """
    if max_prompt_length is None and tokenizer is not None and tokenizer_used:
        check_tokenizer(tokenizer)
        return None
    if (tokenizer is None) != (max_prompt_length is None):
        raise ValueError("--tokenizer and --max-prompt-length go together")
    if tokenizer is None:
        return None
    if max_prompt_length <= 0:
        raise ValueError(f"--max-prompt-length must be positive, got {max_prompt_length}")
    check_tokenizer(tokenizer)
    return PromptBudget(tokenizer, max_prompt_length)


def check_tokenizer(tokenizer: str) -> None:
    """Load --tokenizer now, so a bad path fails before any work."""
    try:
        load_tokenizer(tokenizer)
    except (OSError, ValueError) as exc:
        raise InputError(f"--tokenizer {tokenizer}: cannot load a tokenizer ({exc})") from None


def common_options(args: argparse.Namespace, tokenizer_used: bool = False) -> dict:
    """The keyword arguments of ``build_sft`` and ``build_rl`` given by the shared options."""
    return {
        "taxonomy": Taxonomy.load(args.taxonomy),
        "voting": args.voting,
        "seed": args.seed,
        "budget": prompt_budget(args.tokenizer, args.max_prompt_length, tokenizer_used=tokenizer_used),
        "engine": args.engine,
        "strict": args.strict,
        "drop_truncated": args.drop_truncated,
        "allow_mismatch": args.allow_mismatch,
    }


# What each reason a build leaves something out for counts: records, sample lines or users.
LEFT_OUT_UNITS = {
    "no_behaviors": "records",
    "broken_line": "sample lines",
    "duplicate_sample": "sample lines",
    "unknown_user": "sample lines",
    "truncated_sample": "sample lines",
    "no_samples": "users",
    "prompt_too_long": "users",
    "row_too_long": "users",
}


def left_out(report: dict) -> str:
    """What a build left out, by what it is ('2 records (no_behaviors=2), 1 sample lines
    (unknown_user=1)'; 'none' when nothing), then the values dropped from records, apart: they
    leave nothing out. For the build's summary line."""
    groups: dict[str, list[str]] = {unit: [] for unit in dict.fromkeys(LEFT_OUT_UNITS.values())}
    totals = dict.fromkeys(groups, 0)
    for reason, entry in report["skipped"].items():
        groups[LEFT_OUT_UNITS[reason]].append(f"{reason}={entry['count']}")
        totals[LEFT_OUT_UNITS[reason]] += entry["count"]
    text = ", ".join(f"{totals[unit]} {unit} ({', '.join(parts)})" for unit, parts in groups.items() if parts) or "none"
    dropped = ", ".join(f"{k}={v['count']}" for k, v in report["dropped_values"].items())
    return f"{text}; values dropped from records: {dropped}" if dropped else text


def check_val_fraction(fraction: float) -> None:
    """Refuse a --val-fraction outside [0, 1) before any work is done."""
    if not 0 <= fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1), got {fraction}")


def val_users(n: int, fraction: float, seed: int) -> set[int]:
    """Indices of the round(fraction * n) users drawn for validation with ``random.Random(seed)``."""
    k = int(fraction * n + 0.5)
    if fraction and not 0 < k < n:
        raise ValueError(f"--val-fraction {fraction} of {n} users leaves no train or no validation user")
    return set(random.Random(seed).sample(range(n), k))
