"""RL reward (Eq. 6-8) on a hand-worked GRPO group of 4 rollouts over a 2-dimension taxonomy."""

import math

import numpy as np
import pytest

from verl_confprofile.profile_format import parse_profile
from verl_confprofile.scoring import RewardSpec, as_confidence, group_rewards, rollout_reward
from verl_confprofile.taxonomy import Taxonomy
from verl_confprofile.voting import Vote

TAX = Taxonomy.from_dict(
    {"dimensions": {"color": {"labels": ["red", "blue", "NA"]}, "size": {"labels": ["small", "large", "NA"]}}}
)


def rollout(color, color_score, size, size_score):
    return parse_profile(
        f"<color><tag>{color}</tag><score>{color_score}</score></color>"
        f"<size><tag>{size}</tag><score>{size_score}</score></size>",
        TAX,
    )


# The group:            color        size
#   r1                  red   / 4    small / 5
#   r2                  red   / 2    large / 3
#   r3                  blue  / 5    large / 7   <- score 7: size malformed
#   r4                  NA    / 1    large / 4
# Eq. 6 (confidence): color S_red = 4+2 = 6, S_blue = 5, S_NA = 1 -> red (S 6, votes 2, margin 1, 4 valid)
#                     size  S_small = 5, S_large = 3+4 = 7 (r3 excluded) -> large (S 7, votes 2, margin 2, 3 valid)
GROUP = [
    rollout("red", 4, "small", 5),
    rollout("red", 2, "large", 3),
    rollout("blue", 5, "large", 7),
    rollout("NA", 1, "large", 4),
]
REF = {"color": 5, "size": 2}  # frozen reference confidence of this user


def totals(rewards):
    return [r.total for r in rewards]


def test_group_vote_is_eq6():
    votes, _ = group_rewards(GROUP, TAX, RewardSpec(), REF)
    assert votes == {"color": Vote("red", 6, 2, 1, 4), "size": Vote("large", 7, 2, 2, 3)}


def test_frozen_weighting():
    # w(C) = 0.2 + 0.2 (C - 1): w(5) = 1.0 for color, w(2) = 0.4 for size.
    # r1: color red = red +1.0, size small != large -0.4            -> 0.6
    # r2: +1.0, large = large +0.4                                  -> 1.4
    # r3: blue != red -1.0, size malformed -> format penalty -1     -> -2.0
    # r4: NA != red -1.0, +0.4                                      -> -0.6
    _, rewards = group_rewards(GROUP, TAX, RewardSpec(), REF)
    assert totals(rewards) == pytest.approx([0.6, 1.4, -2.0, -0.6])
    r1, _, r3, r4 = rewards
    assert r1.parts["color"].value == pytest.approx(1.0) and r1.parts["color"].agree
    assert r1.parts["size"].value == pytest.approx(-0.4) and not r1.parts["size"].agree
    assert r1.parts["size"].weight == pytest.approx(0.4)
    assert r3.parts["size"].value == -1.0
    assert not r3.parts["size"].well_formed and not r3.parts["size"].agree
    assert r4.parts["color"].is_na and not r1.parts["color"].is_na
    assert not any(p.ref_missing for r in rewards for p in r.parts.values())


@pytest.mark.parametrize("conf, weight", [(1, 0.2), (2, 0.4), (3, 0.6), (4, 0.8), (5, 1.0)])
def test_paper_weight_map(conf, weight):
    assert RewardSpec().weight(conf) == pytest.approx(weight)


def test_self_weighting():
    # w of each rollout's own score:
    # r1: color w(4) = 0.8 agree +0.8; size w(5) = 1.0 disagree -1.0  -> -0.2
    # r2: color w(2) = 0.4 +0.4; size w(3) = 0.6 +0.6                   -> 1.0
    # r3: color w(5) = 1.0 -1.0; size malformed -1                      -> -2.0
    # r4: color w(1) = 0.2 -0.2; size w(4) = 0.8 +0.8                   -> 0.6
    _, rewards = group_rewards(GROUP, TAX, RewardSpec(weighting="self"), REF)
    assert totals(rewards) == pytest.approx([-0.2, 1.0, -2.0, 0.6])


def test_self_weighting_needs_no_reference():
    _, rewards = group_rewards(GROUP, TAX, RewardSpec(weighting="self"), None)
    assert totals(rewards) == pytest.approx([-0.2, 1.0, -2.0, 0.6])
    assert not any(p.ref_missing for r in rewards for p in r.parts.values())


def test_no_weighting():
    # w = 1: r1 +1 -1 = 0; r2 +1 +1 = 2; r3 -1 -1 = -2; r4 -1 +1 = 0
    _, rewards = group_rewards(GROUP, TAX, RewardSpec(weighting="none"), REF)
    assert totals(rewards) == pytest.approx([0.0, 2.0, -2.0, 0.0])


def test_custom_penalty_and_weight_range():
    # w(C) = 0.4 + (C - 1) * (2 - 0.4) / 4 = 0.4 C: w(5) = 2.0 (color), w(2) = 0.8 (size).
    # r1: +2.0 -0.8 = 1.2; r2: +2.0 +0.8 = 2.8; r3: -2.0 + (-0.5 penalty) = -2.5; r4: -2.0 +0.8 = -1.2
    spec = RewardSpec(format_penalty=-0.5, weight_min=0.4, weight_max=2.0)
    _, rewards = group_rewards(GROUP, TAX, spec, REF)
    assert totals(rewards) == pytest.approx([1.2, 2.8, -2.5, -1.2])
    assert rewards[2].parts["size"].value == -0.5


def test_every_dimension_malformed():
    # Both blocks broken: 2 x format penalty.
    bad = parse_profile("<color><tag>green</tag><score>3</score></color>", TAX)
    assert rollout_reward(bad, {"color": "red", "size": "large"}, REF, RewardSpec(), TAX).total == -2.0


def test_majority_voting_changes_the_target():
    # color: red/1, red/1, blue/5; size: small/3 everywhere.
    # confidence: S_blue = 5 > S_red = 2 -> blue; majority: 2 votes > 1 -> red. size -> small either way.
    group = [rollout("red", 1, "small", 3), rollout("red", 1, "small", 3), rollout("blue", 5, "small", 3)]
    spec = RewardSpec(weighting="none")
    votes, rewards = group_rewards(group, TAX, spec)
    assert votes["color"].tag == "blue"
    assert totals(rewards) == pytest.approx([0.0, 0.0, 2.0])  # (-1 +1), (-1 +1), (+1 +1)
    votes, rewards = group_rewards(group, TAX, RewardSpec(weighting="none", voting="majority"))
    assert votes["color"].tag == "red"
    assert totals(rewards) == pytest.approx([2.0, 2.0, 0.0])  # (+1 +1), (+1 +1), (-1 +1)


# ---------------------------------------------------------------- gold labels

LABELS = {"color": "blue", "size": "small"}


def test_labels_never_change_the_reward_by_default():
    _, plain = group_rewards(GROUP, TAX, RewardSpec(), REF)
    votes, labelled = group_rewards(GROUP, TAX, RewardSpec(), REF, labels=LABELS)
    assert RewardSpec().use_labels == "never"
    assert totals(labelled) == totals(plain) == pytest.approx([0.6, 1.4, -2.0, -0.6])
    assert votes["color"].tag == "red"


def test_labels_replace_the_vote_when_present():
    # Targets color = blue, size = small; weights 1.0 / 0.4 as before.
    # r1: red != blue -1.0; small = small +0.4      -> -0.6
    # r2: -1.0; large != small -0.4                 -> -1.4
    # r3: blue = blue +1.0; size malformed -1       -> 0.0
    # r4: NA != blue -1.0; -0.4                     -> -1.4
    votes, rewards = group_rewards(GROUP, TAX, RewardSpec(use_labels="when_present"), REF, labels=LABELS)
    assert totals(rewards) == pytest.approx([-0.6, -1.4, 0.0, -1.4])
    assert votes["color"].tag == "red"  # the quasi ground truth itself is still reported


def test_invalid_label_falls_back_to_the_vote():
    # color "purple" is not in the set -> the vote (red); size " Small " is an alias of small.
    # r1: +1.0 +0.4 = 1.4; r2: +1.0 -0.4 = 0.6; r3: -1.0 -1 = -2.0; r4: -1.0 -0.4 = -1.4
    spec = RewardSpec(use_labels="when_present")
    _, rewards = group_rewards(GROUP, TAX, spec, REF, labels={"color": "purple", "size": " Small "})
    assert totals(rewards) == pytest.approx([1.4, 0.6, -2.0, -1.4])


@pytest.mark.parametrize("labels", [None, {}, {"color": None, "size": 3}, {"shape": "round"}])
def test_missing_labels_fall_back_to_the_vote(labels):
    _, rewards = group_rewards(GROUP, TAX, RewardSpec(use_labels="when_present"), REF, labels=labels)
    assert totals(rewards) == pytest.approx([0.6, 1.4, -2.0, -0.6])


# ---------------------------------------------------------------- reference confidence


@pytest.mark.parametrize(
    "ref",
    [
        None,
        {},
        {"color": None, "size": None},
        {"color": 0, "size": 6},
        {"color": 2.5, "size": "high"},
        {"color": math.nan, "size": -1},
        {"color": math.inf, "size": -math.inf},
        {"color": [5], "size": "x"},
    ],
)
def test_missing_or_invalid_reference_gives_weight_one(ref):
    # w = 1 for every well-formed dimension: r1 +1 -1 = 0; r2 +1 +1 = 2; r3 -1 -1 = -2; r4 -1 +1 = 0
    _, rewards = group_rewards(GROUP, TAX, RewardSpec(), ref)
    assert totals(rewards) == pytest.approx([0.0, 2.0, -2.0, 0.0])
    for r in rewards:
        for part in r.parts.values():
            if part.well_formed:
                assert part.ref_missing and part.weight == 1.0
            else:
                assert not part.ref_missing  # a malformed block gets the penalty, no weight at all


def test_one_dimension_missing_its_reference():
    # color w(5) = 1.0; size reference missing -> w = 1: r1 +1 -1 = 0; r2 2; r3 -1 -1 = -2; r4 -1 +1 = 0
    _, rewards = group_rewards(GROUP, TAX, RewardSpec(), {"color": 5})
    assert totals(rewards) == pytest.approx([0.0, 2.0, -2.0, 0.0])
    assert not rewards[0].parts["color"].ref_missing
    assert rewards[0].parts["size"].ref_missing


@pytest.mark.parametrize("value, expected", [(3, 3), (3.0, 3), ("4", 4), (np.int64(2), 2), (np.float32(5.0), 5), (1, 1)])
def test_valid_reference_confidence_spellings(value, expected):
    assert as_confidence(value) == expected


@pytest.mark.parametrize("value", [None, 0, 6, 2.5, "x", "", math.nan, math.inf, -math.inf, [3], {}])
def test_invalid_reference_confidence(value):
    assert as_confidence(value) is None


def test_numeric_string_reference_is_used():
    # color "1" -> w(1) = 0.2; size 2 -> 0.4: r1 +0.2 -0.4 = -0.2; r2 +0.2 +0.4 = 0.6; r3 -0.2 -1 = -1.2; r4 -0.2 +0.4 = 0.2
    _, rewards = group_rewards(GROUP, TAX, RewardSpec(), {"color": "1", "size": 2})
    assert totals(rewards) == pytest.approx([-0.2, 0.6, -1.2, 0.2])


def test_target_none_counts_as_disagreement():
    # A dimension nobody in the group got right has no quasi ground truth: -w.
    out = rollout_reward(GROUP[0], {"color": None, "size": None}, REF, RewardSpec(), TAX)
    assert out.total == pytest.approx(-1.0 - 0.4)


# ---------------------------------------------------------------- RewardSpec


def test_reward_spec_defaults_are_the_papers():
    spec = RewardSpec()
    assert spec.as_dict() == {
        "voting": "confidence",
        "weighting": "frozen",
        "format_penalty": -1.0,
        "weight_min": 0.2,
        "weight_max": 1.0,
        "use_labels": "never",
    }
    assert RewardSpec.option_names() == tuple(spec.as_dict())


@pytest.mark.parametrize(
    "option, value",
    [
        ("voting", "plurality"),
        ("voting", "Confidence"),
        ("weighting", "dynamic"),
        ("use_labels", "always"),
        ("format_penalty", "-1"),
        ("format_penalty", None),
        ("weight_min", True),
        ("weight_max", "1.0"),
    ],
)
def test_reward_spec_rejects_unknown_values_naming_the_option(option, value):
    with pytest.raises(ValueError, match=f"confprofile\\.{option}"):
        RewardSpec(**{option: value})


def test_reward_spec_rejects_inverted_weight_range():
    with pytest.raises(ValueError, match="confprofile.weight_min"):
        RewardSpec(weight_min=1.0, weight_max=0.5)


def test_boolean_reference_confidence_is_invalid():
    assert as_confidence(True) is None and as_confidence(False) is None
