"""``confprofile synthesize``: sample a teacher M times per user with the confidence-hinted prompt.

Input: user records (``records.read_records``). Output: the samples JSONL that ``vote`` and
``build-sft`` read, one line per sample, ``{"user_id", "sample_idx", "model", "text",
"finish_reason", "sampling", "prompt_sha256"}``, with the raw text kept whole so a parser change
never means asking the teacher again. ``finish_reason`` is the backend's ("length": cut at the
token limit; counted and reported), ``sampling`` how the sample was drawn (backend, seed,
temperature, token limit) and ``prompt_sha256`` a digest of the exact prompt sent: together
with ``model`` they are what a resumed run must match.

The output file is only ever appended to, one complete line per finished sample (a single
write, then a flush), so it is also the run's checkpoint; a run holds a lock on it, so a
second run on the same file is refused rather than drawing the same samples. On start, the
command reads what is already there and samples only the (user_id, sample_idx) pairs that
are missing: a re-run after a crash or Ctrl-C sends no request for a sample on disk, and
raising M later adds just the new indices. A line drawn another way (another model, seed,
backend, temperature, token limit, or another prompt: a changed record, taxonomy or prompt
budget) is refused with a message naming it: samples drawn differently must not be mixed in one
file. A last line without its newline that does not parse, and starts as synthesize starts its
lines, is the remainder of an interrupted write: it is cut off, reported, and its sample drawn
again; any other unparsable line means --out is not a samples file, and the run stops before
touching it. A complete sample that only lacks its newline is kept and the newline added. Samples that still fail after all retries, and empty
completions, are counted by reason and make the command exit with an error; they are simply
missing from the file, so the next run retries exactly them.

The prompts are rendered for every user up front (the digest check needs them), with the same
token budget rule as the builds (``--tokenizer``/``--max-prompt-length``, ``budget.fit_prompts``),
so the teacher is asked exactly what the student is later trained on. A records file without a
user to sample is an error. ``--limit N`` samples the first N users only (every line on disk is
still checked against its user's prompt), so a later run with a larger N, or none, adds the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator, TextIO

from verl_confprofile.jsonl import BOM, InputError, JSONDecodeError, line_problem, loads, sample_fields, write_line
from verl_confprofile.jsonl import field as checked_field
from verl_confprofile.output_guard import declare
from verl_confprofile.taxonomy import Taxonomy

from .backends import Backend, Job, OpenAIBackend, Outcome, RetryPolicy, SimulatedBackend, TransformersBackend, VLLMBackend
from .budget import PromptBudget, PromptFit, fit_prompts, prompt_report, prompt_summary
from .build_args import prompt_budget
from .prompt import prompt_digest
from .records import dropped_message, read_records

BACKENDS = ("openai", "vllm", "transformers", "simulated")
# Default --batch-size: users per LLM.chat call (vllm), sequences per generate call (transformers).
BATCH_SIZE = {"vllm": 256, "transformers": 32}


class SamplesFailed(ValueError):
    """Some samples failed after all retries; the rest are on disk and a re-run retries only these."""


@dataclass
class OnDisk:
    """What earlier runs left in the output file."""

    done: set[tuple[str, int]]
    cut_bytes: int = 0  # size of the interrupted last line that was removed (0: none)
    newline_missing: bool = False  # the last line is a complete sample without its newline


@dataclass
class Tally:
    """Samples written and failed in this run; failures by reason, with one example each."""

    written: int = 0
    truncated: int = 0  # written samples the backend cut at the token limit (finish_reason "length")
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


# How every line synthesize writes starts (``write_line`` of a dict whose first key is user_id): the
# remainder of an interrupted write starts so too, or is a prefix of it.
SAMPLE_START = b'{"user_id": '


def scan_output(path: str, model: str, sampling: dict | None = None, prompts: dict[str, str] | None = None) -> OnDisk:
    """The (user_id, sample_idx) pairs already in ``path``, after cutting off an interrupted last line.

    Every complete line must be a sample of ``model`` drawn with ``sampling``, and (for a user
    in ``prompts``, {user_id: prompt digest}) from the same prompt: one samples file holds one
    way of drawing samples, so a resumed run never mixes two. A line that is not a sample,
    repeats a pair or was drawn otherwise is an error naming the line, not something to guess
    around. Only a last line without its newline that does not parse and starts as synthesize
    starts its lines (``SAMPLE_START``) is taken for the remainder of an interrupted write and
    cut; any other such line means the file is not a samples file, and nothing is cut.
    """
    done: set[tuple[str, int]] = set()
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return OnDisk(done)
    except OSError as exc:
        raise InputError(f"{path}: cannot open: {exc.strerror}") from None
    complete = cut = 0
    newline_missing = False
    with fh:
        for lineno, raw in enumerate(fh, 1):
            if lineno == 1 and raw.startswith(BOM):  # another writer's byte order mark: kept, not read
                complete, raw = len(BOM), raw[len(BOM) :]
            ended = raw.endswith(b"\n")
            if not raw.strip():
                if not ended:
                    cut = len(raw)
                complete += len(raw) if ended else 0
                continue
            try:
                obj = loads(raw)
            except JSONDecodeError as exc:
                if not ended and (raw.startswith(SAMPLE_START) or SAMPLE_START.startswith(raw)):
                    cut = len(raw)
                    break
                raise InputError(
                    f"{path}:{lineno}: not a sample line ({line_problem(raw, exc, 'not JSON')}); synthesize only appends "
                    "to --out, so this file has other content"
                ) from None
            complete += len(raw)
            newline_missing = not ended
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
            if sampling is not None:
                _check_sampling(obj, sampling, path, lineno)
            if prompts is not None and user in prompts and obj.get("prompt_sha256") != prompts[user]:
                raise InputError(
                    f"{path}:{lineno}: user {user!r} was sampled with another prompt than this run's (its record, the "
                    "taxonomy or the prompt budget changed); samples of different prompts must not be mixed: "
                    "choose another --out, or restore the inputs of the earlier run"
                )
            if (user, idx) in done:
                raise InputError(f"{path}:{lineno}: duplicate sample_idx {idx} for user {user!r}")
            done.add((user, idx))
    if cut:
        with open(path, "r+b") as fh:
            fh.truncate(complete)
    return OnDisk(done, cut, newline_missing)


def _check_sampling(obj: dict, sampling: dict, path: str, lineno: int) -> None:
    """A line's ``sampling`` must equal this run's; the message names the first setting that differs."""
    found = obj.get("sampling")
    if found == sampling:
        return
    if not isinstance(found, dict):
        raise InputError(
            f"{path}:{lineno}: a sample without the record of how it was drawn (field 'sampling'; written by an "
            "older version?), so a resumed run cannot tell whether it matches: choose another --out"
        )
    for key in sorted(set(sampling) | set(found)):
        if found.get(key) != sampling.get(key):
            raise InputError(
                f"{path}:{lineno}: drawn with {key} {found.get(key)!r}, this run asks for {sampling.get(key)!r}; "
                "samples drawn differently must not be mixed in one file: run with the earlier options or choose another --out"
            )


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


class Progress:
    """A progress line on stderr every ``every`` seconds when the progress bar is off (stderr is
    not a terminal: nohup, Slurm, a pipe), so a long run never looks hung, a silent endpoint
    included: the line is also printed while nothing arrives."""

    def __init__(self, total: int, tally: Tally, every: float, enabled: bool):
        self.total, self.tally, self.every, self.enabled = total, tally, every, enabled
        self.start = self.last = time.monotonic()
        self.done = 0

    def update(self) -> None:
        self.done += 1
        if self.enabled and time.monotonic() - self.last >= self.every:
            self.show()

    def show(self) -> None:
        now = time.monotonic()
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        print(
            f"synthesize: {self.done}/{self.total} samples ({self.tally.written} written, {sum(self.tally.failed.values())} failed, "
            f"{self.tally.truncated} cut at the token limit), {rate:.2f}/s, {now - self.start:.0f} s",
            file=sys.stderr, flush=True,
        )

    async def tick(self) -> None:
        while self.enabled:
            await asyncio.sleep(max(self.every - (time.monotonic() - self.last), 0.01))
            if time.monotonic() - self.last >= self.every:
                self.show()


async def synthesize(
    backend: Backend,
    prompts: dict[str, list[dict]],
    missing: dict[str, tuple[int, ...]],
    fh: TextIO,
    tally: Tally,
    sampling: dict,
    progress_every: float = 60.0,
) -> None:
    """Draw the missing samples and append each to the samples file ``fh`` as it arrives,
    counting into ``tally``.

    ``prompts`` holds each user's chat prompt (already fitted to the budget). ``tally``
    belongs to the caller so the counts survive an interruption.
    """
    from tqdm import tqdm

    digests = {user: prompt_digest(prompts[user]) for user in missing}
    jobs = (Job(user, idxs, prompts[user]) for user, idxs in missing.items())
    total = sum(map(len, missing.values()))
    with tqdm(total=total, unit="sample", desc="synthesize", disable=None) as bar:
        progress = Progress(total, tally, progress_every, enabled=bool(bar.disable))

        def emit(outcome: Outcome) -> None:
            if outcome.text is None:
                tally.fail(outcome)
                bar.set_postfix(failed=sum(tally.failed.values()), refresh=False)
            else:
                sample = {
                    "user_id": outcome.user_id, "sample_idx": outcome.sample_idx, "model": backend.model, "text": outcome.text,
                    "finish_reason": outcome.finish_reason, "sampling": sampling, "prompt_sha256": digests[outcome.user_id],
                }
                write_line(fh, sample)
                fh.flush()
                tally.written += 1
                tally.truncated += outcome.finish_reason == "length"
            bar.update()
            progress.update()

        ticker = asyncio.create_task(progress.tick())
        try:
            await backend.run(jobs, emit)
        finally:
            ticker.cancel()


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
    batch_size = args.batch_size or BATCH_SIZE.get(args.backend)
    if args.backend == "vllm":
        return VLLMBackend(
            args.model, batch_users=batch_size, temperature=args.temperature, max_tokens=args.max_tokens,
            seed=args.seed, engine_args=dict(args.engine_arg or []),
        )
    if args.backend == "transformers":
        return TransformersBackend(
            args.model, batch_size=batch_size, temperature=args.temperature, max_tokens=args.max_tokens,
            seed=args.seed, device=args.device,
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
        temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed, stall_timeout=args.stall_timeout,
    )


def sampling_settings(args: argparse.Namespace) -> dict:
    """How this run draws samples, besides the model and the prompt: stored with every sample and
    compared on resume. The simulated teacher's seed is its population seed (0 by default)."""
    seed = (args.seed or 0) if args.backend == "simulated" else args.seed
    return {"backend": args.backend, "seed": seed, "temperature": args.temperature, "max_tokens": args.max_tokens}


PROMPT_BATCH = 256  # users per fit_prompts call (one tokenizer call each)


def user_prompts(
    records: dict[str, dict], taxonomy: Taxonomy, budget: PromptBudget | None
) -> tuple[dict[str, list[dict]], list[PromptFit], list[str]]:
    """({user_id: chat prompt} fitted to the budget, the fits, users whose prompt cannot fit with the reason)."""
    users = list(records)
    prompts, fits, too_long = {}, [], []
    for start in range(0, len(users), PROMPT_BATCH):
        batch = users[start : start + PROMPT_BATCH]
        for user, fit in zip(batch, fit_prompts([records[u] for u in batch], taxonomy, budget)):
            if fit.error is not None:
                too_long.append(f"user {user!r}: {fit.error}")
                continue
            prompts[user] = fit.messages
            fits.append(fit)
    return prompts, fits, too_long


def run(args: argparse.Namespace) -> None:
    """The ``synthesize`` command: check everything, resume from --out, sample, report."""
    taxonomy = Taxonomy.load(args.taxonomy)
    backend = make_backend(args, taxonomy)
    budget = prompt_budget(args.tokenizer, args.max_prompt_length)
    records = read_records(args.records)
    print(f"read {len(records.records)} users from {args.records}")
    for reason, n in records.skipped.items():
        print(f"  skipped {n} records: {reason} (first at {records.examples[reason]})")
    for reason, n in records.dropped.items():
        print(f"  {dropped_message(reason, n)} (first at {records.dropped_examples[reason]})")
    prompts, fits, too_long = user_prompts(records.records, taxonomy, budget)
    if too_long:
        print(f"  skipped {len(too_long)} users: prompt_too_long (first: {too_long[0]})")
    if not prompts:
        skipped = ", ".join(f"{reason}={n}" for reason, n in records.skipped.items()) or "none"
        raise InputError(
            f"{args.records}: no user to sample ({len(records.records) + sum(records.skipped.values())} records; "
            f"skipped: {skipped}; prompt too long: {len(too_long)}); nothing written"
        )
    print(f"  {prompt_summary(prompt_report(fits, budget))}")
    users = list(prompts)[: args.limit]
    sampling = sampling_settings(args)
    tally = Tally()
    interrupted = False
    with locked_for_append(args.out) as fh:
        on_disk = scan_output(args.out, backend.model, sampling, {u: prompt_digest(c) for u, c in prompts.items()})
        if on_disk.cut_bytes:
            print(f"{args.out}: removed an incomplete last line ({on_disk.cut_bytes} bytes) left by an interrupted write")
        if on_disk.newline_missing:
            fh.write("\n")  # the last sample is complete: keep it, end its line
            fh.flush()
        missing = missing_samples(users, on_disk.done, args.num_samples)
        total = sum(map(len, missing.values()))
        wanted = len(users) * args.num_samples
        limited = f" (--limit {args.limit}: the first of {len(prompts)})" if len(users) < len(prompts) else ""
        print(f"{len(users)} users{limited} x {args.num_samples} samples: {wanted - total} already in {args.out}, "
              f"{total} to draw from {backend.model} ({args.backend})")
        try:
            asyncio.run(synthesize(backend, prompts, missing, fh, tally, sampling, args.progress_every))
        except KeyboardInterrupt:
            interrupted = True
        finally:
            print(f"wrote {tally.written} samples to {args.out}; failed: {sum(tally.failed.values())}; "
                  f"cut at the token limit (finish_reason length, kept): {tally.truncated}")
    if tally.truncated:
        print(f"warning: {tally.truncated} samples were cut at the token limit; they are kept (and marked "
              "finish_reason 'length'); raise --max-tokens for whole answers", file=sys.stderr)
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
                   "transformers: Hugging Face generate, batched (no vLLM: a CPU, a laptop, small models); "
                   "simulated: the synthetic stand-in teacher (answers from the user id's hidden profile, not from the record)")
    p.add_argument("--model", help="model name sent to the endpoint, or the checkpoint loaded by vLLM or transformers; "
                   "written into every sample")
    p.add_argument("--num-samples", required=True, type=_at_least(int, 1), metavar="M", help="samples per user (the paper: 10)")
    p.add_argument("--taxonomy", help="taxonomy YAML (default: the bundled ProfileBench taxonomy)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default: the endpoint's or vLLM's own, 1.0 in vLLM)")
    p.add_argument("--max-tokens", type=_at_least(int, 1), help="completion token limit (default: the endpoint's; vllm: up to the context length)")
    p.add_argument("--seed", type=int, help="sample i of every user is drawn with seed SEED+i (simulated: the population seed, default 0)")
    p.add_argument("--tokenizer", help="tokenizer directory used to count prompt tokens (with --max-prompt-length; the builds' rule)")
    p.add_argument("--max-prompt-length", type=int, metavar="N", help="fit every prompt within N tokens by dropping keyphrases, as the builds do")
    p.add_argument("--limit", type=_at_least(int, 1), metavar="N",
                   help="sample only the first N users of --records that can be sampled, to look before paying for all; "
                   "a later run with a larger N or without --limit adds the others to the same --out")
    p.add_argument("--progress-every", type=_at_least(float, 0.001), default=60.0, metavar="SECONDS",
                   help="when stderr is not a terminal (no progress bar), print a progress line this often (default: %(default)s)")
    api = p.add_argument_group("openai backend")
    api.add_argument("--base-url", help="endpoint URL, e.g. http://localhost:8000/v1 for `vllm serve` (default: OPENAI_BASE_URL or OpenAI's)")
    api.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="VAR", help="environment variable holding the API key (default: %(default)s)")
    api.add_argument("--concurrency", type=_at_least(int, 1), default=16, help="requests in flight at most (default: %(default)s)")
    api.add_argument("--max-retries", type=_at_least(int, 0), default=6, help="retries per sample on 408/429/5xx, timeouts and connection errors (default: %(default)s)")
    api.add_argument("--retry-delay", type=_at_least(float, 0.001), default=1.0, metavar="SECONDS",
                     help="first backoff delay; doubles per retry up to 60 s, with jitter (default: %(default)s)")
    api.add_argument("--timeout", type=_at_least(float, 0.001), default=600.0, metavar="SECONDS", help="per-request timeout (default: %(default)s)")
    api.add_argument("--stall-timeout", type=_at_least(float, 0.001), default=900.0, metavar="SECONDS",
                     help="stop the run when the endpoint gives no valid completion for this long (default: %(default)s)")
    offline = p.add_argument_group("vllm and transformers backends")
    offline.add_argument("--batch-size", type=_at_least(int, 1), metavar="N",
                         help="vllm: users per LLM.chat call (default 256); transformers: sequences per generate call "
                         "(default 32); a call's samples are written when it returns")
    offline.add_argument("--device", default="auto",
                         help="transformers: where the model runs, e.g. cpu, cuda, cuda:1 (default: auto, a GPU when there is one)")
    offline.add_argument("--engine-arg", type=_engine_arg, action="append", metavar="KEY=VALUE",
                         help="argument for vllm.LLM, repeatable: --engine-arg tensor_parallel_size=2 --engine-arg max_model_len=32768")
    p.set_defaults(func=run)
    declare(p, inputs=("records", "taxonomy", "tokenizer"), folder=False)
