"""The ``confprofile`` command line: one subcommand per pipeline stage.

``vote`` lives here; every other stage is a module in COMMAND_MODULES exposing
``add_parser(subparsers)``, which adds its subcommand with ``set_defaults(func=...)``. Those
modules keep heavy imports (pyarrow, ray, torch) inside their functions so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections import Counter
from typing import Sequence

from .calibration import Calibrator
from .data_prep.outputs import output_file
from .gc_pause import cyclic_gc_paused
from .input_check import ALLOW_MISMATCH_HELP, SampleMatch, check_samples
from .jsonl import DROP_TRUNCATED_HELP, STRICT_HELP, InputError, SkipLog, truncation_report, truncation_summary, write_line
from .output_guard import check_args, declare
from .taxonomy import TaxonomyError, Taxonomy
from .voting import VOTING_HELP, VOTING_METHODS


@cyclic_gc_paused()
def _vote(args: argparse.Namespace) -> None:
    taxonomy = Taxonomy.load(args.taxonomy)
    calibrator = Calibrator.load_for(args.calibration, taxonomy.keys) if args.calibration else None
    if args.threshold is not None and calibrator is None:
        raise InputError("--threshold needs --calibration: without it a profile has no confidence level")
    from .aggregate import read_samples, vote_users

    skips, truncated = SkipLog(), SkipLog()
    users = read_samples(
        args.samples, taxonomy, strict=args.strict, skips=skips, truncated=truncated, drop_truncated=args.drop_truncated
    )
    if not users:
        raise InputError(f"{args.samples}: no sample to vote (skipped lines: {skips.summary()})")
    records = list(vote_users(users, taxonomy, voting=args.voting, calibrator=calibrator, threshold=args.threshold))
    malformed: Counter = Counter()
    for record in records:
        malformed.update(record["malformed"])
    n_samples = sum(t.num_samples for t in users.values())
    check_samples(SampleMatch(n_samples * len(taxonomy), sum(malformed.values())), args.samples, taxonomy, args.allow_mismatch)
    with output_file(args.out) as fh:
        for record in records:
            write_line(fh, record)
    bad = ", ".join(f"{k}={malformed[k]}" for k in taxonomy.keys)
    print(
        f"voted {len(users)} users from {n_samples} samples -> {args.out}; skipped lines: {skips.summary()}; "
        f"{truncation_summary(truncation_report(skips, truncated, args.drop_truncated))}; malformed samples per dimension: {bad}"
    )


COMMAND_MODULES: tuple[str, ...] = (
    "verl_confprofile.data_prep.synthesize",
    "verl_confprofile.data_prep.show_prompt",
    "verl_confprofile.data_prep.build_sft",
    "verl_confprofile.data_prep.build_rl",
    "verl_confprofile.evaluate",
    "verl_confprofile.demo",
)


class HelpFormatter(argparse.HelpFormatter):
    """Appends '(default: X)' to an option's help when it has a default and its help does not
    already say it (argparse's ArgumentDefaultsHelpFormatter would repeat those that do)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if action.option_strings and not unset and "default" not in text:
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """The parser of every subcommand: the ``HelpFormatter`` unless told otherwise."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def version() -> str:
    """The installed version of verl-confprofile (from the package metadata)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("verl-confprofile")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="confprofile", description="Label-free, confidence-driven user profiling (Conf-Profile) for verl.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    vote = sub.add_parser(
        "vote",
        help="vote one profile per user from model samples (Eq. 3-5)",
        description="Vote each user's samples into one profile (tag, S, votes, margin per dimension; with --calibration "
        "a confidence level 1..5) and write one JSON line per user, for deployment.",
    )
    vote.add_argument("--samples", required=True, help="samples JSONL: user_id, sample_idx, model, text")
    vote.add_argument("--out", required=True, help="profiles JSONL, one line per user")
    vote.add_argument("--voting", choices=VOTING_METHODS, default="confidence", help=VOTING_HELP)
    vote.add_argument("--calibration", help="calibration JSON from build-sft; gives each tag a level 1..5")
    vote.add_argument("--threshold", type=int, choices=range(1, 6), metavar="TAU", help="tags with confidence below TAU become NA")
    vote.add_argument("--taxonomy", help="taxonomy YAML (default: the bundled ProfileBench taxonomy)")
    vote.add_argument("--strict", action="store_true", help=STRICT_HELP)
    vote.add_argument("--drop-truncated", action="store_true", help=DROP_TRUNCATED_HELP)
    vote.add_argument("--allow-mismatch", action="store_true", help=ALLOW_MISMATCH_HELP)
    vote.set_defaults(func=_vote)
    declare(vote, inputs=("samples", "calibration", "taxonomy"), folder=False)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        args.func(args)
    except (InputError, TaxonomyError, ValueError, OSError) as exc:
        print(f"confprofile {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"confprofile {args.command}: interrupted; outputs are put in place only when complete, so none of this "
            "run's is partial: run the same command again",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
