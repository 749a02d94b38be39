"""``confprofile synthesize`` end to end.

The openai backend runs its real client code path (``openai.AsyncOpenAI`` over HTTP) against
an OpenAI-compatible server started on 127.0.0.1 by each test; the server is the only fake.
It identifies every request by the user's clue keyphrase in the prompt and the sample index
in the seed (the tests pass ``--seed 1000``, so sample i is sent with seed 1000 + i), counts
requests per (user, sample), and follows a per-test script: answer, fail with a status, or stall.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import re
import signal
import socket
import sys
import threading
import types
import time
from collections import Counter, defaultdict
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from verl_confprofile.cli import main
from verl_confprofile.data_prep.backends import RetryPolicy, retry_after
from verl_confprofile.data_prep.simulated import SimulatedPopulation
from verl_confprofile.profile_format import parse_profile
from verl_confprofile.taxonomy import Taxonomy

SEED = 1000
MODEL = "teacher-x"
STALL = "stall"
# A gated request is let through after this long even if the width was never reached, so that
# a client sending too few at once fails the test instead of hanging it. Tests using a gate give
# the client a longer --timeout, so a request is never retried (and counted twice) while held.
GATE_TIMEOUT_S = 30


def answer(user: str, idx: int) -> str:
    return f"<gender><evidence>sample {idx} of {user}</evidence><tag>Female</tag><score>4</score></gender>"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        teacher: Teacher = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        user = re.search(r"clue-(\w+)", body["messages"][-1]["content"]).group(1)
        idx = body["seed"] - SEED
        with teacher.cond:
            teacher.arrivals[user, idx].append(time.monotonic())
            teacher.attempts[user, idx] += 1
            attempt = teacher.attempts[user, idx]
            teacher.bodies.append(body)
            teacher.in_flight += 1
            teacher.max_in_flight = max(teacher.max_in_flight, teacher.in_flight)
            teacher.cond.notify_all()
            if teacher.gate:
                width, total = teacher.gate
                teacher.cond.wait_for(lambda: teacher.in_flight >= width or teacher.in_flight + teacher.finished >= total,
                                      timeout=GATE_TIMEOUT_S)
        reply = teacher.script(user, idx, attempt)
        if reply == STALL:
            teacher.released.wait(30)
            reply = None  # an ordinary answer, to a client that has given up by now
        with teacher.cond:  # done before the answer leaves, so the count never exceeds the client's
            teacher.in_flight -= 1
            teacher.finished += 1
            teacher.cond.notify_all()
        headers, content_type = {}, "application/json"
        if isinstance(reply, tuple):
            reply, headers = reply
        if isinstance(reply, bytes):  # a 200 with this body as it is
            status, data, content_type = 200, reply, "text/html"
        elif isinstance(reply, int):
            status, payload = reply, {"error": {"message": f"scripted {reply} for {user}", "type": "test"}}
        else:
            fields = dict(reply or {})
            finish_reason = fields.pop("finish_reason", "stop")
            status, payload = 200, {
                "id": f"chatcmpl-{user}-{idx}-{attempt}", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer(user, idx), **fields},
                             "finish_reason": finish_reason}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
            }
        if not isinstance(reply, bytes):
            data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up on a stalled request and closed the connection
            pass


class Teacher(ThreadingHTTPServer):
    """A scripted OpenAI-compatible /v1/chat/completions endpoint on loopback.

    ``script(user, idx, attempt)`` returns None (answer), a dict of extra message fields
    (answer with them; "finish_reason" goes to the choice), an HTTP status (fail with it), a
    (status, headers) pair, bytes (a 200 with that body), or STALL (hold until the test ends). ``arrivals`` has the monotonic time of every request per (user, idx).
    ``gate=(width, total)`` holds each request until ``width`` are in flight at once (or all
    the remaining ones are), so the concurrency a client reaches is deterministic.
    """

    daemon_threads = True

    def __init__(self, script=None, gate=None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = script or (lambda user, idx, attempt: None)
        self.gate = gate
        self.cond = threading.Condition()
        self.attempts: Counter = Counter()
        self.arrivals: defaultdict = defaultdict(list)
        self.bodies: list[dict] = []
        self.in_flight = self.max_in_flight = self.finished = 0
        self.released = threading.Event()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def stop(self) -> None:
        self.released.set()
        self.shutdown()
        self.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def teacher(monkeypatch):
    """Start Teacher servers for a test; all are stopped at its end. The client reaches them directly."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    servers: list[Teacher] = []

    def start(script=None, gate=None) -> Teacher:
        servers.append(Teacher(script, gate))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def write_records(path, users, extra_lines=()):
    with open(path, "w", encoding="utf-8") as fh:
        for user in users:
            rec = {"user_id": user, "behaviors": {"watched": [f"clue-{user}", "cooking at home"], "searched": [f"{user} exam scores"]},
                   "demographics": {"region": "Chengdu"}}
            fh.write(json.dumps(rec) + "\n")
        for line in extra_lines:
            fh.write(line + "\n")
    return str(path)


def read_samples(path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def synthesize(records, out, server, *extra, num_samples=2):
    argv = ["synthesize", "--records", records, "--out", str(out), "--backend", "openai", "--model", MODEL,
            "--num-samples", str(num_samples), "--base-url", server.base_url, "--seed", str(SEED),
            "--timeout", "10", "--retry-delay", "0.01", "--max-retries", "4", *extra]
    return main(argv)


def pairs(samples) -> list[tuple[str, int]]:
    return sorted((s["user_id"], s["sample_idx"]) for s in samples)


@pytest.mark.parametrize("reasoning_field", ["reasoning_content", "reasoning"])
def test_openai_writes_every_sample_with_the_prompt_and_reasoning(tmp_path, teacher, capsys, reasoning_field):
    server = teacher(lambda user, idx, attempt: {reasoning_field: f"thinking about {user}"} if user == "u0" else None)
    records = write_records(tmp_path / "records.jsonl", ["u0", "u1", "u2"], ['{"user_id": "u3", "behaviors": {"watched": []}}'])
    out = tmp_path / "samples.jsonl"

    assert synthesize(records, out, server, "--temperature", "0.7", "--max-tokens", "512") == 0

    samples = read_samples(out)
    assert pairs(samples) == [("u0", 0), ("u0", 1), ("u1", 0), ("u1", 1), ("u2", 0), ("u2", 1)]
    sent = {re.search(r"clue-(\w+)", b["messages"][-1]["content"]).group(1): b["messages"] for b in server.bodies}
    for s in samples:
        assert set(s) == {"user_id", "sample_idx", "model", "text", "finish_reason", "sampling", "prompt_sha256"}
        assert s["model"] == "teacher-x" and s["finish_reason"] == "stop"
        assert s["sampling"] == {"backend": "openai", "seed": SEED, "temperature": 0.7, "max_tokens": 512}
        digest = hashlib.sha256(json.dumps(sent[s["user_id"]], ensure_ascii=False, sort_keys=True).encode()).hexdigest()
        assert s["prompt_sha256"] == digest  # the prompt exactly as sent
    texts = {(s["user_id"], s["sample_idx"]): s["text"] for s in samples}
    assert texts["u0", 1] == ("<think>thinking about u0</think>\n<gender><evidence>sample 1 of u0</evidence>"
                              "<tag>Female</tag><score>4</score></gender>")
    assert texts["u2", 0] == "<gender><evidence>sample 0 of u2</evidence><tag>Female</tag><score>4</score></gender>"
    assert server.attempts == {(u, i): 1 for u in ("u0", "u1", "u2") for i in (0, 1)}

    body = next(b for b in server.bodies if "clue-u1" in b["messages"][-1]["content"])
    assert body["model"] == "teacher-x" and body["temperature"] == 0.7 and body["max_tokens"] == 512
    system, user = body["messages"][0]["content"], body["messages"][1]["content"]
    assert "Female; Male; NA" in system and "18-23" in system and "Not Employed" in system
    assert "<life_stage>" in system and "1 (very low)" in system
    assert "clue-u1" in user and "cooking at home" in user and "u1 exam scores" in user and "Chengdu" in user

    stdout = capsys.readouterr().out
    assert "read 3 users" in stdout
    assert f"skipped 1 records: no_behaviors (first at {records}:4)" in stdout
    assert "wrote 6 samples" in stdout


def test_a_lone_surrogate_in_an_answer_is_replaced_not_fatal(tmp_path, teacher):
    # JSON lets "\\ud800" through, UTF-8 cannot store it: the sample is kept with U+FFFD in its place.
    server = teacher(lambda user, idx, attempt: {"content": "<gender><evidence>x\ud800y</evidence>"} if idx == 1 else None)
    records = write_records(tmp_path / "records.jsonl", ["u0"])
    out = tmp_path / "samples.jsonl"

    assert synthesize(records, out, server) == 0

    texts = {s["sample_idx"]: s["text"] for s in read_samples(out)}
    assert texts == {0: answer("u0", 0), 1: "<gender><evidence>x\ufffdy</evidence>"}


def test_custom_taxonomy_changes_the_prompt(tmp_path, teacher):
    server = teacher()
    taxonomy = tmp_path / "pets.yaml"
    taxonomy.write_text("na_label: NA\ndimensions:\n  pet:\n    name: Pet\n    labels: [Cat, Dog, NA]\n")
    records = write_records(tmp_path / "records.jsonl", ["u0"])

    assert synthesize(records, tmp_path / "samples.jsonl", server, "--taxonomy", str(taxonomy), num_samples=1) == 0

    system = server.bodies[0]["messages"][0]["content"]
    assert "- Pet (<pet>): Cat; Dog; NA" in system
    assert "<gender>" not in system


def test_rate_limits_and_server_errors_are_retried(tmp_path, teacher):
    # (u0, 0): 429, 429, then an answer; (u1, 1): 500, 503, 429, then an answer; the rest answer at once.
    failures = {("u0", 0): [429, 429], ("u1", 1): [500, 503, 429]}
    server = teacher(lambda user, idx, attempt: (failures.get((user, idx)) or [])[attempt - 1:attempt][0]
                     if attempt <= len(failures.get((user, idx), [])) else None)
    records = write_records(tmp_path / "records.jsonl", ["u0", "u1", "u2"])
    out = tmp_path / "samples.jsonl"

    assert synthesize(records, out, server) == 0

    assert pairs(read_samples(out)) == [("u0", 0), ("u0", 1), ("u1", 0), ("u1", 1), ("u2", 0), ("u2", 1)]
    assert server.attempts == {("u0", 0): 3, ("u0", 1): 1, ("u1", 0): 1, ("u1", 1): 4, ("u2", 0): 1, ("u2", 1): 1}


def test_the_wait_a_refusal_asks_for_is_kept(tmp_path, teacher):
    # (u0, 0) is refused twice: 429 with Retry-After: 1 (seconds), then 503 with retry-after-ms: 400.
    # The backoff alone (--retry-delay 0.01) would come back after 5-20 ms.
    refusals = {1: (429, {"Retry-After": "1"}), 2: (503, {"retry-after-ms": "400"})}
    server = teacher(lambda user, idx, attempt: refusals.get(attempt) if (user, idx) == ("u0", 0) else None)
    records = write_records(tmp_path / "records.jsonl", ["u0"])

    assert synthesize(records, tmp_path / "samples.jsonl", server) == 0

    first, second, third = server.arrivals["u0", 0]
    assert second - first >= 1.0 and third - second >= 0.4


def test_retry_after_values_by_hand():
    assert retry_after({"Retry-After": "2"}) == 2.0  # any case
    assert retry_after({"retry-after": "0.5"}) == 0.5
    assert retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5  # the finer one first, as OpenAI sends both
    assert retry_after({"retry-after": "-3"}) == 0.0
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # a date in the past: now
    soon = retry_after({"retry-after": format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)})
    assert 25 < soon <= 30
    assert retry_after({"retry-after": "soon"}) is None and retry_after({}) is None
    policy = RetryPolicy(first_delay=1.0, max_delay=60.0)
    # The asked wait is a floor on the backoff (retry k waits between d/2 and d, d = 1 * 2**k) ...
    assert policy.delay(0, random.Random(0), asked=7.5) == 7.5  # d = 1
    assert 4.0 <= policy.delay(3, random.Random(0), asked=0.0) <= 8.0  # d = 8: "now" does not cut it short
    # ... unless it is longer than max_delay: a quota, so the backoff alone applies.
    assert 4.0 <= policy.delay(3, random.Random(0), asked=3600) <= 8.0


def test_a_second_run_on_the_same_file_is_refused(tmp_path, teacher, capsys):
    server = teacher()
    records = write_records(tmp_path / "records.jsonl", ["u0"])
    out = tmp_path / "samples.jsonl"
    with open(out, "a") as held:  # what a running synthesize holds
        fcntl.flock(held, fcntl.LOCK_EX)
        assert synthesize(records, out, server) == 2
    assert f"{out}: another process" in capsys.readouterr().err
    assert not server.attempts  # refused before any request
    assert synthesize(records, out, server) == 0  # the lock went with its holder


def test_stalled_requests_time_out_and_are_retried(tmp_path, teacher):
    # A stall lasts until the test ends; --timeout must only be long enough that an answered
    # request never times out, also on a loaded machine (it would be sent twice).
    stalled = {("u1", 0), ("u2", 1)}
    server = teacher(lambda user, idx, attempt: STALL if (user, idx) in stalled and attempt == 1 else None)
    records = write_records(tmp_path / "records.jsonl", ["u0", "u1", "u2"])
    out = tmp_path / "samples.jsonl"

    assert synthesize(records, out, server, "--timeout", "5") == 0

    assert pairs(read_samples(out)) == [("u0", 0), ("u0", 1), ("u1", 0), ("u1", 1), ("u2", 0), ("u2", 1)]
    assert server.attempts[("u1", 0)] == 2 and server.attempts[("u2", 1)] == 2
    assert sum(server.attempts.values()) == 8


def test_retries_run_out_and_the_sample_is_reported(tmp_path, teacher, capsys):
    server = teacher(lambda user, idx, attempt: 503 if (user, idx) == ("u1", 0) else None)
    records = write_records(tmp_path / "records.jsonl", ["u0", "u1"])
    out = tmp_path / "samples.jsonl"

    assert synthesize(records, out, server, "--max-retries", "2") == 2

    assert pairs(read_samples(out)) == [("u0", 0), ("u0", 1), ("u1", 1)]
    assert server.attempts[("u1", 0)] == 3  # the first try and two retries
    err = capsys.readouterr().err
    assert "1 of 4 samples failed" in err
    assert "HTTP 503: scripted 503 for u1 (gave up after 3 attempts)" in err


def test_an_endpoint_that_never_answers_stops_the_run(tmp_path, teacher, capsys):
    teacher()  # only for the environment: API key set, proxies off
    records = write_records(tmp_path / "records.jsonl", ["u0", "u1"])
    with socket.socket() as probe:  # a loopback port held, never listened on, for the whole run
        probe.bind(("127.0.0.1", 0))
        closed = SimpleNamespace(base_url=f"http://127.0.0.1:{probe.getsockname()[1]}/v1")
        assert synthesize(records, tmp_path / "samples.jsonl", closed, "--max-retries", "1") == 2

    err = capsys.readouterr().err
    assert f"no answer from {closed.base_url}/" in err
    assert "APIConnectionError" in err and "(gave up after 2 attempts)" in err


def test_a_permanent_400_fails_those_samples_at_once_and_is_reported(tmp_path, teacher, capsys):
    server = teacher(lambda user, idx, attempt: 400 if user == "u1" else None)
    records = write_records(tmp_path / "records.jsonl", ["u0", "u1", "u2", "u3"])
    out = tmp_path / "samples.jsonl"

    assert synthesize(records, out, server) == 2

    assert pairs(read_samples(out)) == [("u0", 0), ("u0", 1), ("u2", 0), ("u2", 1), ("u3", 0), ("u3", 1)]
    assert server.attempts[("u1", 0)] == 1 and server.attempts[("u1", 1)] == 1  # a 400 is not retried
    captured = capsys.readouterr()
    assert "wrote 6 samples" in captured.out and "failed: 2" in captured.out
    assert "2 of 8 samples failed" in captured.err
    assert "2 x HTTP 400: scripted 400 for u1" in captured.err
    assert "run the same command again to retry only them" in captured.err


def test_resume_after_a_crash_sends_nothing_that_is_on_disk(tmp_path, teacher, capsys):
    users = ["u0", "u1", "u2", "u3"]
    records = write_records(tmp_path / "records.jsonl", users)
    out = tmp_path / "samples.jsonl"

    # First run: one request at a time; the endpoint answers 5 requests, then refuses the key (401),
    # which stops the run the way a crash would: 5 samples on disk, in order.
    first = teacher(lambda user, idx, attempt: 401 if sum(first.attempts.values()) > 5 else None)
    assert synthesize(records, out, first, "--concurrency", "1", num_samples=3) == 2
    assert "HTTP 401" in capsys.readouterr().err
    assert pairs(read_samples(out)) == [("u0", 0), ("u0", 1), ("u0", 2), ("u1", 0), ("u1", 1)]

    # Lose a line as well (an edited file): (u0, 1) must be drawn again.
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(line for line in lines if '"u0", "sample_idx": 1' not in line))

    second = teacher()
    assert synthesize(records, out, second, num_samples=3) == 0

    on_disk_before = {("u0", 0), ("u0", 2), ("u1", 0), ("u1", 1)}
    assert not on_disk_before & set(second.attempts)
    assert second.attempts == {pair: 1 for pair in [("u0", 1), ("u1", 2)] + [(u, i) for u in ("u2", "u3") for i in range(3)]}
    assert pairs(read_samples(out)) == [(u, i) for u in users for i in range(3)]  # each once: nothing lost or doubled
    assert "4 already in" in capsys.readouterr().out

    # Everything on disk: a third run sends nothing; asking for more samples sends only the new indices.
    third = teacher()
    assert synthesize(records, out, third, num_samples=3) == 0
    assert not third.attempts
    assert synthesize(records, out, third, num_samples=4) == 0
    assert third.attempts == {(u, 3): 1 for u in users}


def test_ctrl_c_keeps_finished_samples_and_a_rerun_resumes(tmp_path, teacher, capsys):
    users = ["u0", "u1", "u2"]
    records = write_records(tmp_path / "records.jsonl", users)
    out = tmp_path / "samples.jsonl"

    def interrupt_at_the_fourth(user, idx, attempt):
        if sum(first.attempts.values()) == 4:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while this request is open
            return STALL
        return None

    first = teacher(interrupt_at_the_fourth)
    with pytest.raises(SystemExit) as stopped:
        synthesize(records, out, first, "--concurrency", "1")
    assert stopped.value.code == 130
    captured = capsys.readouterr()
    assert "wrote 3 samples" in captured.out
    assert "interrupted; finished samples are in" in captured.err
    assert pairs(read_samples(out)) == [("u0", 0), ("u0", 1), ("u1", 0)]

    second = teacher()
    assert synthesize(records, out, second) == 0
    assert second.attempts == {("u1", 1): 1, ("u2", 0): 1, ("u2", 1): 1}
    assert pairs(read_samples(out)) == [(u, i) for u in users for i in (0, 1)]


def test_concurrency_bound_is_respected(tmp_path, teacher):
    server = teacher(gate=(3, 12))
    records = write_records(tmp_path / "records.jsonl", ["u0", "u1", "u2", "u3", "u4", "u5"])
    out = tmp_path / "samples.jsonl"

    assert synthesize(records, out, server, "--concurrency", "3", "--timeout", str(2 * GATE_TIMEOUT_S)) == 0

    assert server.max_in_flight == 3
    assert len(read_samples(out)) == 12


def test_partial_last_line_is_cut_off_and_reported(tmp_path, teacher, capsys):
    out = tmp_path / "samples.jsonl"
    assert synthesize(write_records(tmp_path / "first.jsonl", ["u0"]), out, teacher()) == 0
    done = read_samples(out)
    partial = '{"user_id": "u1", "sample_idx": 0, "model": "teach'  # 50 bytes, no newline: an interrupted write
    with open(out, "a") as fh:
        fh.write(partial)
    capsys.readouterr()

    server = teacher()
    assert synthesize(write_records(tmp_path / "records.jsonl", ["u0", "u1"]), out, server) == 0

    assert "removed an incomplete last line (50 bytes)" in capsys.readouterr().out
    samples = read_samples(out)  # every line parses
    assert samples[:2] == done
    assert pairs(samples) == [("u0", 0), ("u0", 1), ("u1", 0), ("u1", 1)]
    assert server.attempts == {("u1", 0): 1, ("u1", 1): 1}


def test_a_complete_last_line_without_newline_is_kept(tmp_path, teacher, capsys):
    # Only what does not parse is an interrupted write: a whole sample missing its newline is kept
    # (not paid for twice) and its line ended before the next sample is appended.
    records = write_records(tmp_path / "records.jsonl", ["u0", "u1"])
    out = tmp_path / "samples.jsonl"
    assert synthesize(records, out, teacher(), num_samples=1) == 0
    out.write_bytes(out.read_bytes().rstrip(b"\n"))
    before = read_samples(out)
    capsys.readouterr()

    server = teacher()
    assert synthesize(records, out, server) == 0

    assert "removed" not in capsys.readouterr().out
    assert server.attempts == {("u0", 1): 1, ("u1", 1): 1}
    samples = read_samples(out)  # every line parses: the newline was added
    assert samples[:2] == before
    assert pairs(samples) == [("u0", 0), ("u0", 1), ("u1", 0), ("u1", 1)]


def test_a_byte_order_mark_is_kept_and_a_torn_line_after_it_cut_exactly(tmp_path, teacher, capsys):
    # A samples file saved by an editor that writes a BOM: the resume scan reads its first sample
    # (not "not a sample line") and cuts a torn last line at the right byte, BOM included.
    records = write_records(tmp_path / "records.jsonl", ["u0", "u1"])
    out = tmp_path / "samples.jsonl"
    assert synthesize(records, out, teacher(), num_samples=1) == 0
    body = out.read_bytes()
    out.write_bytes(b"\xef\xbb\xbf" + body + b'{"user_id": "u1", "sample_idx": 1, "mod')
    capsys.readouterr()

    server = teacher()
    assert synthesize(records, out, server) == 0

    assert server.attempts == {("u0", 1): 1, ("u1", 1): 1}
    data = out.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf" + body)  # nothing before the torn line was lost
    lines = data[3:].splitlines()
    assert len(lines) == 4 and all(json.loads(line) for line in lines)


def test_a_bad_byte_in_the_output_is_named_as_such(tmp_path, teacher, capsys):
    records = write_records(tmp_path / "records.jsonl", ["u0"])
    out = tmp_path / "samples.jsonl"
    out.write_bytes(b'{"user_id": "u0", "sample_idx": 0, "text": "caf\xe9"}\n')
    assert synthesize(records, out, teacher()) == 2
    assert f"{out}:1: not a sample line (not UTF-8 text" in capsys.readouterr().err


def test_an_output_file_of_another_model_is_refused(tmp_path, teacher, capsys):
    records = write_records(tmp_path / "records.jsonl", ["u0"])
    out = tmp_path / "samples.jsonl"
    out.write_text(json.dumps({"user_id": "u0", "sample_idx": 0, "model": "other-teacher", "text": ""}) + "\n")

    server = teacher()
    assert synthesize(records, out, server) == 2

    assert f"{out}:1: a sample of model 'other-teacher', not 'teacher-x'" in capsys.readouterr().err
    assert not server.attempts


def test_missing_api_key_is_a_clear_error(tmp_path, teacher, monkeypatch, capsys):
    server = teacher()
    monkeypatch.delenv("OPENAI_API_KEY")
    records = write_records(tmp_path / "records.jsonl", ["u0"])

    assert synthesize(records, tmp_path / "samples.jsonl", server) == 2

    assert "set the environment variable OPENAI_API_KEY" in capsys.readouterr().err
    assert not (tmp_path / "samples.jsonl").exists()


def test_simulated_backend_is_well_formed_and_deterministic(tmp_path):
    taxonomy = Taxonomy.load(None)
    population = SimulatedPopulation(taxonomy, seed=3)
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps(population.record(f"s{k}")) + "\n" for k in range(4)))
    argv = ["synthesize", "--records", str(records), "--backend", "simulated", "--num-samples", "3", "--seed", "3", "--out"]

    assert main(argv + [str(tmp_path / "a.jsonl")]) == 0
    assert main(argv + [str(tmp_path / "b.jsonl")]) == 0

    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    samples = read_samples(tmp_path / "a.jsonl")
    assert pairs(samples) == [(f"s{k}", i) for k in range(4) for i in range(3)]
    assert {s["model"] for s in samples} == {"simulated-teacher"}
    for s in samples:
        assert s["text"] == population.sample_text(s["user_id"], s["sample_idx"])
    well_formed = sum(d.well_formed for s in samples for d in parse_profile(s["text"], taxonomy).values())
    assert well_formed >= 0.8 * len(samples) * len(taxonomy.keys)


def test_simulated_backend_refuses_a_model_name(tmp_path, capsys):
    records = write_records(tmp_path / "records.jsonl", ["u0"])
    argv = ["synthesize", "--records", records, "--out", str(tmp_path / "s.jsonl"), "--backend", "simulated",
            "--model", "gpt-x", "--num-samples", "1"]
    assert main(argv) == 2
    assert "not a model" in capsys.readouterr().err


def test_vllm_missing_gives_install_advice(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    records = write_records(tmp_path / "records.jsonl", ["u0"])
    argv = ["synthesize", "--records", records, "--out", str(tmp_path / "s.jsonl"), "--backend", "vllm",
            "--model", "Qwen/Qwen3-8B", "--num-samples", "2"]

    assert main(argv) == 2

    err = capsys.readouterr().err
    assert "pip install 'verl-confprofile[vllm]'" in err
    assert "vllm serve" in err and "--backend openai" in err
    assert not (tmp_path / "s.jsonl").exists()


class FakeVLLM(types.ModuleType):
    """A stand-in for the vllm package (not installable here) with the interface the backend uses:
    ``LLM(model, **engine_args).chat(conversations, sampling_params, use_tqdm=...)`` and
    ``SamplingParams(n, max_tokens, seed, temperature)``. As vLLM's parallel sampling does, a
    request with n and seed s draws its n sequences with seeds s, s + 1, ...; a sequence's text
    depends only on the user's clue and its seed, so re-drawing an index gives its first text.
    ``log`` records every engine made and every chat call (its requests as (user, n, seed)).
    """

    def __init__(self):
        super().__init__("vllm")
        self.log: list[tuple] = []
        fake = self

        class SamplingParams:
            def __init__(self, n=1, max_tokens=16, seed=None, temperature=1.0):
                self.n, self.max_tokens, self.seed, self.temperature = n, max_tokens, seed, temperature

        class LLM:
            def __init__(self, model, **engine_args):
                fake.log.append(("engine", model, engine_args))

            def chat(self, messages, sampling_params, use_tqdm=True):
                requests, outputs = [], []
                for conversation, params in zip(messages, sampling_params, strict=True):
                    user = re.search(r"clue-(\w+)", conversation[-1]["content"]).group(1)
                    requests.append((user, params.n, params.seed, params.max_tokens, params.temperature))
                    texts = [answer(user, params.seed + i - SEED) for i in range(params.n)]
                    outputs.append(SimpleNamespace(outputs=[SimpleNamespace(text=t) for t in texts]))
                fake.log.append(("chat", requests))
                return outputs

        self.LLM, self.SamplingParams = LLM, SamplingParams


def test_vllm_backend_batches_users_draws_n_per_prompt_and_resumes(tmp_path, monkeypatch, capsys):
    vllm = FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    users = ["u0", "u1", "u2", "u3", "u4"]
    records = write_records(tmp_path / "records.jsonl", users)
    out = tmp_path / "samples.jsonl"

    def run(*extra):
        vllm.log.clear()
        return main(["synthesize", "--records", records, "--out", str(out), "--backend", "vllm", "--model", "ckpt",
                     "--num-samples", "3", "--seed", str(SEED), "--batch-size", "2", *extra])

    # A fresh run: one engine; 2 + 2 + 1 users per call, one request of n = 3 (seed S) per user.
    assert run("--engine-arg", "tensor_parallel_size=2", "--max-tokens", "256", "--temperature", "0.6") == 0
    fresh = [(u, 3, SEED, 256, 0.6) for u in users]
    assert vllm.log == [("engine", "ckpt", {"tensor_parallel_size": 2}),
                        ("chat", fresh[0:2]), ("chat", fresh[2:4]), ("chat", fresh[4:])]
    samples = read_samples(out)
    assert {(s["user_id"], s["sample_idx"]): s["text"] for s in samples} == {(u, i): answer(u, i) for u in users for i in range(3)}
    assert {s["model"] for s in samples} == {"ckpt"}

    # Lose (u0, 1), (u3, 0) and (u3, 2): a re-run asks only for them, one request per run of
    # consecutive indices, each with seed S + its first index; without --max-tokens vLLM gets None
    # (run to the end of the context) and without --temperature its own default.
    lost = {("u0", 1), ("u3", 0), ("u3", 2)}
    out.write_text("".join(json.dumps(s) + "\n" for s in samples if (s["user_id"], s["sample_idx"]) not in lost))
    same = ("--max-tokens", "256", "--temperature", "0.6")
    assert run(*same) == 0
    assert vllm.log == [("engine", "ckpt", {}),
                        ("chat", [("u0", 1, SEED + 1, 256, 0.6), ("u3", 1, SEED, 256, 0.6), ("u3", 1, SEED + 2, 256, 0.6)])]
    redrawn = {(s["user_id"], s["sample_idx"]): s["text"] for s in read_samples(out)}
    assert redrawn == {(u, i): answer(u, i) for u in users for i in range(3)}  # the same texts as the first draw

    # Nothing missing: no engine is made at all.
    assert run(*same) == 0
    assert vllm.log == []
    assert "15 already in" in capsys.readouterr().out

    # Other sampling options on the same file are refused before any engine is made; in a new file,
    # without --max-tokens vLLM gets None (run to the end of the context) and its own temperature.
    assert run() == 2
    assert f"{out}:1: drawn with max_tokens 256, this run asks for None" in capsys.readouterr().err
    assert vllm.log == []
    out = tmp_path / "other.jsonl"
    assert run() == 0
    assert vllm.log[1] == ("chat", [("u0", 3, SEED, None, 1.0), ("u1", 3, SEED, None, 1.0)])


# ---------------------------------------------------------------- what a resumed run must match


def simulated_run(records, out, *extra):
    return main(["synthesize", "--records", str(records), "--out", str(out), "--backend", "simulated", "--num-samples", "2", *extra])


def test_simulated_samples_of_another_seed_are_not_resumed(tmp_path, capsys):
    population = SimulatedPopulation(Taxonomy.load(None), seed=0)
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps(population.record(f"s{k}")) + "\n" for k in range(3)))
    out = tmp_path / "samples.jsonl"
    assert simulated_run(records, out) == 0
    before = out.read_bytes()

    assert simulated_run(records, out, "--seed", "1") == 2

    assert f"{out}:1: drawn with seed 0, this run asks for 1" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert simulated_run(records, out, "--seed", "0") == 0  # the same options resume (nothing to draw)
    assert out.read_bytes() == before


def test_samples_of_another_prompt_are_not_resumed(tmp_path, teacher, capsys):
    records = write_records(tmp_path / "records.jsonl", ["u0", "u1"])
    out = tmp_path / "samples.jsonl"
    assert synthesize(records, out, teacher(), num_samples=1) == 0
    taxonomy = tmp_path / "pets.yaml"
    taxonomy.write_text("na_label: NA\ndimensions:\n  pet:\n    name: Pet\n    labels: [Cat, Dog, NA]\n")

    server = teacher()
    assert synthesize(records, out, server, "--taxonomy", str(taxonomy)) == 2
    first = read_samples(out)[0]["user_id"]  # requests run concurrently: either user may come first
    assert f"{out}:1: user {first!r} was sampled with another prompt" in capsys.readouterr().err
    assert not server.attempts

    # An edited record changes that user's prompt too.
    write_records(tmp_path / "records.jsonl", ["u0", "u1"], ['{"user_id": "u2", "behaviors": {"watched": ["clue-u2"]}}'])
    lines = (tmp_path / "records.jsonl").read_text().splitlines()
    (tmp_path / "records.jsonl").write_text("\n".join([lines[0], lines[1].replace("cooking at home", "gardening")]) + "\n")
    assert synthesize(records, out, server) == 2
    line = [s["user_id"] for s in read_samples(out)].index("u1") + 1
    assert f"{out}:{line}: user 'u1' was sampled with another prompt" in capsys.readouterr().err


def test_a_file_without_sampling_settings_is_refused(tmp_path, teacher, capsys):
    records = write_records(tmp_path / "records.jsonl", ["u0"])
    out = tmp_path / "samples.jsonl"
    out.write_text(json.dumps({"user_id": "u0", "sample_idx": 0, "model": MODEL, "text": answer("u0", 0)}) + "\n")
    server = teacher()
    assert synthesize(records, out, server) == 2
    assert f"{out}:1: a sample without the record of how it was drawn" in capsys.readouterr().err
    assert not server.attempts


# ---------------------------------------------------------------- empty, truncated and bad completions


def test_truncated_samples_are_kept_marked_and_counted_and_empty_ones_retried(tmp_path, teacher, capsys):
    def script(user, idx, attempt):
        if user == "u0" and idx == 1:
            return {"content": "<gender><evidence>cut", "finish_reason": "length"}
        if user == "u1" and idx == 0:
            return {"content": None, "finish_reason": "length"}  # nothing at all
        if user == "u1" and idx == 1:
            return {"content": ""}
        return None

    records = write_records(tmp_path / "records.jsonl", ["u0", "u1"])
    out = tmp_path / "samples.jsonl"
    first = teacher(script)
    assert synthesize(records, out, first) == 2

    captured = capsys.readouterr()
    samples = {(s["user_id"], s["sample_idx"]): s for s in read_samples(out)}
    assert set(samples) == {("u0", 0), ("u0", 1)}  # the empty ones are not written
    assert samples["u0", 1]["finish_reason"] == "length" and samples["u0", 0]["finish_reason"] == "stop"
    assert "cut at the token limit (finish_reason length, kept): 1" in captured.out
    assert "1 x empty completion (finish_reason length)" in captured.err
    assert "1 x empty completion (finish_reason stop)" in captured.err

    second = teacher()  # the re-run draws exactly the empty ones again
    assert synthesize(records, out, second) == 0
    assert second.attempts == {("u1", 0): 1, ("u1", 1): 1}


BAD_BODIES = {
    "u1": b"<html><body>502 Bad Gateway</body></html>",
    "u2": b'{"id": "x", "choices": [{"message": {"content": "cut',
    "u3": b"[1, 2, 3]",
    "u4": b'{"id": "x", "choices": [{"index": 0, "finish_reason": "stop"}]}',
}


def test_bad_200_responses_are_retried_and_then_fail_one_sample_naming_the_endpoint(tmp_path, teacher, capsys):
    # u1..u4 get a bad body once, then an answer; u5 gets an HTML page every time.
    def script(user, idx, attempt):
        if user == "u5":
            return BAD_BODIES["u1"]
        return BAD_BODIES[user] if user in BAD_BODIES and attempt == 1 else None

    users = ["u0", "u1", "u2", "u3", "u4", "u5"]
    records = write_records(tmp_path / "records.jsonl", users)
    out = tmp_path / "samples.jsonl"
    server = teacher(script)

    assert synthesize(records, out, server, "--concurrency", "1", "--max-retries", "2", num_samples=1) == 2

    assert pairs(read_samples(out)) == [(u, 0) for u in users[:5]]
    assert all(server.attempts[u, 0] == 2 for u in ("u1", "u2", "u3", "u4")) and server.attempts["u5", 0] == 3
    err = capsys.readouterr().err
    assert "1 of 6 samples failed" in err
    assert f"invalid response from {server.base_url}/: the body is not JSON (it starts '<html><body>502" in err
    assert "gave up after 3 attempts" in err


@pytest.mark.parametrize("user, reason", [
    ("u1", "the body is not JSON"), ("u2", "the body is not JSON"), ("u3", "the body is a JSON list"),
    ("u4", "choices[0] has no message object"),
])
def test_each_bad_body_has_its_reason(tmp_path, teacher, capsys, user, reason):
    server = teacher(lambda u, idx, attempt: BAD_BODIES[user] if u == user else None)
    records = write_records(tmp_path / "records.jsonl", ["u0", user])
    assert synthesize(records, tmp_path / "s.jsonl", server, "--concurrency", "1", "--max-retries", "0", num_samples=1) == 2
    assert f"invalid response from {server.base_url}/: {reason}" in capsys.readouterr().err


# ---------------------------------------------------------------- an endpoint that goes silent


def test_an_endpoint_that_goes_silent_stops_the_run_with_progress_lines(tmp_path, teacher, capsys):
    # u0's two samples are answered (one request at a time, they come first), then every request
    # hangs. Without the stall limit each sample would be retried for its whole backoff; with it
    # the run stops once nothing valid came for 5 s. Which samples answer does not depend on how
    # many requests were sent: on a loaded machine an answer may time out and be sent again.
    server = teacher(lambda user, idx, attempt: None if user == "u0" else STALL)
    records = write_records(tmp_path / "records.jsonl", ["u0", "u1", "u2"])
    out = tmp_path / "samples.jsonl"

    assert synthesize(records, out, server, "--concurrency", "1", "--timeout", "2", "--max-retries", "1000",
                      "--stall-timeout", "5", "--progress-every", "0.5") == 2

    assert pairs(read_samples(out)) == [("u0", 0), ("u0", 1)]
    err = capsys.readouterr().err
    assert f"no valid completion from {server.base_url}/ for" in err and "(--stall-timeout 5)" in err
    assert "APITimeoutError" in err  # the last error is named
    # stderr is not a terminal here: no progress bar, progress lines instead, also while nothing arrives
    progress = [line for line in err.splitlines() if line.startswith("synthesize: 2/6 samples")]
    assert len(progress) >= 3


# ---------------------------------------------------------------- looking before paying, nothing to do


def simulated(records, out, *extra, num_samples=2):
    return main(["synthesize", "--records", str(records), "--out", str(out), "--backend", "simulated",
                 "--num-samples", str(num_samples), *extra])


@pytest.mark.parametrize("lines", [[], ['{"user_id": "u0", "behaviors": {"watched": [null, ""]}}']], ids=["empty", "all skipped"])
def test_a_records_file_without_a_user_to_sample_is_an_error(tmp_path, capsys, lines):
    records = tmp_path / "records.jsonl"
    records.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    out = tmp_path / "samples.jsonl"

    assert simulated(records, out) == 2

    err = capsys.readouterr().err
    assert f"{records}: no user to sample ({len(lines)} records; skipped: {'no_behaviors=1' if lines else 'none'}" in err
    assert not out.exists()  # not even an empty samples file


def test_a_file_that_is_not_a_samples_file_is_never_cut(tmp_path, capsys):
    # One line of notes without a newline does not parse, but it is not the start of a sample
    # line: the file is someone else's, so the run stops and the file is left as it was.
    records = write_records(tmp_path / "records.jsonl", ["u0"])
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes", encoding="utf-8")

    assert simulated(records, notes) == 2

    assert notes.read_text(encoding="utf-8") == "my notes"
    assert f"{notes}:1: not a sample line" in capsys.readouterr().err
    # The same after complete samples: only a remainder of a sample line is cut.
    out = tmp_path / "samples.jsonl"
    assert simulated(records, out, num_samples=1) == 0
    before = out.read_bytes()
    with open(out, "ab") as fh:
        fh.write(b"appended by hand")
    assert simulated(records, out) == 2
    assert out.read_bytes() == before + b"appended by hand"


@pytest.mark.parametrize("partial", ['{"us', '{"user_id": "u0", "sample_idx": 1, "mo'])
def test_the_remainder_of_a_first_interrupted_write_is_cut(tmp_path, capsys, partial):
    # A write cut in the very first line of a new file: a prefix of how every sample line starts.
    records = write_records(tmp_path / "records.jsonl", ["u0"])
    out = tmp_path / "samples.jsonl"
    out.write_text(partial, encoding="utf-8")

    assert simulated(records, out) == 0

    assert f"removed an incomplete last line ({len(partial)} bytes)" in capsys.readouterr().out
    assert pairs(read_samples(out)) == [("u0", 0), ("u0", 1)]


def test_limit_samples_the_first_users_and_a_later_run_adds_the_rest(tmp_path, capsys):
    records = write_records(tmp_path / "records.jsonl", ["u0", "u1", "u2"], ['{"user_id": "u3", "behaviors": {"watched": []}}'])
    out = tmp_path / "samples.jsonl"

    assert simulated(records, out, "--limit", "2") == 0
    assert pairs(read_samples(out)) == [("u0", 0), ("u0", 1), ("u1", 0), ("u1", 1)]
    assert "2 users (--limit 2: the first of 3) x 2 samples: 0 already in" in capsys.readouterr().out

    assert simulated(records, out) == 0  # the same command without --limit: only u2 is drawn
    assert pairs(read_samples(out)) == [("u0", 0), ("u0", 1), ("u1", 0), ("u1", 1), ("u2", 0), ("u2", 1)]
    assert "3 users x 2 samples: 4 already in" in capsys.readouterr().out


def test_limit_still_checks_every_line_on_disk(tmp_path, capsys):
    # u1's samples, beyond --limit 1, were drawn with another record: still refused.
    records = write_records(tmp_path / "records.jsonl", ["u0", "u1"])
    out = tmp_path / "samples.jsonl"
    assert simulated(records, out) == 0
    changed = write_records(tmp_path / "changed.jsonl", ["u0"], ['{"user_id": "u1", "behaviors": {"watched": ["other"]}}'])
    assert simulated(changed, out, "--limit", "1") == 2
    assert "user 'u1' was sampled with another prompt" in capsys.readouterr().err


def test_prompt_prints_the_exact_prompt_synthesize_sends(tmp_path, capsys):
    records = write_records(tmp_path / "records.jsonl", ["u0", "u1"])
    out = tmp_path / "samples.jsonl"
    assert simulated(records, out, num_samples=1) == 0
    sent = {s["user_id"]: s["prompt_sha256"] for s in read_samples(out)}
    capsys.readouterr()

    assert main(["prompt", "--records", records, "--user", "u1", "--json"]) == 0

    printed = capsys.readouterr()
    chat = json.loads(printed.out)
    assert [m["role"] for m in chat] == ["system", "user"] and "clue-u1" in chat[1]["content"]
    digest = hashlib.sha256(json.dumps(chat, ensure_ascii=False, sort_keys=True).encode()).hexdigest()
    assert digest == sent["u1"] and f"prompt_sha256 {sent['u1']}" in printed.err

    assert main(["prompt", "--records", records, "--user", "u1"]) == 0
    text = capsys.readouterr().out
    assert text == f"=== system ===\n{chat[0]['content']}\n\n=== user ===\n{chat[1]['content']}\n"

    assert main(["prompt", "--records", records, "--user", "u9"]) == 2
    assert f"{records}: no record of user 'u9'" in capsys.readouterr().err
