"""Folding samples into a user's tally: the (tag, confidence) columns voting reads, and the evidence choice."""

from hypothesis import given, settings
from hypothesis import strategies as st

from verl_confprofile.profile_format import DimensionOutput, parse_profile, render_profile
from verl_confprofile.tally import MALFORMED, UserTally, _fold, _fold_canonical, choice_pairs, fold, fold_canonical
from verl_confprofile.taxonomy import Taxonomy
from verl_confprofile.voting import Vote

from test_profile_format import FULL, fragment_texts, near_canonical_texts

TAX = Taxonomy.load()
GENDER, AGE = TAX["gender"], TAX["age"]


def outputs(gender, age):
    """Per-dimension outputs of one sample: gender and age given as (tag, score, evidence) or None."""
    malformed = DimensionOutput(None, None, None, "block missing")
    by_key = {"gender": gender, "age": age}
    return [DimensionOutput(*by_key[k], None) if by_key.get(k) else malformed for k in TAX.keys]


def test_worked_example_votes_and_evidence():
    tally = UserTally(TAX)
    tally.add(0, 1, outputs(("Male", 4, "watches football"), ("24-30", 2, "")))
    tally.add(1, 2, outputs(("Male", 5, ""), None))
    tally.add(2, 3, outputs(("Female", 3, "parenting tips"), ("24-30", 3, "college")))
    tally.add(3, 4, outputs(("Male", 4, "gym videos"), ("31-40", 4, "mortgage")))
    assert tally.add(1, 5, outputs(("Female", 5, "x"), None)) == 2  # a repeated sample_idx is not folded
    user = tally.finish("u1", TAX)
    assert user.num_samples == 4
    # gender: S_Male = 4 + 5 + 4 = 13 (3 votes), S_Female = 3 -> Male, margin 10.
    assert user.votes["gender"] == Vote("Male", 13.0, 3, 10.0, 4)
    # Evidence of Male: non-empty first (samples 0 and 3, both score 4), then the lower sample_idx: sample 0.
    assert user.evidence["gender"] == "watches football"
    # age: S_24-30 = 2 + 3 = 5 (2 votes), S_31-40 = 4 -> 24-30, margin 1; sample 1 was malformed.
    assert user.votes["age"] == Vote("24-30", 5.0, 2, 1.0, 3)
    # Evidence of 24-30: sample 2 (non-empty) beats sample 0 (empty) despite the order.
    assert user.evidence["age"] == "college"
    # No sample answered industry: no vote, no evidence.
    assert user.votes["industry"].tag is None and user.evidence["industry"] == ""
    # The columns keep every sample in arrival order, malformed ones as MALFORMED.
    assert tally.choices[1] == [("24-30", 2), MALFORMED, ("24-30", 3), ("31-40", 4)]


def test_a_tally_without_evidence_votes_the_same():
    texts = [
        "<gender><evidence>a</evidence><tag>Male</tag><score>4</score></gender>",
        "<gender><tag>Female</tag><score>5</score></gender>",
        "<gender><tag>Male</tag><score>2</score></gender>",
    ]
    with_evidence, without = UserTally(TAX), UserTally(TAX, evidence=False)
    for i, text in enumerate(texts):
        with_evidence.add(i, i + 1, parse_profile(text, TAX).values())
        without.add(i, i + 1, parse_profile(text, TAX).values())
    assert without.votes(TAX) == with_evidence.votes(TAX)
    assert with_evidence.votes(TAX)["gender"] == Vote("Male", 6.0, 2, 1.0, 3)  # S_Male = 4 + 2 = 6, S_Female = 5


labelled = st.one_of(
    st.none(),
    st.tuples(st.sampled_from(GENDER.labels), st.integers(1, 5), st.sampled_from(["", "a", "b", "  "])),
)
samples = st.lists(st.tuples(labelled, st.integers(0, 30)), max_size=12)


def fold_all(fold_fn, drawn, evidence):
    choices = [[] for _ in TAX.keys]
    best = [{} for _ in TAX.keys] if evidence else None
    for gender, idx in drawn:
        fold_fn(choices, best, choice_pairs(TAX), outputs(gender, None), idx, MALFORMED)
    return choices, best


@settings(max_examples=300, deadline=None)
@given(samples, st.booleans())
def test_compiled_fold_equals_the_python_reference(drawn, evidence):
    assert fold is not _fold, "verl_confprofile._speedups is not compiled"
    assert fold_all(fold, drawn, evidence) == fold_all(_fold, drawn, evidence)


@settings(max_examples=200, deadline=None)
@given(samples.map(lambda s: list({i: g for g, i in s}.items())), st.data())
def test_votes_and_evidence_do_not_depend_on_sample_order(drawn, data):
    def finish(order):
        tally = UserTally(TAX)
        for line, (idx, gender) in enumerate(order, 1):
            tally.add(idx, line, outputs(gender, None))
        user = tally.finish("u", TAX)
        return user.votes["gender"], user.evidence["gender"]

    assert finish(data.draw(st.permutations(drawn))) == finish(drawn)


# ---------------------------------------------------------------- raw texts: one compiled pass


def test_canonical_texts_are_read_and_folded_in_one_pass():
    assert fold_canonical is not _fold_canonical, "verl_confprofile._speedups is not compiled"
    tally = UserTally(TAX)
    spec = tally.parse.spec
    # Sample 0: FULL as rendered (gender Female 5 "likes parenting tips"), after some reasoning.
    first = "<think>weighing it up</think>\n" + render_profile(FULL, TAX)
    assert fold_canonical(first, spec, tally.choices, tally.best, tally.pairs, 0) is True
    # Sample 1: Female 5 again; equal (has evidence, score) and a higher sample_idx: sample 0 stays.
    second = render_profile(dict(FULL, gender=("Female", 5, "mum blogs")), TAX)
    assert fold_canonical(second, spec, tally.choices, tally.best, tally.pairs, 1) is True
    assert tally.choices[0] == [("Female", 5), ("Female", 5)]
    assert tally.best[0]["Female"] == (True, 5, 0, "likes parenting tips")
    # Sample 2: a stray '<' after the blocks: not canonical as a whole, so nothing is folded.
    before = ([list(c) for c in tally.choices], [dict(b) for b in tally.best])
    assert fold_canonical(first + "<", spec, tally.choices, tally.best, tally.pairs, 2) is False
    assert (tally.choices, tally.best) == before
    # Male: an empty evidence first, then one with evidence (wins despite the higher sample_idx,
    # its padding stripped as str.strip() does), then a higher score without evidence (loses).
    male = lambda score, evidence: render_profile(dict(FULL, gender=("Male", score, evidence)), TAX)
    tally.add_text(4, 5, male(2, ""))
    assert tally.best[0]["Male"] == (False, 2, -4, "")
    tally.add_text(5, 6, male(2, "gym videos").replace(">gym videos<", "> \tgym videos\n<"))
    assert tally.best[0]["Male"] == (True, 2, -5, "gym videos")
    tally.add_text(6, 7, male(4, ""))
    assert tally.best[0]["Male"] == (True, 2, -5, "gym videos")
    assert tally.choices[0] == [("Female", 5), ("Female", 5), ("Male", 2), ("Male", 2), ("Male", 4)]


def test_a_reasoning_section_reopened_after_the_answer_is_not_folded():
    # The answer ends where a <think> opens after the last </think> (an output cut while
    # reasoning again): the compiled one-pass fold reads the answer alone, as the parser does.
    answer = render_profile(FULL, TAX)
    text = "<think>a</think>\n" + answer + "\n<think>hmm, maybe " + render_profile(dict(FULL, gender=("Male", 1, "x")), TAX)
    one_pass, reference = UserTally(TAX), UserTally(TAX)
    assert fold_canonical(text, one_pass.parse.spec, one_pass.choices, one_pass.best, one_pass.pairs, 0) is True
    _fold(reference.choices, reference.best, reference.pairs, reference.parse(answer).values(), 0, MALFORMED)
    assert (one_pass.choices, one_pass.best) == (reference.choices, reference.best)
    assert one_pass.choices[0] == [("Female", 5)]


def tally_of(texts, evidence, one_pass):
    tally = UserTally(TAX, evidence=evidence)
    for line, (idx, text) in enumerate(texts, 1):
        if one_pass:
            tally.add_text(idx, line, text)
        else:
            tally.add(idx, line, parse_profile(text, TAX).values())
    return tally.lines, tally.choices, tally.best


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.one_of(near_canonical_texts(), fragment_texts)), max_size=8), st.booleans())
def test_folding_raw_texts_equals_folding_their_parsed_outputs(texts, evidence):
    # The reference: every text through the parser's rules, then fold; add_text may take the compiled pass.
    assert tally_of(texts, evidence, one_pass=True) == tally_of(texts, evidence, one_pass=False)


def test_a_malformed_output_needs_only_its_tag():
    # Both folds look no further than item 0 of a malformed output, and need no evidence without ``best``.
    outs = [(None,), ("18-23", 3)] + [(None,)] * (len(TAX.keys) - 2)
    for fold_fn in (fold, _fold):
        choices = [[] for _ in TAX.keys]
        fold_fn(choices, None, choice_pairs(TAX), outs, 0, MALFORMED)
        assert choices[:2] == [[MALFORMED], [("18-23", 3)]]
