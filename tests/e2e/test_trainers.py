"""Both stages of the method in verl's real trainers, on CPU (the harness in ``verl_cpu_harness``).

1. verl's SFT trainer (``configs/confprofile_sft.yaml``) trains the tiny model on the SFT set that
   ``confprofile build-sft`` wrote, and writes a Hugging Face checkpoint;
2. ``python -m verl.trainer.main_ppo --config-name=confprofile_grpo`` runs 2 GRPO steps from that
   checkpoint on the RL set of ``confprofile build-rl``, with ``reward.num_workers=2`` and
   validation on ``rl_val.parquet`` before and after training, with the v1 trainer (verl's
   default) and the legacy one.

The assertions read what the trainers logged (verl's ``file`` logger) and dumped
(``trainer.rollout_data_dir``, ``trainer.validation_data_dir``).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from verl_cpu_harness.runner import GRPO_TEST_OVERRIDES

TRAINERS = {"v1": (), "legacy": ("trainer.use_v1=false",)}
ROLLOUT_N = int(next(o for o in GRPO_TEST_OVERRIDES if o.startswith("actor_rollout_ref.rollout.n=")).split("=")[1])
BATCH = int(next(o for o in GRPO_TEST_OVERRIDES if o.startswith("data.train_batch_size=")).split("=")[1])
DIMS = ("gender", "age")
# global_steps of the weight loads: before the first step (0) and after each of the 2 steps
WEIGHT_SYNCS = {"v1": [0, 1, 2], "legacy": [0, 1, 2]}




def test_build_rl_wrote_a_labelled_validation_set(e2e_data):
    counts = e2e_data.rl_report["counts"]
    val = pq.read_table(e2e_data.rl_val).to_pylist()
    train = pq.read_table(e2e_data.rl_train).to_pylist()
    assert counts["val_rows"] == len(val) == 8  # round(0.2 x 40 users)
    assert counts["rows"] == len(train) == 32
    assert {r["extra_info"]["split"] for r in val} == {"val"}
    assert {r["extra_info"]["split"] for r in train} == {"train"}
    assert all(json.loads(r["reward_model"]["ground_truth"]).keys() == set(DIMS) for r in val)
    assert not {r["extra_info"]["user_id"] for r in val} & {r["extra_info"]["user_id"] for r in train}


def test_sft_trainer_trains_and_writes_a_checkpoint(sft_run):
    assert Path(sft_run.checkpoint).parent.name == "global_step_8"
    assert (Path(sft_run.checkpoint) / "model.safetensors").is_file()
    losses = [s["train/loss"] for s in sft_run.steps]
    assert len(losses) == 8  # trainer.total_training_steps
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 1.0


@pytest.mark.parametrize("trainer", TRAINERS)
def test_grpo_steps_are_scored_by_confprofile(run_grpo, trainer):
    run = run_grpo(trainer, TRAINERS[trainer])
    assert [s["step"] for s in run.steps] == [1, 2]
    for step in run.steps:
        for stat in ("mean", "max", "min"):
            assert f"critic/score/{stat}" in step
        # 2 dimensions: each R_k lies in [-1, 1]
        assert -2.0 <= step["critic/score/min"] <= step["critic/score/mean"] <= step["critic/score/max"] <= 2.0
    for step_no in (1, 2):
        rows = run.rollouts(step_no)
        assert len(rows) == BATCH * ROLLOUT_N
        # every prompt (one user each) of the step came back as a group of rollout.n members
        assert sorted(Counter(r["input"] for r in rows).values()) == [ROLLOUT_N] * BATCH


@pytest.mark.parametrize("trainer", TRAINERS)
def test_rollouts_come_from_the_trainers_current_weights(run_grpo, trainer):
    """The hf rollout server gets the actor's weights before every step and generates with them."""
    run = run_grpo(trainer, TRAINERS[trainer])
    loads = [e for e in run.server_events if e["event"] == "weights"]
    assert [e["global_steps"] for e in loads] == WEIGHT_SYNCS[trainer]
    assert all(e["tensors"] > 0 and e["missing"] == 0 for e in loads)
    # each load brought the actor's weights after its update (AdamW's weight decay moves them
    # even when every advantage is 0), not the same tensors again
    assert len({e["checksum"] for e in loads}) == len(loads)
    for step in run.steps:
        # the trainer's log-probs of the rollouts match the server's (bf16 training, fp32 rollout)
        assert step["training/rollout_probs_diff_max"] < 0.1


def test_legacy_dump_shows_every_group_voted_complete(run_grpo):
    run = run_grpo("legacy", TRAINERS["legacy"])
    for step_no in (1, 2):
        rows = run.rollouts(step_no)
        assert {r["group_members"] for r in rows} == {ROLLOUT_N}
        assert {r[k] for r in rows for k in ("group_partial", "group_timeout", "group_overflow", "group_unreachable")} == {0.0}


def test_v1_dump_has_no_reward_extra_info(run_grpo):
    """What the README says: only the legacy trainer's rollout dump carries reward_extra_info."""
    rows = run_grpo("v1", TRAINERS["v1"]).rollouts(1)
    assert "group_members" not in rows[0] and not any(key.startswith("gender/") for key in rows[0])


@pytest.mark.parametrize("trainer", TRAINERS)
def test_validation_runs_on_the_val_set_without_waiting(run_grpo, e2e_data, trainer):
    run = run_grpo(trainer, TRAINERS[trainer])
    assert [v["step"] for v in run.validation] == [0, 2]
    val_rows = pq.read_table(e2e_data.rl_val).num_rows
    for v in run.validation:
        assert "val-core/confprofile/reward/mean@1" in v
        rows = run.validation_rollouts(v["step"])
        assert len(rows) == val_rows
        # groups of val_kwargs.n = 1, voted at once: none waited for group_timeout_s
        assert {r["group_members"] for r in rows} == {1.0}
        assert {r["group_partial"] for r in rows} == {0.0}
