"""`confprofile demo` runs every stage end to end and leaves every artifact behind."""

import json

import pyarrow.parquet as pq
import pytest

from verl_confprofile.cli import main


def test_demo_writes_every_artifact(tmp_path, local_ray, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--users", "60"]) == 0
    printed = capsys.readouterr().out
    for stage in range(1, 8):
        assert f"[{stage}/7]" in printed
    assert "confidence vote" in printed and "majority vote" in printed and "single sample" in printed
    assert "bash recipes/run_sft.sh" in printed
    for name in ["sft/sft_train.parquet", "sft/calibration.json", "sft/report.json", "sft/confidence.png",
                 "rl/rl_train.parquet", "rl/report.json", "rl/difficulty.png",
                 "eval/report.md", "eval/report.json", "eval/precision_recall.png", "grpo_step.json"]:
        assert (out / name).stat().st_size > 0, name
    assert pq.read_table(out / "sft" / "sft_train.parquet").num_rows == 60
    step = json.loads((out / "grpo_step.json").read_text())
    # 16 prompts x 8 rollouts, unless the RL set kept fewer users than 16; stage 5 says which
    assert step["rollouts"] == 8 * step["groups"] and step["groups"] <= 16
    assert f"[5/7] one GRPO step: {step['groups']} prompts x 8 simulated rollouts" in printed
    assert step["partial_groups"] == 0
    report = json.loads((out / "eval" / "report.json").read_text())
    assert set(report["thresholds"]) == {"1", "2", "3", "4", "5"}


def test_a_demo_with_another_seed_draws_its_own_samples(tmp_path, local_ray, monkeypatch, capsys):
    # The folder of an earlier demo (seed 0) is reused with --seed 1: every samples file must be of
    # seed 1, not resumed from seed 0. The GRPO step has nothing to do with it and is skipped here.
    from verl_confprofile import demo
    from verl_confprofile.data_prep.simulated import SimulatedPopulation
    from verl_confprofile.taxonomy import Taxonomy

    monkeypatch.setattr(demo, "grpo_step", lambda *args, **kwargs: {"rollouts": 0})
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--users", "20", "--seed", "0"]) == 0
    assert main(["demo", "--out", str(out), "--users", "20", "--seed", "1"]) == 0

    # Stage 5 names the prompts the step scores: the RL set of 10 users keeps fewer than 16.
    rows = pq.read_table(out / "rl" / "rl_train.parquet").num_rows
    assert rows < 16 and f"[5/7] one GRPO step: {rows} prompts x 8 simulated rollouts" in capsys.readouterr().out

    seed1 = SimulatedPopulation(Taxonomy.load(None), seed=1)
    for name in demo.SAMPLE_FILES:
        lines = [json.loads(line) for line in (out / "data" / name).read_text().splitlines()]
        assert lines and all(s["text"] == seed1.sample_text(s["user_id"], s["sample_idx"]) for s in lines), name


def test_too_few_users_is_a_message_naming_the_minimum(tmp_path, capsys):
    for users in ("0", "9"):
        with pytest.raises(SystemExit) as stopped:
            main(["demo", "--out", str(tmp_path / "demo"), "--users", users])
        assert stopped.value.code == 2
        err = capsys.readouterr().err
        assert "the demo needs at least 10 users" in err and f"got {users}" in err
    assert not (tmp_path / "demo").exists()


def test_a_folder_the_demo_did_not_write_is_refused(tmp_path, capsys):
    # The recipes' layout in the current folder: `confprofile demo --out .` used to delete the
    # teacher samples and write simulated users over the records.
    data = tmp_path / "data"
    data.mkdir()
    (data / "sft_records.jsonl").write_text("my records\n")
    (data / "teacher_samples.jsonl").write_text("my samples\n")

    assert main(["demo", "--out", str(tmp_path), "--users", "10"]) == 2

    assert "is not empty and was not written by the demo" in capsys.readouterr().err
    assert (data / "sft_records.jsonl").read_text() == "my records\n"
    assert (data / "teacher_samples.jsonl").read_text() == "my samples\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["data", "sft_records.jsonl", "teacher_samples.jsonl"]


def test_an_empty_or_earlier_demo_folder_is_the_demos(tmp_path):
    from verl_confprofile.demo import MARKER, claim_folder
    from verl_confprofile.jsonl import InputError

    empty = tmp_path / "empty"
    empty.mkdir()
    claim_folder(empty)
    (empty / "data").mkdir()
    claim_folder(empty)  # now marked as the demo's own, files and all
    assert (empty / MARKER).exists()
    with pytest.raises(InputError):
        claim_folder(tmp_path)  # holds "empty", which is not the demo's
