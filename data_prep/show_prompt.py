"""``confprofile prompt``: print the exact prompt of one user, to look before paying a teacher.

The prompt is rendered as ``synthesize`` and the builds render it (``budget.fit_prompts``, the
same taxonomy and token budget options), and its ``prompt_sha256`` is the digest synthesize
stores with each of that user's samples.
"""

from __future__ import annotations

import argparse
import json
import sys

from verl_confprofile.jsonl import InputError
from verl_confprofile.output_guard import declare
from verl_confprofile.taxonomy import Taxonomy

from .budget import fit_prompts
from .build_args import prompt_budget
from .prompt import prompt_digest
from .records import read_records


def run(args: argparse.Namespace) -> None:
    """Print the chat prompt of --user on stdout and its digest and length on stderr."""
    taxonomy = Taxonomy.load(args.taxonomy)
    budget = prompt_budget(args.tokenizer, args.max_prompt_length)
    records = read_records(args.records)
    record = records.records.get(args.user)
    if record is None:
        skipped = ", ".join(f"{reason}={n}" for reason, n in records.skipped.items()) or "none"
        raise InputError(
            f"{args.records}: no record of user {args.user!r} that can be sampled (records skipped: {skipped}); "
            "an integer id is the string of its digits"
        )
    fit = fit_prompts([record], taxonomy, budget)[0]
    if fit.error is not None:
        raise InputError(f"{args.records}: user {args.user!r}: {fit.error}; synthesize skips this user")
    if args.json:
        print(json.dumps(fit.messages, ensure_ascii=False, indent=2))
    else:
        print("\n\n".join(f"=== {m['role']} ===\n{m['content']}" for m in fit.messages))
    length = "" if fit.tokens is None else f"; {fit.tokens} tokens, {fit.dropped} keyphrases dropped to fit {budget.max_tokens}"
    print(f"prompt_sha256 {prompt_digest(fit.messages)}{length}", file=sys.stderr)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``prompt`` subcommand."""
    p = subparsers.add_parser(
        "prompt",
        help="print the exact prompt synthesize sends for one user",
        description="Print the chat prompt (system and user turns) that synthesize sends, and the builds train on, for "
        "one user of a records file; its prompt_sha256 (and, with a budget, its length) go to stderr.",
    )
    p.add_argument("--records", required=True, help="user records JSONL: user_id, behaviors, demographics, labels")
    p.add_argument("--user", required=True, metavar="USER_ID", help="the user_id whose prompt to print")
    p.add_argument("--taxonomy", help="taxonomy YAML (default: the bundled ProfileBench taxonomy)")
    p.add_argument("--tokenizer", help="tokenizer directory used to count prompt tokens (with --max-prompt-length)")
    p.add_argument("--max-prompt-length", type=int, metavar="N", help="fit the prompt within N tokens by dropping keyphrases, as synthesize does")
    p.add_argument("--json", action="store_true", help="print the chat as JSON, exactly as sent (default: readable text)")
    p.set_defaults(func=run)
    declare(p, inputs=("records", "taxonomy", "tokenizer"), out=None, folder=False)
