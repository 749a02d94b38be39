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
    assert report["skipped"]["no_behaviors"]["count"] == 1
    assert report["skipped"]["empty_keyphrase"]["count"] == 3
    assert "empty_keyphrase=3" in capsys.readouterr().out
