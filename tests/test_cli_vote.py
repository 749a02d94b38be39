"""`confprofile vote` end to end, in process and through the installed console script."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from verl_confprofile.cli import main

CONSOLE_SCRIPT = Path(sys.executable).parent / "confprofile"
OTHER_DIMS = ("industry", "occupation", "education", "life_stage")


def blk(key, tag, score):
    return f"<{key}><evidence>seen in the keyphrases</evidence><tag>{tag}</tag><score>{score}</score></{key}>"


# Two users, three samples each, interleaved; only gender and age are answered, so the four other
# dimensions of the bundled taxonomy are malformed (missing) in every sample.
SAMPLES = [
    {"user_id": "u_b", "sample_idx": 0, "model": "teacher", "text": blk("gender", "Male", 5) + blk("age", "24-30", 2)},
    {"user_id": "u_a", "sample_idx": 0, "model": "teacher", "text": blk("gender", "Female", "high") + blk("age", "18\u201323", 3)},
    {"user_id": "u_b", "sample_idx": 1, "model": "teacher", "text": blk("gender", "Female", 4) + "\n" + blk("age", "24-30", 1)},
    # truncated output: gender unclosed, age missing
    {"user_id": "u_a", "sample_idx": 1, "model": "teacher", "text": "<think>ok</think><gender><evidence>short</evidence><tag>Male</tag><sco"},
    {"user_id": "u_a", "sample_idx": 2, "model": "teacher", "text": "<think>hmm</think>" + blk("gender", "Male", 1) + blk("age", "NA", 1)},
    {"user_id": "u_b", "sample_idx": 2, "model": "teacher", "text": blk("age", "31\u201340", 5) + " and " + blk("gender", "Male", 1)},
]


def dim(tag, score, votes, margin, confidence=None):
    """An output dimension without --threshold: the tag is the vote's (none without a well-formed sample)."""
    voted = tag if votes else None
    return {"tag": tag, "voted_tag": voted, "thresholded": False, "score": score, "votes": votes, "margin": margin, "confidence": confidence}


def unanswered(confidence=None):
    return {k: dim("NA", 0, 0, 0, confidence) for k in OTHER_DIMS}


# Confidence voting (Eq. 3-5), users in order of first appearance (u_b, then u_a):
# u_b gender: S_Male = 5+1 = 6, S_Female = 4 -> Male, S 6, votes 2, margin 2
#     age:    S_24-30 = 2+1 = 3, S_31-40 = 5 (en dash alias) -> 31-40, S 5, votes 1, margin 2
# u_a gender: sample 1 malformed; S_Female = 4 ("high"), S_Male = 1 -> Female, S 4, votes 1, margin 3
#     age:    sample 1 malformed; S_18-23 = 3, S_NA = 1 -> 18-23, S 3, votes 1, margin 2
# Other dimensions: no well-formed sample -> NA, S 0, 3 malformed.
EXPECTED_CONFIDENCE = [
    {
        "user_id": "u_b",
        "profile": {"gender": dim("Male", 6, 2, 2), "age": dim("31-40", 5, 1, 2), **unanswered()},
        "malformed": {"gender": 0, "age": 0, **{k: 3 for k in OTHER_DIMS}},
    },
    {
        "user_id": "u_a",
        "profile": {"gender": dim("Female", 4, 1, 3), "age": dim("18-23", 3, 1, 2), **unanswered()},
        "malformed": {"gender": 1, "age": 1, **{k: 3 for k in OTHER_DIMS}},
    },
]

# Majority voting (counts, then S, then taxonomy order; margin in counts):
# u_b gender: Male 2 votes vs Female 1 -> Male, S 6, margin 1
#     age:    24-30 2 votes vs 31-40 1 -> 24-30, S 3, votes 2, margin 1
# u_a gender: 1 - 1, S 4 > 1 -> Female, S 4, votes 1, margin 0
#     age:    1 - 1, S 3 > 1 -> 18-23, S 3, votes 1, margin 0
EXPECTED_MAJORITY = [
    {
        "user_id": "u_b",
        "profile": {"gender": dim("Male", 6, 2, 1), "age": dim("24-30", 3, 2, 1), **unanswered()},
        "malformed": EXPECTED_CONFIDENCE[0]["malformed"],
    },
    {
        "user_id": "u_a",
        "profile": {"gender": dim("Female", 4, 1, 0), "age": dim("18-23", 3, 1, 0), **unanswered()},
        "malformed": EXPECTED_CONFIDENCE[1]["malformed"],
    },
]

# Hand-written calibration, on the s = S/M scale with M = 3 samples per user:
# gender cuts 0.5, 1.0, 1.5, 2.5: u_b s = 6/3 = 2.0   > 0.5, 1.0, 1.5 -> level 4
#                                 u_a s = 4/3 = 1.33  > 0.5, 1.0      -> level 3
# age cuts 0.5, 1.5, 1.8, 2.2:    u_b s = 5/3 = 1.67  > 0.5, 1.5      -> level 3
#                                 u_a s = 3/3 = 1.0   > 0.5           -> level 2
# other dimensions: S = 0 -> level 1
CALIBRATION = {
    "method": "equal_frequency",
    "scale": "S/M",
    "cuts": {
        "gender": [0.5, 1.0, 1.5, 2.5],
        "age": [0.5, 1.5, 1.8, 2.2],
        **{k: [1.0, 2.0, 3.0, 4.0] for k in OTHER_DIMS},
    },
}
LEVELS = {"u_b": {"gender": 4, "age": 3}, "u_a": {"gender": 3, "age": 2}}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def samples_file(tmp_path):
    return write_jsonl(tmp_path / "samples.jsonl", SAMPLES)


@pytest.fixture
def calibration_file(tmp_path):
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(CALIBRATION), encoding="utf-8")
    return path


def run_vote(samples, out, *extra):
    return main(["vote", "--samples", str(samples), "--out", str(out), *extra])


# ---------------------------------------------------------------- happy paths


def test_vote_confidence(samples_file, tmp_path, capsys):
    out = tmp_path / "profiles.jsonl"
    assert run_vote(samples_file, out) == 0
    assert read_jsonl(out) == EXPECTED_CONFIDENCE
    summary = capsys.readouterr().out
    assert "2 users" in summary and "6 samples" in summary
    # per dimension over both users: gender 0 + 1, age 0 + 1, others 3 + 3
    assert "gender=1, age=1, industry=6, occupation=6, education=6, life_stage=6" in summary


def test_vote_majority(samples_file, tmp_path):
    out = tmp_path / "profiles.jsonl"
    assert run_vote(samples_file, out, "--voting", "majority") == 0
    assert read_jsonl(out) == EXPECTED_MAJORITY


def test_vote_with_calibration(samples_file, calibration_file, tmp_path):
    out = tmp_path / "profiles.jsonl"
    assert run_vote(samples_file, out, "--calibration", str(calibration_file)) == 0
    records = read_jsonl(out)
    assert [r["user_id"] for r in records] == ["u_b", "u_a"]
    for record, expected in zip(records, EXPECTED_CONFIDENCE):
        levels = {**LEVELS[record["user_id"]], **{k: 1 for k in OTHER_DIMS}}
        assert {k: v["confidence"] for k, v in record["profile"].items()} == levels
        # Without --threshold the tags and scores are the plain vote.
        assert {k: v["tag"] for k, v in record["profile"].items()} == {k: v["tag"] for k, v in expected["profile"].items()}
        assert {k: v["score"] for k, v in record["profile"].items()} == {k: v["score"] for k, v in expected["profile"].items()}


@pytest.mark.parametrize(
    "tau, tags",
    [
        # levels: u_b gender 4, age 3; u_a gender 3, age 2 -> below tau becomes NA
        (1, {"u_b": ("Male", "31-40"), "u_a": ("Female", "18-23")}),
        (3, {"u_b": ("Male", "31-40"), "u_a": ("Female", "NA")}),
        (4, {"u_b": ("Male", "NA"), "u_a": ("NA", "NA")}),
        (5, {"u_b": ("NA", "NA"), "u_a": ("NA", "NA")}),
    ],
)
def test_vote_threshold_turns_low_confidence_tags_into_na(samples_file, calibration_file, tmp_path, tau, tags):
    out = tmp_path / "profiles.jsonl"
    assert run_vote(samples_file, out, "--calibration", str(calibration_file), "--threshold", str(tau)) == 0
    records = read_jsonl(out)
    got = {r["user_id"]: (r["profile"]["gender"]["tag"], r["profile"]["age"]["tag"]) for r in records}
    assert got == tags
    for record in records:
        assert {k: record["profile"][k]["tag"] for k in OTHER_DIMS} == {k: "NA" for k in OTHER_DIMS}
        assert record["profile"]["gender"]["confidence"] == LEVELS[record["user_id"]]["gender"]
    # A thresholded NA says so and keeps the voted tag its score belongs to; a voted or
    # unanswered NA is not thresholded.
    voted = {"u_b": ("Male", "31-40"), "u_a": ("Female", "18-23")}
    for record in records:
        for i, key in enumerate(("gender", "age")):
            out = record["profile"][key]
            assert out["voted_tag"] == voted[record["user_id"]][i]
            assert out["thresholded"] == (out["tag"] != out["voted_tag"])
        assert not any(record["profile"][k]["thresholded"] for k in OTHER_DIMS)


def test_vote_with_custom_taxonomy(tmp_path):
    tax = tmp_path / "pets.yaml"
    tax.write_text(
        textwrap.dedent(
            """\
            dimensions:
              pet:
                labels: [Dog, Cat, NA]
            """
        ),
        encoding="utf-8",
    )
    # S_Cat = 2+2 = 4, S_Dog = 3 -> Cat, votes 2, margin 1. A user id may be an integer, which
    # means the string of its digits: 7 and "7" are one user, written "7".
    samples = write_jsonl(
        tmp_path / "pets.jsonl",
        [
            {"user_id": 7, "sample_idx": 0, "text": "<pet><tag>cat</tag><score>2</score></pet>"},
            {"user_id": "7", "sample_idx": 1, "text": "<pet><tag>Dog</tag><score>medium</score></pet>"},
            {"user_id": 7, "sample_idx": 2, "text": "<pet><tag>Cat</tag><score>low</score></pet>"},
        ],
    )
    out = tmp_path / "out.jsonl"
    assert run_vote(samples, out, "--taxonomy", str(tax)) == 0
    assert read_jsonl(out) == [{"user_id": "7", "profile": {"pet": dim("Cat", 4, 2, 1)}, "malformed": {"pet": 0}}]


# ---------------------------------------------------------------- errors


def run_error(capsys, samples, out, *extra):
    code = run_vote(samples, out, *extra)
    err = capsys.readouterr().err
    assert code == 2
    return err


def test_broken_json_line_is_a_counted_skip(tmp_path, capsys):
    path = tmp_path / "broken.jsonl"
    good = json.dumps(SAMPLES[0])
    path.write_text(good + "\n\n" + '{"user_id": "u", "sample_idx": 1, "text": ' + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert run_vote(path, out) == 0
    captured = capsys.readouterr()
    assert f"warning: {path}:3: not a JSON line" in captured.err  # the blank line 2 still counts
    assert "1 users from 1 samples" in captured.out and "skipped lines: broken_line=1" in captured.out
    assert [r["user_id"] for r in read_jsonl(out)] == ["u_b"]


def test_broken_json_line_with_strict(tmp_path, capsys):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(SAMPLES[0]) + "\n\n" + '{"user_id": "u", "sample_idx": 1, "text": ' + "\n", encoding="utf-8")
    err = run_error(capsys, path, tmp_path / "out.jsonl", "--strict")
    assert f"{path}:3: not a JSON line" in err and "skipped" not in err


def test_no_sample_at_all_is_an_error(tmp_path, capsys):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n{oops\n", encoding="utf-8")
    err = run_error(capsys, path, tmp_path / "out.jsonl")
    assert f"{path}: no sample to vote (skipped lines: broken_line=1)" in err


def test_missing_field(tmp_path, capsys):
    records = [SAMPLES[0], SAMPLES[1], {"user_id": "u_c", "sample_idx": 0, "model": "teacher"}]
    err = run_error(capsys, write_jsonl(tmp_path / "nofield.jsonl", records), tmp_path / "out.jsonl")
    assert "nofield.jsonl:3" in err and "text" in err


def test_wrongly_typed_field(tmp_path, capsys):
    records = [dict(SAMPLES[0], sample_idx="0")]
    err = run_error(capsys, write_jsonl(tmp_path / "typed.jsonl", records), tmp_path / "out.jsonl")
    assert "typed.jsonl:1" in err and "sample_idx" in err


def test_duplicate_sample_is_a_counted_skip(tmp_path, capsys):
    records = SAMPLES[:3] + [dict(SAMPLES[1], text="again")]  # (u_a, 0) repeated on line 4
    path = write_jsonl(tmp_path / "dup.jsonl", records)
    out = tmp_path / "out.jsonl"
    assert run_vote(path, out) == 0
    captured = capsys.readouterr()
    assert f"warning: {path}:4: duplicate sample_idx 0 for user 'u_a' (first at line 2); skipped" in captured.err
    assert "2 users from 3 samples" in captured.out and "skipped lines: duplicate_sample=1" in captured.out
    # the first occurrence is the one voted: u_a has one sample, Female at "high" (4): S 4, margin 4 - 0
    assert read_jsonl(out)[1]["profile"]["gender"] == dim("Female", 4, 1, 4)


def test_duplicate_sample_with_strict(tmp_path, capsys):
    records = SAMPLES[:3] + [dict(SAMPLES[1], text="again")]
    err = run_error(capsys, write_jsonl(tmp_path / "dup.jsonl", records), tmp_path / "out.jsonl", "--strict")
    assert "dup.jsonl:4" in err and "duplicate" in err


# As synthesize writes them: line 4 (u_a#1, cut inside its gender block) and line 6 (u_b#2, both
# blocks whole) were cut at the token limit; line 1 stopped; the others carry no reason (an older file).
TRUNCATED = [
    dict(SAMPLES[0], finish_reason="stop"), *SAMPLES[1:3], dict(SAMPLES[3], finish_reason="length"),
    SAMPLES[4], dict(SAMPLES[5], finish_reason="length"),
]


def test_truncated_samples_are_voted_and_reported(tmp_path, capsys):
    path = write_jsonl(tmp_path / "cut.jsonl", TRUNCATED)
    out = tmp_path / "out.jsonl"
    assert run_vote(path, out) == 0
    captured = capsys.readouterr()
    for line, idx, user in ((4, 1, "u_a"), (6, 2, "u_b")):
        assert (f"warning: {path}:{line}: sample {idx} of user '{user}' was cut at the token limit "
                "(finish_reason 'length'); kept: only its complete blocks vote") in captured.err
    assert "2 users from 6 samples" in captured.out
    assert "skipped lines: none; truncated samples: 2 kept;" in captured.out
    assert read_jsonl(out) == EXPECTED_CONFIDENCE  # the marks change no vote


def test_drop_truncated_votes_without_them(tmp_path, capsys):
    path = write_jsonl(tmp_path / "cut.jsonl", TRUNCATED)
    out = tmp_path / "out.jsonl"
    assert run_vote(path, out, "--drop-truncated") == 0
    captured = capsys.readouterr()
    assert f"warning: {path}:4: sample 1 of user 'u_a' was cut at the token limit (finish_reason 'length'); skipped" in captured.err
    assert "2 users from 4 samples" in captured.out
    assert "skipped lines: truncated_sample=2; truncated samples: 2 dropped;" in captured.out
    # u_b without sample 2: gender S_Male = 5, S_Female = 4 -> Male, S 5, 1 vote, margin 1;
    #                       age S_24-30 = 2+1 = 3, alone -> 24-30, S 3, 2 votes, margin 3
    # u_a without sample 1: as before (sample 1 was malformed), but 2 samples: nothing malformed in gender and age
    assert read_jsonl(out) == [
        {
            "user_id": "u_b",
            "profile": {"gender": dim("Male", 5, 1, 1), "age": dim("24-30", 3, 2, 3), **unanswered()},
            "malformed": {"gender": 0, "age": 0, **{k: 2 for k in OTHER_DIMS}},
        },
        {
            "user_id": "u_a",
            "profile": {"gender": dim("Female", 4, 1, 3), "age": dim("18-23", 3, 1, 2), **unanswered()},
            "malformed": {"gender": 0, "age": 0, **{k: 2 for k in OTHER_DIMS}},
        },
    ]


def test_threshold_without_calibration_is_an_error(samples_file, tmp_path, capsys):
    err = run_error(capsys, samples_file, tmp_path / "out.jsonl", "--threshold", "3")
    assert "--threshold" in err and "--calibration" in err


def test_missing_samples_file(tmp_path, capsys):
    err = run_error(capsys, tmp_path / "nowhere.jsonl", tmp_path / "out.jsonl")
    assert "nowhere.jsonl" in err


def test_malformed_calibration_file(samples_file, tmp_path, capsys):
    cal = tmp_path / "bad_cal.json"
    cal.write_text('{"cuts": {"gender": [3, 2, 1, 0]}}', encoding="utf-8")
    err = run_error(capsys, samples_file, tmp_path / "out.jsonl", "--calibration", str(cal))
    assert "bad_cal.json" in err


def test_calibration_without_every_dimension(samples_file, tmp_path, capsys):
    cal = tmp_path / "partial_cal.json"
    cal.write_text(json.dumps({"method": "equal_frequency", "cuts": {"gender": [1, 2, 3, 4]}}), encoding="utf-8")
    err = run_error(capsys, samples_file, tmp_path / "out.jsonl", "--calibration", str(cal))
    assert "partial_cal.json" in err and "age" in err


# ---------------------------------------------------------------- installed console script


def test_console_script_is_installed():
    assert CONSOLE_SCRIPT.exists(), CONSOLE_SCRIPT


def test_console_script_vote(samples_file, calibration_file, tmp_path):
    out = tmp_path / "profiles.jsonl"
    proc = subprocess.run(
        [str(CONSOLE_SCRIPT), "vote", "--samples", str(samples_file), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert read_jsonl(out) == EXPECTED_CONFIDENCE
    assert "2 users" in proc.stdout

    proc = subprocess.run(
        [str(CONSOLE_SCRIPT), "vote", "--samples", str(samples_file), "--out", str(out), "--voting", "majority",
         "--calibration", str(calibration_file), "--threshold", "3"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    records = read_jsonl(out)
    # majority picks 24-30 for u_b with the same S = 3 -> s = 1.0 -> age level 2 < 3 -> NA
    assert [(r["profile"]["gender"]["tag"], r["profile"]["age"]["tag"]) for r in records] == [("Male", "NA"), ("Female", "NA")]


def test_console_script_errors(tmp_path):
    path = write_jsonl(tmp_path / "dup.jsonl", [SAMPLES[0], SAMPLES[0]])
    proc = subprocess.run(
        [str(CONSOLE_SCRIPT), "vote", "--samples", str(path), "--out", str(tmp_path / "o.jsonl"), "--strict"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "dup.jsonl:2" in proc.stderr
    assert "Traceback" not in proc.stderr

    proc = subprocess.run(
        [str(CONSOLE_SCRIPT), "vote", "--samples", str(path), "--out", str(tmp_path / "o.jsonl"), "--threshold", "7"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2  # argparse: 7 is not a level


# ---------------------------------------------------------------- import hygiene


def test_core_imports_neither_verl_nor_torch():
    code = (
        "import sys, json\n"
        "import verl_confprofile\n"
        "import verl_confprofile.cli, verl_confprofile.aggregate, verl_confprofile.jsonl\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('verl', 'torch'))\n"
        "print(json.dumps(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_a_voted_na_below_the_threshold_is_not_marked_thresholded(tmp_path):
    tax = tmp_path / "pets.yaml"
    tax.write_text("dimensions:\n  pet:\n    labels: [Dog, Cat, NA]\n  home:\n    labels: [City, NA]\n", encoding="utf-8")
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps({"method": "equal_frequency", "cuts": {"pet": [1, 2, 3, 4], "home": [1, 2, 3, 4]}}), encoding="utf-8")
    # One sample: pet NA at 1 (s = 1 -> level 1), home City at 2 (s = 2 -> level 2); tau 3 -> both below.
    samples = write_jsonl(
        tmp_path / "s.jsonl",
        [{"user_id": "u", "sample_idx": 0, "text": "<pet><tag>NA</tag><score>1</score></pet><home><tag>City</tag><score>2</score></home>"}],
    )
    out = tmp_path / "out.jsonl"
    assert run_vote(samples, out, "--taxonomy", str(tax), "--calibration", str(cal), "--threshold", "3") == 0
    profile = read_jsonl(out)[0]["profile"]
    assert profile["pet"] == {**dim("NA", 1, 1, 1, confidence=1), "voted_tag": "NA", "thresholded": False}
    assert profile["home"] == {**dim("City", 2, 1, 2, confidence=2), "tag": "NA", "thresholded": True}


def test_samples_of_another_taxonomy_stop_vote(tmp_path, capsys):
    # Every sample answers a dimension the default taxonomy does not have: 2 samples x 6
    # dimensions = 12 of 12 blocks malformed (100% >= 90%); no profile of all-NA users is written.
    samples = write_jsonl(tmp_path / "pets.jsonl", [
        {"user_id": "u", "sample_idx": i, "model": "m", "text": "<pet><evidence>e</evidence><tag>Dog</tag><score>5</score></pet>"}
        for i in range(2)
    ])
    out = tmp_path / "profiles.jsonl"

    assert run_vote(samples, out) == 2
    err = capsys.readouterr().err
    assert f"{samples}: 12 of 12 sample blocks (100%) are malformed for the taxonomy" in err and "--allow-mismatch" in err
    assert not out.exists()
    assert run_vote(samples, out, "--allow-mismatch") == 0
    assert read_jsonl(out)[0]["malformed"]["gender"] == 2


def test_vote_writes_its_output_whole_or_not_at_all(samples_file, tmp_path, capsys, monkeypatch):
    from verl_confprofile import cli

    out = tmp_path / "profiles.jsonl"
    out.write_text("an earlier output\n")
    calls = []

    def write_then_interrupt(fh, record):
        calls.append(record)
        if len(calls) == 2:
            raise KeyboardInterrupt
        fh.write("x\n")

    monkeypatch.setattr(cli, "write_line", write_then_interrupt)
    assert run_vote(samples_file, out) == 130
    assert "confprofile vote: interrupted" in capsys.readouterr().err
    assert out.read_text() == "an earlier output\n" and sorted(p.name for p in tmp_path.iterdir()) == ["profiles.jsonl", "samples.jsonl"]


def test_help_describes_every_command_and_shows_defaults(capsys):
    from verl_confprofile.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for name, parser in commands.items():
        assert parser.description, name
    help_text = commands["vote"].format_help()
    assert "--voting {confidence,majority}" in help_text and "(default: confidence)" in help_text
    assert "majority: by vote count" in help_text
    assert "(default: 0)" in commands["build-rl"].format_help()  # --seed
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    from importlib.metadata import version

    assert capsys.readouterr().out == f"confprofile {version('verl-confprofile')}\n"
