"""`confprofile eval` end to end on a hand-written labelled set; every expected number worked by hand."""

import json
import os
import textwrap
from pathlib import Path
from fractions import Fraction as F

import pytest

from verl_confprofile.cli import main

TAXONOMY = """\
dimensions:
  pet:
    labels: [Dog, Cat, Fish, NA]
  home:
    labels: [City, Village, NA]
  car:
    labels: [Sedan, SUV, NA]
"""
BEHAVIORS = {"watched": ["cooking"]}

# Gold set. Scored users per dimension (gold label present, in the closed set, not NA):
#   pet:  u1 Dog, u2 Cat, u3 Dog, 4 Fish           -> support 4
#   home: u1 City, u2 Village, 4 City (u3 is NA)    -> support 3
#   car:  only u3's "Tesla", which is not in the closed set -> no gold: left out of the tables
# u5 has no labels (not evaluated); u7 has no behaviours (skipped by read_records); u2's "hobby"
# is not a taxonomy dimension. User 4 has an integer id in both files.
RECORDS = [
    {"user_id": "u1", "behaviors": BEHAVIORS, "labels": {"pet": "Dog", "home": "City"}},
    {"user_id": "u2", "behaviors": BEHAVIORS, "labels": {"pet": "cat", "home": "Village", "hobby": "chess"}},
    {"user_id": "u3", "behaviors": BEHAVIORS, "labels": {"pet": "Dog", "home": "Unknown", "car": "Tesla"}},
    {"user_id": 4, "behaviors": BEHAVIORS, "labels": {"pet": "Fish", "home": "City"}},
    {"user_id": "u5", "behaviors": BEHAVIORS},
    {"user_id": "u7", "behaviors": {}, "labels": {"pet": "Dog"}},
]


def blk(key, tag, score):
    return f"<{key}><evidence>seen</evidence><tag>{tag}</tag><score>{score}</score></{key}>"


def sample(user, idx, *blocks):
    return {"user_id": user, "sample_idx": idx, "model": "m", "text": "<think>...</think>" + "".join(blocks)}


# ---------------------------------------------------------------- run A: one sample per user
#
# No calibrator: each prediction's confidence is the sample's own score.
#   u1: pet Dog@5 (correct), home City@2 (correct)
#   u2: pet Dog@3 (wrong),   home Village@4 (correct)
#   u3: pet malformed (score 7) -> abstains; home City@5 (gold NA: not scored)
#   4:  no sample -> abstains on pet and home
#   u9: not in the records; u5: a record without labels -> both unknown, ignored
SINGLE = [
    sample("u1", 0, blk("pet", "Dog", 5), blk("home", "City", 2)),
    sample("u2", 0, blk("pet", "Dog", 3), blk("home", "Village", 4)),
    sample("u3", 0, blk("pet", "Dog", 7), blk("home", "City", 5)),
    sample("u9", 0, blk("pet", "Cat", 5), blk("home", "City", 5)),
    sample("u5", 0, blk("pet", "Cat", 1)),
]
# pet (support 4):
#   tau 1-3: answers u1, u2; correct u1 -> P 1/2, R 2/4,  F1 1/2
#   tau 4-5: u2 (3) drops -> answers u1 -> P 1,   R 1/4,  F1 2(1/4)/(5/4) = 2/5
# home (support 3):
#   tau 1-2: answers u1, u2, both correct -> P 1, R 2/3, F1 2(2/3)/(5/3) = 4/5
#   tau 3-4: u1 (2) drops -> answers u2    -> P 1, R 1/3, F1 2(1/3)/(4/3) = 1/2
#   tau 5:   u2 (4) drops -> no answers    -> 0, 0, 0
# Averages: f1_mean = mean F1; precision, recall = means; f1_of_means = 2PR/(P+R)
#   tau 1-2: f1_mean (1/2+4/5)/2 = 13/20; P (1/2+1)/2 = 3/4; R (1/2+2/3)/2 = 7/12;
#            f1_of_means 2(3/4)(7/12)/(3/4+7/12) = (7/8)/(4/3) = 21/32
#   tau 3:   f1_mean (1/2+1/2)/2 = 1/2;  P 3/4; R (1/2+1/3)/2 = 5/12;
#            f1_of_means 2(3/4)(5/12)/(3/4+5/12) = (5/8)/(7/6) = 15/28
#   tau 4:   f1_mean (2/5+1/2)/2 = 9/20; P 1;   R (1/4+1/3)/2 = 7/24;
#            f1_of_means 2(7/24)/(31/24) = 14/31
#   tau 5:   f1_mean (2/5+0)/2 = 1/5;    P 1/2; R (1/4+0)/2 = 1/8;
#            f1_of_means 2(1/2)(1/8)/(5/8) = 1/5
SINGLE_EXPECTED = {
    1: ({"pet": (F(1, 2), F(1, 2), F(1, 2)), "home": (1, F(2, 3), F(4, 5))}, (F(13, 20), F(3, 4), F(7, 12), F(21, 32))),
    2: ({"pet": (F(1, 2), F(1, 2), F(1, 2)), "home": (1, F(2, 3), F(4, 5))}, (F(13, 20), F(3, 4), F(7, 12), F(21, 32))),
    3: ({"pet": (F(1, 2), F(1, 2), F(1, 2)), "home": (1, F(1, 3), F(1, 2))}, (F(1, 2), F(3, 4), F(5, 12), F(15, 28))),
    4: ({"pet": (1, F(1, 4), F(2, 5)), "home": (1, F(1, 3), F(1, 2))}, (F(9, 20), 1, F(7, 24), F(14, 31))),
    5: ({"pet": (1, F(1, 4), F(2, 5)), "home": (0, 0, 0)}, (F(1, 5), F(1, 2), F(1, 8), F(1, 5))),
}
SINGLE_COUNTS = {
    "samples": 5,
    "users_with_samples": 5,
    "users_evaluated": 3,
    "missing_users": 1,
    "missing_user_examples": ["4"],
    "unknown_users": 2,
    "unknown_user_examples": ["u9", "u5"],
    "skipped_lines": {},
    "truncated_samples": {"count": 0, "policy": "kept", "first": []},
    # among gold-labelled users at tau 1: u3's pet is malformed, user 4 has no sample
    "abstentions_at_tau_1": {
        "pet": {"na": 0, "malformed": 1, "no_samples": 1},
        "home": {"na": 0, "malformed": 0, "no_samples": 1},
    },
    # over the evaluated users' samples (u1, u2, u3): u3's pet block
    "malformed_samples": {"pet": 1, "home": 0},
}

# ---------------------------------------------------------------- run B: three samples per user
#
# Confidence voting (S_t = sum of scores per tag), then the calibrated level of s = S / M (M = 3)
# with the cuts below; level = 1 + number of cuts strictly below s.
#   pet cuts  1.5, 2.5, 3.5, 4.5
#   home cuts 0.5, 1.5, 2.5, 3.0
#   u1 pet:  Dog 2 + 2 = 4, Cat 5 -> Cat (wrong), s 5/3 = 1.67  -> level 2
#      home: City 3 + 3 = 6 (third sample has no home block) -> City (correct), s 2.0 -> level 3
#   u2 pet:  Cat 5 + 4 = 9, Dog 1 -> Cat (correct), s 3.0 -> level 3
#      home: City 2 + 1 = 3, Village 1 -> City (wrong), s 1.0 -> level 2
#   u3 pet:  Dog 5 + 5 + 5 = 15 -> Dog (correct), s 5.0 -> level 5
#      home: City (gold NA: not scored)
#   4  pet:  NA 3 + 2 = 5, Fish 4 -> NA: abstains
#      home: City 5 + 5 = 10, Village 1 -> City (correct), s 3.33 -> level 5
#   u9 (unknown): one sample, ignored
VOTED = [
    sample("u1", 0, blk("pet", "Dog", 2), blk("home", "City", 3)),
    sample("u1", 1, blk("pet", "Dog", 2), blk("home", "City", 3)),
    sample("u1", 2, blk("pet", "Cat", 5)),
    sample("u2", 0, blk("pet", "Cat", 5), blk("home", "Village", 1)),
    sample("u2", 1, blk("pet", "Cat", 4), blk("home", "City", 2)),
    sample("u2", 2, blk("pet", "Dog", 1), blk("home", "City", 1)),
    *(sample("u3", i, blk("pet", "Dog", 5), blk("home", "City", 2)) for i in range(3)),
    sample(4, 0, blk("pet", "NA", 3), blk("home", "City", 5)),
    sample(4, 1, blk("pet", "NA", 2), blk("home", "City", 5)),
    sample(4, 2, blk("pet", "Fish", 4), blk("home", "Village", 1)),
    sample("u9", 0, blk("pet", "Cat", 5), blk("home", "City", 5)),
]
CALIBRATION = {
    "method": "equal_frequency",
    "scale": "S/M",
    "cuts": {"pet": [1.5, 2.5, 3.5, 4.5], "home": [0.5, 1.5, 2.5, 3.0], "car": [1, 2, 3, 4]},
}
# pet (support 4): u1 Cat@2 wrong, u2 Cat@3 correct, u3 Dog@5 correct, 4 abstains
#   tau 1-2: answers 3, correct 2 -> P 2/3, R 3/4, F1 2(2/3)(3/4)/(17/12) = 12/17
#   tau 3:   u1 drops -> answers 2, correct 2 -> P 1, R 1/2, F1 2(1/2)/(3/2) = 2/3
#   tau 4-5: u2 drops -> answers 1, correct 1 -> P 1, R 1/4, F1 2/5
# home (support 3): u1 City@3 correct, u2 City@2 wrong, 4 City@5 correct
#   tau 1-2: answers 3, correct 2 -> P 2/3, R 1, F1 2(2/3)/(5/3) = 4/5
#   tau 3:   u2 drops -> answers 2, correct 2 -> P 1, R 2/3, F1 4/5
#   tau 4-5: u1 drops -> answers 1, correct 1 -> P 1, R 1/3, F1 1/2
# Averages:
#   tau 1-2: f1_mean (12/17+4/5)/2 = (60+68)/170 = 64/85; P 2/3; R (3/4+1)/2 = 7/8;
#            f1_of_means 2(2/3)(7/8)/(2/3+7/8) = (7/6)/(37/24) = 28/37
#   tau 3:   f1_mean (2/3+4/5)/2 = 11/15; P 1; R (1/2+2/3)/2 = 7/12; f1_of_means 2(7/12)/(19/12) = 14/19
#   tau 4-5: f1_mean (2/5+1/2)/2 = 9/20;  P 1; R (1/4+1/3)/2 = 7/24; f1_of_means 14/31
VOTED_EXPECTED = {
    1: ({"pet": (F(2, 3), F(3, 4), F(12, 17)), "home": (F(2, 3), 1, F(4, 5))}, (F(64, 85), F(2, 3), F(7, 8), F(28, 37))),
    2: ({"pet": (F(2, 3), F(3, 4), F(12, 17)), "home": (F(2, 3), 1, F(4, 5))}, (F(64, 85), F(2, 3), F(7, 8), F(28, 37))),
    3: ({"pet": (1, F(1, 2), F(2, 3)), "home": (1, F(2, 3), F(4, 5))}, (F(11, 15), 1, F(7, 12), F(14, 19))),
    4: ({"pet": (1, F(1, 4), F(2, 5)), "home": (1, F(1, 3), F(1, 2))}, (F(9, 20), 1, F(7, 24), F(14, 31))),
    5: ({"pet": (1, F(1, 4), F(2, 5)), "home": (1, F(1, 3), F(1, 2))}, (F(9, 20), 1, F(7, 24), F(14, 31))),
}
VOTED_COUNTS = {
    "samples": 13,
    "users_with_samples": 5,
    "users_evaluated": 4,
    "missing_users": 0,
    "missing_user_examples": [],
    "unknown_users": 1,
    "unknown_user_examples": ["u9"],
    "skipped_lines": {},
    "truncated_samples": {"count": 0, "policy": "kept", "first": []},
    "abstentions_at_tau_1": {
        "pet": {"na": 1, "malformed": 0, "no_samples": 0},  # user 4 voted NA
        "home": {"na": 0, "malformed": 0, "no_samples": 0},
    },
    "malformed_samples": {"pet": 0, "home": 1},  # u1's third sample has no home block
}

RECORDS_SECTION = {
    "labelled_users": 4,
    "gold_labelled": {"pet": 4, "home": 3},
    "dimensions_without_gold": ["car"],
    "unlabelled_records": 1,
    "skipped_records": {"no_behaviors": 1},
    "gold_out_of_set": {"car": 1},
    "gold_out_of_set_examples": {"car": "user u3: 'Tesla'"},
    "label_keys_outside_taxonomy": {"hobby": 1},
}


def as_percent(expected):
    """Expected {tau: (per-dimension (P, R, F1), (f1_mean, P, R, f1_of_means))} in report.json's layout."""
    out = {}
    for tau, (per_dim, (f1_mean, p, r, f1_of_means)) in expected.items():
        block = {d: {"precision": 100 * a, "recall": 100 * b, "f1": 100 * c} for d, (a, b, c) in per_dim.items()}
        block["average"] = {"f1_mean": 100 * f1_mean, "precision": 100 * p, "recall": 100 * r, "f1_of_means": 100 * f1_of_means}
        out[str(tau)] = block
    return out


def assert_thresholds(got, expected):
    want = as_percent(expected)
    assert list(got) == ["1", "2", "3", "4", "5"]
    for tau, block in want.items():
        assert list(got[tau]) == list(block), tau
        for key, values in block.items():
            assert list(got[tau][key]) == list(values), (tau, key)
            for metric, value in values.items():
                assert got[tau][key][metric] == pytest.approx(float(value)), (tau, key, metric)


def md_row(md, first_cell):
    """The numbers of the Markdown table row that starts with ``first_cell``."""
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == first_cell:
            return [float(c) for c in cells[1:]]
    raise AssertionError(f"no row {first_cell!r} in report.md")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def files(tmp_path):
    taxonomy = tmp_path / "pets.yaml"
    taxonomy.write_text(TAXONOMY, encoding="utf-8")
    calibration = tmp_path / "calibration.json"
    calibration.write_text(json.dumps(CALIBRATION), encoding="utf-8")
    (tmp_path / "sft").mkdir()
    return {
        "taxonomy": str(taxonomy),
        "records": write_jsonl(tmp_path / "records.jsonl", RECORDS),
        "single": write_jsonl(tmp_path / "single.jsonl", SINGLE),
        "voted": write_jsonl(tmp_path / "sft" / "samples.jsonl", VOTED),
        "calibration": str(calibration),
        "out": str(tmp_path / "report"),
    }


def run_eval(files, *samples, extra=()):
    args = ["eval", "--records", files["records"], "--out", files["out"], "--taxonomy", files["taxonomy"]]
    for path in samples:
        args += ["--samples", path]
    return main([*args, *extra])


def load_report(files):
    with open(f"{files['out']}/report.json", encoding="utf-8") as fh:
        return json.load(fh)


# ---------------------------------------------------------------- reports


def test_one_sample_per_user_confidence_is_own_score(files, capsys):
    assert run_eval(files, files["single"]) == 0
    report = load_report(files)
    assert list(report) == ["thresholds", "counts", "runs", "records", "options"]
    assert_thresholds(report["thresholds"], SINGLE_EXPECTED)
    assert report["counts"] == SINGLE_COUNTS
    assert list(report["runs"]) == ["single"]
    assert report["runs"]["single"] == {"samples": files["single"], "thresholds": report["thresholds"], "counts": SINGLE_COUNTS}
    assert report["records"] == {"file": files["records"], **RECORDS_SECTION}
    assert report["options"] == {
        "records": files["records"],
        "samples": {"single": files["single"]},
        "voting": "confidence",
        "definition": "paper",
        "calibration": None,
        "confidence": "linear",
        "taxonomy": files["taxonomy"],
        "strict": False,
        "drop_truncated": False,
        "thresholds": [1, 2, 3, 4, 5],
    }
    out = capsys.readouterr().out
    assert "single: 3 users evaluated, 1 labelled users without samples, 2 users with samples but no labelled record (ignored)" in out


def test_several_samples_per_user_voted_and_calibrated(files):
    assert run_eval(files, files["voted"], extra=["--calibration", files["calibration"]]) == 0
    report = load_report(files)
    assert_thresholds(report["thresholds"], VOTED_EXPECTED)
    assert report["counts"] == VOTED_COUNTS
    # default run name: the file stem
    assert list(report["runs"]) == ["samples"]
    assert report["options"]["confidence"] == "calibrated"
    assert report["options"]["calibration"] == files["calibration"]


def test_several_samples_without_calibrator_use_the_linear_map(files):
    # Linear cuts on s = S/M: 1.8, 2.6, 3.4, 4.2.
    #   pet:  u1 Cat s 1.67 -> 1 (wrong), u2 Cat s 3.0 -> 3, u3 Dog s 5.0 -> 5
    #   home: u1 City s 2.0 -> 2, u2 City s 1.0 -> 1 (wrong), 4 City s 3.33 -> 3
    # tau 2: pet answers u2, u3 (both correct)  -> P 1, R 2/4, F1 2/3
    #        home answers u1, 4 (both correct)  -> P 1, R 2/3, F1 4/5
    # tau 4: pet answers u3 -> P 1, R 1/4, F1 2/5; home none -> 0, 0, 0
    assert run_eval(files, files["voted"]) == 0
    thresholds = load_report(files)["thresholds"]
    assert thresholds["2"]["pet"] == pytest.approx({"precision": 100, "recall": 50, "f1": 200 / 3})
    assert thresholds["2"]["home"] == pytest.approx({"precision": 100, "recall": 200 / 3, "f1": 80})
    assert thresholds["4"]["pet"] == pytest.approx({"precision": 100, "recall": 25, "f1": 40})
    assert thresholds["4"]["home"] == {"precision": 0, "recall": 0, "f1": 0}


def test_majority_voting(files):
    # Only u1's pet changes: Dog has 2 votes against Cat's 1 -> Dog (correct), S 4, s 1.33 -> level 1.
    # tau 1: pet answers u1, u2, u3, all correct -> P 1, R 3/4, F1 2(3/4)/(7/4) = 6/7
    # tau 2: u1 drops                            -> P 1, R 2/4, F1 2/3
    assert run_eval(files, files["voted"], extra=["--calibration", files["calibration"], "--voting", "majority"]) == 0
    report = load_report(files)
    assert report["thresholds"]["1"]["pet"] == pytest.approx({"precision": 100, "recall": 75, "f1": 600 / 7})
    assert report["thresholds"]["2"]["pet"] == pytest.approx({"precision": 100, "recall": 50, "f1": 200 / 3})
    assert report["options"]["voting"] == "majority"


def test_standard_recall_definition(files):
    # Run A with recall = correct / gold-labelled; precision is unchanged.
    # pet:  tau 1-3 correct u1 -> R 1/4, P 1/2, F1 2(1/2)(1/4)/(3/4) = 1/3; tau 4-5 R 1/4, P 1, F1 2/5
    # home: every answer is correct, so recall is as in the paper definition: 2/3, 2/3, 1/3, 1/3, 0
    # Averages:
    #   tau 1-2: f1_mean (1/3+4/5)/2 = 17/30; P 3/4; R (1/4+2/3)/2 = 11/24;
    #            f1_of_means 2(3/4)(11/24)/(3/4+11/24) = (11/16)/(29/24) = 33/58
    #   tau 3:   f1_mean (1/3+1/2)/2 = 5/12;  P 3/4; R (1/4+1/3)/2 = 7/24;
    #            f1_of_means 2(3/4)(7/24)/(25/24) = (7/16)(24/25) = 21/50
    #   tau 4-5: as in the paper definition (pet's answers are all correct there)
    expected = {
        1: ({"pet": (F(1, 2), F(1, 4), F(1, 3)), "home": (1, F(2, 3), F(4, 5))}, (F(17, 30), F(3, 4), F(11, 24), F(33, 58))),
        2: ({"pet": (F(1, 2), F(1, 4), F(1, 3)), "home": (1, F(2, 3), F(4, 5))}, (F(17, 30), F(3, 4), F(11, 24), F(33, 58))),
        3: ({"pet": (F(1, 2), F(1, 4), F(1, 3)), "home": (1, F(1, 3), F(1, 2))}, (F(5, 12), F(3, 4), F(7, 24), F(21, 50))),
        4: SINGLE_EXPECTED[4],
        5: SINGLE_EXPECTED[5],
    }
    assert run_eval(files, files["single"], extra=["--definition", "standard"]) == 0
    report = load_report(files)
    assert_thresholds(report["thresholds"], expected)
    assert report["options"]["definition"] == "standard"
    md = open(f"{files['out']}/report.md", encoding="utf-8").read()
    assert "Recall: standard: correct / gold-labelled users" in md


def test_two_runs_side_by_side(files):
    extra = ["--calibration", files["calibration"], "--name", "SFT", "--name", "SFT+RL"]
    # With a calibrator, run A's single samples are calibrated too (M = 1, s = own score):
    #   pet cuts 1.5 .. 4.5: u1 Dog s 5 -> 5, u2 Dog s 3 -> 3 (the same levels as the raw scores)
    #   home cuts 0.5, 1.5, 2.5, 3.0: u1 City s 2 -> 3, u2 Village s 4 -> 5
    # so pet is as in SINGLE_EXPECTED; home at tau 3: answers u1, u2 -> P 1, R 2/3, F1 4/5
    assert run_eval(files, files["single"], files["voted"], extra=extra) == 0
    report = load_report(files)
    assert list(report["runs"]) == ["SFT", "SFT+RL"]
    assert report["thresholds"] == report["runs"]["SFT"]["thresholds"]
    assert report["counts"] == report["runs"]["SFT"]["counts"] == SINGLE_COUNTS
    sft = report["runs"]["SFT"]["thresholds"]
    for tau in ("1", "2", "3", "4", "5"):
        assert sft[tau]["pet"] == pytest.approx(as_percent(SINGLE_EXPECTED)[tau]["pet"])
    assert sft["3"]["home"] == pytest.approx({"precision": 100, "recall": 200 / 3, "f1": 80})
    assert_thresholds(report["runs"]["SFT+RL"]["thresholds"], VOTED_EXPECTED)
    assert report["runs"]["SFT+RL"]["counts"] == VOTED_COUNTS
    assert report["options"]["samples"] == {"SFT": files["single"], "SFT+RL": files["voted"]}

    md = open(f"{files['out']}/report.md", encoding="utf-8").read()
    # summary at tau 1: SFT P 3/4, R 7/12, F1 of means 21/32, mean F1 13/20 (home at tau 1 as in run A);
    # SFT+RL P 2/3, R 7/8, 28/37 = 75.68, 64/85 = 75.29
    assert "| Run | Precision | Recall | F1 of means | Mean F1 |" in md
    assert md_row(md, "SFT") == pytest.approx([75, 700 / 12, 2100 / 32, 65], abs=0.005)
    assert md_row(md, "SFT+RL") == pytest.approx([200 / 3, 87.5, 2800 / 37, 6400 / 85], abs=0.005)
    assert md.index("## SFT\n") < md.index("## SFT+RL\n")
    # Table 7 layout, run B at tau 1 and tau 5; Average = mean precision / mean recall / mean F1
    assert "| τ | Metric | Pet | Home | Average |" in md
    assert "| 1 | Precision | 66.67 | 66.67 | 66.67 |" in md
    assert "|  | Recall | 75.00 | 100.00 | 87.50 |" in md
    assert "|  | F1 Score | 70.59 | 80.00 | 75.29 |" in md
    assert "| 5 | Precision | 100.00 | 100.00 | 100.00 |" in md
    assert "not scored (no gold label in the set): car" in md
    assert "Labelled users without samples: 1;" in md and "Users with samples who are not labelled records: 2;" in md


def test_plots_are_written(files):
    assert run_eval(files, files["single"], files["voted"]) == 0
    for name in ("precision_recall.png", "precision_recall_by_dimension.png"):
        with open(f"{files['out']}/{name}", "rb") as fh:
            data = fh.read()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000, name


def test_default_names_fall_back_to_paths_when_stems_collide(files, tmp_path):
    other = tmp_path / "rl"
    other.mkdir()
    rl = write_jsonl(other / "samples.jsonl", SINGLE)
    assert run_eval(files, files["voted"], rl) == 0
    assert list(load_report(files)["runs"]) == [files["voted"], rl]


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--name", "only-one"], "--name given 1 times for 2 --samples files"),
        (["--name", "x", "--name", "x"], "--name values must be distinct"),
    ],
)
def test_name_errors(files, capsys, extra, message):
    assert run_eval(files, files["single"], files["voted"], extra=extra) == 2
    assert message in capsys.readouterr().err


def test_broken_and_repeated_samples_lines_are_counted_skips(files, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps(SINGLE[0]), "{not json", json.dumps(dict(SINGLE[0], text="again"))]
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert run_eval(files, str(bad)) == 0
    err = capsys.readouterr().err
    assert f"warning: {bad}:2: not a JSON line: unexpected character" in err
    assert f"warning: {bad}:3: duplicate sample_idx 0 for user 'u1' (first at line 1); skipped" in err
    counts = load_report(files)["counts"]
    assert {k: v["count"] for k, v in counts["skipped_lines"].items()} == {"broken_line": 1, "duplicate_sample": 1}
    assert counts["samples"] == 1  # the first occurrence is used
    assert "Sample lines skipped: broken_line 1" in (Path(files["out"]) / "report.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("drop", [False, True])
def test_truncated_samples_are_counted_and_reported(files, tmp_path, capsys, drop):
    cut = tmp_path / "cut.jsonl"
    # line 1 cut at the token limit, line 2 stopped, line 3 without a reason (an older file)
    write_jsonl(cut, [dict(SINGLE[0], finish_reason="length"), dict(SINGLE[1], finish_reason="stop"), *SINGLE[2:]])
    assert run_eval(files, str(cut), extra=["--drop-truncated"] if drop else []) == 0
    captured = capsys.readouterr()
    what = "skipped" if drop else "kept: only its complete blocks vote"
    message = f"{cut}:1: sample 0 of user 'u1' was cut at the token limit (finish_reason 'length'); {what}"
    assert f"warning: {message}" in captured.err
    counts = load_report(files)["counts"]
    assert counts["truncated_samples"] == {"count": 1, "policy": "dropped" if drop else "kept", "first": [message]}
    assert counts["samples"] == len(SINGLE) - drop
    assert f"truncated samples: 1 {'dropped' if drop else 'kept'}" in captured.out
    report_md = (Path(files["out"]) / "report.md").read_text(encoding="utf-8")
    assert f"Samples cut at the token limit: 1 {'dropped' if drop else 'kept'} (e.g. {message})" in report_md


def test_strict_makes_a_broken_samples_line_an_error(files, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(SINGLE[0]) + "\n{not json\n", encoding="utf-8")
    assert run_eval(files, str(bad), extra=["--strict"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: not a JSON line: unexpected character" in err and "skipped" not in err


def test_calibration_must_cover_the_taxonomy(files, tmp_path, capsys):
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"method": "equal_frequency", "cuts": {"pet": [1, 2, 3, 4]}}), encoding="utf-8")
    assert run_eval(files, files["single"], extra=["--calibration", str(partial)]) == 2
    assert f"{partial}: no cut points for home, car" in capsys.readouterr().err


def test_records_without_gold_are_refused(files, tmp_path, capsys):
    records = write_jsonl(tmp_path / "unlabelled.jsonl", [{"user_id": "u1", "behaviors": BEHAVIORS}])
    args = ["eval", "--records", records, "--samples", files["single"], "--out", files["out"], "--taxonomy", files["taxonomy"]]
    assert main(args) == 2
    assert f"{records}: no record has 'labels'" in capsys.readouterr().err


def test_dimension_named_average_is_refused(files, tmp_path, capsys):
    taxonomy = tmp_path / "average.yaml"
    taxonomy.write_text(textwrap.dedent("""\
        dimensions:
          average:
            labels: [High, Low, NA]
        """), encoding="utf-8")
    args = ["eval", "--records", files["records"], "--samples", files["single"], "--out", files["out"], "--taxonomy", str(taxonomy)]
    assert main(args) == 2
    assert "'average' would collide" in capsys.readouterr().err


@pytest.mark.parametrize("rows", [[], [sample("u9", 0, blk("pet", "Cat", 5))]], ids=["empty", "only unknown users"])
def test_samples_without_any_labelled_user_are_refused(files, tmp_path, capsys, rows):
    path = write_jsonl(tmp_path / "nobody.jsonl", rows)
    assert run_eval(files, path) == 2
    assert f"{path}: no sample of any labelled user of {files['records']}" in capsys.readouterr().err


def test_the_same_samples_file_under_two_spellings_is_refused(files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_eval(files, "single.jsonl", "./single.jsonl", files["single"]) == 2
    assert "the same --samples file is given twice: single.jsonl and ./single.jsonl" in capsys.readouterr().err
    twice = "single.jsonl"
    assert run_eval(files, twice, twice) == 2  # the very same string too
    assert "given twice: single.jsonl and single.jsonl" in capsys.readouterr().err


def test_a_null_label_is_no_label(files, tmp_path):
    records = [*RECORDS, {"user_id": "u8", "behaviors": BEHAVIORS, "labels": {"pet": None, "home": None}}]
    files["records"] = write_jsonl(tmp_path / "records_null.jsonl", records)
    assert run_eval(files, files["single"]) == 0
    report = load_report(files)
    assert report["records"]["labelled_users"] == 4  # u1, u2, u3, 4: not u8
    assert report["records"]["unlabelled_records"] == 2  # u5 and u8
    assert report["counts"]["missing_users"] == 1  # user 4 only; u8 is not a labelled user without samples


def test_an_interrupted_eval_leaves_no_report(files, capsys, monkeypatch):
    from verl_confprofile import evaluate

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "report_json", interrupt)  # after the plots and report.md are written
    assert run_eval(files, files["single"]) == 130
    assert "confprofile eval: interrupted" in capsys.readouterr().err
    assert not os.path.exists(files["out"]) or os.listdir(files["out"]) == []
