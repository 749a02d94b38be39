"""Output format (section 4.2, Figure 2b): parse any text into per-dimension outputs, never raising."""

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from verl_confprofile.profile_format import (
    DimensionOutput,
    read_canonical,
    _parse_dimension,
    profile_parser,
    answer_text,
    parse_profile,
    render_profile,
)
from verl_confprofile.taxonomy import Taxonomy

TAX = Taxonomy.load()
KEYS = TAX.keys


def block(key, tag, score, evidence="because", order=("evidence", "tag", "score")):
    """One dimension block with its inner tags in the given order."""
    inner = {"evidence": f"<evidence>{evidence}</evidence>", "tag": f"<tag>{tag}</tag>", "score": f"<score>{score}</score>"}
    return f"<{key}>" + "".join(inner[name] for name in order) + f"</{key}>"


FULL = {
    "gender": ("Female", 5, "likes parenting tips"),
    "age": ("24-30", 4, "college friends"),
    "industry": ("Commerce and Retail", 3, "runs a shop"),
    "occupation": ("Self-Employed", 3, "shop owner"),
    "education": ("Bachelor/Associate", 2, "weak signal"),
    "life_stage": ("Parenting (Child 0-2)", 4, "baby food"),
}


def full_text(order=KEYS, profile=FULL):
    return "\n".join(block(k, *profile[k]) for k in order)


def ok(tag, score, evidence):
    return DimensionOutput(tag, score, evidence, None)


def general_path(text):
    """The dimension-by-dimension rules alone, bypassing the fast path."""
    body = answer_text(text)
    return {d.key: _parse_dimension(body, d, f"<{d.key}>", f"</{d.key}>") for d in TAX}


# ---------------------------------------------------------------- worked examples


def test_canonical_text_parses_every_dimension():
    parsed = parse_profile(full_text(), TAX)
    assert parsed == {k: ok(tag, score, ev) for k, (tag, score, ev) in FULL.items()}
    assert all(out.well_formed for out in parsed.values())


def test_blocks_in_any_order_and_surrounded_by_text():
    order = ("life_stage", "age", "gender", "education", "occupation", "industry")
    text = "Here is my analysis.\n" + "\nSome more words.\n".join(block(k, *FULL[k]) for k in order) + "\nDone."
    assert parse_profile(text, TAX) == {k: ok(tag, score, ev) for k, (tag, score, ev) in FULL.items()}


@pytest.mark.parametrize(
    "order",
    [("tag", "score", "evidence"), ("score", "evidence", "tag"), ("score", "tag", "evidence"), ("evidence", "score", "tag")],
)
def test_inner_tags_in_any_order(order):
    text = block("age", "31-40", 2, " some evidence ", order)
    assert parse_profile(text, TAX)["age"] == ok("31-40", 2, "some evidence")


def test_evidence_is_optional_and_whitespace_around_fields_is_tolerated():
    text = "<gender>\n  <tag> male </tag>\n  <score> 4 </score>\n</gender>"
    assert parse_profile(text, TAX)["gender"] == ok("Male", 4, None)


def test_aliases_in_tags_are_canonicalised():
    text = block("age", "18\u201323", 3) + block("gender", "Unknown(NA)", 1) + block("education", "n/a", 2)
    parsed = parse_profile(text, TAX)
    assert parsed["age"].tag == "18-23"
    assert parsed["gender"].tag == "NA"
    assert parsed["education"].tag == "NA"


def test_reasoning_before_the_last_closing_think_is_ignored():
    # The <think> section holds a draft block that must neither count nor make the real one duplicated.
    text = "<think>draft: " + block("gender", "Male", 2) + "</think>\n" + block("gender", "Female", 5)
    parsed = parse_profile(text, TAX)
    assert parsed["gender"] == ok("Female", 5, "because")
    assert parsed["age"].error is not None  # missing


def test_only_text_after_the_last_closing_think_counts():
    text = "<think>a</think>" + block("age", "50+", 5) + "<think>b</think>" + block("gender", "Male", 3)
    parsed = parse_profile(text, TAX)
    assert parsed["gender"] == ok("Male", 3, "because")
    assert not parsed["age"].well_formed


def test_closing_think_without_opening_one():
    # Chat templates often put the opening <think> in the prompt; the output only has </think>.
    text = "reasoning " + block("age", "0-18", 1) + " more</think>\n" + block("age", "41-50", 4)
    assert parse_profile(text, TAX)["age"] == ok("41-50", 4, "because")


def test_unclosed_think_hides_everything_after_it():
    text = block("gender", "Male", 4) + "\n<think>truncated reasoning " + block("age", "24-30", 5)
    parsed = parse_profile(text, TAX)
    assert parsed["gender"] == ok("Male", 4, "because")
    assert not parsed["age"].well_formed


@pytest.mark.parametrize("reader", ["parse_profile", "compiled", "general"])
def test_unclosed_think_after_a_closed_one_hides_what_follows(reader):
    # A reasoning section, an answer, then a second section opened and never closed (the
    # output was cut in it): the answer counts, the draft blocks after "<think>" do not.
    answer = block("gender", "Male", 4) + block("age", "24-30", 5)
    draft = "<think>on second thought " + block("education", "Postgraduate or Above", 3) + block("age", "50+", 2)
    text = "<think>first</think>\n" + answer + "\n" + draft
    read = {"parse_profile": lambda t: parse_profile(t, TAX), "compiled": profile_parser(TAX).compiled, "general": general_path}[reader]
    parsed = read(text)
    assert answer_text(text) == "\n" + answer + "\n"
    assert parsed["gender"] == ok("Male", 4, "because")
    assert parsed["age"] == ok("24-30", 5, "because")
    assert parsed["education"] is None if reader == "compiled" else not parsed["education"].well_formed


def test_unclosed_think_at_the_start_hides_the_whole_output():
    parsed = parse_profile("<think>never finished " + full_text(), TAX)
    assert not any(out.well_formed for out in parsed.values())


@pytest.mark.parametrize(
    "raw, level",
    [
        ("very low", 1),
        ("Low", 2),
        ("medium", 3),
        ("HIGH", 4),
        ("very high", 5),
        ("Very High", 5),
        (" very   high ", 5),
        ("1", 1),
        (" 5 ", 5),
    ],
)
def test_verbal_and_digit_scores(raw, level):
    assert parse_profile(block("gender", "Male", raw), TAX)["gender"] == ok("Male", level, "because")


@pytest.mark.parametrize("raw", ["0", "7", "6", "-1", "4.5", "5.0", "", "five", "very very high", "4/5", "extremely high"])
def test_scores_outside_1_to_5_are_malformed(raw):
    out = parse_profile(block("gender", "Male", raw), TAX)["gender"]
    assert out.error is not None and not out.well_formed
    assert (out.tag, out.score, out.evidence) == (None, None, None)


@pytest.mark.parametrize("tag", ["Other", "Non-binary", "", "Male/Female", "25"])
def test_out_of_set_tag_is_malformed(tag):
    assert not parse_profile(block("gender", tag, 5), TAX)["gender"].well_formed


def test_tag_of_another_dimension_is_out_of_set():
    assert not parse_profile(block("gender", "24-30", 5), TAX)["gender"].well_formed


def test_duplicated_block_is_malformed_for_that_dimension_only():
    text = full_text() + "\n" + block("age", *FULL["age"])
    parsed = parse_profile(text, TAX)
    assert "duplicated" in parsed["age"].error
    assert all(parsed[k].well_formed for k in KEYS if k != "age")


def test_two_different_blocks_of_one_dimension_are_malformed():
    text = block("age", "24-30", 5) + block("age", "31-40", 1)
    assert not parse_profile(text, TAX)["age"].well_formed


@pytest.mark.parametrize(
    "inner",
    [
        "<tag>Male</tag><tag>Male</tag><score>5</score>",
        "<tag>Male</tag><score>5</score><score>4</score>",
        "<evidence>a</evidence><evidence>b</evidence><tag>Male</tag><score>5</score>",
        "<evidence>the <tag> word</evidence><tag>Male</tag><score>5</score>",
    ],
)
def test_duplicated_inner_tag_is_malformed(inner):
    out = parse_profile(f"<gender>{inner}</gender>", TAX)["gender"]
    assert "duplicated" in out.error


@pytest.mark.parametrize(
    "inner",
    ["<score>5</score>", "<tag>Male</tag>", "<tag>Male<score>5</score>", "<tag>Male</tag><score>5", ""],
)
def test_missing_or_unclosed_inner_tag_is_malformed(inner):
    assert not parse_profile(f"<gender>{inner}</gender>", TAX)["gender"].well_formed


def test_truncated_output():
    text = full_text()
    cut = text.index("<score>", text.index("<industry>")) + 4  # inside industry's <score> tag
    parsed = parse_profile(text[:cut], TAX)
    assert parsed["gender"].well_formed and parsed["age"].well_formed
    assert not any(parsed[k].well_formed for k in ("industry", "occupation", "education", "life_stage"))


def test_block_open_but_never_closed():
    out = parse_profile("<age><tag>24-30</tag><score>4</score>", TAX)["age"]
    assert not out.well_formed


@pytest.mark.parametrize("text", ["", None, 42, 3.5, ["<gender>"], {"gender": "Male"}, object()])
def test_empty_and_non_text_inputs_are_malformed_everywhere(text):
    parsed = parse_profile(text, TAX)
    assert set(parsed) == set(KEYS)
    assert not any(out.well_formed for out in parsed.values())


def test_bytes_input_is_decoded():
    text = full_text()
    expected = parse_profile(text, TAX)
    assert parse_profile(text.encode("utf-8"), TAX) == expected
    assert parse_profile(bytearray(text.encode("utf-8")), TAX) == expected


def test_invalid_utf8_bytes_do_not_raise():
    parsed = parse_profile(b"\xff\xfe<gender>\x80" + block("age", "50+", 5).encode(), TAX)
    assert parsed["age"] == ok("50+", 5, "because")
    assert not parsed["gender"].well_formed


def test_five_megabytes_of_junk_completes():
    rng = random.Random(0)
    chunk = "".join(rng.choice("abc <>/\n5xyz") for _ in range(65536))
    junk = chunk * 80  # ~5.2 MB
    parsed = parse_profile(junk, TAX)
    assert not any(out.well_formed for out in parsed.values())


def test_five_megabytes_of_age_fragments_completes():
    parsed = parse_profile("<age>" * 1_000_000, TAX)
    assert "duplicated" in parsed["age"].error
    assert not any(out.well_formed for out in parsed.values())


def test_five_megabytes_of_open_tag_pairs_completes():
    text = "<age><tag>" * 500_000 + "</tag></age>"
    assert not parse_profile(text, TAX)["age"].well_formed


def test_valid_profile_after_five_megabytes_of_reasoning():
    text = "<think>" + "let me think. " * 400_000 + "</think>\n" + full_text()
    assert all(out.well_formed for out in parse_profile(text, TAX).values())


# ---------------------------------------------------------------- render


def test_render_writes_one_canonical_block_per_line_in_taxonomy_order():
    profile = {k: FULL[k] for k in reversed(KEYS)}  # input order does not matter
    text = render_profile(profile, TAX)
    lines = text.split("\n")
    assert len(lines) == len(KEYS)
    assert lines[0] == "<gender><evidence>likes parenting tips</evidence><tag>Female</tag><score>5</score></gender>"
    assert [line[1 : line.index(">")] for line in lines] == list(KEYS)


def test_render_canonicalises_tags_and_neutralises_brackets():
    profile = dict(FULL, age=("18\u201323", 3, " says <age>50+</age> "), gender=("unknown", 1, None))
    text = render_profile(profile, TAX)
    parsed = parse_profile(text, TAX)
    assert parsed["age"].tag == "18-23"
    assert parsed["age"].evidence == "says \u2039age\u203a50+\u2039/age\u203a"
    assert parsed["gender"] == ok("NA", 1, "")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"gender": ("Other", 3, "")}, "gender"),
        ({"age": ("24-30", 0, "")}, "age"),
        ({"age": ("24-30", 6, "")}, "age"),
        ({"age": ("24-30", 2.5, "")}, "age"),
        ({"age": ("24-30", True, "")}, "age"),
        ({"age": ("24-30", "4", "")}, "age"),
    ],
)
def test_render_rejects_bad_profiles(change, message):
    with pytest.raises(ValueError, match=message):
        render_profile(dict(FULL, **change), TAX)


def test_render_rejects_missing_dimension():
    profile = {k: v for k, v in FULL.items() if k != "education"}
    with pytest.raises(ValueError, match="education"):
        render_profile(profile, TAX)


def test_round_trip_of_a_fixed_profile():
    assert parse_profile(render_profile(FULL, TAX), TAX) == {k: ok(*v) for k, v in FULL.items()}


def test_compiled_reader_is_built_and_reads_canonical_blocks():
    # Guards the property tests below: they must compare the compiled reader with the general
    # rules, not the general rules with themselves. An install without a C compiler fails here.
    assert read_canonical is not None, "verl_confprofile._speedups is not compiled (pip install -e . needs a C compiler)"
    read = profile_parser(TAX).compiled
    text = "<think>x</think>\n" + render_profile(FULL, TAX)
    expected = {k: ok(*v) for k, v in FULL.items()}
    assert read(text) == expected
    assert read(render_profile(FULL, TAX) + "<think>truncated <age>") == expected  # cut off, as answer_text does
    assert read(text.replace("</age>", "</age><")) == expected  # a stray '<' outside every block: block by block
    # Left to the general rules (None): a tag that is not an exact label, a verbal score, a
    # duplicated block, and everything behind an unclosed <think>.
    assert read(text.replace("<tag>Female", "<tag> Female")) == {**expected, "gender": None}
    assert read(text.replace("<score>4</score></age>", "<score>high</score></age>")) == {**expected, "age": None}
    assert read(text + "<age>again</age>") == {**expected, "age": None}
    assert read(text.replace("<think>x</think>", "<think>x")) == dict.fromkeys(KEYS)


@pytest.mark.parametrize("evidence", ["多次搜索母婴用品", "baby food \U0001F476 daily", "caf\u00e9", "\u3000spaced\u3000"])
def test_compiled_reader_on_wide_text(evidence):
    # 1-, 2- and 4-byte strings take different code in the reader; str.strip() defines the padding.
    profile = dict(FULL, gender=("Female", 5, f" \t{evidence}\n"))
    parsed = profile_parser(TAX).compiled(full_text(profile=profile))
    assert parsed["gender"] == ok("Female", 5, evidence.strip())
    assert parsed["age"] == ok(*FULL["age"])


# ---------------------------------------------------------------- property tests

FRAGMENTS = [
    "<age>", "</age>", "<gender>", "</gender>", "<education>", "</education>", "<life_stage>", "</life_stage>",
    "<tag>", "</tag>", "<score>", "</score>", "<evidence>", "</evidence>", "<think>", "</think>",
    "5", "1", "0", "7", "high", "very high", "Male", "Female", "male ", "24-30", "18\u201323", "NA", "Unknown",
    "Student", " ", "\n", "x", "<", ">", "/",
]

PLAIN_FRAGMENTS = [f for f in FRAGMENTS if "<" not in f]
evidence_text = st.text(st.characters(blacklist_characters="<>", blacklist_categories=("Cs",)), max_size=40)


@st.composite
def valid_profiles(draw):
    return {
        d.key: (draw(st.sampled_from(d.labels)), draw(st.integers(1, 5)), draw(evidence_text)) for d in TAX
    }


@st.composite
def canonical_blocks(draw):
    dim = draw(st.sampled_from(TAX.dimensions))
    return block(dim.key, draw(st.sampled_from(dim.labels)), draw(st.integers(1, 5)), draw(evidence_text))


fragment_texts = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), canonical_blocks(), st.text(max_size=4)), max_size=40
).map("".join)


padded_evidence = st.tuples(st.sampled_from(["", " ", "\n "]), evidence_text, st.sampled_from(["", " ", "\t"])).map("".join)
score_spellings = st.sampled_from(["1", "2", "3", "4", "5", " 5", "4 ", "high", "0", "7"])


def tag_spellings(dim):
    return st.sampled_from(dim.labels).flatmap(
        lambda label: st.sampled_from([label, label.lower(), label.upper(), f" {label}", label.replace("-", "\u2013")])
    )


@st.composite
def near_canonical_texts(draw):
    """Rendered profiles with a few edits: the inputs on which the fast path may or may not apply."""
    exact = draw(st.booleans())  # exact labels and digit scores, as the fast path wants them
    lines = [
        block(
            d.key,
            draw(st.sampled_from(d.labels) if exact else tag_spellings(d)),
            draw(st.integers(1, 5) if exact else score_spellings),
            draw(padded_evidence),
        )
        for d in TAX
    ]
    if draw(st.integers(0, 3)) == 0:
        lines = draw(st.permutations(lines))
    prefix = draw(st.sampled_from(["", "<think>r</think>\n", "Answer:\n", "</think>", "<think>"]))
    text = prefix + draw(st.sampled_from(["\n", "", " \n "])).join(lines)
    for _ in range(draw(st.integers(0, 3))):
        pos = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["markup", "plain", "plain", "delete"]))
        if kind == "markup":
            text = text[:pos] + draw(st.one_of(st.sampled_from(FRAGMENTS), canonical_blocks())) + text[pos:]
        elif kind == "plain":  # keeps the '<' count, so the fast path still gets to look at it
            text = text[:pos] + draw(st.one_of(st.sampled_from(PLAIN_FRAGMENTS), evidence_text)) + text[pos:]
        else:
            text = text[:pos] + text[pos + draw(st.integers(1, 12)) :]
    return text


def check_structure(parsed):
    assert list(parsed) == list(KEYS)
    for dim in TAX:
        out = parsed[dim.key]
        assert isinstance(out, DimensionOutput)
        if out.error is None:
            assert out.tag in dim.labels and out.score in (1, 2, 3, 4, 5)
        else:
            assert isinstance(out.error, str) and out.tag is None and out.score is None


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_never_raises_on_arbitrary_text(text):
    check_structure(parse_profile(text, TAX))


@settings(max_examples=300, deadline=None)
@given(st.one_of(fragment_texts, near_canonical_texts()))
def test_parse_never_raises_on_fragment_text(text):
    check_structure(parse_profile(text, TAX))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_parse_never_raises_on_bytes(data):
    check_structure(parse_profile(data, TAX))


@settings(max_examples=300, deadline=None)
@given(valid_profiles())
def test_render_parse_round_trip(profile):
    parsed = parse_profile(render_profile(profile, TAX), TAX)
    assert {k: (o.tag, o.score, o.evidence, o.error) for k, o in parsed.items()} == {
        k: (tag, score, evidence.strip(), None) for k, (tag, score, evidence) in profile.items()
    }


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(fragment_texts, near_canonical_texts()))
def test_fast_path_agrees_with_general_path(text):
    assert parse_profile(text, TAX) == general_path(text)


@settings(max_examples=300, deadline=None)
@given(
    valid_profiles(),
    st.sampled_from(["", "<think>why</think>\n", "answer:\n"]),
    st.one_of(st.none(), st.tuples(st.floats(0, 1), st.one_of(st.sampled_from(FRAGMENTS), canonical_blocks()))),
)
def test_fast_path_agrees_with_general_path_on_rendered_text(profile, prefix, extra):
    # Canonical text, optionally with one extra fragment somewhere: the fast path's edge.
    text = prefix + render_profile(profile, TAX)
    if extra is not None:
        pos = int(extra[0] * len(text))
        text = text[:pos] + extra[1] + text[pos:]
    assert parse_profile(text, TAX) == general_path(text)


@settings(max_examples=300, deadline=None)
@given(near_canonical_texts())
def test_fast_path_agrees_with_general_path_near_canonical(text):
    assert parse_profile(text, TAX) == general_path(text)
