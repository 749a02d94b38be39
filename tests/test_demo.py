"""`confprofile demo` runs every stage end to end and leaves every artifact behind."""

import json

import pyarrow.parquet as pq

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
    # 16 prompts x 8 rollouts, unless the RL set kept fewer users than 16
    assert step["rollouts"] == 8 * step["groups"] and step["groups"] <= 16
    assert step["partial_groups"] == 0
    report = json.loads((out / "eval" / "report.json").read_text())
    assert set(report["thresholds"]) == {"1", "2", "3", "4", "5"}
