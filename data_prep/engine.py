"""The stages build-sft and build-rl share, and where they run: in this process or on Ray Data.

Both builds go records + samples -> one vote per user -> a prompt per user -> global steps
(calibration fit, split, difficulty filter) -> rows. The per-sample and per-user transforms are
the functions here (``read_sample``, ``UserTally``, ``fit_prompts``); an engine only decides
where they run:

- ``local``: one pass over the samples file in this process. Samples may come in any order:
  each is parsed as it is read and folded into its user's tally, which keeps per dimension the
  (tag, confidence) pairs voting needs and, per tag, the evidence of its best sample only. No raw
  text is kept.
- ``ray``: the samples file is cut into byte ranges at line starts; Ray Data tasks parse them,
  group the samples by user, fold each group into a ``UserTally`` in file order and vote; the
  prompt stage runs in Ray tasks too. Results come back in record order, so both engines
  produce the same votes, prompts, skips and messages, hence the same files.

Global steps stay on the driver: they need every user at once but only a few numbers per user.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import sys
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, NamedTuple, Sequence, TypeVar

from verl_confprofile.jsonl import InputError, field
from verl_confprofile.profile_format import parse_profile
from verl_confprofile.taxonomy import Taxonomy
from verl_confprofile.voting import VOTING_METHODS, Vote, vote

from .prompt import fit_messages, system_prompt, user_prompt
from .records import read_records

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ENGINES = ("local", "ray")
RAY_CHUNK_BYTES = 32 << 20
PROMPT_BATCH = 256

T = TypeVar("T")
R = TypeVar("R")


# ---------------------------------------------------------------- skips


class SkipLog:
    """Inputs left out and why: a count per reason and the first messages, each naming its file.

    Every skip is also a warning on stderr (the first ``shown`` of each reason), so a bad input
    is visible where the command runs and counted in the report.
    """

    def __init__(self, shown: int = 5):
        self.shown = shown
        self.counts: Counter = Counter()
        self.first: dict[str, list[str]] = {}

    def add(self, reason: str, message: str, count: int = 1) -> None:
        self.counts[reason] += count
        kept = self.first.setdefault(reason, [])
        if len(kept) < self.shown:
            kept.append(message)
            print(f"warning: {message}", file=sys.stderr)

    def to_dict(self) -> dict:
        return {reason: {"count": n, "first": self.first[reason]} for reason, n in self.counts.items()}


# ---------------------------------------------------------------- per sample and per user


class SampleEvent(NamedTuple):
    """A samples-file line that is not voted: a counted skip, or an error that stops the build."""

    line: int
    reason: str  # broken_line, unknown_user, duplicate_sample, or "error"
    message: str


def read_sample(
    line: bytes, path: str, lineno: int, users: dict[str, int], taxonomy: Taxonomy
) -> tuple[int, int, Iterable[Sequence]] | SampleEvent | None:
    """One samples-file line -> (record order, sample_idx, per-dimension outputs), a SampleEvent, or
    None for a blank line.

    A line that is not a JSON object (a writer killed mid-line) is a counted skip, as is a sample
    of a user without a kept record. A JSON object without the sample fields means the wrong file
    was given: that is an error.
    """
    try:
        obj = json.loads(line.decode())
    except ValueError as exc:
        if not line.strip():
            return None
        return SampleEvent(lineno, "broken_line", f"{path}:{lineno}: not a JSON line ({exc}); skipped")
    if type(obj) is not dict:
        return SampleEvent(lineno, "broken_line", f"{path}:{lineno}: expected a JSON object; skipped")
    user, idx, text = obj.get("user_id"), obj.get("sample_idx"), obj.get("text")
    if not (type(user) is str and type(idx) is int and type(text) is str):
        try:  # the slow path: other valid types (an integer user_id), or the message naming the field
            user = field(obj, "user_id", (str, int), path, lineno)
            idx = field(obj, "sample_idx", int, path, lineno)
            text = field(obj, "text", str, path, lineno)
        except InputError as exc:
            return SampleEvent(lineno, "error", str(exc))
    order = users.get(user if type(user) is str else str(user))
    if order is None:
        return SampleEvent(lineno, "unknown_user", f"{path}:{lineno}: user {str(user)!r} has no usable record; sample skipped")
    return order, idx, parse_profile(text, taxonomy).values()


class UserVote(NamedTuple):
    """One user's vote per dimension (voting.Vote) over M = ``num_samples`` samples, and the
    evidence of the chosen sample for each voted tag ('' when it gave none)."""

    user_id: str
    num_samples: int
    votes: dict[str, Vote]
    evidence: dict[str, str]


@lru_cache(maxsize=8)
def choice_pairs(taxonomy: Taxonomy) -> tuple[dict[str, tuple], ...]:
    """Per dimension, {label: (None, (label, 1), ..., (label, 5))}: shared (tag, confidence) pairs,
    so a tally holds pointers instead of allocating one pair per sample and dimension."""
    return tuple({label: (None, *((label, s) for s in range(1, 6))) for label in dim.labels} for dim in taxonomy)


class UserTally:
    """One user's samples, folded as they arrive into what voting and the evidence choice need.

    Per dimension: the (tag, confidence) of each well-formed sample, for ``voting.vote``; per tag,
    the evidence of its best sample: non-empty evidence first, then the higher confidence, then
    the lower sample_idx. The choice depends on the samples, not on their order.
    """

    __slots__ = ("lines", "choices", "best", "pairs")

    def __init__(self, taxonomy: Taxonomy):
        self.pairs = choice_pairs(taxonomy)
        self.lines: dict[int, int] = {}
        self.choices: list[list] = [[] for _ in self.pairs]
        self.best: list[dict] = [{} for _ in self.pairs]

    def add(self, sample_idx: int, lineno: int, outputs: Iterable[Sequence]) -> int | None:
        """Fold one sample's (tag, score, evidence, ...) per dimension, in taxonomy order.

        Returns the line of the first occurrence when ``sample_idx`` was seen before; the repeat
        is then not folded.
        """
        first = self.lines.setdefault(sample_idx, lineno)
        if first != lineno:
            return first
        for choices, best, pairs, out in zip(self.choices, self.best, self.pairs, outputs):
            tag = out[0]
            if tag is None:
                continue
            score = out[1]
            choices.append(pairs[tag][score])
            key = (bool(out[2]), score, -sample_idx)
            held = best.get(tag)
            if held is None or key > held[0]:
                best[tag] = (key, out[2])
        return None

    def finish(self, user_id: str, taxonomy: Taxonomy, method: str) -> UserVote:
        votes, evidence = {}, {}
        for dim, choices, best in zip(taxonomy, self.choices, self.best):
            result = vote(choices, dim, method)
            votes[dim.key] = result
            evidence[dim.key] = (best[result.tag][1] or "") if result.tag is not None else ""
        return UserVote(user_id, len(self.lines), votes, evidence)


def duplicate_event(path: str, lineno: int, sample_idx: int, user_id: str, first: int) -> SampleEvent:
    return SampleEvent(
        lineno, "duplicate_sample",
        f"{path}:{lineno}: duplicate sample_idx {sample_idx} for user {user_id!r} (first at line {first}); skipped",
    )


@dataclass(frozen=True)
class VoteJob:
    """What the vote stage needs: the samples file and the kept users, in record order."""

    samples: str
    taxonomy: Taxonomy
    voting: str
    user_ids: tuple[str, ...]

    @property
    def users(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.user_ids)}


@dataclass
class VoteStage:
    """Votes of the users that have samples (record order) and the sample lines left out (line order)."""

    votes: list[UserVote]
    lines: int  # non-blank lines of the samples file
    events: list[SampleEvent]


def iter_lines(path: str, start: int = 0, end: int | None = None, first_line: int = 1) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) of the lines starting in [start, end) of a file."""
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot open: {exc.strerror}") from None
    with fh:
        fh.seek(start)
        if end is None:
            yield from enumerate(fh, first_line)
            return
        pos = start
        for lineno, line in enumerate(fh, first_line):
            if pos >= end:
                break
            pos += len(line)
            yield lineno, line


def _stage(votes: dict[int, UserVote], lines: int, events: list[SampleEvent]) -> VoteStage:
    """The stage result in record order; the first error (in line order) stops the build."""
    events.sort()
    errors = [e for e in events if e.reason == "error"]
    if errors:
        raise InputError(errors[0].message)
    return VoteStage([votes[o] for o in sorted(votes)], lines, events)


# ---------------------------------------------------------------- local engine


class LocalEngine:
    """Runs every stage in this process, streaming the samples file once."""

    name = "local"

    def vote(self, job: VoteJob) -> VoteStage:
        users, taxonomy, path = job.users, job.taxonomy, job.samples
        tallies: dict[int, UserTally] = {}
        events: list[SampleEvent] = []
        lines = 0
        for lineno, line in iter_lines(path):
            got = read_sample(line, path, lineno, users, taxonomy)
            if got is None:
                continue
            lines += 1
            if type(got) is SampleEvent:
                if got.reason == "error":
                    raise InputError(got.message)
                events.append(got)
                continue
            order, idx, outputs = got
            tally = tallies.get(order)
            if tally is None:
                tally = tallies[order] = UserTally(taxonomy)
            first = tally.add(idx, lineno, outputs)
            if first is not None:
                events.append(duplicate_event(path, lineno, idx, job.user_ids[order], first))
        votes = {o: t.finish(job.user_ids[o], taxonomy, job.voting) for o, t in tallies.items()}
        return _stage(votes, lines, events)

    def map_batches(self, fn: Callable[[list[T]], list[R]], items: Sequence[T], batch_size: int = PROMPT_BATCH) -> list[R]:
        out: list[R] = []
        for start in range(0, len(items), batch_size):
            out.extend(fn(list(items[start : start + batch_size])))
        return out


# ---------------------------------------------------------------- Ray engine


def plan_chunks(path: str, chunk_bytes: int) -> list[tuple[int, int, int]]:
    """Byte ranges (start, end, number of the first line) of about ``chunk_bytes``, cut at line starts."""
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot open: {exc.strerror}") from None
    chunks: list[tuple[int, int, int]] = []
    start, line = 0, 1
    with open(path, "rb") as fh:
        while start < size:
            fh.seek(min(start + chunk_bytes, size))
            fh.readline()
            end = fh.tell()
            fh.seek(start)
            newlines, left = 0, end - start
            while left:
                block = fh.read(min(left, 1 << 20))
                newlines += block.count(b"\n")
                left -= len(block)
            chunks.append((start, end, line))
            start, line = end, line + newlines
    return chunks


def _parse_chunk(chunk: dict, job: VoteJob) -> list[dict]:
    """Ray task: the samples of one byte range as rows keyed by record order (-1: a line left out)."""
    users, rows = job.users, []
    for lineno, line in iter_lines(job.samples, chunk["start"], chunk["end"], chunk["first_line"]):
        got = read_sample(line, job.samples, lineno, users, job.taxonomy)
        if got is None:
            continue
        if type(got) is SampleEvent:
            rows.append({"order": -1, "line": lineno, "payload": pickle.dumps(tuple(got))})
        else:
            order, idx, outputs = got
            rows.append({"order": order, "line": lineno, "payload": pickle.dumps((idx, [tuple(o[:3]) for o in outputs]))})
    return rows


def _vote_group(batch: dict, job: VoteJob) -> dict:
    """Ray task: one user's samples (or all left-out lines, order -1) -> one row with its vote and events."""
    order = int(batch["order"][0])
    ranked = sorted(zip(batch["line"].tolist(), batch["payload"]))
    if order < 0:
        events = [SampleEvent(*pickle.loads(p)) for _, p in ranked]
        return {"order": [order], "lines": [len(ranked)], "vote": [b""], "events": [pickle.dumps(events)]}
    tally, events, user_id = UserTally(job.taxonomy), [], job.user_ids[order]
    for lineno, payload in ranked:
        idx, outputs = pickle.loads(payload)
        first = tally.add(idx, lineno, outputs)
        if first is not None:
            events.append(duplicate_event(job.samples, lineno, idx, user_id, first))
    result = pickle.dumps(tally.finish(user_id, job.taxonomy, job.voting))
    return {"order": [order], "lines": [len(ranked)], "vote": [result], "events": [pickle.dumps(events)]}


def _apply_batch(batch: dict, fn: Callable) -> dict:
    results = fn([pickle.loads(x) for x in batch["item"]])
    return {"i": batch["i"], "result": [pickle.dumps(r) for r in results]}


class RayEngine:
    """Runs the per-sample and per-user stages on Ray Data (the cluster at RAY_ADDRESS, else a local Ray)."""

    name = "ray"

    def __init__(self, chunk_bytes: int = RAY_CHUNK_BYTES):
        self.chunk_bytes = chunk_bytes

    @staticmethod
    def _ray():
        import ray

        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False)
        return ray

    def vote(self, job: VoteJob) -> VoteStage:
        chunks = plan_chunks(job.samples, self.chunk_bytes)
        if not chunks:
            return VoteStage([], 0, [])
        ray = self._ray()
        items = [{"start": s, "end": e, "first_line": f} for s, e, f in chunks]
        grouped = (
            ray.data.from_items(items, override_num_blocks=len(items))
            .flat_map(partial(_parse_chunk, job=job))
            .groupby("order")
            .map_groups(partial(_vote_group, job=job), batch_format="numpy")
        )
        votes, lines, events = {}, 0, []
        for row in grouped.take_all():
            lines += int(row["lines"])
            events.extend(pickle.loads(row["events"]))
            if row["order"] >= 0:
                votes[int(row["order"])] = pickle.loads(row["vote"])
        return _stage(votes, lines, events)

    def map_batches(self, fn: Callable[[list[T]], list[R]], items: Sequence[T], batch_size: int = PROMPT_BATCH) -> list[R]:
        if not items:
            return []
        ray = self._ray()
        blocks = -(-len(items) // batch_size)
        ds = ray.data.from_items([{"i": i, "item": pickle.dumps(x)} for i, x in enumerate(items)], override_num_blocks=blocks)
        rows = ds.map_batches(partial(_apply_batch, fn=fn), batch_size=batch_size, batch_format="numpy").take_all()
        rows.sort(key=lambda r: r["i"])
        return [pickle.loads(r["result"]) for r in rows]


def make_engine(name: str) -> LocalEngine | RayEngine:
    if name == "local":
        return LocalEngine()
    if name == "ray":
        return RayEngine()
    raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")


# ---------------------------------------------------------------- prompts


@lru_cache(maxsize=4)
def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """The tokenizer in ``path`` (loaded once per process, so each Ray worker loads it once)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@dataclass(frozen=True)
class PromptBudget:
    """The longest prompt allowed, in tokens counted as verl's RLHFDataset counts them: the chat
    template with the generation prompt, tokenised without extra special tokens."""

    tokenizer: str
    max_tokens: int

    def count(self, chats: list[list[dict]]) -> list[int]:
        tok = load_tokenizer(self.tokenizer)
        texts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
        return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]


class PromptFit(NamedTuple):
    """A user's chat prompt, the keyphrases dropped to fit it, its length (None when not counted),
    or ``error`` when it cannot fit even without keyphrases."""

    messages: list[dict] | None
    dropped: int
    tokens: int | None
    error: str | None


@lru_cache(maxsize=8)
def _system_prompt(taxonomy: Taxonomy) -> str:
    return system_prompt(taxonomy)


def chat_prompt(record: dict, taxonomy: Taxonomy) -> list[dict]:
    """``prompt.messages(record, taxonomy)``, with the system prompt built once per taxonomy and
    shared by every user (it is the same text; building it is most of the cost of a prompt)."""
    return [{"role": "system", "content": _system_prompt(taxonomy)}, {"role": "user", "content": user_prompt(record)}]


def fit_prompts(records: list[dict], taxonomy: Taxonomy, budget: PromptBudget | None) -> list[PromptFit]:
    """Prompts of a batch of records; over-long ones are fitted by ``prompt.fit_messages``."""
    chats = [chat_prompt(r, taxonomy) for r in records]
    if budget is None:
        return [PromptFit(c, 0, None, None) for c in chats]
    out = []
    for record, chat, tokens in zip(records, chats, budget.count(chats)):
        if tokens <= budget.max_tokens:
            out.append(PromptFit(chat, 0, tokens, None))
            continue
        try:
            chat, dropped = fit_messages(record, taxonomy, lambda c: budget.count([c])[0], budget.max_tokens)
        except ValueError as exc:
            out.append(PromptFit(None, 0, None, str(exc)))
            continue
        out.append(PromptFit(chat, dropped, budget.count([chat])[0], None))
    return out


# ---------------------------------------------------------------- the shared front half of both builds


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector during a build (usable as a decorator).

    A build holds millions of small live objects (tallies, votes, prompts) and allocates many
    more; the collector's full passes would traverse them again and again, which measured as a
    large share of a 20,000-user build. The stages make no reference cycles worth collecting
    early: reference counting frees their garbage, and the collector runs again afterwards.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the stages both builds share."""
    parser.add_argument("--records", required=True, help="user records JSONL: user_id, behaviors, demographics, labels")
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--voting", choices=VOTING_METHODS, default="confidence", help="how samples are voted (Eq. 3-5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (split, sampling)")
    parser.add_argument("--taxonomy", help="taxonomy YAML (default: the bundled ProfileBench taxonomy)")
    parser.add_argument("--tokenizer", help="tokenizer directory used to count prompt tokens (with --max-prompt-length)")
    parser.add_argument("--max-prompt-length", type=int, metavar="N", help="fit every prompt within N tokens by dropping keyphrases")
    parser.add_argument("--engine", choices=ENGINES, default="local", help="where the per-user stages run (default: local)")


def prompt_budget(tokenizer: str | None, max_prompt_length: int | None) -> PromptBudget | None:
    """The budget asked for on the command line; the tokenizer is loaded now so a bad path fails early."""
    if (tokenizer is None) != (max_prompt_length is None):
        raise ValueError("--tokenizer and --max-prompt-length go together")
    if tokenizer is None:
        return None
    if max_prompt_length <= 0:
        raise ValueError(f"--max-prompt-length must be positive, got {max_prompt_length}")
    try:
        load_tokenizer(tokenizer)
    except (OSError, ValueError) as exc:
        raise InputError(f"--tokenizer {tokenizer}: cannot load a tokenizer ({exc})") from None
    return PromptBudget(tokenizer, max_prompt_length)


@dataclass
class Prepared:
    """Users with a record, samples and a prompt that fits, in record order, and what was left out."""

    records: list[dict]
    votes: list[UserVote]
    prompts: list[PromptFit]
    skips: SkipLog
    counts: dict


def prepare(
    records_path: str,
    samples_path: str,
    taxonomy: Taxonomy,
    voting: str,
    budget: PromptBudget | None,
    engine: LocalEngine | RayEngine,
) -> Prepared:
    """Read the records, vote every user's samples, fit every prompt; count what is left out.

    Errors (exit 2, nothing written): an unreadable file; in the records file a broken line, a
    duplicate user_id or a mistyped field (see records.read_records); in the samples file a JSON
    object without the sample fields; no user left at all (an empty dataset would only fail
    later, in verl). Counted skips: records without behaviours, broken sample lines, samples of
    users without a kept record, repeated (user_id, sample_idx) (the first occurrence is used),
    users without samples, users whose prompt cannot fit.
    """
    record_set = read_records(records_path)
    skips = SkipLog()
    for reason, n in record_set.skipped.items():
        skips.add(reason, f"{record_set.examples[reason]}: record has no behaviour keyphrases; skipped", n)
    records = record_set.records
    stage = engine.vote(VoteJob(samples_path, taxonomy, voting, tuple(records)))
    for event in stage.events:
        skips.add(event.reason, event.message)
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
    counts = {
        "records": len(records) + sum(record_set.skipped.values()),
        "records_kept": len(records),
        "samples": stage.lines,
        "samples_used": sum(v.num_samples for v in stage.votes),
        "users_with_samples": len(stage.votes),
        "users_kept": len(kept_votes),
    }
    return Prepared(kept_records, kept_votes, kept_fits, skips, counts)


def prompt_report(prepared: Prepared, budget: PromptBudget | None) -> dict:
    """Prompt-length section of a report: the limit, truncated users, dropped keyphrases, longest prompt."""
    tokens = [f.tokens for f in prepared.prompts if f.tokens is not None]
    return {
        "max_prompt_length": budget.max_tokens if budget else None,
        "tokenizer": budget.tokenizer if budget else None,
        "truncated_users": sum(1 for f in prepared.prompts if f.dropped),
        "dropped_keyphrases": sum(f.dropped for f in prepared.prompts),
        "longest_prompt_tokens": max(tokens, default=None),
    }


def write_parquet(rows: list[dict], path: str) -> None:
    """Write rows to a parquet file, atomically (a crash never leaves half a dataset)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = f"{path}.tmp"
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    os.replace(tmp, path)


def write_json(obj: object, path: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
