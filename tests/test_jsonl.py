"""The JSONL readers every command shares: exact line numbers, byte order marks, bad bytes, the
samples-line policy and the user-id rule."""

import json

import pytest

from verl_confprofile.aggregate import read_samples
from verl_confprofile.data_prep.engine import LocalEngine, _parse_chunk, plan_chunks
from verl_confprofile.data_prep.records import read_records
from verl_confprofile.data_prep.votes import VoteJob, vote_stage
from verl_confprofile.jsonl import BOM, InputError, SampleEvent, SkipLog, iter_lines, read_jsonl, sample_fields, sample_line
from verl_confprofile.taxonomy import Taxonomy

TAX = Taxonomy.load()
ANSWER = "<gender><evidence>e</evidence><tag>Male</tag><score>4</score></gender>"


def sample(user, idx, text=ANSWER):
    return {"user_id": user, "sample_idx": idx, "model": "m", "text": text}


def jsonl_bytes(objs) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


# ---------------------------------------------------------------- line numbers and bad bytes


def test_a_bad_byte_is_reported_on_its_own_line(tmp_path):
    path = tmp_path / "records.jsonl"
    lines = [json.dumps({"user_id": f"u{i}", "behaviors": {"watched": ["x" * 200]}}).encode() for i in range(60)]
    lines[49] = lines[49].replace(b"xxx", b"x\xffx", 1)  # line 50
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(InputError) as err:
        list(read_jsonl(path))
    assert str(err.value).startswith(f"{path}:50: not UTF-8 text: invalid start byte at byte ")


def test_a_bad_byte_in_a_samples_line_is_called_a_bad_byte_not_a_surrogate():
    line = b'{"user_id": "u", "sample_idx": 0, "text": "caf\xe9"}\n'
    event = sample_line(line, "s.jsonl", 7)
    assert event == SampleEvent(7, "broken_line", "s.jsonl:7: not UTF-8 text: invalid continuation byte at byte 47; skipped")


def test_an_escaped_lone_surrogate_is_still_invalid_json():
    event = sample_line(b'{"user_id": "u", "sample_idx": 0, "text": "\\ud800"}', "s.jsonl", 1)
    assert event.reason == "broken_line" and "not a JSON line: " in event.message and "UTF-8" not in event.message


def test_line_numbers_count_blank_and_broken_lines(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"\n" + jsonl_bytes([sample("a", 0)]) + b"{broken\n" + b"  \n" + jsonl_bytes([sample("b", 0)]))
    assert [n for n, _ in iter_lines(path)] == [1, 2, 3, 4, 5]
    skips = SkipLog()
    users = read_samples(path, TAX, skips=skips)
    assert list(users) == ["a", "b"]
    assert skips.first == {"broken_line": [f"{path}:3: not a JSON line: unexpected character, expected a string key (column 2); skipped"]}


# ---------------------------------------------------------------- byte order mark


def test_a_byte_order_mark_is_not_part_of_the_first_line(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(BOM + jsonl_bytes([sample("first", 0), sample("second", 0)]))
    assert [line for _, line in iter_lines(path)] == jsonl_bytes([sample("first", 0), sample("second", 0)]).splitlines(True)
    skips = SkipLog()
    assert list(read_samples(path, TAX, skips=skips)) == ["first", "second"]
    assert not skips.counts


def test_a_byte_order_mark_keeps_the_first_record(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_bytes(BOM + jsonl_bytes([{"user_id": "first", "behaviors": {"watched": ["a"]}}]))
    assert list(read_records(path).records) == ["first"]


def test_a_byte_order_mark_keeps_the_first_sample_in_both_build_engines(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(BOM + jsonl_bytes([sample("first", 0), sample("second", 0), sample("first", 1)]))
    job = VoteJob(str(path), TAX, "confidence", ("first", "second"))
    stage = LocalEngine().vote(job)
    assert [(v.user_id, v.num_samples) for v in stage.votes] == [("first", 2), ("second", 1)]
    assert stage.events == [] and stage.lines == 3
    # The Ray engine's chunks: the first starts at byte 0, behind the mark; the others do not see it.
    chunks = plan_chunks(str(path), chunk_bytes=10)
    rows = [row for s, e, f in chunks for row in _parse_chunk({"start": s, "end": e, "first_line": f}, job)]
    assert [(row["order"], row["line"]) for row in rows] == [(0, 1), (1, 2), (0, 3)]


# ---------------------------------------------------------------- the samples-line policy


def test_repeated_samples_are_skipped_and_counted_the_first_is_used(tmp_path):
    path = tmp_path / "dup.jsonl"
    female = ANSWER.replace("Male", "Female").replace("4", "5")
    path.write_bytes(jsonl_bytes([sample("a", 0), sample("a", 0, female), sample("a", 1)]))
    skips = SkipLog()
    users = read_samples(path, TAX, skips=skips)
    assert users["a"].num_samples == 2
    assert users["a"].votes(TAX)["gender"][:3] == ("Male", 8, 2)  # Male 4 + Male 4; the repeat's Female 5 is not folded
    assert skips.to_dict() == {
        "duplicate_sample": {"count": 1, "first": [f"{path}:2: duplicate sample_idx 0 for user 'a' (first at line 1); skipped"]}
    }


@pytest.mark.parametrize("content, line", [(b"{broken\n", 2), (b'"a string"\n', 2), (None, 2)])
def test_strict_turns_broken_and_repeated_lines_into_errors(tmp_path, content, line):
    path = tmp_path / "s.jsonl"
    second = jsonl_bytes([sample("a", 0)]) if content is None else content
    path.write_bytes(jsonl_bytes([sample("a", 0)]) + second)
    with pytest.raises(InputError) as err:
        read_samples(path, TAX, strict=True)
    assert str(err.value).startswith(f"{path}:{line}: ") and not str(err.value).endswith("skipped")


def test_a_line_without_the_sample_fields_is_always_an_error(tmp_path):
    path = tmp_path / "records_by_mistake.jsonl"
    path.write_bytes(jsonl_bytes([{"user_id": "u", "behaviors": {}}]))
    with pytest.raises(InputError, match=r"records_by_mistake.jsonl:1: missing field 'sample_idx'"):
        read_samples(path, TAX)


# ---------------------------------------------------------------- user ids


def test_a_user_id_beyond_64_bits_is_named_with_advice(tmp_path):
    # orjson reads a 24-digit integer as a float: refused as such, not as "must be str or int".
    path = tmp_path / "big.jsonl"
    path.write_text('{"user_id": 123456789012345678901234, "sample_idx": 0, "text": ""}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"big.jsonl:1: field 'user_id' is an integer of more than 64 bits.*in quotes"):
        read_samples(path, TAX)


def test_an_integer_user_id_is_the_string_of_its_digits(tmp_path):
    assert sample_fields(sample(7, 0), "s.jsonl", 1) == ("7", 0, ANSWER)
    path = tmp_path / "ids.jsonl"
    path.write_bytes(jsonl_bytes([sample(7, 0), sample("7", 1), sample("07", 0), sample("7", 0)]))
    skips = SkipLog()
    users = read_samples(path, TAX, skips=skips)
    assert {u: t.num_samples for u, t in users.items()} == {"7": 2, "07": 1}
    assert skips.first["duplicate_sample"] == [f"{path}:4: duplicate sample_idx 0 for user '7' (first at line 1); skipped"]
    records = tmp_path / "records.jsonl"
    records.write_bytes(jsonl_bytes([{"user_id": 7, "behaviors": {"watched": ["a"]}}, {"user_id": "7", "behaviors": {}}]))
    with pytest.raises(InputError, match="records.jsonl:2: duplicate user_id '7' \\(first at line 1\\)"):
        read_records(records)


def test_strict_in_the_builds_stops_on_a_repeated_sample_in_both_engines(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_bytes(jsonl_bytes([sample("a", 0), sample("a", 0)]))
    lenient, strict = (VoteJob(str(path), TAX, "confidence", ("a",), s) for s in (False, True))
    assert [e.reason for e in LocalEngine().vote(lenient).events] == ["duplicate_sample"]
    with pytest.raises(InputError, match=r"dup.jsonl:2: duplicate sample_idx 0 for user 'a' \(first at line 1\)$"):
        LocalEngine().vote(strict)
    # The Ray engine collects the events of every group and hands them to vote_stage.
    events = [SampleEvent(2, "duplicate_sample", f"{path}:2: duplicate ...; skipped"), SampleEvent(1, "unknown_user", "x")]
    assert vote_stage({}, 2, list(events), {}).events == sorted(events)
    with pytest.raises(InputError, match=r"dup.jsonl:2: duplicate ...$"):
        vote_stage({}, 2, list(events), {}, strict=True)
