"""The recipes a user runs on a cluster, run for real on CPU (the fixtures of ``conftest.py``).

``recipes/run_sft.sh`` (simulated teacher, ``build-sft``, verl's SFT trainer), then
``recipes/run_grpo.sh grpo_v1`` from the checkpoint the SFT recipe reported (the v1 trainer),
``recipes/run_ablation.sh shape_original`` (the legacy trainer: the same SFT model, so it reuses
the first run's student pass, and evaluates its policy), then ``recipes/run_eval.sh`` on the
policy the first GRPO recipe reported.
Only what cannot run here is swapped, through the recipes' own variables: the simulated teacher
(``TEACHER_BACKEND``), the transformers student (``STUDENT_BACKEND``) and the CPU harness's
overrides (``SFT_OVERRIDES``/``GRPO_OVERRIDES``, the variables a cluster's site settings use).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from conftest import EVAL_USERS, RL_USERS, SAMPLES, reported


def samples_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sft_recipe_hands_off_a_checkpoint_verl_wrote(sft_run, world):
    checkpoint = Path(sft_run.checkpoint)
    assert checkpoint == Path(world.settings["CKPT_DIR"]) / "sft" / "global_step_8" / "huggingface"
    assert (checkpoint / "model.safetensors").is_file() and (checkpoint / "config.json").is_file()
    # the teacher was asked with the recipe's taxonomy: every simulated sample is there
    teacher = samples_of(Path(world.settings["DATA_DIR"]) / "teacher_samples.jsonl")
    assert len(teacher) == 64 * SAMPLES


def test_grpo_recipe_runs_the_student_pass_once_per_sft_model(run_grpo, sft_run, world):
    first, second = run_grpo("v1"), run_grpo("legacy", ("trainer.use_v1=false",))
    data = Path(world.settings["DATA_DIR"])
    student = data / "student_samples" / f"{str(Path(sft_run.checkpoint)).lstrip('/').replace('/', '_')}_seed0.jsonl"
    lines = samples_of(student)
    assert len(lines) == RL_USERS * SAMPLES
    assert {line["model"] for line in lines} == {sft_run.checkpoint}
    assert {line["sampling"]["backend"] for line in lines} == {"transformers"}
    assert {line["sampling"]["seed"] for line in lines} == {0}
    assert f"0 already in {student}, {RL_USERS * SAMPLES} to draw" in first.log
    assert f"{RL_USERS * SAMPLES} already in {student}, 0 to draw" in second.log
    # both runs filtered the same samples into the same rows
    for run in ("grpo_v1", "grpo_shape_original"):
        assert not student.is_relative_to(data / run)
    assert pq.read_table(data / "grpo_v1" / "rl_train.parquet").to_pylist() == pq.read_table(
        data / "grpo_shape_original" / "rl_train.parquet").to_pylist()
    # the ablation evaluated the policy it trained
    ablation = json.loads((Path(world.settings["EVAL_DIR"]) / "grpo_shape_original" / "report.json").read_text())
    assert ablation["counts"]["users_evaluated"] == EVAL_USERS


def test_grpo_recipe_saves_the_policy_and_the_eval_recipe_scores_it(run_grpo, world, tmp_path_factory):
    from verl_cpu_harness import runner

    policy = Path(reported(run_grpo("v1").log, "GRPO"))
    assert policy == Path(world.settings["CKPT_DIR"]) / "grpo_v1" / "global_step_2" / "actor" / "huggingface"
    assert (policy / "model.safetensors").is_file()
    log = runner.run_recipe("run_eval.sh", ["grpo_v1", str(policy.parents[2])], tmp_path_factory.mktemp("eval"),
                            world.settings)
    samples = Path(world.settings["DATA_DIR"]) / "eval_samples" / f"{str(policy).lstrip('/').replace('/', '_')}_seed0.jsonl"
    assert {line["model"] for line in samples_of(samples)} == {str(policy)}
    assert len(samples_of(samples)) == EVAL_USERS * 2  # EVAL_NUM_SAMPLES
    report = json.loads((Path(world.settings["EVAL_DIR"]) / "grpo_v1" / "report.json").read_text())
    assert report["counts"]["users_evaluated"] == EVAL_USERS
    assert set(report["thresholds"]) == {"1", "2", "3", "4", "5"}
    assert set(report["thresholds"]["1"]) >= {"gender", "age", "average"}
    assert "eval" in log
