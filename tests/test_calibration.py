"""Calibration (section 4.2): equal-frequency levels by the documented mid-rank rule, linear ablation."""

import json

import pytest

from verl_confprofile.calibration import LINEAR_CUTS, Calibrator, equal_frequency_cuts

# ---------------------------------------------------------------- the mid-rank rule by hand
#
# 1000 fitted samples, M = 4, so s = S/4 takes 7 distinct values (all exact in binary floating point).
# Rule: q(v) = (#{s < v} + #{s = v}/2) / 1000, level(v) = min(5, 1 + floor(5 q)).
#
#   S   s     count  below  q = (below + count/2)/1000   5q      level   spans ranks
#   4   1.00   100      0   (0 + 50)/1000    = 0.050     0.250   1       [0, 100)
#   5   1.25    80    100   (100 + 40)/1000  = 0.140     0.700   1       [100, 180)
#   6   1.50   170    180   (180 + 85)/1000  = 0.265     1.325   2       [180, 350): 20 in Q1, 150 in Q2
#   8   2.00   120    350   (350 + 60)/1000  = 0.410     2.050   3       [350, 470): 50 in Q2, 70 in Q3
#  10   2.50   250    470   (470 + 125)/1000 = 0.595     2.975   3       [470, 720): 130 in Q3, 120 in Q4
#  14   3.50   130    720   (720 + 65)/1000  = 0.785     3.925   4       [720, 850)
#  18   4.50   150    850   (850 + 75)/1000  = 0.925     4.625   5       [850, 1000)
#
# s = 2.5 straddles the 60% quintile boundary (rank 600) and lands on level 3, where most of its
# mass (130 of 250) lies; s = 1.5 and s = 2.0 straddle the 20% and 40% boundaries likewise.
# Level sizes: 180, 170, 370, 130, 150 (approximately equal, as ties allow).
# Cut points halfway between the last value of level <= k and the first of level > k:
#   t1 = (1.25 + 1.5)/2 = 1.375, t2 = (1.5 + 2.0)/2 = 1.75, t3 = (2.5 + 3.5)/2 = 3.0, t4 = (3.5 + 4.5)/2 = 4.0

COUNTS = {4: 100, 5: 80, 6: 170, 8: 120, 10: 250, 14: 130, 18: 150}
LEVELS = {1.0: 1, 1.25: 1, 1.5: 2, 2.0: 3, 2.5: 3, 3.5: 4, 4.5: 5}
CUTS = [1.375, 1.75, 3.0, 4.0]


def pairs(counts=COUNTS, m=4):
    return [(s, m) for s, n in counts.items() for _ in range(n)]


def test_hand_worked_counts_add_up():
    assert sum(COUNTS.values()) == 1000


def test_equal_frequency_levels_and_cuts_by_hand():
    cuts, levels = equal_frequency_cuts(s / 4 for s, _ in pairs())
    assert levels == LEVELS
    assert cuts == CUTS


def test_fitted_calibrator_maps_each_fitted_value_to_its_level():
    cal = Calibrator().fit({"age": pairs()})
    assert cal.method == "equal_frequency"
    assert cal.cuts == {"age": CUTS}
    for s_times_4, _ in COUNTS.items():
        assert cal.transform("age", s_times_4, 4) == LEVELS[s_times_4 / 4]


def test_input_order_does_not_matter():
    assert Calibrator().fit({"age": list(reversed(pairs()))}).cuts == {"age": CUTS}


@pytest.mark.parametrize(
    "score, m, level",
    [
        # level(s) = 1 + #{k : s > t_k} with t = 1.375, 1.75, 3.0, 4.0
        (1, 10, 1),  # s = 0.1 is below every fitted value
        (13, 10, 1),  # 1.3 <= 1.375
        (14, 10, 2),  # 1.4 > 1.375
        (17, 10, 2),  # 1.7 <= 1.75
        (18, 10, 3),  # 1.8 > 1.75
        (30, 10, 3),  # 3.0 is not > t3 = 3.0
        (31, 10, 4),  # 3.1 > 3.0
        (40, 10, 4),  # 4.0 is not > t4 = 4.0
        (41, 10, 5),  # 4.1 > 4.0
        (50, 10, 5),  # the maximum 5M
        (0, 10, 1),  # no support at all
        (7, 0, 1),  # no samples
    ],
)
def test_transform_of_unseen_values(score, m, level):
    cal = Calibrator().fit({"age": pairs()})
    assert cal.transform("age", score, m) == level


def test_transform_rescales_by_m():
    # Fitted with M = 4; the same s = S/M gives the same level for any M.
    cal = Calibrator().fit({"age": pairs()})
    for s, level in LEVELS.items():
        for m in (1, 2, 4, 10, 32):
            assert cal.transform("age", s * m, m) == level


def test_fit_rescales_by_m():
    # The same s values fitted from M = 4 and M = 8 (S doubled) give the same cuts.
    doubled = [(2 * s, 8) for s, _ in pairs()]
    assert Calibrator().fit({"age": doubled}).cuts == {"age": CUTS}
    mixed = pairs()[::2] + doubled[1::2]
    assert Calibrator().fit({"age": mixed}).cuts == {"age": CUTS}


def test_constant_dimension_maps_to_level_3():
    # One distinct value: q = (0 + n/2)/n = 0.5, level = 1 + floor(2.5) = 3.
    cuts, levels = equal_frequency_cuts([3.0] * 50)
    assert levels == {3.0: 3}
    # No value on levels 1-2 -> t1 = t2 = 0; none above 3 -> t3 = t4 = 5.
    assert cuts == [0.0, 0.0, 5.0, 5.0]
    cal = Calibrator().fit({"gender": [(30, 10)] * 50})
    assert cal.transform("gender", 30, 10) == 3
    assert cal.transform("gender", 12, 10) == 3  # any positive score: no fitted evidence to rank it
    assert cal.transform("gender", 50, 10) == 3


def test_dimensions_are_fitted_independently():
    cal = Calibrator().fit({"age": pairs(), "gender": [(20, 4)] * 10})
    assert cal.cuts["age"] == CUTS
    assert cal.transform("gender", 20, 4) == 3


def test_two_values_split_evenly():
    # 50 x 1.0: q = 25/100 = 0.25 -> level 2; 50 x 2.0: q = (50 + 25)/100 = 0.75 -> level 4.
    # t1 = 0 (nothing on level 1), t2 = t3 = (1 + 2)/2 = 1.5, t4 = 5 (nothing on level 5).
    cuts, levels = equal_frequency_cuts([1.0] * 50 + [2.0] * 50)
    assert levels == {1.0: 2, 2.0: 4}
    assert cuts == [0.0, 1.5, 1.5, 5.0]


def test_unknown_dimension_is_a_key_error():
    with pytest.raises(KeyError, match="occupation"):
        Calibrator().fit({"age": pairs()}).transform("occupation", 10, 4)


# ---------------------------------------------------------------- linear (--no-calibration)


def test_linear_cut_points():
    assert LINEAR_CUTS == (1.8, 2.6, 3.4, 4.2)
    cal = Calibrator.linear(["age", "gender"])
    assert cal.method == "linear"
    assert cal.cuts == {"age": [1.8, 2.6, 3.4, 4.2], "gender": [1.8, 2.6, 3.4, 4.2]}


@pytest.mark.parametrize(
    "score, level",
    [
        # M = 10: intervals of width 8 on [10, 50]: (.., 18] (18, 26] (26, 34] (34, 42] (42, 50]
        (10, 1),
        (18, 1),  # s = 1.8 is not > 1.8
        (19, 2),
        (26, 2),
        (27, 3),
        (34, 3),
        (35, 4),
        (42, 4),
        (43, 5),
        (50, 5),
    ],
)
def test_linear_map_m10(score, level):
    assert Calibrator.linear(["age"]).transform("age", score, 10) == level


def test_linear_fit_keeps_fixed_cuts():
    cal = Calibrator("linear").fit({"age": pairs()})
    assert cal.cuts == {"age": [1.8, 2.6, 3.4, 4.2]}
    # M = 5: S in [5, 25]; S = 9 -> s = 1.8 -> level 1; S = 10 -> s = 2.0 -> level 2; S = 25 -> 5.
    assert [cal.transform("age", s, 5) for s in (5, 9, 10, 13, 17, 21, 22, 25)] == [1, 1, 2, 2, 3, 4, 5, 5]


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="quantile"):
        Calibrator("quantile")


# ---------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path):
    cal = Calibrator().fit({"age": pairs(), "gender": [(30, 10)] * 7, "industry": [(s, 10) for s in range(10, 51)]})
    path = tmp_path / "calibration.json"
    cal.save(path)
    loaded = Calibrator.load(path)
    assert loaded.method == cal.method
    assert loaded.cuts == cal.cuts
    for dim in ("age", "gender", "industry"):
        for m in (3, 10):
            for score in range(0, 5 * m + 1):
                assert loaded.transform(dim, score, m) == cal.transform(dim, score, m)


def test_saved_file_is_plain_json(tmp_path):
    path = tmp_path / "cal.json"
    Calibrator.linear(["age"]).save(path)
    data = json.loads(path.read_text())
    assert data["method"] == "linear"
    assert data["cuts"] == {"age": [1.8, 2.6, 3.4, 4.2]}


def test_hand_written_file_loads(tmp_path):
    path = tmp_path / "cal.json"
    path.write_text('{"method": "equal_frequency", "cuts": {"age": [1, 2, 3, 4]}}')
    cal = Calibrator.load(path)
    # s = 25/10 = 2.5 > 1, 2 and <= 3 -> level 3
    assert cal.transform("age", 25, 10) == 3


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "",
        "[1, 2, 3]",
        '{"method": "equal_frequency"}',
        '{"cuts": [1, 2, 3, 4]}',
        '{"cuts": {"age": [1, 2, 3]}}',
        '{"cuts": {"age": [1, 2, 3, 4, 5]}}',
        '{"cuts": {"age": [4, 3, 2, 1]}}',
        '{"cuts": {"age": [1, "2", 3, 4]}}',
        '{"cuts": {"age": "1,2,3,4"}}',
        '{"method": "quantile", "cuts": {"age": [1, 2, 3, 4]}}',
        # numbers that are not cut points: every level would become 1 (or the order meaningless)
        '{"cuts": {"age": [NaN, NaN, NaN, NaN]}}',
        '{"cuts": {"age": [1, 2, 3, NaN]}}',
        '{"cuts": {"age": [1, 2, 3, Infinity]}}',
        '{"cuts": {"age": [false, true, true, true]}}',
        '{"cuts": {"age": [1, 2, 3, null]}}',
        '{"cuts": {"age": [-1, 2, 3, 4]}}',
        '{"cuts": {"age": [1, 2, 3, 5.5]}}',
    ],
)
def test_malformed_file_raises_value_error_naming_the_file(tmp_path, content):
    path = tmp_path / "broken_calibration.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError) as info:
        Calibrator.load(path)
    assert str(path) in str(info.value)


def test_non_utf8_file_raises_value_error_naming_the_file(tmp_path):
    path = tmp_path / "binary_calibration.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError) as info:
        Calibrator.load(path)
    assert str(path) in str(info.value)


def test_cut_points_at_the_ends_of_the_scale_load(tmp_path):
    # equal_frequency_cuts writes 0 and 5 for an empty side; a file with a BOM loads too.
    path = tmp_path / "ends.json"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"method": "equal_frequency", "cuts": {"age": [0, 0.0, 3, 5]}}')
    cal = Calibrator.load(path)
    # s = 30/10 = 3: above 0, 0 and not above 3 -> level 3; s = 5 -> not above 5 -> level 4
    assert (cal.transform("age", 30, 10), cal.transform("age", 50, 10)) == (3, 4)
