"""Samples that do not belong to the taxonomy or prompt of the command reading them: a stop, not a result.

Samples drawn with another taxonomy are malformed in every dimension of this one; voted, they
give every user NA with "no usable evidence", and a build would write a training set of them
and exit 0. So ``vote``, ``build-sft`` and ``build-rl`` check what they read before writing:

- the share of malformed blocks (samples x dimensions) among the voted samples;
- the builds also compare each user's prompt, as this build renders it, with the
  ``prompt_sha256`` that ``synthesize`` stores with every sample: a user whose samples carry
  another digest was sampled with another prompt (another taxonomy, record or prompt budget).
  Samples without a digest (written by another tool) are not compared.

Either share at or above ``SUSPECT_SHARE`` (90%) stops the command with a message saying what
is wrong; ``--allow-mismatch`` goes on anyway, with a warning. Below it, users sampled with
another prompt are a warning and a count in the build's report.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from .jsonl import InputError
from .taxonomy import Taxonomy

SUSPECT_SHARE = 0.9
ALLOW_MISMATCH_HELP = (  # argparse help: '%' doubled
    f"go on when at least {SUSPECT_SHARE:.0%}% of the sample blocks are malformed or (builds) of the users were sampled "
    "with another prompt (default: stop; that is almost always a wrong --taxonomy or samples file)"
)


@dataclass
class SampleMatch:
    """How well the samples read fit this command's taxonomy and prompts."""

    blocks: int = 0  # voted samples x dimensions
    malformed: int = 0  # of those blocks
    compared_users: int = 0  # users whose samples carry a prompt digest
    other_prompt: int = 0  # of those, users with a digest that is not this command's prompt's
    other_prompt_example: str = ""

    def to_dict(self) -> dict:
        """The ``sample_match`` section of a report."""
        return {
            "malformed_blocks": self.malformed,
            "blocks": self.blocks,
            "users_compared_by_prompt": self.compared_users,
            "users_with_another_prompt": self.other_prompt,
            "example": self.other_prompt_example or None,
        }


def check_samples(match: SampleMatch, samples: str, taxonomy: Taxonomy, allow: bool) -> None:
    """Raise InputError when the samples look drawn for another taxonomy or prompt (see the module
    docstring); with ``allow``, print the same finding as a warning instead."""
    problems = []
    if match.blocks and match.malformed >= SUSPECT_SHARE * match.blocks:
        problems.append(
            f"{match.malformed} of {match.blocks} sample blocks ({match.malformed / match.blocks:.0%}) are malformed for the "
            f"taxonomy {taxonomy.source} (dimensions {', '.join(taxonomy.keys)}): the samples were drawn with another "
            "--taxonomy, or by a model that does not write the answer format"
        )
    if match.compared_users and match.other_prompt >= SUSPECT_SHARE * match.compared_users:
        problems.append(_other_prompt(match))
    if problems:
        message = f"{samples}: " + "; and ".join(problems)
        if not allow:
            raise InputError(f"{message}; nothing written (pass --allow-mismatch to go on anyway)")
        print(f"warning: {message}; going on (--allow-mismatch)", file=sys.stderr)
    elif match.other_prompt:
        print(f"warning: {samples}: {_other_prompt(match)}", file=sys.stderr)


def _other_prompt(match: SampleMatch) -> str:
    return (
        f"{match.other_prompt} of {match.compared_users} users were sampled with another prompt than this command "
        f"renders (prompt_sha256 differs, e.g. {match.other_prompt_example}): give the --taxonomy, records and "
        "--tokenizer/--max-prompt-length that synthesize was given"
    )
