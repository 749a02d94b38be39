"""Every parsing and normalisation step is linear in its input: an operation-count guard.

The reward path parses each rollout on a reward worker's event loop, so one super-linear step
on an adversarial output (a tag holding thousands of spaces) stalls every rollout of that
worker. Time is not measured here (that is ``benchmarks/parse_linear.py``): instead every
call the Python code makes into compiled code is recorded (``sys.setprofile``) while it reads
inputs of growing size built to hit the worst case of each step. The guard holds two things:
- every call is to a primitive that makes one pass over its arguments (``str.find``,
  ``str.split``, ...; no regular expression, whose backtracking can be quadratic or worse);
- the calls made do not change with the size of the input (no loop per character, per space
  or per repeated fragment), so the total work is a fixed number of linear passes.
The compiled reader (``_speedups``) is one forward pass by construction (see its header) and
is held equal to the Python reference by the property tests of test_profile_format.py.
"""

from __future__ import annotations

import gc
import re
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_confprofile import profile_format, tally
from verl_confprofile.jsonl import sample_line
from verl_confprofile.profile_format import ProfileParser, parse_profile
from verl_confprofile.tally import UserTally
from verl_confprofile.taxonomy import Taxonomy, normalize_label

TAX = Taxonomy.load()
SIZES = (1_000, 16_000)

# Calls that make one pass over their arguments (or cost O(1)): (owner, name) as recorded below.
SINGLE_PASS = {
    ("str", name) for name in ("find", "rfind", "count", "split", "join", "replace", "strip", "casefold", "translate", "decode")
} | {
    ("bytes", "decode"), ("bytes", "strip"),
    ("dict", "get"), ("dict", "values"), ("dict", "fromkeys"), ("dict", "setdefault"), ("dict", "items"), ("list", "append"),
    ("builtins", "isinstance"), ("builtins", "len"), ("builtins", "iter"), ("builtins", "zip"), ("builtins", "enumerate"),
    ("type", "__new__"), ("tuple", "__new__"),
    ("orjson", "loads"),
    ("verl_confprofile._speedups", "read_canonical"), ("verl_confprofile._speedups", "fold"),
    ("verl_confprofile._speedups", "fold_canonical"),
}


def compiled_calls(fn, *args) -> Counter:
    """The calls into compiled code that ``fn(*args)`` makes from Python, counted by (owner, name)."""
    calls: Counter = Counter()

    def profiler(frame, event, arg):
        if event == "c_call":
            owner = getattr(arg, "__objclass__", None)
            if owner is None:
                bound = getattr(arg, "__self__", None)
                if bound is None:
                    owner = arg.__module__  # a module function that does not record its module object
                else:
                    owner = bound if isinstance(bound, type) or type(bound).__name__ == "module" else type(bound)
            calls[(getattr(owner, "__name__", owner), arg.__name__)] += 1

    gc.disable()  # a collection would run gc callbacks (hypothesis times them) inside the count
    sys.setprofile(profiler)
    try:
        fn(*args)
    finally:
        sys.setprofile(None)
        gc.enable()
    calls.pop(("sys", "setprofile"), None)
    return calls


def assert_linear(make_input, fn) -> None:
    """``fn`` makes only single-pass calls, and the same ones, at every size of ``make_input(n)``."""
    fn(make_input(1))  # fills the caches (a taxonomy's parser and choice pairs) outside the count
    per_size = [compiled_calls(fn, make_input(n)) for n in SIZES]
    for calls in per_size:
        assert set(calls) <= SINGLE_PASS, f"not a single-pass primitive: {sorted(set(calls) - SINGLE_PASS)}"
    assert per_size[0] == per_size[1], f"calls grow with the input: {per_size[0]} -> {per_size[1]}"


@pytest.fixture(params=["compiled", "reference"])
def reader(request, monkeypatch):
    """Run each case through the compiled reader and through the Python reference alone."""
    if request.param == "reference":
        monkeypatch.setattr(profile_format, "read_canonical", None)
        monkeypatch.setattr(tally, "fold", tally._fold)
        monkeypatch.setattr(tally, "fold_canonical", tally._fold_canonical)
    return request.param


ADVERSARIAL_TEXTS = {
    "tag of spaces": lambda n: f"<age><evidence>e</evidence><tag>18{' ' * n}-23</tag><score>3</score></age>",
    "tag of spaced dashes": lambda n: "<gender><tag>" + " - " * n + "</tag><score>4</score></gender>",
    "tag of mixed whitespace": lambda n: "<gender><tag>" + " \t\u3000\n" * n + "male</tag><score>2</score></gender>",
    "score of spaces": lambda n: "<age><tag>50+</tag><score>very" + " " * n + "high</score></age>",
    "repeated open tags": lambda n: "<age>" * n + "<tag>50+</tag><score>3</score></age>",
    "repeated inner tags": lambda n: "<age>" + "<tag>" * n + "50+</tag><score>3</score></age>",
    "many think sections": lambda n: "<think>x</think>" * n + "<think>" * n + "<age><tag>NA</tag><score>1</score></age>",
    "near-canonical blocks": lambda n: "<age><evidence>e</evidence><tag>50+</tag><score>3</score></age>" * n,
}


@pytest.mark.parametrize("make_text", ADVERSARIAL_TEXTS.values(), ids=ADVERSARIAL_TEXTS)
def test_parse_profile_is_linear(reader, make_text):
    assert_linear(make_text, lambda text: ProfileParser(TAX)(text))


@pytest.mark.parametrize("make_text", ADVERSARIAL_TEXTS.values(), ids=ADVERSARIAL_TEXTS)
def test_tally_fold_of_a_raw_output_is_linear(reader, make_text):
    assert_linear(make_text, lambda text: UserTally(TAX).add_text(0, 1, text))


@pytest.mark.parametrize(
    "make_label",
    [
        lambda n: "a" + " " * n + "b",
        lambda n: "a" + " " * n + "-" + " " * n + "b",
        lambda n: " /" * n + ",",
        lambda n: "\u2013 " * n,
        lambda n: "Parenting (Child" + "\u00a0" * n + "3 \u2013 5)",
    ],
)
def test_label_matching_is_linear(make_label):
    assert_linear(make_label, normalize_label)
    assert_linear(make_label, TAX["life_stage"].canonical)


@pytest.mark.parametrize(
    "make_line",
    [
        lambda n: b'{"user_id": "u", "sample_idx": 0, "text": "<age><tag>' + b" " * n + b'NA</tag></age>"}\n',
        lambda n: b" " * n + b"\n",  # blank
        lambda n: b'{"user_id": "u", "text": "' + b"x" * n + b'"}',  # a missing field
        lambda n: b'{"user_id": "u", "sample_idx": 0, "text": "' + b"\xff" * n + b'"}',  # bad bytes
        lambda n: b"[" * n,  # broken JSON
    ],
)
def test_samples_line_reading_is_linear(make_line):
    assert_linear(make_line, lambda line: sample_line(line, "s.jsonl", 1))


def test_a_rollout_of_spaces_inside_a_tag_is_read_once():
    # The case that stalled a reward worker for 31 s: the answer is still read, and malformed.
    parsed = parse_profile("<age><tag>" + " " * 200_000 + "</tag><score>3</score></age>", TAX)
    assert parsed["age"].error == "tag not in the closed set"
    assert TAX["age"].canonical("18" + " " * 100_000 + "\u2013" + " " * 100_000 + "23") == "18-23"


def folded_by_definition(text: str) -> str:
    """The rule normalize_label implements, written as regular expressions (quadratic, small inputs only)."""
    text = text.translate(str.maketrans(dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2212", "-"))).strip().casefold()
    return re.sub(r"\s+", " ", re.sub(r"\s*([-/,])\s*", r"\1", text))


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("aB -/,.\t\n\u00a0\u3000\u2013\u2212\u00df()")), max_size=30))
def test_normalize_label_folds_as_defined(text):
    assert normalize_label(text) == folded_by_definition(text)
