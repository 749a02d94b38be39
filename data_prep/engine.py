"""Where the stages of build-sft and build-rl run: in this process or on Ray Data.

Both builds go records + samples -> one vote per user -> a prompt per user -> global steps
(calibration fit, split, difficulty filter) -> rows. The per-sample and per-user transforms are
in ``votes`` (``read_sample``), ``verl_confprofile.tally`` (``UserTally``) and ``budget``
(``fit_prompts``); an engine only decides where they run:

- ``local``: one pass over the samples file in this process. Samples may come in any order:
  each is parsed as it is read and folded into its user's tally.
- ``ray``: the samples file is cut into byte ranges at line starts; Ray Data tasks parse them,
  group the samples by user, fold each group into a ``UserTally`` in file order and vote; the
  prompt stage runs in Ray tasks too. Results come back in record order, so both engines
  produce the same votes, prompts, skips and messages, hence the same files.

Global steps stay on the driver: they need every user at once but only a few numbers per user.
"""

from __future__ import annotations

import os
import pickle
from functools import partial
from typing import Callable, Sequence, TypeVar

from verl_confprofile.jsonl import InputError, SampleEvent, iter_lines, voted_event
from verl_confprofile.profile_format import profile_parser
from verl_confprofile.tally import UserTally

from .votes import VoteJob, VoteStage, read_sample, vote_stage

ENGINES = ("local", "ray")
RAY_CHUNK_BYTES = 32 << 20
PROMPT_BATCH = 256

T = TypeVar("T")
R = TypeVar("R")


# ---------------------------------------------------------------- local engine


class LocalEngine:
    """Runs every stage in this process, streaming the samples file once."""

    name = "local"

    def vote(self, job: VoteJob) -> VoteStage:
        users, taxonomy, path = job.users, job.taxonomy, job.samples
        tallies: dict[int, UserTally] = {}
        digests: dict[int, set[str]] = {}
        events: list[SampleEvent] = []
        lines = 0
        for lineno, line in iter_lines(path):
            got = read_sample(line, path, lineno, users, job.drop_truncated)
            if got is None:
                continue
            lines += 1
            if type(got) is SampleEvent:
                if got.fatal(job.strict):
                    raise got.error()
                events.append(got)
                continue
            order, idx, text, truncated, digest = got
            tally = tallies.get(order)
            if tally is None:
                tally = tallies[order] = UserTally(taxonomy)
            if digest is not None:
                digests.setdefault(order, set()).add(digest)
            event = voted_event(path, lineno, idx, job.user_ids[order], tally.add_text(idx, lineno, text), truncated)
            if event is not None:
                if event.fatal(job.strict):
                    raise event.error()
                events.append(event)
        votes = {o: t.finish(job.user_ids[o], taxonomy, job.voting) for o, t in tallies.items()}
        return vote_stage(votes, lines, events, digests, job.strict)

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
    users, parse, rows = job.users, profile_parser(job.taxonomy), []
    for lineno, line in iter_lines(job.samples, chunk["start"], chunk["end"], chunk["first_line"]):
        got = read_sample(line, job.samples, lineno, users, job.drop_truncated)
        if got is None:
            continue
        if type(got) is SampleEvent:
            rows.append({"order": -1, "line": lineno, "payload": pickle.dumps(tuple(got))})
        else:
            order, idx, text, truncated, digest = got
            outputs = [tuple(o[:3]) for o in parse(text).values()]
            rows.append({"order": order, "line": lineno, "payload": pickle.dumps((idx, outputs, truncated, digest))})
    return rows


def _vote_group(batch: dict, job: VoteJob) -> dict:
    """Ray task: one user's samples (or all left-out lines, order -1) -> one row with its vote,
    events and prompt digests."""
    order = int(batch["order"][0])
    ranked = sorted(zip(batch["line"].tolist(), batch["payload"]))
    if order < 0:
        events = [SampleEvent(*pickle.loads(p)) for _, p in ranked]
        return {"order": [order], "lines": [len(ranked)], "vote": [b""], "events": [pickle.dumps(events)], "digests": [pickle.dumps(set())]}
    tally, events, digests, user_id = UserTally(job.taxonomy), [], set(), job.user_ids[order]
    for lineno, payload in ranked:
        idx, outputs, truncated, digest = pickle.loads(payload)
        event = voted_event(job.samples, lineno, idx, user_id, tally.add(idx, lineno, outputs), truncated)
        if event is not None:
            events.append(event)
        if digest is not None:
            digests.add(digest)
    result = pickle.dumps(tally.finish(user_id, job.taxonomy, job.voting))
    return {"order": [order], "lines": [len(ranked)], "vote": [result], "events": [pickle.dumps(events)], "digests": [pickle.dumps(digests)]}


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
            return VoteStage([], 0, [], [])
        ray = self._ray()
        items = [{"start": s, "end": e, "first_line": f} for s, e, f in chunks]
        grouped = (
            ray.data.from_items(items, override_num_blocks=len(items))
            .flat_map(partial(_parse_chunk, job=job))
            .groupby("order")
            .map_groups(partial(_vote_group, job=job), batch_format="numpy")
        )
        votes, lines, events, digests = {}, 0, [], {}
        for row in grouped.take_all():
            lines += int(row["lines"])
            events.extend(pickle.loads(row["events"]))
            if row["order"] >= 0:
                votes[int(row["order"])] = pickle.loads(row["vote"])
                digests[int(row["order"])] = pickle.loads(row["digests"])
        return vote_stage(votes, lines, events, digests, job.strict)

    def map_batches(self, fn: Callable[[list[T]], list[R]], items: Sequence[T], batch_size: int = PROMPT_BATCH) -> list[R]:
        if not items:
            return []
        ray = self._ray()
        blocks = -(-len(items) // batch_size)
        ds = ray.data.from_items([{"i": i, "item": pickle.dumps(x)} for i, x in enumerate(items)], override_num_blocks=blocks)
        rows = ds.map_batches(partial(_apply_batch, fn=fn), batch_size=batch_size, batch_format="numpy").take_all()
        rows.sort(key=lambda r: r["i"])
        return [pickle.loads(r["result"]) for r in rows]


Engine = LocalEngine | RayEngine


def make_engine(name: str) -> Engine:
    if name == "local":
        return LocalEngine()
    if name == "ray":
        return RayEngine()
    raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
