"""Teacher backends for ``confprofile synthesize``: one interface, three ways to get samples.

A backend receives jobs (one per user: the chat prompt and the sample indices still missing)
and hands every sample it finishes, or gives up on, to a callback as soon as it has it, so the
command appends it to disk at once and a crash loses nothing that was finished. Scheduling is
the backend's own business: the OpenAI-compatible client sends one request per sample with
bounded concurrency and retries, offline vLLM batches many users per call with n samples
each, the simulated teacher answers at once.

Seeds: with a seed S, sample i of every user is drawn with seed S + i (per request for the
OpenAI-compatible API, per child sequence in vLLM), so re-sampling a missing index after a
crash asks for the same draw instead of repeating one already on disk.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from itertools import islice
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol

from verl_confprofile.taxonomy import Taxonomy

from .simulated import SIMULATED_MODEL, SimulatedPopulation

# Retried: request timeout, rate limit, and every 5xx; other 4xx are the request's own fault.
RETRY_STATUS = frozenset({408, 429})
# Refused credentials, permissions, model or URL: every request would fail the same way.
FATAL_STATUS = frozenset({401, 403, 404})


@dataclass(frozen=True)
class Job:
    """The samples still missing for one user, and the prompt to draw them with."""

    user_id: str
    sample_idxs: tuple[int, ...]
    messages: list[dict]


@dataclass(frozen=True)
class Outcome:
    """One sample: its raw text and why generation stopped (``finish_reason``: "stop", "length"
    for a cut at the token limit, or None when the backend does not say), or (text None) why it
    failed for good."""

    user_id: str
    sample_idx: int
    text: str | None = None
    error: str | None = None
    finish_reason: str | None = None


def finished(user_id: str, sample_idx: int, text: str, finish_reason: str | None) -> Outcome:
    """The outcome of a completion: an empty one (nothing at all, reasoning included) is a failure,
    so it is not written and the next run draws it again."""
    if not text.strip():
        return Outcome(user_id, sample_idx, error=f"empty completion (finish_reason {finish_reason})")
    return Outcome(user_id, sample_idx, text=text, finish_reason=finish_reason)


Emit = Callable[[Outcome], None]


class Backend(Protocol):
    """What ``synthesize`` needs from a teacher: the model name for the samples, and a run."""

    model: str

    async def run(self, jobs: Iterable[Job], emit: Emit) -> None:
        """Draw every sample of every job and emit each Outcome as soon as it is known."""


class EndpointError(ValueError):
    """The endpoint refuses every request (credentials, model, URL): stop instead of failing each sample."""


class BackendUnavailable(ValueError):
    """A backend whose optional dependency is not installed."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: the k-th retry waits between d/2 and d, d = first * 2**k (capped).

    The jitter spreads the retries of many concurrent requests that hit the same rate limit, so
    they do not come back all at once. A wait the server asks for (Retry-After) is a floor on
    that delay when it is at most ``max_delay``; a longer one is a quota rather than a rate
    limit, and the backoff alone applies.
    """

    max_retries: int = 6
    first_delay: float = 1.0
    max_delay: float = 60.0

    def delay(self, retry: int, rng: random.Random, asked: float | None = None) -> float:
        d = min(self.max_delay, self.first_delay * 2**retry)
        backoff = d / 2 + rng.uniform(0, d / 2)
        return max(backoff, asked) if asked is not None and asked <= self.max_delay else backoff


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The seconds a refusal (429, 503) asks the client to wait, from ``retry-after-ms`` (as
    OpenAI sends it) or ``Retry-After`` (seconds, or an HTTP date); None when neither is readable.
    Header names are matched in any case."""
    headers = {name.lower(): value for name, value in headers.items()}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            pass
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            continue
        if when.tzinfo is not None:
            return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
    return None


_SURROGATE = re.compile("[\ud800-\udfff]")


def completion_text(message: Mapping[str, Any]) -> str:
    """The raw text of a chat completion message (the JSON object), reasoning included.

    Reasoning models served with a reasoning parser return their chain of thought separately
    (``reasoning_content`` in DeepSeek's API and older vLLM, ``reasoning`` in newer vLLM and
    OpenRouter); it is put back in front as ``<think>...</think>`` so the stored text is the
    whole output, as a model without the parser would have written it. A lone surrogate (an
    escape such as \\ud800 that JSON lets through) becomes U+FFFD: UTF-8 cannot store it.
    """
    content = message.get("content") or ""
    for name in ("reasoning_content", "reasoning"):
        reasoning = message.get(name)
        if isinstance(reasoning, str) and reasoning:
            content = f"<think>{reasoning}</think>\n{content}"
            break
    try:
        content.encode("utf-8")
    except UnicodeEncodeError:
        content = _SURROGATE.sub("\ufffd", content)
    return content


class BadResponse(ValueError):
    """A 200 response that is not a chat completion (not JSON, an HTML page, a JSON array, no message)."""


def parse_completion(body: bytes) -> tuple[str, str | None]:
    """(text, finish_reason) of the first choice of a chat completion body; BadResponse says what is wrong.

    The body is read here rather than by the client's models, which accept anything and fail
    later with an AttributeError, or stop the run with a bare JSON error.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        snippet = body[:60].decode("utf-8", "replace").strip()
        raise BadResponse(f"the body is not JSON (it starts {snippet!r})") from None
    if not isinstance(data, dict):
        raise BadResponse(f"the body is a JSON {type(data).__name__}, not a chat completion object")
    if isinstance(data.get("error"), dict):
        raise BadResponse(f"an error in a 200 response: {data['error'].get('message')!r}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise BadResponse("a response without choices")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise BadResponse("choices[0] has no message object")
    if not isinstance(message.get("content"), (str, type(None))):
        raise BadResponse(f"message content is a JSON {type(message['content']).__name__}, not text")
    reason = choice.get("finish_reason")
    return completion_text(message), reason if isinstance(reason, str) else None


def _describe(exc: Exception) -> str:
    """A one-line reason for the report: HTTP status and the server's message, or the error kind."""
    status = getattr(exc, "status_code", None)
    body = getattr(exc, "body", None)
    detail = body.get("message") if isinstance(body, dict) and body.get("message") else getattr(exc, "message", str(exc))
    text = f"HTTP {status}: {detail}" if status is not None else f"{type(exc).__name__}: {detail}"
    return text if len(text) <= 300 else text[:297] + "..."


class OpenAIBackend:
    """Any OpenAI-compatible chat endpoint (a hosted teacher, or ``vllm serve``), via ``openai.AsyncOpenAI``.

    ``concurrency`` workers share one queue of samples, so at most that many requests are in
    flight and pending jobs are made only when a worker takes them (memory holds one prompt
    per user and no queue of requests). The client's own retries are off: this class retries 408, 429, 5xx,
    timeouts and connection errors with ``RetryPolicy`` (waiting as long as a Retry-After header
    asks); other 4xx fail the sample at once.
    A 200 response that is not a chat completion (``parse_completion``) is retried like a 5xx,
    with a reason naming the endpoint.
    401/403/404 stop the run (``EndpointError``), and so does a sample that runs out of retries
    before the endpoint has answered anything at all: a wrong URL or a server that is down
    would otherwise fail every sample only after its full backoff. Later in a run, an endpoint
    that gives no valid completion for ``stall_timeout`` seconds stops the run the same way,
    instead of retrying every sample for its full backoff without a word.
    """

    def __init__(
        self,
        model: str,
        *,
        api_key: str,
        base_url: str | None = None,
        concurrency: int = 16,
        timeout: float = 600.0,
        retry: RetryPolicy = RetryPolicy(),
        temperature: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        stall_timeout: float = 900.0,
    ):
        self.model = model
        self.api_key = api_key
        self.base_url = base_url
        self.concurrency = concurrency
        self.timeout = timeout
        self.retry = retry
        self.params = {k: v for k, v in (("temperature", temperature), ("max_tokens", max_tokens)) if v is not None}
        self.seed = seed
        self.stall_timeout = stall_timeout
        self._rng = random.Random()
        self._answered = False
        self._last_success = time.monotonic()
        self._last_error = ""

    async def run(self, jobs: Iterable[Job], emit: Emit) -> None:
        from openai import AsyncOpenAI

        work = ((job, idx) for job in jobs for idx in job.sample_idxs)
        async with AsyncOpenAI(api_key=self.api_key, base_url=self.base_url, timeout=self.timeout, max_retries=0) as client:

            async def worker() -> None:
                for job, idx in work:
                    emit(await self._sample(client, job, idx))

            self._last_success = time.monotonic()
            tasks = [asyncio.create_task(worker()) for _ in range(self.concurrency)]
            watchdog = asyncio.create_task(self._watch(str(client.base_url)))
            workers = asyncio.gather(*tasks)
            try:
                await asyncio.wait({workers, watchdog}, return_when=asyncio.FIRST_COMPLETED)
                if watchdog.done():
                    watchdog.result()  # raises EndpointError
                await workers
            finally:
                for task in (*tasks, watchdog):
                    task.cancel()
                await asyncio.gather(workers, watchdog, return_exceptions=True)

    async def _watch(self, url: str) -> None:
        """Raise EndpointError once no valid completion has come for ``stall_timeout`` seconds."""
        while True:
            silent = time.monotonic() - self._last_success
            if silent >= self.stall_timeout:
                raise EndpointError(
                    f"no valid completion from {url} for {silent:.0f} s (--stall-timeout {self.stall_timeout:g}); "
                    f"the endpoint looks down or stuck (last error: {self._last_error or 'none, requests still open'}). "
                    "Finished samples are kept: run the same command again once it answers"
                )
            await asyncio.sleep(min(self.stall_timeout - silent, 1.0))

    async def _sample(self, client: Any, job: Job, idx: int) -> Outcome:
        import openai

        params = dict(self.params)
        if self.seed is not None:
            params["seed"] = self.seed + idx
        reason, asked = "", None
        for attempt in range(self.retry.max_retries + 1):
            if attempt:
                self._last_error = reason
                await asyncio.sleep(self.retry.delay(attempt - 1, self._rng, asked))
            try:
                raw = await client.chat.completions.with_raw_response.create(model=self.model, messages=job.messages, **params)
                text, finish_reason = parse_completion(raw.content)
            except BadResponse as exc:
                reason, asked = f"invalid response from {client.base_url}: {exc}", None
            except openai.APIStatusError as exc:
                self._answered = True
                if exc.status_code in FATAL_STATUS:
                    raise EndpointError(f"{_describe(exc)} (check the model name, --base-url and the API key)") from None
                if exc.status_code not in RETRY_STATUS and exc.status_code < 500:
                    return Outcome(job.user_id, idx, error=_describe(exc))
                reason, asked = _describe(exc), retry_after(exc.response.headers)
            except openai.APIConnectionError as exc:  # APITimeoutError included
                reason, asked = _describe(exc), None
            except openai.APIError as exc:
                return Outcome(job.user_id, idx, error=_describe(exc))
            else:
                self._answered = True
                self._last_success = time.monotonic()
                return finished(job.user_id, idx, text, finish_reason)
        reason = f"{reason} (gave up after {self.retry.max_retries + 1} attempts)"
        if not self._answered:
            raise EndpointError(f"no answer from {client.base_url}: {reason}")
        return Outcome(job.user_id, idx, error=reason)


def _runs(idxs: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    """Split sorted indices into runs of consecutive ones: (0, 1, 3) -> (0, 1), (3,)."""
    start = 0
    for k in range(1, len(idxs) + 1):
        if k == len(idxs) or idxs[k] != idxs[k - 1] + 1:
            yield idxs[start:k]
            start = k


class VLLMBackend:
    """Offline batch generation with ``vllm.LLM.chat``: ``batch_users`` users per call, n samples each.

    One request per run of consecutive missing indices with ``SamplingParams(n=len(run))``, so a
    fresh user is a single request with n = M. vLLM draws the n sequences of a request with
    seeds seed, seed + 1, ..., which is why a run starting at index i gets seed S + i. The
    samples of a call are appended when the call returns: a crash loses at most one batch.
    The engine is created only when there is something to sample.
    """

    def __init__(
        self,
        model: str,
        *,
        batch_users: int = 256,
        temperature: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        engine_args: dict[str, Any] | None = None,
    ):
        try:
            import vllm
        except ImportError:
            raise BackendUnavailable(
                "the vllm backend needs vLLM: pip install 'verl-confprofile[vllm]' (on a GPU machine), "
                "or start `vllm serve MODEL` and use --backend openai --base-url http://HOST:PORT/v1"
            ) from None
        self._vllm = vllm
        self.model = model
        self.batch_users = batch_users
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.seed = seed
        self.engine_args = dict(engine_args or {})

    async def run(self, jobs: Iterable[Job], emit: Emit) -> None:
        """Blocking batches: the offline engine is synchronous and nothing else shares the loop."""
        llm = None
        pending = iter(jobs)
        while batch := list(islice(pending, self.batch_users)):
            if llm is None:
                llm = self._vllm.LLM(model=self.model, **self.engine_args)
            self._generate(llm, batch, emit)

    def _generate(self, llm: Any, batch: list[Job], emit: Emit) -> None:
        requests = [(job, run) for job in batch for run in _runs(job.sample_idxs)]
        extra = {} if self.temperature is None else {"temperature": self.temperature}
        # max_tokens=None lets a sample run to the end of the context (vLLM's own default is 16 tokens).
        params = [
            self._vllm.SamplingParams(
                n=len(run), max_tokens=self.max_tokens, seed=None if self.seed is None else self.seed + run[0], **extra
            )
            for _, run in requests
        ]
        outputs = llm.chat([job.messages for job, _ in requests], params, use_tqdm=False)
        for (job, run), output in zip(requests, outputs):
            for idx, completion in zip(run, output.outputs):
                emit(finished(job.user_id, idx, completion.text, getattr(completion, "finish_reason", None)))


class SimulatedBackend:
    """The simulated teacher of ``SimulatedPopulation``: a documented stand-in for demos and tests, not a model.

    Its answers come from the hidden true profile of the user id (and the seed), not from the
    prompt, so it is only meaningful for users of the same simulated population. The samples
    are labelled with the model name ``simulated-teacher``.
    """

    model = SIMULATED_MODEL

    def __init__(self, taxonomy: Taxonomy, seed: int = 0):
        self.population = SimulatedPopulation(taxonomy, seed=seed)

    async def run(self, jobs: Iterable[Job], emit: Emit) -> None:
        for job in jobs:
            for idx in job.sample_idxs:
                emit(Outcome(job.user_id, idx, text=self.population.sample_text(job.user_id, idx), finish_reason="stop"))


class TransformersBackend:
    """Batched sampling with Hugging Face ``generate``: the student pass without vLLM (a CPU, a
    laptop, a small model, the tests).

    The missing samples are generated ``batch_size`` sequences at a time (prompts of similar
    length together, left-padded), and a batch's samples are written when it returns. Each
    sequence draws its tokens from its own ``torch.Generator`` seeded S + i for sample i, so a
    draw does not depend on which other sequences share its batch: re-drawing a missing index
    after a crash asks for the same draw, as vLLM's per-request seeds do. Temperature 0 is greedy.
    ``finish_reason`` is "stop" when the model ended its turn (an end-of-sequence token) and
    "length" when it reached ``max_tokens`` (default: the rest of the model's context). The model
    is loaded only when there is something to sample.
    """

    def __init__(
        self,
        model: str,
        *,
        batch_size: int = 32,
        temperature: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        device: str = "auto",
    ):
        self.model = model
        self.batch_size = batch_size
        self.temperature = 1.0 if temperature is None else temperature  # vLLM's default too
        self.max_tokens = max_tokens
        self.seed = seed
        self.device = device

    async def run(self, jobs: Iterable[Job], emit: Emit) -> None:
        """Blocking batches, like the vllm backend: generation holds the process and nothing else shares the loop."""
        requests = [(job, idx) for job in jobs for idx in job.sample_idxs]
        if not requests:
            return
        tokenizer, model = self._load()
        eos = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
        prompts = {job.user_id: self._encode(tokenizer, job.messages) for job, _ in requests}
        requests.sort(key=lambda r: len(prompts[r[0].user_id]))
        for start in range(0, len(requests), self.batch_size):
            batch = requests[start : start + self.batch_size]
            rows = self._generate(model, [prompts[job.user_id] for job, _ in batch], [idx for _, idx in batch], eos, pad)
            texts = [(tokenizer.decode(tokens, skip_special_tokens=True), reason) for tokens, reason in rows]
            for (job, idx), (text, reason) in zip(batch, texts):
                emit(finished(job.user_id, idx, text, reason))

    def _load(self) -> tuple[Any, Any]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        tokenizer = AutoTokenizer.from_pretrained(self.model)
        # float32 on a CPU (bf16 matmuls are slow there); the checkpoint's own dtype elsewhere
        dtype = torch.float32 if device == "cpu" else "auto"
        model = AutoModelForCausalLM.from_pretrained(self.model, dtype=dtype).to(device).eval()
        return tokenizer, model

    @staticmethod
    def _encode(tokenizer: Any, messages: list[dict]) -> list[int]:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def _generate(
        self, model: Any, prompts: list[list[int]], idxs: list[int], eos: list[int], pad: int
    ) -> list[tuple[list[int], str]]:
        """(generated token ids, finish_reason) of one left-padded batch, each row sampled with its own seeded generator."""
        import torch
        from transformers import LogitsProcessorList

        device = model.device
        width = max(map(len, prompts))
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        budget = self.max_tokens or max(1, model.config.max_position_embeddings - width)
        processors = LogitsProcessorList()
        if self.temperature > 0:
            generators = [_generator(device, None if self.seed is None else self.seed + idx) for idx in idxs]
            processors.append(_RowSampler(generators, self.temperature))
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids, attention_mask=attention, max_new_tokens=budget, do_sample=False,
                logits_processor=processors, eos_token_id=eos, pad_token_id=pad,
                temperature=None, top_p=None, top_k=None,
            )
        results = []
        for row in out[:, width:].tolist():
            end = next((k for k, token in enumerate(row) if token in eos), None)
            results.append((row, "length") if end is None else (row[:end], "stop"))
        return results


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """The ids that end a turn: the generation config's, else the tokenizer's end-of-sequence."""
    eos = model.generation_config.eos_token_id
    ids = eos if isinstance(eos, list) else [eos]
    ids = [i for i in ids if i is not None] or [tokenizer.eos_token_id]
    return ids


def _generator(device: Any, seed: int | None) -> Any:
    import torch

    generator = torch.Generator(device=device)
    generator.manual_seed(random.SystemRandom().getrandbits(63) if seed is None else seed)
    return generator


class _RowSampler:
    """A logits processor that samples each row's next token with that row's own generator and leaves
    it the only choice, so greedy decoding keeps it: per-sequence seeds inside one batched ``generate``."""

    def __init__(self, generators: list[Any], temperature: float):
        self.generators = generators
        self.temperature = temperature

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        picks = torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, self.generators)])
        chosen = torch.full_like(scores, float("-inf"))
        chosen[torch.arange(len(picks)), picks] = 0.0
        return chosen
