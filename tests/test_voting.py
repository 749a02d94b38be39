"""Voting (Eq. 3-5): S_t = sum of confidences of samples choosing t; ties broken by documented keys."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_confprofile.profile_format import parse_profile
from verl_confprofile.taxonomy import Taxonomy
from verl_confprofile.voting import NO_VOTE, Vote, _tag_totals, _winner, vote, vote_profile, winner

TAX = Taxonomy.load()
GENDER = TAX["gender"]  # taxonomy order: Female, Male, NA
AGE = TAX["age"]  # 0-18, 18-23, 24-30, 31-40, 41-50, 50+, NA


# ---------------------------------------------------------------- Eq. 3-5 by hand


def test_worked_example_confidence():
    # (Male,5),(Male,1),(Female,4),(Female,4): S_Male = 5+1 = 6, S_Female = 4+4 = 8
    # argmax S_t = Female, S = 8, votes = 2, margin = 8 - 6 = 2, all 4 samples valid.
    samples = [("Male", 5), ("Male", 1), ("Female", 4), ("Female", 4)]
    assert vote(samples, GENDER, "confidence") == Vote("Female", 8, 2, 2, 4)


def test_worked_example_majority():
    # Same samples; counts Male 2, Female 2 tie -> S decides: 8 > 6 -> Female.
    # margin compares the first key (counts): 2 - 2 = 0.
    samples = [("Male", 5), ("Male", 1), ("Female", 4), ("Female", 4)]
    assert vote(samples, GENDER, "majority") == Vote("Female", 8, 2, 0, 4)


def test_default_method_is_confidence():
    samples = [("Male", 1), ("Male", 1), ("Female", 5)]
    assert vote(samples, GENDER) == vote(samples, GENDER, "confidence")


def test_confidence_and_majority_disagree():
    # (Male,1) x3, (Female,5): S_Male = 3, S_Female = 5.
    # confidence: Female, S = 5, votes 1, margin 5 - 3 = 2.
    # majority: counts Male 3 vs Female 1 -> Male, S = 3, votes 3, margin 3 - 1 = 2.
    samples = [("Male", 1), ("Female", 5), ("Male", 1), ("Male", 1)]
    assert vote(samples, GENDER, "confidence") == Vote("Female", 5, 1, 2, 4)
    assert vote(samples, GENDER, "majority") == Vote("Male", 3, 3, 2, 4)


def test_na_is_a_candidate_and_can_win():
    # S_NA = 4+3 = 7, S_24-30 = 5, S_31-40 = 1 -> NA, S = 7, votes 2, margin 7 - 5 = 2.
    samples = [("NA", 4), ("24-30", 5), ("NA", 3), ("31-40", 1)]
    assert vote(samples, AGE, "confidence") == Vote("NA", 7, 2, 2, 4)
    # majority: counts NA 2, 24-30 1, 31-40 1 -> NA, margin 2 - 1 = 1.
    assert vote(samples, AGE, "majority") == Vote("NA", 7, 2, 1, 4)


def test_malformed_samples_do_not_vote():
    # Two malformed samples (tag None); S_Male = 3, S_Female = 2 -> Male, margin 1, n_valid 2.
    samples = [("Male", 3), (None, None), ("Female", 2), (None, 5)]
    assert vote(samples, GENDER, "confidence") == Vote("Male", 3, 1, 1, 2)
    # majority: counts 1-1, S 3 > 2 -> Male, margin 0.
    assert vote(samples, GENDER, "majority") == Vote("Male", 3, 1, 0, 2)


def test_a_single_candidate_has_the_runner_up_at_zero():
    # Only Female: S = 2+4 = 6, runner-up 0 -> margin 6 (confidence) / 2 (majority, counts).
    samples = [("Female", 2), (None, None), ("Female", 4)]
    assert vote(samples, GENDER, "confidence") == Vote("Female", 6, 2, 6, 2)
    assert vote(samples, GENDER, "majority") == Vote("Female", 6, 2, 2, 2)


def test_no_vote_when_nothing_is_well_formed():
    assert NO_VOTE == Vote(None, 0.0, 0, 0.0, 0)
    assert vote([], GENDER) == NO_VOTE
    assert vote([(None, None), (None, 3)], GENDER, "confidence") == NO_VOTE
    assert vote([(None, None)], GENDER, "majority") == NO_VOTE


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="plurality"):
        vote([("Male", 3)], GENDER, "plurality")


def test_items_may_carry_extra_fields():
    # Parsed DimensionOutputs are (tag, score, evidence, error).
    samples = [("Male", 2, "ev", None), ("Female", 1, None, None), (None, None, None, "block missing")]
    assert vote(samples, GENDER) == Vote("Male", 2, 1, 1, 2)


# ---------------------------------------------------------------- tie-breaks


def test_confidence_tie_on_s_broken_by_vote_count():
    # S_Male = 5, S_Female = 2+3 = 5: tie on S; counts Female 2 > Male 1 -> Female, margin 5 - 5 = 0.
    samples = [("Male", 5), ("Female", 2), ("Female", 3)]
    assert vote(samples, GENDER, "confidence") == Vote("Female", 5, 2, 0, 3)


@pytest.mark.parametrize(
    "samples, winner",
    [
        ([("Male", 3), ("Female", 3)], "Female"),  # S 3 = 3, count 1 = 1 -> Female is earlier
        ([("Female", 3), ("Male", 3)], "Female"),
        ([("NA", 4), ("Male", 4)], "Male"),  # Male precedes NA
        ([("Male", 2), ("NA", 2), ("Male", 2), ("NA", 2)], "Male"),
    ],
)
def test_confidence_full_tie_broken_by_taxonomy_order(samples, winner):
    result = vote(samples, GENDER, "confidence")
    assert result.tag == winner
    assert result.margin == 0


def test_confidence_full_tie_in_age_order():
    # S_50+ = 2 = S_0-18, one vote each: 0-18 is first in Table 6 order.
    assert vote([("50+", 2), ("41-50", 1), ("0-18", 2)], AGE, "confidence") == Vote("0-18", 2, 1, 0, 3)


def test_majority_count_beats_confidence():
    # counts Female 2 > Male 1, although S_Male = 5 > S_Female = 2 -> Female, S = 2, margin 2 - 1 = 1.
    assert vote([("Male", 5), ("Female", 1), ("Female", 1)], GENDER, "majority") == Vote("Female", 2, 2, 1, 3)


def test_majority_count_tie_broken_by_s():
    # counts 2-2; S_Male = 2+2 = 4 > S_Female = 1+1 = 2 -> Male, margin 0.
    samples = [("Female", 1), ("Male", 2), ("Female", 1), ("Male", 2)]
    assert vote(samples, GENDER, "majority") == Vote("Male", 4, 2, 0, 4)


@pytest.mark.parametrize("samples", [[("Male", 2), ("Female", 2)], [("Female", 2), ("Male", 2)]])
def test_majority_full_tie_broken_by_taxonomy_order(samples):
    assert vote(samples, GENDER, "majority") == Vote("Female", 2, 1, 0, 2)


# ---------------------------------------------------------------- vote_profile


def test_vote_profile_over_parsed_samples():
    texts = [
        "<gender><tag>Male</tag><score>5</score></gender><age><tag>24-30</tag><score>2</score></age>",
        "<gender><tag>Female</tag><score>high</score></gender><age><tag>24\u201330</tag><score>3</score></age>",
        "<gender><tag>Male</tag><score>1</score></gender><age><tag>31-40</tag><score>9</score></age>",
    ]
    samples = [parse_profile(t, TAX) for t in texts]
    votes = vote_profile(samples, TAX)
    assert list(votes) == list(TAX.keys)
    # gender: S_Male = 5+1 = 6, S_Female = 4 ("high") -> Male, margin 2.
    assert votes["gender"] == Vote("Male", 6, 2, 2, 3)
    # age: third sample malformed (score 9); S_24-30 = 2+3 = 5 -> 24-30, single candidate, margin 5.
    assert votes["age"] == Vote("24-30", 5, 2, 5, 2)
    # The four dimensions nobody answered.
    assert all(votes[k] == NO_VOTE for k in ("industry", "occupation", "education", "life_stage"))


# ---------------------------------------------------------------- properties

gender_samples = st.lists(st.tuples(st.sampled_from([*GENDER.labels, None]), st.integers(1, 5)), max_size=12)
age_samples = st.lists(st.tuples(st.sampled_from([*AGE.labels, None]), st.integers(1, 5)), max_size=12)


@settings(max_examples=250, deadline=None)
@given(st.sampled_from(["confidence", "majority"]), st.one_of(gender_samples.map(lambda s: (GENDER, s)), age_samples.map(lambda s: (AGE, s))), st.data())
def test_vote_is_invariant_under_permutation(method, dim_samples, data):
    dim, samples = dim_samples
    shuffled = data.draw(st.permutations(samples))
    assert vote(shuffled, dim, method) == vote(samples, dim, method)


@settings(max_examples=250, deadline=None)
@given(st.sampled_from(["confidence", "majority"]), age_samples)
def test_vote_matches_a_direct_reading_of_the_rules(method, samples):
    tally = {}
    for tag, conf in samples:
        if tag is not None:
            s, n = tally.get(tag, (0, 0))
            tally[tag] = (s + conf, n + 1)
    result = vote(samples, AGE, method)
    assert result.n_valid == sum(tag is not None for tag, _ in samples)
    if not tally:
        assert result == NO_VOTE
        return
    first = 0 if method == "confidence" else 1
    key = lambda t: (tally[t][first], tally[t][1 - first], -AGE.rank(t))  # noqa: E731
    ordered = sorted(tally, key=key, reverse=True)
    winner = ordered[0]
    runner_up = tally[ordered[1]][first] if len(ordered) > 1 else 0
    assert result == Vote(winner, tally[winner][0], tally[winner][1], tally[winner][first] - runner_up, result.n_valid)
    if method == "confidence":
        assert result.score == max(s for s, _ in tally.values())  # Eq. 5


def test_unknown_method_is_an_error_even_without_well_formed_samples():
    dim = Taxonomy.load()["gender"]
    with pytest.raises(ValueError, match="unknown voting method"):
        vote([(None, None)], dim, "plurality")


def test_tag_totals_by_hand():
    # S_Male = 5 + 1 = 6 over 2 samples, S_Female = 4 over 1; the malformed sample does not count.
    assert _tag_totals([("Male", 5), (None, 0), ("Female", 4), ("Male", 1)]) == ({"Male": [6, 2], "Female": [4, 1]}, 3)
    assert _tag_totals([]) == ({}, 0)


confidences = st.one_of(st.integers(1, 5), st.floats(0.5, 5, allow_nan=False))
choice_items = st.tuples(st.sampled_from([*AGE.labels, None]), confidences, st.text(max_size=3))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(choice_items, choice_items.map(list)), max_size=15), st.booleans())
def test_compiled_winner_equals_the_python_reference(items, by_count):
    # The compiled twin (voting.winner) against the Python reference, on tuples, lists and float confidences.
    assert winner is not _winner, "verl_confprofile._speedups is not compiled"
    expected = _winner(items, AGE._rank, by_count)
    assert winner(items, AGE._rank, by_count) == expected
    assert winner(iter(items), AGE._rank, by_count) == expected
    if expected is not None:
        assert [type(x) for x in winner(items, AGE._rank, by_count)] == [str, float, int, float, int]


def test_a_malformed_choice_needs_only_its_tag():
    # NA: S = 2 over one vote, no runner-up (margin 2); the 1-item malformed choice is skipped by both.
    assert winner([(None,), ("NA", 2)], AGE._rank, False) == _winner([(None,), ("NA", 2)], AGE._rank, False) == ("NA", 2.0, 1, 2.0, 1)
