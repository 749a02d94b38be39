"""User records: what is not a keyphrase is dropped and counted, never rendered as ``None`` or a repr."""

import json

from verl_confprofile.cli import main
from verl_confprofile.data_prep.prompt import user_prompt
from verl_confprofile.data_prep.records import read_records


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_values_that_are_not_keyphrases_are_dropped_and_counted(tmp_path):
    path = write(tmp_path / "records.jsonl", [
        {"user_id": "u1", "behaviors": {"watched": ["cooking", {"x": 1}, ["y"], True, 5, "  ", None]},
         "demographics": {"age": None, "city": {"name": "Chengdu"}, "region": "", "gender": "Female"}},
        {"user_id": "u2", "behaviors": {"watched": [None, ""]}},
    ])

    records = read_records(path)

    assert list(records.records) == ["u1"]
    assert records.records["u1"]["behaviors"] == {"watched": ["cooking", "5"]}
    assert records.records["u1"]["demographics"] == {"city": {"name": "Chengdu"}, "gender": "Female"}
    assert records.skipped == {"no_behaviors": 1}
    assert records.examples["no_behaviors"] == f"{path}:2"
    # u1: {"x": 1}, ["y"], True are not text; "  " and None are empty; u2: None and "" are empty
    assert records.dropped == {"non_text_keyphrase": 3, "empty_keyphrase": 4, "empty_demographic": 2}
    assert records.dropped_examples["non_text_keyphrase"] == f"{path}:1"

    text = user_prompt(records.records["u1"])
    assert "- watched: cooking; 5" in text
    assert '- city: {"name": "Chengdu"}' in text and "- gender: Female" in text
    assert "None" not in text and "{'" not in text and "- age" not in text


def test_builds_report_what_was_dropped(tmp_path, capsys):
    records = write(tmp_path / "records.jsonl", [
        {"user_id": "u1", "behaviors": {"watched": ["cooking", None]}},
        {"user_id": "u2", "behaviors": {"watched": [None, ""]}},
    ])
    block = "<gender><evidence>e</evidence><tag>Female</tag><score>4</score></gender>"
    samples = write(tmp_path / "samples.jsonl", [
        {"user_id": u, "sample_idx": 0, "model": "t", "text": block} for u in ("u1", "u2")
    ])
    out = tmp_path / "sft"

    assert main(["build-sft", "--records", str(records), "--samples", str(samples), "--out", str(out)]) == 0

    report = json.loads((out / "report.json").read_text())
    # Users left out and values dropped are apart: a dropped keyphrase leaves no user out.
    assert {k: v["count"] for k, v in report["skipped"].items()} == {"no_behaviors": 1, "unknown_user": 1}
    assert report["dropped_values"] == {"empty_keyphrase": {
        "count": 3, "first": [f"{records}: dropped 3 empty keyphrases (empty_keyphrase) from records, the first at {records}:1"],
    }}
    assert ("(left out: 1 records (no_behaviors=1), 1 sample lines (unknown_user=1); "
            "values dropped from records: empty_keyphrase=3;") in capsys.readouterr().out


def test_synthesize_names_what_it_dropped(tmp_path, capsys):
    records = write(tmp_path / "records.jsonl", [
        {"user_id": "u1", "behaviors": {"watched": ["cooking", None]}, "demographics": {"age": "", "city": None}},
    ])
    assert main(["synthesize", "--records", str(records), "--out", str(tmp_path / "s.jsonl"), "--backend", "simulated",
                 "--num-samples", "1"]) == 0
    out = capsys.readouterr().out
    assert f"dropped 1 empty keyphrases (empty_keyphrase) (first at {records}:1)" in out
    assert f"dropped 2 empty self-reported fields (empty_demographic) (first at {records}:1)" in out
    assert "keyphrases: empty_demographic" not in out


def test_a_user_id_beyond_64_bits_is_refused_with_advice(tmp_path, capsys):
    # JSON readers take an integer of 24 digits for a float: the id would lose digits.
    records = tmp_path / "records.jsonl"
    records.write_text('{"user_id": 123456789012345678901234, "behaviors": {"watched": ["a"]}}\n', encoding="utf-8")
    assert main(["synthesize", "--records", str(records), "--out", str(tmp_path / "s.jsonl"), "--backend", "simulated",
                 "--num-samples", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{records}:1: field 'user_id' is an integer of more than 64 bits" in err
    assert "write it as a string, in quotes" in err


def test_a_keyphrase_holding_the_separator_or_a_line_break_reads_one_way():
    record = {"behaviors": {"watched": ["Dog; Cat", "tea", 'say "hi"', '"quoted"'], "liked": [], "posted": ["a\nb"]},
              "demographics": {"bio": "line one\n- liked: fake entry", "city": "Chengdu"}}

    lines = user_prompt(record).splitlines()

    assert lines == [
        "User information:",
        "Behaviours:",
        '- watched: "Dog; Cat"; tea; say "hi"; "\\"quoted\\""',  # as JSON only when it could be misread
        '- posted: "a\\nb"',  # no "- liked: " line for an empty list
        "Self-reported (may be missing or wrong):",
        '- bio: "line one\\n- liked: fake entry"',
        "- city: Chengdu",
    ]


def test_a_user_whose_lists_are_all_empty_says_none():
    assert user_prompt({"behaviors": {"liked": []}}).splitlines()[1:3] == ["Behaviours:", "- none"]
