"""``confprofile synthesize``: sample a teacher M times per user with the confidence-hinted prompt.

Input: user records (``records.read_records``). Output: the samples JSONL that ``vote`` and
``build-sft`` read, one line per sample, ``{"user_id", "sample_idx", "model", "text"}``, with
the raw text kept whole so a parser change never means asking the teacher again.

The output file is only ever appended to, one complete line per finished sample (a single
write, then a flush), so it is also the run's checkpoint; a run holds a lock on it, so a
second run on the same file is refused rather than drawing the same samples. On start, the
command reads what is already there and samples only the (user_id, sample_idx) pairs that
are missing: a re-run after a crash or Ctrl-C sends no request for a sample on disk, and
raising M later adds just the new indices. A last line without its newline is the remainder of an interrupted write; it
is cut off, reported, and its sample drawn again. Samples that still fail after all retries
are counted by reason and make the command exit with an error; they are simply missing from
the file, so the next run retries exactly them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator, TextIO

from verl_confprofile.jsonl import InputError, JSONDecodeError, loads, sample_fields, write_line
from verl_confprofile.jsonl import field as checked_field
from verl_confprofile.output_guard import declare
from verl_confprofile.taxonomy import Taxonomy

from .backends import Backend, Job, OpenAIBackend, Outcome, RetryPolicy, SimulatedBackend, VLLMBackend
from .prompt import messages
from .records import read_records

BACKENDS = ("openai", "vllm", "simulated")


class SamplesFailed(ValueError):
    """Some samples failed after all retries; the rest are on disk and a re-run retries only these."""


@dataclass
class OnDisk:
    """What earlier runs left in the output file."""

    done: set[tuple[str, int]]
    cut_bytes: int = 0  # size of the interrupted last line that was removed (0: none)


@dataclass
class Tally:
    """Samples written and failed in this run; failures by reason, with one example each."""

    written: int = 0
    failed: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def fail(self, outcome: Outcome) -> None:
        reason = outcome.error or "no text"
        self.failed[reason] += 1
        self.examples.setdefault(reason, f"user {outcome.user_id!r} sample {outcome.sample_idx}")

    def failures(self, top: int = 5) -> str:
        """The most common reasons; hosted APIs put request ids in messages, so the list can be long."""
        common = self.failed.most_common()
        text = "; ".join(f"{n} x {reason} (e.g. {self.examples[reason]})" for reason, n in common[:top])
        return text + (f"; and {len(common) - top} other reasons" if len(common) > top else "")


def scan_output(path: str, model: str) -> OnDisk:
    """The (user_id, sample_idx) pairs already in ``path``, after cutting off an interrupted last line.

    Every complete line must be a sample of ``model``: one samples file holds one teacher, and
    a line that is not a sample, or repeats a pair, means the file was written by something
    else; both are errors naming the line rather than something to guess around.
    """
    done: set[tuple[str, int]] = set()
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return OnDisk(done)
    except OSError as exc:
        raise InputError(f"{path}: cannot open: {exc.strerror}") from None
    complete = cut = 0
    with fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.endswith(b"\n"):
                cut = len(raw)
                break
            complete += len(raw)
            if not raw.strip():
                continue
            try:
                obj = loads(raw)
            except JSONDecodeError as exc:
                raise InputError(
                    f"{path}:{lineno}: not a sample line ({exc.msg}, column {exc.colno}); synthesize only appends to --out, "
                    "so this file has other content"
                ) from None
            if not isinstance(obj, dict):
                raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            user, idx, _ = sample_fields(obj, path, lineno)
            user = str(user)
            found = checked_field(obj, "model", str, path, lineno)
            if found != model:
                raise InputError(
                    f"{path}:{lineno}: a sample of model {found!r}, not {model!r}: one samples file holds one teacher, "
                    "choose another --out"
                )
            if (user, idx) in done:
                raise InputError(f"{path}:{lineno}: duplicate sample_idx {idx} for user {user!r}")
            done.add((user, idx))
    if cut:
        with open(path, "r+b") as fh:
            fh.truncate(complete)
    return OnDisk(done, cut)


def missing_samples(user_ids: Iterable[str], done: set[tuple[str, int]], num_samples: int) -> dict[str, tuple[int, ...]]:
    """{user_id: indices in 0..M-1 not on disk}, users with nothing missing left out, in record order."""
    missing = {}
    for user in user_ids:
        idxs = tuple(i for i in range(num_samples) if (user, i) not in done)
        if idxs:
            missing[user] = idxs
    return missing


@contextmanager
def locked_for_append(path: str) -> Iterator[TextIO]:
    """``path`` opened for appending, with an exclusive lock held until the block ends.

    Two runs appending to one file would each draw the samples the other is drawing; the second
    is refused instead. The lock (flock) goes with the process, so a crash never leaves it behind.
    Where files cannot be locked (some network file systems, or no fcntl), a warning says so and
    the run goes on unlocked.
    """
    try:
        fh = open(path, "a", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot open for appending: {exc.strerror}") from None
    with fh:
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(
                f"{path}: another process (a running `confprofile synthesize`?) holds this file; wait for it or choose another --out"
            ) from None
        except (ImportError, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "no fcntl on this system"
            print(f"warning: {path}: cannot lock ({reason}); make sure no other run appends to it", file=sys.stderr)
        yield fh


async def synthesize(
    backend: Backend, records: dict[str, dict], missing: dict[str, tuple[int, ...]], taxonomy: Taxonomy, fh: TextIO, tally: Tally
) -> None:
    """Draw the missing samples and append each to the samples file ``fh`` as it arrives,
    counting into ``tally``.

    Prompts are rendered as the backend asks for jobs, not all up front. ``tally`` belongs to
    the caller so the counts survive an interruption.
    """
    from tqdm import tqdm

    jobs = (Job(user, idxs, messages(records[user], taxonomy)) for user, idxs in missing.items())
    total = sum(map(len, missing.values()))
    with tqdm(total=total, unit="sample", desc="synthesize", disable=None) as bar:

        def emit(outcome: Outcome) -> None:
            if outcome.text is None:
                tally.fail(outcome)
                bar.set_postfix(failed=sum(tally.failed.values()), refresh=False)
            else:
                sample = {"user_id": outcome.user_id, "sample_idx": outcome.sample_idx, "model": backend.model, "text": outcome.text}
                write_line(fh, sample)
                fh.flush()
                tally.written += 1
            bar.update()

        await backend.run(jobs, emit)


def make_backend(args: argparse.Namespace, taxonomy: Taxonomy) -> Backend:
    """The backend the arguments ask for; a missing model, API key or vLLM is an error here, before any file is touched."""
    if args.backend == "simulated":
        if args.model is not None:
            raise InputError(
                "--model: the simulated backend is a stand-in, not a model (its samples are labelled "
                "'simulated-teacher'); leave --model out"
            )
        return SimulatedBackend(taxonomy, seed=args.seed or 0)
    if not args.model:
        raise InputError(f"--model is required with --backend {args.backend}")
    if args.backend == "vllm":
        return VLLMBackend(
            args.model, batch_users=args.batch_size, temperature=args.temperature, max_tokens=args.max_tokens,
            seed=args.seed, engine_args=dict(args.engine_arg or []),
        )
    api_key = os.environ.get(args.api_key_env)
    if not api_key:
        raise InputError(
            f"no API key: set the environment variable {args.api_key_env} (for a `vllm serve` endpoint "
            "started without --api-key, any value such as EMPTY will do)"
        )
    return OpenAIBackend(
        args.model, api_key=api_key, base_url=args.base_url, concurrency=args.concurrency, timeout=args.timeout,
        retry=RetryPolicy(max_retries=args.max_retries, first_delay=args.retry_delay),
        temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed,
    )


def run(args: argparse.Namespace) -> None:
    """The ``synthesize`` command: check everything, resume from --out, sample, report."""
    taxonomy = Taxonomy.load(args.taxonomy)
    backend = make_backend(args, taxonomy)
    records = read_records(args.records)
    print(f"read {len(records.records)} users from {args.records}")
    for reason, n in records.skipped.items():
        print(f"  skipped {n} records: {reason} (first at {records.examples[reason]})")
    tally = Tally()
    interrupted = False
    with locked_for_append(args.out) as fh:
        on_disk = scan_output(args.out, backend.model)
        if on_disk.cut_bytes:
            print(f"{args.out}: removed an incomplete last line ({on_disk.cut_bytes} bytes) left by an interrupted write")
        missing = missing_samples(records.records, on_disk.done, args.num_samples)
        total = sum(map(len, missing.values()))
        wanted = len(records.records) * args.num_samples
        print(f"{len(records.records)} users x {args.num_samples} samples: {wanted - total} already in {args.out}, "
              f"{total} to draw from {backend.model} ({args.backend})")
        try:
            asyncio.run(synthesize(backend, records.records, missing, taxonomy, fh, tally))
        except KeyboardInterrupt:
            interrupted = True
        finally:
            print(f"wrote {tally.written} samples to {args.out}; failed: {sum(tally.failed.values())}")
    if interrupted:
        print(f"confprofile synthesize: interrupted; finished samples are in {args.out}, run the same command again to resume", file=sys.stderr)
        raise SystemExit(130)
    if tally.failed:
        raise SamplesFailed(
            f"{sum(tally.failed.values())} of {total} samples failed and are not in {args.out}: {tally.failures()}; "
            "run the same command again to retry only them"
        )


def _at_least(kind: type, low: float):
    """An argparse type: ``kind(text)``, refused below ``low``."""

    def parse(text: str):
        value = kind(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _engine_arg(text: str) -> tuple[str, object]:
    """KEY=VALUE for vllm.LLM(...); the value is read as YAML, so 2, 0.9, true and {...} get their types."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``synthesize`` subcommand."""
    p = subparsers.add_parser(
        "synthesize",
        help="sample a teacher M times per user with the confidence-hinted prompt (section 4.2)",
        description="Sample a teacher M times per user and append the raw outputs to a samples JSONL. "
        "Re-running the same command resumes: samples already in --out are not drawn again.",
    )
    p.add_argument("--records", required=True, help="user records JSONL: user_id, behaviors, demographics, labels")
    p.add_argument("--out", required=True, help="samples JSONL (user_id, sample_idx, model, text), appended to and resumed from")
    p.add_argument("--backend", required=True, choices=BACKENDS,
                   help="openai: any OpenAI-compatible endpoint (hosted, or `vllm serve`); vllm: offline vllm.LLM; "
                   "simulated: the synthetic stand-in teacher (answers from the user id's hidden profile, not from the record)")
    p.add_argument("--model", help="model name sent to the endpoint / loaded by vLLM, and written into every sample")
    p.add_argument("--num-samples", required=True, type=_at_least(int, 1), metavar="M", help="samples per user (the paper: 10)")
    p.add_argument("--taxonomy", help="taxonomy YAML (default: the bundled ProfileBench taxonomy)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default: the endpoint's or vLLM's own, 1.0 in vLLM)")
    p.add_argument("--max-tokens", type=_at_least(int, 1), help="completion token limit (default: the endpoint's; vllm: up to the context length)")
    p.add_argument("--seed", type=int, help="sample i of every user is drawn with seed SEED+i (simulated: the population seed, default 0)")
    api = p.add_argument_group("openai backend")
    api.add_argument("--base-url", help="endpoint URL, e.g. http://localhost:8000/v1 for `vllm serve` (default: OPENAI_BASE_URL or OpenAI's)")
    api.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="VAR", help="environment variable holding the API key (default: %(default)s)")
    api.add_argument("--concurrency", type=_at_least(int, 1), default=16, help="requests in flight at most (default: %(default)s)")
    api.add_argument("--max-retries", type=_at_least(int, 0), default=6, help="retries per sample on 408/429/5xx, timeouts and connection errors (default: %(default)s)")
    api.add_argument("--retry-delay", type=_at_least(float, 0.001), default=1.0, metavar="SECONDS",
                     help="first backoff delay; doubles per retry up to 60 s, with jitter (default: %(default)s)")
    api.add_argument("--timeout", type=_at_least(float, 0.001), default=600.0, metavar="SECONDS", help="per-request timeout (default: %(default)s)")
    offline = p.add_argument_group("vllm backend")
    offline.add_argument("--batch-size", type=_at_least(int, 1), default=256, metavar="USERS",
                         help="users per LLM.chat call; a call's samples are written when it returns (default: %(default)s)")
    offline.add_argument("--engine-arg", type=_engine_arg, action="append", metavar="KEY=VALUE",
                         help="argument for vllm.LLM, repeatable: --engine-arg tensor_parallel_size=2 --engine-arg max_model_len=32768")
    p.set_defaults(func=run)
    declare(p, inputs=("records", "taxonomy"), folder=False)
