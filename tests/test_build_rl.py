"""`confprofile build-rl`: reference confidence, difficulty, shape filtering, verl's RLHFDataset, engines.

The hand-worked example uses a two-dimension taxonomy, gender [Female, Male, NA] and age
[18-23, 24-30, NA], a calibrator written by hand, and two student samples per user; every level
and every selection is worked out in the comments.
"""

import json
from fractions import Fraction

import pyarrow.parquet as pq
import pytest

from verl_confprofile.cli import main
from verl_confprofile.data_prep import difficulty, prompt
from verl_confprofile.data_prep.simulated import SimulatedPopulation
from verl_confprofile.reward.rows import is_validation, labels_of, ref_confidence_of
from verl_confprofile.taxonomy import Taxonomy

TAXONOMY_YAML = """
na_label: NA
dimensions:
  gender: {name: Gender, labels: [Female, Male, NA]}
  age: {name: Age, labels: ["18-23", "24-30", NA]}
"""
# On the s = S/M scale: level = 1 + the number of cut points below s (a value on a cut stays below it).
CALIBRATION = {"method": "equal_frequency", "scale": "S/M", "cuts": {"gender": [1.0, 2.0, 3.0, 4.0], "age": [0.5, 1.5, 2.5, 3.5]}}


def block(dim, tag, score):
    return f"<{dim}><evidence>student evidence</evidence><tag>{tag}</tag><score>{score}</score></{dim}>"


def sample(user, idx, *blocks):
    return {"user_id": user, "sample_idx": idx, "model": "student", "text": "\n".join(blocks)}


def record(user, labels=None):
    rec = {"user_id": user, "behaviors": {"watched": [f"{user} vlog"], "searched": ["exam tips"]}, "demographics": {}}
    if labels is not None:
        rec["labels"] = labels
    return rec


RECORDS = [
    record("r1", {"gender": "female", "age": "18\u201323"}),  # spelled loosely: written canonically
    record("r2", {"gender": "Male", "age": "teen"}),  # "teen" is not an age label: kept verbatim, counted
    record("r3"),  # unlabelled
]
SAMPLES = [
    sample("r1", 0, block("gender", "Female", 5), block("age", "18-23", 4)),
    sample("r2", 0, block("gender", "Male", 2), block("age", "NA", 1)),
    sample("r3", 0, block("gender", "Male", 3), "<age>no answer</age>"),
    sample("r1", 1, block("gender", "Female", 4), block("age", "18-23", 5)),
    sample("r2", 1, block("gender", "Female", 3), block("age", "NA", 2)),
    sample("r3", 1, block("gender", "Male", 3)),
]
# Votes over M = 2 samples and the hand calibrator:
# r1 gender Female S 9, s 4.5 -> above 1, 2, 3, 4 -> 5;   age 18-23 S 9, s 4.5 -> above all four -> 5;   mean 5.0
# r2 gender Female S 3 > Male 2, s 1.5 -> above 1.0 -> 2; age NA S 3, s 1.5 -> above 0.5 (not 1.5) -> 2; mean 2.0
# r3 gender Male S 6, s 3.0 -> above 1, 2 -> 3;           age: no well-formed sample -> 1;                mean 2.0
# Difficulty, equal frequency over the pool's means {2.0: 2 users, 5.0: 1 user}:
#   2.0: q = (0 + 2/2) / 3 = 1/3 -> 1 + floor(5/3) = 2;   5.0: q = (2 + 1/2) / 3 = 5/6 -> 1 + floor(25/6) = 5
#   levels r1 5, r2 2, r3 2; users per level 1..5: [0, 2, 0, 0, 1]
#   cuts: nothing at level <= 1 -> 0.0; 2|5 -> (2.0 + 5.0) / 2 = 3.5 for k = 2, 3, 4
REF = {"r1": {"gender": 5, "age": 5}, "r2": {"gender": 2, "age": 2}, "r3": {"gender": 3, "age": 1}}
DIFFICULTY = {"r1": 5, "r2": 2, "r3": 2}
TRUTH = {"r1": '{"gender": "Female", "age": "18-23"}', "r2": '{"gender": "Male", "age": "teen"}', "r3": ""}


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def small(tmp_path):
    taxonomy = tmp_path / "taxonomy.yaml"
    taxonomy.write_text(TAXONOMY_YAML, encoding="utf-8")
    calibration = tmp_path / "calibration.json"
    calibration.write_text(json.dumps(CALIBRATION), encoding="utf-8")
    return taxonomy, write_jsonl(tmp_path / "records.jsonl", RECORDS), write_jsonl(tmp_path / "samples.jsonl", SAMPLES), calibration


def build_rl(records, samples, calibration, out, *extra):
    argv = ["build-rl", "--records", str(records), "--samples", str(samples), "--calibration", str(calibration), "--out", str(out)]
    return main([*argv, *extra])


def rows_of(out):
    return pq.read_table(out / "rl_train.parquet").to_pylist()


def read_report(out):
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------- the hand-worked example


def test_reference_confidence_and_difficulty_by_hand(small, tmp_path):
    taxonomy_file, records, samples, calibration = small
    out = tmp_path / "rl"
    assert build_rl(records, samples, calibration, out, "--taxonomy", str(taxonomy_file)) == 0
    taxonomy = Taxonomy.load(str(taxonomy_file))
    rows = rows_of(out)
    assert rows == [
        {
            "data_source": "confprofile",
            "prompt": prompt.messages(rec, taxonomy),
            "ability": "profiling",
            "reward_model": {"style": "model", "ground_truth": TRUTH[rec["user_id"]]},
            "extra_info": {
                "user_id": rec["user_id"], "index": i, "split": "train",
                "ref_confidence": REF[rec["user_id"]], "difficulty": DIFFICULTY[rec["user_id"]],
            },
        }
        for i, rec in enumerate(RECORDS)
    ]
    report = read_report(out)
    assert report["difficulty"] == {
        "aggregation": "mean of the per-dimension reference confidence levels, equal-frequency levels over the pool",
        "cuts": [0.0, 3.5, 3.5, 3.5],
        "weights": [0.0, 2.0, 0.0, 0.0, 1.0],  # original: the pool's own counts
        "max_size": 3,
        "before": [0, 2, 0, 0, 1],
        "after": [0, 2, 0, 0, 1],
    }
    assert report["counts"] == {
        "records": 3, "records_kept": 3, "samples": 6, "samples_used": 6, "users_with_samples": 3, "users_kept": 3,
        "rows": 3, "labelled_rows": 2, "val_rows": 0, "labelled_val_rows": 0, "labels_outside_taxonomy": 1,
    }
    assert not (out / "rl_val.parquet").exists()
    assert report["dimensions"] == {
        "gender": {"malformed_samples": 0, "unanswered_users": 0, "ref_confidence": {"1": 0, "2": 1, "3": 1, "4": 0, "5": 1}},
        "age": {"malformed_samples": 2, "unanswered_users": 1, "ref_confidence": {"1": 1, "2": 1, "3": 0, "4": 0, "5": 1}},
    }
    assert (out / "difficulty.png").read_bytes().startswith(b"\x89PNG")
    # What the reward manager reads back from these rows.
    assert [labels_of(r["reward_model"]["ground_truth"]) for r in rows] == [
        {"gender": "Female", "age": "18-23"}, {"gender": "Male", "age": "teen"}, None,
    ]
    assert [dict(ref_confidence_of(r["extra_info"])) for r in rows] == [REF["r1"], REF["r2"], REF["r3"]]
    assert not any(is_validation(r["extra_info"]) for r in rows)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_val_fraction_holds_out_users_before_filtering(small, tmp_path, seed):
    """round(0.34 x 3) = 1 user goes to rl_val.parquet with split "val"; its reference confidence
    and difficulty are the hand values above (levels are fitted on the whole pool); the other two
    are the train set, filtered and numbered as usual."""
    taxonomy_file, records, samples, calibration = small
    out = tmp_path / "rl"
    assert build_rl(records, samples, calibration, out, "--taxonomy", str(taxonomy_file),
                    "--val-fraction", "0.34", "--seed", str(seed)) == 0
    val, train = pq.read_table(out / "rl_val.parquet").to_pylist(), rows_of(out)
    assert len(val) == 1 and len(train) == 2
    (held,) = [r["extra_info"]["user_id"] for r in val]
    assert [r["extra_info"]["user_id"] for r in train] == [u for u in ("r1", "r2", "r3") if u != held]
    assert val[0]["extra_info"] == {"user_id": held, "index": 0, "split": "val",
                                    "ref_confidence": REF[held], "difficulty": DIFFICULTY[held]}
    assert val[0]["reward_model"]["ground_truth"] == TRUTH[held]
    assert is_validation(val[0]["extra_info"]) and not is_validation(train[0]["extra_info"])
    assert [r["extra_info"]["index"] for r in train] == [0, 1]
    report = read_report(out)
    assert report["counts"]["rows"] == 2 and report["counts"]["val_rows"] == 1
    assert report["counts"]["labelled_val_rows"] == int(TRUTH[held] != "")
    assert report["counts"]["labelled_rows"] == sum(TRUTH[u] != "" for u in TRUTH if u != held)
    before = [0, 2, 0, 0, 1]
    before[DIFFICULTY[held] - 1] -= 1  # the filter sees the train pool only
    assert report["difficulty"]["before"] == before


@pytest.mark.parametrize("fraction", ["0.1", "1", "-0.2"])
def test_val_fraction_that_leaves_no_user_is_an_error(small, tmp_path, capsys, fraction):
    taxonomy_file, records, samples, calibration = small
    assert build_rl(records, samples, calibration, tmp_path / "rl", "--taxonomy", str(taxonomy_file),
                    "--val-fraction", fraction) == 2
    assert "--val-fraction" in capsys.readouterr().err
    assert not (tmp_path / "rl" / "rl_train.parquet").exists()


@pytest.mark.parametrize(
    "seed, kept",
    [
        # Shape 0,1,0,0,1: N_max = min(2 / (1/2), 1 / (1/2)) = 2; one user from level 2 {r2, r3}, r1 from level 5.
        # Draws, levels in order: random.Random(0).sample([1, 2], 1) == [2] -> r3; Random(1) gives [1] -> r2.
        (0, ["r1", "r3"]),
        (1, ["r1", "r2"]),
    ],
)
def test_custom_shape_by_hand(small, tmp_path, seed, kept):
    taxonomy_file, records, samples, calibration = small
    out = tmp_path / "rl"
    assert build_rl(records, samples, calibration, out, "--taxonomy", str(taxonomy_file), "--shape", "0,1,0,0,1", "--seed", str(seed)) == 0
    rows = rows_of(out)
    assert [r["extra_info"]["user_id"] for r in rows] == kept
    assert [r["extra_info"]["index"] for r in rows] == [0, 1]
    report = read_report(out)["difficulty"]
    assert (report["weights"], report["max_size"], report["before"], report["after"]) == ([0.0, 1.0, 0.0, 0.0, 1.0], 2, [0, 2, 0, 0, 1], [0, 1, 0, 0, 1])


def test_size_takes_the_largest_remainder_lower_level_first(small, tmp_path):
    taxonomy_file, records, samples, calibration = small
    out = tmp_path / "rl"
    # --size 1 with 0,1,0,0,1: quotas 0.5 (level 2) and 0.5 (level 5), floors 0; the tie goes to level 2.
    assert build_rl(records, samples, calibration, out, "--taxonomy", str(taxonomy_file), "--shape", "0,1,0,0,1", "--size", "1") == 0
    assert [r["extra_info"]["difficulty"] for r in rows_of(out)] == [2]


@pytest.mark.parametrize(
    "extra, message",
    [
        # levels 1, 3 and 4 have no user: a uniform pool of this population is empty
        (["--shape", "uniform"], "the shape needs users at difficulty level(s) [1, 3, 4]"),
        (["--shape", "0,1,0,0,1", "--size", "3"], "--size 3: this shape allows 1..2 users"),
        (["--shape", "1,2,3"], "--shape '1,2,3': expected one of original, uniform, v, inverted_v, m"),
        (["--shape", "0,0,0,0,0"], "not all 0"),
    ],
)
def test_shapes_that_cannot_be_met_are_errors(small, tmp_path, capsys, extra, message):
    taxonomy_file, records, samples, calibration = small
    out = tmp_path / "rl"
    assert build_rl(records, samples, calibration, out, "--taxonomy", str(taxonomy_file), *extra) == 2
    assert message in capsys.readouterr().err
    assert not (out / "rl_train.parquet").exists()


def test_calibration_without_a_dimension_is_an_error(small, tmp_path, capsys):
    taxonomy_file, records, samples, _ = small
    calibration = tmp_path / "partial.json"
    calibration.write_text(json.dumps({"method": "equal_frequency", "cuts": {"gender": [1.0, 2.0, 3.0, 4.0]}}), encoding="utf-8")
    assert build_rl(records, samples, calibration, tmp_path / "rl", "--taxonomy", str(taxonomy_file)) == 2
    assert f"{calibration}: no cut points for age" in capsys.readouterr().err


def test_bad_inputs_are_counted_and_named(small, tmp_path, capsys):
    taxonomy_file, _, _, calibration = small
    records = write_jsonl(tmp_path / "bad_records.jsonl", [*RECORDS, {"user_id": "r4", "behaviors": {}}])
    samples = write_jsonl(tmp_path / "bad_samples.jsonl", [
        *SAMPLES,  # lines 1-6
        "not json at all",  # 7
        sample("nobody", 0, block("gender", "Male", 5)),  # 8
        sample("r1", 1, block("gender", "Male", 1)),  # 9: repeats r1#1 (line 4)
    ])
    out = tmp_path / "rl"
    assert build_rl(records, samples, calibration, out, "--taxonomy", str(taxonomy_file)) == 0
    skipped = read_report(out)["skipped"]
    assert {k: (v["count"], v["first"]) for k, v in skipped.items()} == {
        "no_behaviors": (1, [f"{records}:4: record has no behaviour keyphrases; skipped"]),
        "broken_line": (1, [f"{samples}:7: not a JSON line: invalid literal, expected 'null' (column 1); skipped"]),
        "unknown_user": (1, [f"{samples}:8: user 'nobody' has no usable record; sample skipped"]),
        "duplicate_sample": (1, [f"{samples}:9: duplicate sample_idx 1 for user 'r1' (first at line 4); skipped"]),
    }
    err = capsys.readouterr().err
    assert f"{samples}:7:" in err and f"{samples}:9:" in err
    assert [r["extra_info"]["ref_confidence"] for r in rows_of(out)] == [REF["r1"], REF["r2"], REF["r3"]]


# r2's sample 0 (line 2) was cut at the token limit after its blocks (synthesize's finish_reason).
TRUNCATED = [SAMPLES[0], {**SAMPLES[1], "finish_reason": "length"}, *({**x, "finish_reason": "stop"} for x in SAMPLES[2:])]


def test_truncated_samples_are_kept_and_reported(small, tmp_path, capsys):
    taxonomy_file, records, _, calibration = small
    samples = write_jsonl(tmp_path / "samples.jsonl", TRUNCATED)
    out = tmp_path / "rl"
    assert build_rl(records, samples, calibration, out, "--taxonomy", str(taxonomy_file)) == 0
    message = f"{samples}:2: sample 0 of user 'r2' was cut at the token limit (finish_reason 'length'); kept: only its complete blocks vote"
    report = read_report(out)
    assert report["truncated_samples"] == {"count": 1, "policy": "kept", "first": [message]}
    assert report["skipped"] == {} and report["counts"]["samples_used"] == 6
    assert "(left out: none; truncated samples: 1 kept; prompts:" in capsys.readouterr().out
    rows = rows_of(out)
    assert [r["extra_info"]["ref_confidence"] for r in rows] == [REF["r1"], REF["r2"], REF["r3"]]
    assert [r["extra_info"]["difficulty"] for r in rows] == [DIFFICULTY["r1"], DIFFICULTY["r2"], DIFFICULTY["r3"]]


def test_drop_truncated_votes_without_them(small, tmp_path, capsys):
    taxonomy_file, records, _, calibration = small
    samples = write_jsonl(tmp_path / "samples.jsonl", TRUNCATED)
    out = tmp_path / "rl"
    assert build_rl(records, samples, calibration, out, "--taxonomy", str(taxonomy_file), "--drop-truncated") == 0
    message = f"{samples}:2: sample 0 of user 'r2' was cut at the token limit (finish_reason 'length'); skipped"
    report = read_report(out)
    assert report["skipped"] == {"truncated_sample": {"count": 1, "first": [message]}}
    assert report["truncated_samples"] == {"count": 1, "policy": "dropped", "first": [message]}
    assert report["counts"]["samples_used"] == 5
    assert "(left out: 1 sample lines (truncated_sample=1); truncated samples: 1 dropped; prompts:" in capsys.readouterr().out
    # r2 is voted on its sample 1 alone (M = 1): gender Female S 3, s 3.0 -> above 1.0, 2.0 (not 3.0) -> 3;
    # age NA S 2, s 2.0 -> above 0.5, 1.5 -> 3; mean 3.0. Difficulty over the means {2.0, 3.0, 5.0},
    # one user each: q = 1/6, 3/6, 5/6 -> levels 1 + floor(5 q) = 1, 3, 5.
    rows = rows_of(out)
    assert [r["extra_info"]["ref_confidence"] for r in rows] == [REF["r1"], {"gender": 3, "age": 3}, REF["r3"]]
    assert [r["extra_info"]["difficulty"] for r in rows] == [5, 3, 1]


# ---------------------------------------------------------------- difficulty filtering by hand


# 12 users: levels 1 x1, 2 x2, 3 x3, 4 x2, 5 x4
POOL = [5, 1, 2, 3, 5, 2, 3, 4, 5, 3, 4, 5]


@pytest.mark.parametrize(
    "shape, size, max_size, target",
    [
        # uniform: N_max = min(a_l / (1/5)) = 5 * 1 = 5 -> one per level
        ("uniform", None, 5, [1, 1, 1, 1, 1]),
        # m 1,3,2,3,1 (sum 10): N_max = min(10, 2*10/3 = 6.7, 15, 6.7, 40) = 6; quotas .6 1.8 1.2 1.8 .6 ->
        # floors 0 1 1 1 0 (3), the 3 left to the largest remainders .8 (2), .8 (4), .6 (1, before 5)
        ("m", None, 6, [1, 2, 1, 2, 0]),
        # v 3,2,1,2,3 (sum 11): N_max = min(1*11/3 = 3.7, 11, 33, 11, 4*11/3 = 14.7) = 3; quotas 9/11 6/11 3/11 6/11 9/11 ->
        # floors 0; remainders .82 (1), .82 (5), .55 (2, before 4)
        ("v", None, 3, [1, 1, 0, 0, 1]),
        # inverted_v 1,2,3,2,1 (sum 9): N_max = min(9, 9, 9, 9, 36) = 9, exactly the weights
        ("inverted_v", None, 9, [1, 2, 3, 2, 1]),
        # original = weights 1,2,3,2,4 (sum 12), size 6: quotas .5 1 1.5 1 2 -> floors 0 1 1 1 2, the 1 left to level 1
        ("original", 6, 12, [1, 1, 1, 1, 2]),
        ("original", None, 12, [1, 2, 3, 2, 4]),
        # exact fractions: 1/2 and 0.5 are the same weight
        ("1/2,0.5,0,0,0", None, 2, [1, 1, 0, 0, 0]),
    ],
)
def test_select_by_hand(shape, size, max_size, target):
    selection = difficulty.select(POOL, difficulty.parse_shape(shape), size, seed=7)
    assert (selection.max_size, selection.target, selection.available) == (max_size, target, [1, 2, 3, 2, 4])
    assert selection.indices == sorted(selection.indices)
    assert [sum(POOL[i] == lv for i in selection.indices) for lv in difficulty.LEVELS] == target
    assert difficulty.select(POOL, difficulty.parse_shape(shape), size, seed=7) == selection


def test_select_draws_depend_on_the_seed():
    draws = {tuple(difficulty.select(POOL, difficulty.parse_shape("0,0,0,0,1"), 2, seed).indices) for seed in range(10)}
    assert len(draws) > 1 and all(all(POOL[i] == 5 for i in d) for d in draws)


def test_shape_presets_and_levels():
    assert difficulty.parse_shape("original") is None
    assert difficulty.parse_shape("m") == tuple(Fraction(w) for w in (1, 3, 2, 3, 1))
    assert difficulty.aggregate_confidence([5, 4, 3, 3, 2, 1]) == 3.0
    # means 2.0 x2 and 5.0 -> levels 2, 2, 5 (worked out above)
    assert difficulty.difficulty_levels([2.0, 5.0, 2.0]) == ([2, 5, 2], [0.0, 3.5, 3.5, 3.5])


# ---------------------------------------------------------------- real verl loading, engines


@pytest.fixture
def simulated(tmp_path):
    """30 simulated users x 3 student samples, a calibrator, and one over-long user."""
    population = SimulatedPopulation(Taxonomy.load(), seed=5)
    ids = [f"p{i:02d}" for i in range(30)]
    records = [population.record(u, with_labels=i % 2 == 0) for i, u in enumerate(ids)]
    records[0]["behaviors"]["searched"] = [f"exam question {i}" for i in range(400)]
    calibration = tmp_path / "calibration.json"
    calibration.write_text(json.dumps({"method": "equal_frequency", "cuts": {d.key: [1.5, 2.5, 3.0, 3.5] for d in Taxonomy.load()}}), encoding="utf-8")
    return (write_jsonl(tmp_path / "sim_records.jsonl", records), write_jsonl(tmp_path / "sim_samples.jsonl", population.samples(ids, 3)),
            calibration, records)


def test_rl_parquet_loads_in_rlhf_dataset(simulated, tmp_path, qwen_tokenizer, qwen_tokenizer_dir):
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    records_file, samples_file, calibration, records = simulated
    out = tmp_path / "rl"
    limit = 1400
    assert build_rl(records_file, samples_file, calibration, out, "--shape", "inverted_v",
                    "--tokenizer", qwen_tokenizer_dir, "--max-prompt-length", str(limit)) == 0
    report = read_report(out)
    rows = rows_of(out)
    assert len(rows) == sum(report["difficulty"]["after"]) == report["counts"]["rows"] > 0
    assert report["prompts"]["truncated_users"] == 1 and report["prompts"]["dropped_keyphrases"] > 0

    config = OmegaConf.create({
        "max_prompt_length": limit, "filter_overlong_prompts": True, "truncation": "error", "prompt_key": "prompt",
        "cache_dir": str(tmp_path / "cache"), "filter_overlong_prompts_workers": 1,
    })
    dataset = RLHFDataset(str(out / "rl_train.parquet"), qwen_tokenizer, config)
    assert len(dataset) == len(rows)  # verl's own length filter dropped nothing
    labels = {r["user_id"]: r.get("labels") for r in records}
    for i, row in enumerate(rows):
        item = dataset[i]
        assert item["raw_prompt"] == row["prompt"] and item["index"] == i
        assert item["data_source"] == "confprofile" and item["ability"] == "profiling"
        ref = ref_confidence_of(item["extra_info"])
        assert set(ref) == set(Taxonomy.load().keys) and all(1 <= v <= 5 for v in ref.values())
        assert 1 <= item["extra_info"]["difficulty"] <= 5
        assert labels_of(item["reward_model"]["ground_truth"]) == labels[item["extra_info"]["user_id"]]


def test_ray_and_local_builds_write_the_same_rows(local_ray, simulated, tmp_path):
    records_file, samples_file, calibration, _ = simulated
    with open(samples_file, "a", encoding="utf-8") as fh:
        fh.write("{truncated\n")
    assert build_rl(records_file, samples_file, calibration, tmp_path / "local", "--shape", "m") == 0
    assert build_rl(records_file, samples_file, calibration, tmp_path / "ray", "--shape", "m", "--engine", "ray") == 0
    assert pq.read_table(tmp_path / "ray" / "rl_train.parquet").equals(pq.read_table(tmp_path / "local" / "rl_train.parquet"))
    local, ray_report = read_report(tmp_path / "local"), read_report(tmp_path / "ray")
    assert (local.pop("options")["engine"], ray_report.pop("options")["engine"]) == ("local", "ray")
    assert ray_report == local


def test_every_declared_output_is_rewritten_or_removed(small, tmp_path):
    # Whatever the list of outputs holds (new ones included), no stale copy survives a build.
    from verl_confprofile.data_prep.build_rl import OUTPUTS

    taxonomy_file, records, samples, calibration = small
    out = tmp_path / "rl"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for name in OUTPUTS:
        (out / name).write_bytes(b"stale")
    assert build_rl(records, samples, calibration, out, "--taxonomy", str(taxonomy_file)) == 0
    for name in OUTPUTS:
        assert not (out / name).exists() or (out / name).read_bytes() != b"stale", name
    assert (out / "notes.txt").read_text() == "mine"


def test_student_samples_of_another_taxonomy_stop_the_build(small, tmp_path, capsys):
    # The calibration covers gender and age; samples answering another dimension are all malformed:
    # 6 samples x 2 dimensions = 12 of 12 blocks (100% >= 90%).
    taxonomy_file, records, _, calibration = small
    samples = write_jsonl(tmp_path / "pets.jsonl", [sample(u, i, "<pet><evidence>e</evidence><tag>Dog</tag><score>5</score></pet>")
                                                    for u in ("r1", "r2", "r3") for i in range(2)])
    out = tmp_path / "rl"

    assert build_rl(records, samples, calibration, out, "--taxonomy", str(taxonomy_file)) == 2

    assert f"{samples}: 12 of 12 sample blocks (100%) are malformed" in capsys.readouterr().err
    assert not out.exists()
    assert build_rl(records, samples, calibration, out, "--taxonomy", str(taxonomy_file), "--allow-mismatch") == 0
    assert read_report(out)["options"]["allow_mismatch"] is True
