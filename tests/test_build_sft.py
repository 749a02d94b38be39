"""`confprofile build-sft`: voting, calibration, evidence, bad inputs, prompt budget, verl loading, engines.

The hand-worked example uses a two-dimension taxonomy, gender [Female, Male, NA] and age
[18-23, 24-30, NA]; every expected vote, S/M, cut point and level is worked out in the comments.
"""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_confprofile.calibration import Calibrator
from verl_confprofile.cli import main
from verl_confprofile.data_prep import prompt
from verl_confprofile.data_prep.build_sft import NO_EVIDENCE
from verl_confprofile.data_prep.engine import LocalEngine, RayEngine, plan_chunks
from verl_confprofile.data_prep.outputs import ROW_GROUP, sft_table, write_parquet
from verl_confprofile.data_prep.simulated import SimulatedPopulation
from verl_confprofile.data_prep.votes import VoteJob
from verl_confprofile.taxonomy import Taxonomy

TAXONOMY_YAML = """
na_label: NA
dimensions:
  gender: {name: Gender, labels: [Female, Male, NA]}
  age: {name: Age, labels: ["18-23", "24-30", NA]}
"""


def block(dim, tag, score, evidence):
    return f"<{dim}><evidence>{evidence}</evidence><tag>{tag}</tag><score>{score}</score></{dim}>"


def sample(user, idx, *blocks):
    return {"user_id": user, "sample_idx": idx, "model": "teacher", "text": "<think>reasoning</think>\n" + "\n".join(blocks)}


def record(user, **extra):
    return {"user_id": user, "behaviors": {"watched": [f"{user} vlog", "cooking"], "searched": ["exam tips"]},
            "demographics": {"region": "Chengdu"}, **extra}


RECORDS = [record("u1"), record("u2"), record("u3")]
# Users interleaved and sample indices out of order: the engines must not depend on either.
SAMPLES = [
    sample("u2", 1, block("gender", "Male", 2, "g-u2-1"), block("age", "24-30", 7, "bad score")),
    sample("u1", 0, block("gender", "Female", 5, "g-u1-0"), block("age", "24-30", 4, "a-u1-0")),
    sample("u3", 0, block("gender", "Female", 4, ""), "<age><tag>18-23</tag></age>"),
    sample("u1", 2, block("gender", "Male", 2, "g-u1-2"), block("age", "24-30", 2, "a-u1-2")),
    {"user_id": "u2", "sample_idx": 2, "model": "teacher", "text": "<gender><evidence>cut off"},
    sample("u1", 1, block("gender", "Male", 2, "g-u1-1"), block("age", "18-23", 5, "a-u1-1")),
    sample("u2", 0, block("gender", "Male", 2, "g-u2-0"), block("age", "NA", 1, "a-u2-0")),
    sample("u3", 1, block("gender", "Female", 3, "g-u3-1")),
]
# Confidence voting (Eq. 3-5), M = samples per user:
# u1 (M=3) gender: S_Female = 5, S_Male = 2+2 = 4 -> Female, S 5, s = S/M = 1.667; evidence of its only voter, sample 0
#          age:    S_24-30 = 4+2 = 6, S_18-23 = 5 -> 24-30, S 6, s = 2.0; best voter sample 0 (4 > 2)
# u2 (M=3) gender: sample 2 truncated (malformed); S_Male = 2+2 = 4 -> Male, s = 1.333; tie on 2 -> lower idx, sample 0
#          age:    sample 1 score 7 and sample 2 malformed; S_NA = 1 -> NA, s = 0.333; evidence sample 0
# u3 (M=2) gender: S_Female = 4+3 = 7 -> Female, s = 3.5; sample 0 has empty evidence, so sample 1's ("g-u3-1")
#          age:    no well-formed sample (no score / missing) -> unanswered: NA, level 1, NO_EVIDENCE
# Equal-frequency fit, level(v) = min(5, 1 + floor(5 q)), q = (below + equal/2) / total:
# gender s: 1.333 (q 1/6 -> 1), 1.667 (q 3/6 -> 3), 3.5 (q 5/6 -> 5)
#   cuts: 1|3 -> (1.333+1.667)/2 = 1.5 twice, 3|5 -> (1.667+3.5)/2 = 2.583 twice
#   levels: u1 1.667 -> 3, u2 1.333 -> 1, u3 3.5 -> 5
# age s (u3 has no S and is not fitted): 0.333 (q 1/4 -> 2), 2.0 (q 3/4 -> 4)
#   cuts: no level <= 1 -> 0.0; 2|4 -> (0.333+2)/2 = 1.1667 twice; no level > 4 -> 5.0
#   levels: u1 2.0 -> 4, u2 0.333 -> 2
EXPECTED_CUTS = {"gender": [1.5, 1.5, 31 / 12, 31 / 12], "age": [0.0, 7 / 6, 7 / 6, 5.0]}
EXPECTED_TARGETS = {
    "u1": block("gender", "Female", 3, "g-u1-0") + "\n" + block("age", "24-30", 4, "a-u1-0"),
    "u2": block("gender", "Male", 1, "g-u2-0") + "\n" + block("age", "NA", 2, "a-u2-0"),
    "u3": block("gender", "Female", 5, "g-u3-1") + "\n" + block("age", "NA", 1, NO_EVIDENCE),
}


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def small(tmp_path):
    """The hand-worked inputs: (taxonomy file, records, samples)."""
    taxonomy = tmp_path / "taxonomy.yaml"
    taxonomy.write_text(TAXONOMY_YAML, encoding="utf-8")
    return taxonomy, write_jsonl(tmp_path / "records.jsonl", RECORDS), write_jsonl(tmp_path / "samples.jsonl", SAMPLES)


def build_sft(records, samples, out, *extra):
    return main(["build-sft", "--records", str(records), "--samples", str(samples), "--out", str(out), *extra])


def rows_of(path):
    return pq.read_table(path).to_pylist()


def read_report(out):
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------- the hand-worked example


def test_votes_calibration_and_evidence_by_hand(small, tmp_path):
    taxonomy_file, records, samples = small
    out = tmp_path / "sft"
    assert build_sft(records, samples, out, "--taxonomy", str(taxonomy_file)) == 0
    taxonomy = Taxonomy.load(str(taxonomy_file))

    rows = rows_of(out / "sft_train.parquet")
    assert [r["user_id"] for r in rows] == ["u1", "u2", "u3"]  # record order
    for row in rows:
        system, user, assistant = row["messages"]
        assert [system, user] == prompt.messages(next(r for r in RECORDS if r["user_id"] == row["user_id"]), taxonomy)
        assert assistant == {"role": "assistant", "content": EXPECTED_TARGETS[row["user_id"]]}
    assert not (out / "sft_val.parquet").exists()

    calibrator = Calibrator.load(out / "calibration.json")
    assert calibrator.method == "equal_frequency"
    for dim, cuts in EXPECTED_CUTS.items():
        assert calibrator.cuts[dim] == pytest.approx(cuts)

    report = read_report(out)
    assert report["counts"] == {
        "records": 3, "records_kept": 3, "samples": 8, "samples_used": 8,
        "users_with_samples": 3, "users_kept": 3, "train_rows": 3, "val_rows": 0,
    }
    assert report["skipped"] == {}
    assert report["dimensions"] == {
        # malformed: gender u2#2; age u2#1 (score 7), u2#2, u3#0 (no score), u3#1 (missing)
        "gender": {
            "malformed_samples": 1, "unanswered_users": 0,
            "labels": {"Female": 2, "Male": 1, "NA": 0},
            "confidence_before": {"1.33": 1, "1.67": 1, "3.50": 1},
            "confidence_after": {"1": 1, "2": 0, "3": 1, "4": 0, "5": 1},
        },
        "age": {
            "malformed_samples": 4, "unanswered_users": 1,
            "labels": {"18-23": 0, "24-30": 1, "NA": 2},
            "confidence_before": {"0.33": 1, "2.00": 1},
            "confidence_after": {"1": 0, "2": 1, "3": 0, "4": 1, "5": 0},
        },
    }
    assert (out / "confidence.png").read_bytes().startswith(b"\x89PNG")


def test_majority_voting_and_linear_map(small, tmp_path):
    taxonomy_file, records, samples = small
    out = tmp_path / "sft"
    assert build_sft(records, samples, out, "--taxonomy", str(taxonomy_file), "--voting", "majority", "--no-calibration") == 0
    # Majority (votes, then S, then taxonomy order):
    # u1 gender: Male 2 votes > Female 1 -> Male, S 4, s 1.333; evidence: both voters score 2 -> lower idx, sample 1
    #    age: 24-30 2 votes -> S 6, s 2.0
    # u2 gender Male S 4, s 1.333; age NA S 1, s 0.333.  u3 gender Female S 7, s 3.5
    # Linear cuts 1.8, 2.6, 3.4, 4.2: 1.333 -> 1, 2.0 -> 2, 0.333 -> 1, 3.5 -> 4
    assert Calibrator.load(out / "calibration.json").to_dict() == Calibrator.linear(["gender", "age"]).to_dict()
    targets = {r["user_id"]: r["messages"][2]["content"] for r in rows_of(out / "sft_train.parquet")}
    assert targets == {
        "u1": block("gender", "Male", 1, "g-u1-1") + "\n" + block("age", "24-30", 2, "a-u1-0"),
        "u2": block("gender", "Male", 1, "g-u2-0") + "\n" + block("age", "NA", 1, "a-u2-0"),
        "u3": block("gender", "Female", 4, "g-u3-1") + "\n" + block("age", "NA", 1, NO_EVIDENCE),
    }


def test_validation_split_is_seeded(small, tmp_path):
    taxonomy_file, records, samples = small
    # round(0.34 * 3) = 1 user; random.Random(0).sample(range(3), 1) == [1] -> u2, Random(1) -> [0] -> u1
    for seed, val_user in ((0, "u2"), (1, "u1")):
        out = tmp_path / f"sft{seed}"
        assert build_sft(records, samples, out, "--taxonomy", str(taxonomy_file), "--val-fraction", "0.34", "--seed", str(seed)) == 0
        assert [r["user_id"] for r in rows_of(out / "sft_val.parquet")] == [val_user]
        assert [r["user_id"] for r in rows_of(out / "sft_train.parquet")] == [u for u in ("u1", "u2", "u3") if u != val_user]
        # The calibrator is fitted on every user written, train and validation alike.
        assert Calibrator.load(out / "calibration.json").cuts["gender"] == pytest.approx(EXPECTED_CUTS["gender"])


@pytest.mark.parametrize("fraction", ["0.1", "0.9", "1", "-0.2"])
def test_bad_validation_fraction(small, tmp_path, capsys, fraction):
    taxonomy_file, records, samples = small
    # 0.1 * 3 rounds to 0 validation users, 0.9 * 3 to all 3: neither is a split
    assert build_sft(records, samples, tmp_path / "sft", "--taxonomy", str(taxonomy_file), "--val-fraction", fraction) == 2
    assert "--val-fraction" in capsys.readouterr().err


# ---------------------------------------------------------------- bad inputs


def test_bad_inputs_are_counted_and_named(small, tmp_path, capsys):
    taxonomy_file, _, _ = small
    records = write_jsonl(tmp_path / "bad_records.jsonl", [*RECORDS, {"user_id": "u4", "behaviors": {"watched": []}}, record("u5")])
    samples = write_jsonl(tmp_path / "bad_samples.jsonl", [
        *SAMPLES,  # lines 1-8
        '{"user_id": "u1", "sample_idx": 3, "text": "<gender><evid',  # 9: broken line
        sample("ghost", 0, block("gender", "Male", 5, "x")),  # 10: unknown user
        sample("u1", 0, block("gender", "Male", 5, "x"), block("age", "18-23", 5, "x")),  # 11: repeats u1#0 (line 2)
        "",  # blank lines are not samples
        sample("u4", 0, block("gender", "Male", 5, "x")),  # 13: u4's record has no behaviour: no usable record
    ])
    out = tmp_path / "sft"
    assert build_sft(records, samples, out, "--taxonomy", str(taxonomy_file)) == 0
    err = capsys.readouterr().err

    report = read_report(out)
    skipped = report["skipped"]
    assert {k: v["count"] for k, v in skipped.items()} == {
        "no_behaviors": 1, "broken_line": 1, "unknown_user": 2, "duplicate_sample": 1, "no_samples": 1,
    }
    assert skipped["no_behaviors"]["first"] == [f"{records}:4: record has no behaviour keyphrases; skipped"]
    assert skipped["broken_line"]["first"][0].startswith(f"{samples}:9: not a JSON line")
    assert skipped["unknown_user"]["first"] == [
        f"{samples}:10: user 'ghost' has no usable record; sample skipped",
        f"{samples}:13: user 'u4' has no usable record; sample skipped",
    ]
    assert skipped["duplicate_sample"]["first"] == [f"{samples}:11: duplicate sample_idx 0 for user 'u1' (first at line 2); skipped"]
    assert skipped["no_samples"]["first"] == [f"{records}: user 'u5' has no sample in {samples}; skipped"]
    for entry in skipped.values():
        for message in entry["first"]:
            assert f"warning: {message}" in err
    assert report["counts"] == {
        "records": 5, "records_kept": 4, "samples": 12, "samples_used": 8,
        "users_with_samples": 3, "users_kept": 3, "train_rows": 3, "val_rows": 0,
    }
    # What was skipped changed nothing: the rows are those of the clean inputs.
    targets = {r["user_id"]: r["messages"][2]["content"] for r in rows_of(out / "sft_train.parquet")}
    assert targets == EXPECTED_TARGETS


# ---------------------------------------------------------------- samples cut at the token limit


def finished(row, reason):
    return {**row, "finish_reason": reason}


# The hand-worked samples as synthesize writes them: lines 4 (u1#2, every block whole: the cut fell
# after them) and 5 (u2#2, cut inside its first block) were cut at the token limit; line 1 stopped,
# line 6 has a null reason and the rest none (an older file): none of those is truncated.
TRUNCATED_SAMPLES = [
    finished(SAMPLES[0], "stop"), *SAMPLES[1:3], finished(SAMPLES[3], "length"), finished(SAMPLES[4], "length"),
    finished(SAMPLES[5], None), *SAMPLES[6:],  # lines 1-8
    finished(sample("u1", 1, block("gender", "Female", 5, "x")), "length"),  # 9: repeats u1#1 (line 6), truncated
    finished(sample("ghost", 0, block("gender", "Male", 5, "x")), "length"),  # 10: no record, truncated
]


def test_truncated_samples_are_kept_counted_and_reported(small, tmp_path, capsys):
    taxonomy_file, records, _ = small
    samples = write_jsonl(tmp_path / "samples.jsonl", TRUNCATED_SAMPLES)
    out = tmp_path / "sft"
    assert build_sft(records, samples, out, "--taxonomy", str(taxonomy_file)) == 0
    captured = capsys.readouterr()
    report = read_report(out)
    # Kept and counted: lines 4 and 5. Line 9 is a repeat and line 10 has no record: skipped as
    # such, so they are not counted as truncated samples that were used.
    kept = [
        f"{samples}:4: sample 2 of user 'u1' was cut at the token limit (finish_reason 'length'); kept: only its complete blocks vote",
        f"{samples}:5: sample 2 of user 'u2' was cut at the token limit (finish_reason 'length'); kept: only its complete blocks vote",
    ]
    assert report["truncated_samples"] == {"count": 2, "policy": "kept", "first": kept}
    assert {k: v["count"] for k, v in report["skipped"].items()} == {"duplicate_sample": 1, "unknown_user": 1}
    assert report["options"]["drop_truncated"] is False
    assert report["counts"]["samples"] == 10 and report["counts"]["samples_used"] == 8
    for message in kept:
        assert f"warning: {message}" in captured.err
    assert "(left out: 2 sample lines (duplicate_sample=1, unknown_user=1); truncated samples: 2 kept; prompts:" in captured.out
    # u1#2's whole blocks vote and u2#2's cut block is malformed, as without the marks.
    targets = {r["user_id"]: r["messages"][2]["content"] for r in rows_of(out / "sft_train.parquet")}
    assert targets == EXPECTED_TARGETS


def test_drop_truncated_skips_them_and_votes_the_rest(small, tmp_path, capsys):
    taxonomy_file, records, _ = small
    samples = write_jsonl(tmp_path / "samples.jsonl", TRUNCATED_SAMPLES)
    out = tmp_path / "sft"
    assert build_sft(records, samples, out, "--taxonomy", str(taxonomy_file), "--drop-truncated") == 0
    captured = capsys.readouterr()
    report = read_report(out)
    # Dropped: lines 4, 5 and 9 (a dropped line is never voted, so it is not checked as a repeat);
    # line 10 has no record: unknown_user, as without the option.
    assert {k: v["count"] for k, v in report["skipped"].items()} == {"truncated_sample": 3, "unknown_user": 1}
    dropped = [
        f"{samples}:{line}: sample {idx} of user '{user}' was cut at the token limit (finish_reason 'length'); skipped"
        for line, idx, user in ((4, 2, "u1"), (5, 2, "u2"), (9, 1, "u1"))
    ]
    assert report["skipped"]["truncated_sample"]["first"] == dropped
    assert report["truncated_samples"] == {"count": 3, "policy": "dropped", "first": dropped}
    assert report["counts"]["samples"] == 10 and report["counts"]["samples_used"] == 6
    assert "(left out: 4 sample lines (truncated_sample=3, unknown_user=1); truncated samples: 3 dropped; prompts:" in captured.out
    # Without u1#2 and u2#2 (M = 2 each):
    # u1 gender: S_Female = 5 (sample 0), S_Male = 2 (sample 1) -> Female, s = 2.5, evidence sample 0
    #    age:    S_24-30 = 4 (sample 0), S_18-23 = 5 (sample 1) -> 18-23, s = 2.5, evidence sample 1
    # u2 gender: S_Male = 2 + 2 = 4 -> Male, s = 2.0; tie on 2 -> sample 0.  age: sample 1 scores 7 ->
    #    S_NA = 1 -> NA, s = 0.5, evidence sample 0
    # u3 as before: gender Female s = 3.5 (evidence sample 1); age unanswered.
    # Levels, level(v) = min(5, 1 + floor(5 q)), q = (below + equal/2) / total:
    # gender s 2.0 (q 1/6 -> 1), 2.5 (q 3/6 -> 3), 3.5 (q 5/6 -> 5); age s 0.5 (q 1/4 -> 2), 2.5 (q 3/4 -> 4)
    targets = {r["user_id"]: r["messages"][2]["content"] for r in rows_of(out / "sft_train.parquet")}
    assert targets == {
        "u1": block("gender", "Female", 3, "g-u1-0") + "\n" + block("age", "18-23", 4, "a-u1-1"),
        "u2": block("gender", "Male", 1, "g-u2-0") + "\n" + block("age", "NA", 2, "a-u2-0"),
        "u3": EXPECTED_TARGETS["u3"],
    }


def test_every_sample_of_a_user_dropped_leaves_the_user_without_samples(small, tmp_path):
    taxonomy_file, records, _ = small
    samples = write_jsonl(tmp_path / "samples.jsonl", [
        *(s for s in SAMPLES if s["user_id"] != "u3"),
        *(finished(s, "length") for s in SAMPLES if s["user_id"] == "u3"),
    ])
    out = tmp_path / "sft"
    assert build_sft(records, samples, out, "--taxonomy", str(taxonomy_file), "--drop-truncated") == 0
    report = read_report(out)
    assert {k: v["count"] for k, v in report["skipped"].items()} == {"truncated_sample": 2, "no_samples": 1}
    assert [r["user_id"] for r in rows_of(out / "sft_train.parquet")] == ["u1", "u2"]


@pytest.mark.parametrize(
    "which, line, expected",
    [
        ("records", '{"user_id": "u9", "behaviors": {', "records.jsonl:2: invalid JSON"),
        ("records", json.dumps(record("u1")), "records.jsonl:2: duplicate user_id 'u1' (first at line 1)"),
        ("samples", json.dumps({"user_id": "u1", "sample_idx": 5}), "samples.jsonl:2: missing field 'text'"),
        ("samples", json.dumps({"user_id": "u1", "sample_idx": "5", "text": ""}), "samples.jsonl:2: field 'sample_idx' must be int"),
        ("samples", json.dumps({"user_id": "u1", "sample_idx": -1, "text": ""}),
         "samples.jsonl:2: field 'sample_idx' must be an integer from 0 to 2**63 - 1, got -1"),
        ("samples", json.dumps({"user_id": "u1", "sample_idx": 2**63, "text": ""}), "samples.jsonl:2: field 'sample_idx' must be an integer from 0"),
    ],
)
def test_input_errors_name_file_and_line(tmp_path, capsys, which, line, expected):
    records = [json.dumps(RECORDS[0]), *([line] if which == "records" else [])]
    samples = [json.dumps(SAMPLES[1]), *([line] if which == "samples" else [])]
    out = tmp_path / "sft"
    assert build_sft(write_jsonl(tmp_path / "records.jsonl", records), write_jsonl(tmp_path / "samples.jsonl", samples), out) == 2
    err = capsys.readouterr().err
    assert expected in err and str(tmp_path) in err
    assert not out.exists()


def test_no_usable_user_is_an_error(small, tmp_path, capsys):
    _, records, _ = small
    samples = write_jsonl(tmp_path / "samples.jsonl", [sample("ghost", 0, block("gender", "Male", 5, "x"))])
    assert build_sft(records, samples, tmp_path / "sft") == 2
    assert "no user left" in capsys.readouterr().err


# ---------------------------------------------------------------- real verl loading, real tokenizer


def prompt_tokens(tokenizer, chat):
    """Prompt length as verl's RLHFDataset counts it (chat template + generation prompt)."""
    from verl.utils.tokenizer import normalize_token_ids

    return len(normalize_token_ids(tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)))


@pytest.fixture
def simulated(tmp_path):
    """12 simulated users x 4 teacher samples, plus an over-long user and one that cannot fit."""
    taxonomy = Taxonomy.load()
    population = SimulatedPopulation(taxonomy, seed=3)
    ids = [f"s{i:02d}" for i in range(12)]
    records = [population.record(u, with_labels=True) for u in ids]
    long_user = population.record("long", with_labels=True)
    long_user["behaviors"]["watched"] = [f"daily vlog number {i}" for i in range(300)] + long_user["behaviors"]["watched"]
    huge_user = population.record("huge")
    huge_user["demographics"]["signature"] = "moving bricks " * 3000  # demographics are never dropped
    records += [long_user, huge_user]
    samples = list(population.samples([*ids, "long", "huge"], 4))
    return taxonomy, write_jsonl(tmp_path / "sim_records.jsonl", records), write_jsonl(tmp_path / "sim_samples.jsonl", samples), records


def test_sft_parquet_loads_in_verl_with_prompt_budget(simulated, tmp_path, qwen_tokenizer, qwen_tokenizer_dir, capsys):
    from omegaconf import OmegaConf
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    taxonomy, records_file, samples_file, records = simulated
    by_id = {r["user_id"]: r for r in records}
    normal = max(prompt_tokens(qwen_tokenizer, prompt.messages(r, taxonomy)) for r in records[:12])
    limit = normal + 20  # every simulated user fits as is; "long" needs to drop keyphrases
    assert prompt_tokens(qwen_tokenizer, prompt.messages(by_id["long"], taxonomy)) > limit
    out = tmp_path / "sft"
    code = build_sft(records_file, samples_file, out, "--tokenizer", qwen_tokenizer_dir, "--max-prompt-length", str(limit), "--val-fraction", "0.25")
    assert code == 0, capsys.readouterr().err

    report = read_report(out)
    assert report["skipped"]["prompt_too_long"]["count"] == 1
    assert report["skipped"]["prompt_too_long"]["first"][0].startswith(f"{records_file}: user 'huge': prompt needs")
    assert report["prompts"]["truncated_users"] == 1
    dropped = report["prompts"]["dropped_keyphrases"]

    train, val = out / "sft_train.parquet", out / "sft_val.parquet"
    rows = rows_of(train) + rows_of(val)
    assert sorted(r["user_id"] for r in rows) == sorted([*by_id][:13])  # all but "huge"
    assert (len(rows_of(train)), len(rows_of(val))) == (10, 3)  # round(0.25 * 13) = 3

    def count(chat):
        return prompt_tokens(qwen_tokenizer, chat)

    for row in rows:
        chat = row["messages"][:2]
        assert count(chat) <= limit
        if row["user_id"] == "long":
            # The documented rule: the fewest keyphrases dropped from the end of the longest list.
            assert (chat, dropped) == prompt.fit_messages(by_id["long"], taxonomy, count, limit)
            assert dropped > 0
        else:
            assert chat == prompt.messages(by_id[row["user_id"]], taxonomy)
    assert report["prompts"]["longest_prompt_tokens"] == max(count(r["messages"][:2]) for r in rows) <= limit

    config = OmegaConf.create({"max_length": limit + 1024, "truncation": "error", "messages_key": "messages"})
    dataset = MultiTurnSFTDataset([str(train), str(val)], qwen_tokenizer, config)
    assert len(dataset) == len(rows)
    for i, row in enumerate(rows):
        item = dataset[i]
        trained = item["input_ids"][item["loss_mask"].bool()]
        # Only the assistant turn is trained: its text and the end-of-turn token.
        assert qwen_tokenizer.decode(trained) == row["messages"][2]["content"] + "<|im_end|>\n"


def test_cached_system_prompt_is_a_fresh_render(simulated):
    taxonomy, _, _, records = simulated
    fresh = prompt.system_prompt.__wrapped__(taxonomy)
    for r in records:
        assert prompt.messages(r, taxonomy) == [{"role": "system", "content": fresh}, {"role": "user", "content": prompt.user_prompt(r)}]


# ---------------------------------------------------------------- engines


def test_plan_chunks_cut_at_line_starts(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_bytes(b"aaaa\nbb\ncccccc\n\nd\n")  # lines start at bytes 0, 5, 8, 15, 16; 18 bytes
    # target 6 bytes: from 0, byte 6 is inside line 2 -> cut at its end, 8; from 8, 14 is inside
    # line 3 -> 15; from 15, 21 is past the end -> 18
    assert plan_chunks(str(path), 6) == [(0, 8, 1), (8, 15, 3), (15, 18, 4)]
    assert plan_chunks(str(path), 100) == [(0, 18, 1)]


def test_ray_engine_votes_like_local_engine(local_ray, small, tmp_path):
    taxonomy_file, _, _ = small
    taxonomy = Taxonomy.load(str(taxonomy_file))
    samples = write_jsonl(tmp_path / "samples.jsonl", [
        *SAMPLES, "{broken", sample("ghost", 0, block("gender", "Male", 5, "x")), SAMPLES[1], *SAMPLES[:3],
    ])
    job = VoteJob(str(samples), taxonomy, "confidence", ("u1", "u2", "u3"))
    local = LocalEngine().vote(job)
    ray_stage = RayEngine(chunk_bytes=300).vote(job)  # several chunks: line numbers are stitched across them
    assert len(plan_chunks(str(samples), 300)) > 3
    assert ray_stage == local
    assert [(e.line, e.reason) for e in local.events] == [
        (9, "broken_line"), (10, "unknown_user"), (11, "duplicate_sample"),
        (12, "duplicate_sample"), (13, "duplicate_sample"), (14, "duplicate_sample"),
    ]


@pytest.mark.parametrize("drop", [False, True])
def test_ray_engine_reports_truncated_samples_like_local_engine(local_ray, small, tmp_path, drop):
    taxonomy_file, _, _ = small
    samples = write_jsonl(tmp_path / "samples.jsonl", TRUNCATED_SAMPLES)
    job = VoteJob(str(samples), Taxonomy.load(str(taxonomy_file)), "confidence", ("u1", "u2", "u3"), drop_truncated=drop)
    local = LocalEngine().vote(job)
    assert RayEngine(chunk_bytes=300).vote(job) == local
    assert [(e.line, e.reason, e.kept) for e in local.events] == (
        [(4, "truncated_sample", False), (5, "truncated_sample", False), (9, "truncated_sample", False), (10, "unknown_user", False)]
        if drop else
        [(4, "truncated_sample", True), (5, "truncated_sample", True), (9, "duplicate_sample", False), (10, "unknown_user", False)]
    )
    assert [v.num_samples for v in local.votes] == ([2, 2, 2] if drop else [3, 3, 2])


def test_ray_and_local_builds_write_the_same_rows(local_ray, simulated, tmp_path, qwen_tokenizer_dir):
    _, records_file, samples_file, _ = simulated
    with open(samples_file, "a", encoding="utf-8") as fh:
        fh.write("{not json\n" + json.dumps(sample("ghost", 0, block("gender", "Male", 5, "x"))) + "\n")
    common = ["--val-fraction", "0.25", "--tokenizer", qwen_tokenizer_dir, "--max-prompt-length", "1500"]
    assert build_sft(records_file, samples_file, tmp_path / "local", *common) == 0
    assert build_sft(records_file, samples_file, tmp_path / "ray", *common, "--engine", "ray") == 0
    for name in ("sft_train.parquet", "sft_val.parquet"):
        assert pq.read_table(tmp_path / "ray" / name).equals(pq.read_table(tmp_path / "local" / name))
    local, ray_report = read_report(tmp_path / "local"), read_report(tmp_path / "ray")
    assert ray_report.pop("options")["engine"] == "ray"
    assert local.pop("options")["engine"] == "local"
    assert ray_report == local
    assert (tmp_path / "ray" / "calibration.json").read_text() == (tmp_path / "local" / "calibration.json").read_text()


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
message = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": text})
sft_rows = st.lists(st.fixed_dictionaries({"messages": st.lists(message, max_size=4), "user_id": text}), max_size=6)


@settings(max_examples=200, deadline=None)
@given(sft_rows)
def test_sft_table_is_what_arrow_converts_to_the_sft_schema(rows):
    # The schema verl's MultiTurnSFTDataset reads, written out here; Arrow's own conversion is the reference.
    schema = pa.schema([
        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("user_id", pa.string()),
    ])
    table = sft_table(rows)
    table.validate(full=True)
    assert table.equals(pa.Table.from_pylist(rows, schema=schema))


def test_sft_parquet_is_written_in_row_groups(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"q{i} \u00e9\u4e2d"}], "user_id": f"u{i}"} for i in range(ROW_GROUP + 5)]
    path = tmp_path / "sft.parquet"
    write_parquet(rows, str(path), sft_table)
    assert pq.ParquetFile(path).metadata.num_row_groups == 2  # ROW_GROUP rows, then the 5 left
    assert pq.read_table(path).to_pylist() == rows


def test_a_rebuild_removes_outputs_of_an_earlier_build_it_does_not_write(small, tmp_path, capsys):
    taxonomy_file, records, samples = small
    out = tmp_path / "sft"
    assert build_sft(records, samples, out, "--taxonomy", str(taxonomy_file), "--val-fraction", "0.34") == 0
    assert (out / "sft_val.parquet").exists()
    (out / "notes.txt").write_text("mine")  # not an output of the build: left alone
    capsys.readouterr()

    assert build_sft(records, samples, out, "--taxonomy", str(taxonomy_file)) == 0

    assert not (out / "sft_val.parquet").exists()  # its users are in train now
    assert [r["user_id"] for r in rows_of(out / "sft_train.parquet")] == ["u1", "u2", "u3"]
    assert (out / "notes.txt").read_text() == "mine"
    assert f"{out}: removed sft_val.parquet left by an earlier run" in capsys.readouterr().err


def test_every_declared_output_is_rewritten_or_removed(small, tmp_path):
    # Whatever the list of outputs holds (new ones included), no stale copy survives a build.
    from verl_confprofile.data_prep.build_sft import OUTPUTS

    taxonomy_file, records, samples = small
    out = tmp_path / "sft"
    out.mkdir()
    for name in OUTPUTS:
        (out / name).write_bytes(b"stale")
        (out / f".tmp-{name}").write_bytes(b"stale")  # the temporary file of a killed build
    assert build_sft(records, samples, out, "--taxonomy", str(taxonomy_file)) == 0
    for name in OUTPUTS:
        assert not (out / f".tmp-{name}").exists()
        assert not (out / name).exists() or (out / name).read_bytes() != b"stale", name


def test_teacher_and_student_prompts_are_fitted_by_one_rule(simulated, tmp_path, qwen_tokenizer, qwen_tokenizer_dir, capsys):
    # synthesize and build-sft with the same budget: the teacher was asked exactly the prompt of
    # every SFT row (the digest synthesize stores is of the prompt it sent), "long" truncated in both.
    import hashlib

    taxonomy, records_file, _, records = simulated
    limit = max(prompt_tokens(qwen_tokenizer, prompt.messages(r, taxonomy)) for r in records[:12]) + 20
    budget = ["--tokenizer", qwen_tokenizer_dir, "--max-prompt-length", str(limit)]
    samples = tmp_path / "teacher.jsonl"
    assert main(["synthesize", "--records", str(records_file), "--out", str(samples), "--backend", "simulated",
                 "--seed", "3", "--num-samples", "2", *budget]) == 0
    synthesized = capsys.readouterr().out
    out = tmp_path / "sft"
    assert build_sft(records_file, samples, out, *budget) == 0
    built = capsys.readouterr().out

    summary = f"prompts: at most {limit} tokens, 1 users truncated"
    assert summary in synthesized and summary in built
    sent = {}
    for line in samples.read_text().splitlines():
        s = json.loads(line)
        sent.setdefault(s["user_id"], set()).add(s["prompt_sha256"])
    rows = rows_of(out / "sft_train.parquet")
    assert sorted(sent) == sorted(r["user_id"] for r in rows)  # "huge" cannot fit in either
    for row in rows:
        digest = hashlib.sha256(json.dumps(row["messages"][:2], ensure_ascii=False, sort_keys=True).encode()).hexdigest()
        assert sent[row["user_id"]] == {digest}, row["user_id"]


def test_rows_over_max_length_are_skipped_and_verl_takes_the_rest(simulated, tmp_path, qwen_tokenizer, qwen_tokenizer_dir, capsys):
    from omegaconf import OmegaConf
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    taxonomy, records_file, samples_file, records = simulated
    # s00's teacher wrote a very long evidence in every block: its SFT row is the longest by far.
    lines = samples_file.read_text().splitlines()
    long_evidence = "<evidence>" + "a very long piece of evidence " * 200
    samples_file.write_text("\n".join(
        line.replace("<evidence>", long_evidence) if '"user_id": "s00"' in line else line for line in lines) + "\n")

    def verl_lengths(path, max_length):
        config = OmegaConf.create({"max_length": max_length, "truncation": "error", "messages_key": "messages"})
        dataset = MultiTurnSFTDataset([str(path)], qwen_tokenizer, config)
        return {r["user_id"]: int(dataset[i]["attention_mask"].sum()) for i, r in enumerate(rows_of(path))}

    full = tmp_path / "full"
    assert build_sft(records_file, samples_file, full, "--tokenizer", qwen_tokenizer_dir, "--max-length", "100000") == 0
    lengths = verl_lengths(full / "sft_train.parquet", 100000)  # verl's own count of every row
    assert read_report(full)["rows"]["longest_row_tokens"] == max(lengths.values()) == lengths["s00"]
    limit = sorted(lengths.values())[-2]  # the second longest fits, s00 does not
    capsys.readouterr()

    out = tmp_path / "sft"
    assert build_sft(records_file, samples_file, out, "--tokenizer", qwen_tokenizer_dir, "--max-length", str(limit)) == 0

    report = read_report(out)
    assert report["skipped"]["row_too_long"]["count"] == 1
    assert f"user 's00': its SFT row has {lengths['s00']} tokens, over --max-length {limit}" in report["skipped"]["row_too_long"]["first"][0]
    assert report["rows"] == {"max_length": limit, "tokenizer": qwen_tokenizer_dir, "too_long": 1, "longest_row_tokens": lengths["s00"]}
    assert "row_too_long=1" in capsys.readouterr().out
    kept = verl_lengths(out / "sft_train.parquet", limit)  # truncation: error accepts every row
    assert set(kept) == set(lengths) - {"s00"}


def test_max_length_needs_a_tokenizer(small, tmp_path, capsys):
    taxonomy_file, records, samples = small
    assert build_sft(records, samples, tmp_path / "sft", "--taxonomy", str(taxonomy_file), "--max-length", "100") == 2
    assert "--max-length must be positive and needs --tokenizer" in capsys.readouterr().err


# ---------------------------------------------------------------- samples of another taxonomy or prompt


def test_samples_of_another_taxonomy_stop_the_build(small, tmp_path, capsys):
    # The hand-worked samples answer gender and age; read with a taxonomy of one other dimension,
    # every block is malformed: 8 samples x 1 dimension = 8 of 8 blocks (100% >= 90%).
    _, records, samples = small
    other = tmp_path / "pets.yaml"
    other.write_text("dimensions:\n  pet: {labels: [Dog, Cat, NA]}\n", encoding="utf-8")
    out = tmp_path / "sft"

    assert build_sft(records, samples, out, "--taxonomy", str(other)) == 2

    err = capsys.readouterr().err
    assert f"{samples}: 8 of 8 sample blocks (100%) are malformed for the taxonomy {other} (dimensions pet)" in err
    assert "pass --allow-mismatch to go on anyway" in err
    assert not out.exists()

    assert build_sft(records, samples, out, "--taxonomy", str(other), "--allow-mismatch") == 0
    assert "8 of 8 sample blocks (100%) are malformed" in capsys.readouterr().err
    assert read_report(out)["sample_match"]["malformed_blocks"] == 8


def test_mostly_malformed_samples_below_the_threshold_are_built(small, tmp_path):
    # The hand-worked samples: 5 of 16 blocks malformed (31% < 90%): a result, not a mistake.
    taxonomy_file, records, samples = small
    assert build_sft(records, samples, tmp_path / "sft", "--taxonomy", str(taxonomy_file)) == 0
    assert read_report(tmp_path / "sft")["sample_match"] == {
        "malformed_blocks": 5, "blocks": 16, "users_compared_by_prompt": 0, "users_with_another_prompt": 0, "example": None,
    }


def synthesized(tmp_path, taxonomy_file, users):
    """Records of ``users`` and their simulated teacher samples drawn with ``taxonomy_file``."""
    records = write_jsonl(tmp_path / "records.jsonl", [record(u) for u in users])
    samples = tmp_path / "teacher.jsonl"
    assert main(["synthesize", "--records", str(records), "--out", str(samples), "--backend", "simulated",
                 "--num-samples", "2", "--taxonomy", str(taxonomy_file)]) == 0
    return records, samples


def test_samples_drawn_with_another_prompt_stop_the_build(small, tmp_path, capsys):
    # Sampled with the two-dimension taxonomy; built with one that adds a gender label: the blocks
    # are still well-formed, but every user's prompt differs from the one the teacher was sent.
    taxonomy_file, _, _ = small
    records, samples = synthesized(tmp_path, taxonomy_file, ["u1", "u2", "u3"])
    wider = tmp_path / "wider.yaml"
    wider.write_text(TAXONOMY_YAML.replace("[Female, Male, NA]", "[Female, Male, Other, NA]"), encoding="utf-8")
    capsys.readouterr()

    assert build_sft(records, samples, tmp_path / "sft", "--taxonomy", str(wider)) == 2
    err = capsys.readouterr().err
    assert f"{samples}: 3 of 3 users were sampled with another prompt than this command renders" in err
    assert "e.g. user 'u1'" in err and not (tmp_path / "sft").exists()

    assert build_sft(records, samples, tmp_path / "sft", "--taxonomy", str(taxonomy_file)) == 0
    assert read_report(tmp_path / "sft")["sample_match"]["users_compared_by_prompt"] == 3
    assert read_report(tmp_path / "sft")["sample_match"]["users_with_another_prompt"] == 0


def test_a_few_users_with_another_prompt_are_a_warning_and_a_count(small, tmp_path, capsys):
    taxonomy_file, _, _ = small
    users = [f"u{i}" for i in range(10)]
    records, samples = synthesized(tmp_path, taxonomy_file, users)
    # u9 moved since it was sampled: its prompt is not the one its samples were drawn with.
    changed = write_jsonl(tmp_path / "changed.jsonl", [record(u) for u in users[:9]] + [{**record("u9"), "demographics": {"region": "Wuhan"}}])
    capsys.readouterr()

    assert build_sft(changed, samples, tmp_path / "sft", "--taxonomy", str(taxonomy_file)) == 0

    assert "1 of 10 users were sampled with another prompt" in capsys.readouterr().err
    match = read_report(tmp_path / "sft")["sample_match"]
    assert (match["users_compared_by_prompt"], match["users_with_another_prompt"], match["example"]) == (10, 1, "user 'u9'")


# ---------------------------------------------------------------- no output looks complete unless it is


def outputs_of(out):
    return {p.name: p.read_bytes() for p in out.iterdir()} if out.exists() else {}


@pytest.mark.parametrize("failure, code, message", [
    (KeyboardInterrupt(), 130, "confprofile build-sft: interrupted; outputs are put in place only when complete"),
    (OSError(28, "No space left on device"), 2, "confidence.png: cannot write: No space left on device"),
])
def test_an_interrupted_or_failed_build_leaves_the_earlier_build_whole(small, tmp_path, capsys, monkeypatch, failure, code, message):
    # The plot is drawn after every other file is written: a failure there used to leave the new
    # parquet, calibration and report (and a raw traceback on Ctrl-C).
    from verl_confprofile.data_prep import plots

    taxonomy_file, records, samples = small
    out = tmp_path / "sft"
    assert build_sft(records, samples, out, "--taxonomy", str(taxonomy_file), "--val-fraction", "0.34") == 0
    earlier = outputs_of(out)
    capsys.readouterr()

    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(plots, "confidence_figure", fail)
    assert build_sft(records, samples, out, "--taxonomy", str(taxonomy_file)) == code

    assert message in capsys.readouterr().err
    assert outputs_of(out) == earlier  # no new file, no temporary file, the earlier set untouched


def test_a_build_interrupted_on_a_new_folder_leaves_no_output(small, tmp_path, monkeypatch, capsys):
    from verl_confprofile.data_prep import plots

    taxonomy_file, records, samples = small
    out = tmp_path / "sft"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "confidence_figure", interrupt)
    assert build_sft(records, samples, out, "--taxonomy", str(taxonomy_file)) == 130
    assert outputs_of(out) == {}
    assert "Traceback" not in capsys.readouterr().err
