"""The front half build-sft and build-rl share: records + samples -> kept users, each with its
vote and its prompt, and a count of everything left out and why.

The vote and prompt stages run on an engine (``engine``); what is left out is counted in a
``SkipLog`` and shown as warnings, and so are the samples cut at the token limit that are
voted (``truncated``). The builds then do their global steps on the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from verl_confprofile.input_check import SampleMatch, check_samples
from verl_confprofile.jsonl import SkipLog, truncation_report
from verl_confprofile.tally import UserVote
from verl_confprofile.taxonomy import Taxonomy

from .budget import PromptBudget, PromptFit, fit_prompts
from .budget import prompt_report as budget_report
from .engine import Engine
from .prompt import prompt_digest
from .records import dropped_message, read_records
from .votes import VoteJob, VoteStage


@dataclass
class Prepared:
    """Users with a record, samples and a prompt that fits, in record order, what was left out
    (records, sample lines, users), the values dropped from kept records, and how well the
    samples fit this build's taxonomy and prompts."""

    records: list[dict]
    votes: list[UserVote]
    prompts: list[PromptFit]
    skips: SkipLog
    truncated: SkipLog  # samples cut at the token limit and voted (kept)
    counts: dict
    dropped: SkipLog  # values dropped from records (keyphrases, self-reported fields), by reason
    match: SampleMatch
    drop_truncated: bool = False

    def truncation(self) -> dict:
        """The ``truncated_samples`` section of the report (``jsonl.truncation_report``)."""
        return truncation_report(self.skips, self.truncated, self.drop_truncated)


def prepare(
    records_path: str,
    samples_path: str,
    taxonomy: Taxonomy,
    voting: str,
    budget: PromptBudget | None,
    engine: Engine,
    strict: bool = False,
    drop_truncated: bool = False,
    allow_mismatch: bool = False,
) -> Prepared:
    """Read the records, vote every user's samples, fit every prompt; count what is left out.

    Errors (exit 2, nothing written): an unreadable file; in the records file a broken line, a
    duplicate user_id or a mistyped field (see records.read_records); in the samples file a JSON
    object without the sample fields; no user left at all (an empty dataset would only fail
    later, in verl). Counted skips: records without behaviours, broken sample lines, samples of
    users without a kept record, repeated (user_id, sample_idx) (the first occurrence is used),
    users without samples, users whose prompt cannot fit. Values dropped from records
    (``empty_keyphrase``, ``non_text_keyphrase``, ``empty_demographic``: see records) are
    counted apart, in ``Prepared.dropped``: they leave no user out. With ``strict``, broken and
    repeated sample lines are errors too. Samples cut at the token limit (finish_reason
    "length") are voted and counted in ``Prepared.truncated``, or, with ``drop_truncated``,
    skipped (``truncated_sample``). Samples that look drawn for another taxonomy or prompt stop
    the build unless ``allow_mismatch`` (``input_check``).
    """
    record_set = read_records(records_path)
    skips, dropped = SkipLog(), SkipLog()
    for reason, n in record_set.skipped.items():
        skips.add(reason, f"{record_set.examples[reason]}: record has no behaviour keyphrases; skipped", n)
    for reason, n in record_set.dropped.items():
        dropped.add(reason, f"{records_path}: {dropped_message(reason, n)} from records, the first at {record_set.dropped_examples[reason]}", n)
    records = record_set.records
    stage = engine.vote(VoteJob(samples_path, taxonomy, voting, tuple(records), strict, drop_truncated))
    truncated = SkipLog()
    for event in stage.events:
        (truncated if event.kept else skips).add(event.reason, event.message)
    voted = {v.user_id for v in stage.votes}
    for user_id in records:
        if user_id not in voted:
            skips.add("no_samples", f"{records_path}: user {user_id!r} has no sample in {samples_path}; skipped")
    user_records = [records[v.user_id] for v in stage.votes]
    fits = engine.map_batches(partial(fit_prompts, taxonomy=taxonomy, budget=budget), user_records)
    kept_records, kept_votes, kept_fits = [], [], []
    for record, user_vote, fit in zip(user_records, stage.votes, fits):
        if fit.error is not None:
            skips.add("prompt_too_long", f"{records_path}: user {record['user_id']!r}: {fit.error}; skipped")
            continue
        kept_records.append(record)
        kept_votes.append(user_vote)
        kept_fits.append(fit)
    if not kept_votes:
        left_out = ", ".join(f"{k}={n}" for k, n in skips.counts.items()) or "no sample"
        raise ValueError(f"no user left to build from {records_path} and {samples_path} ({left_out})")
    match = sample_match(stage, fits, len(taxonomy))
    check_samples(match, samples_path, taxonomy, allow_mismatch)
    counts = {
        "records": len(records) + sum(record_set.skipped.values()),
        "records_kept": len(records),
        "samples": stage.lines,
        "samples_used": sum(v.num_samples for v in stage.votes),
        "users_with_samples": len(stage.votes),
        "users_kept": len(kept_votes),
    }
    return Prepared(kept_records, kept_votes, kept_fits, skips, truncated, counts, dropped, match, drop_truncated)


def sample_match(stage: VoteStage, fits: list[PromptFit], dimensions: int) -> SampleMatch:
    """Malformed blocks of the voted samples, and the users whose samples carry a prompt digest
    other than their prompt's as this build renders it (users whose prompt cannot fit are not compared)."""
    match = SampleMatch()
    for user_vote, digests, fit in zip(stage.votes, stage.digests, fits):
        match.blocks += user_vote.num_samples * dimensions
        match.malformed += sum(user_vote.num_samples - v.n_valid for v in user_vote.votes.values())
        if digests and fit.messages is not None:
            match.compared_users += 1
            if digests != {prompt_digest(fit.messages)}:
                match.other_prompt += 1
                match.other_prompt_example = match.other_prompt_example or f"user {user_vote.user_id!r}"
    return match


def prompt_report(prepared: Prepared, budget: PromptBudget | None) -> dict:
    """Prompt-length section of a build's report (``budget.prompt_report`` of the kept users)."""
    return budget_report(prepared.prompts, budget)
