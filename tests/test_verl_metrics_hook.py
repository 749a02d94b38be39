"""reward.verl_metrics_hook against verl's real trainer modules (both trainers) and TransferQueue.

The hook is installed by the ``verl.plugins`` entry point on ``import verl``; these tests import
verl's trainer modules as its trainers do and call the functions the trainers call, with real
``DataProto`` batches and verl's own validation reduction. Expected values are those of the
hand-worked columns of test_extra_metrics.py.
"""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from test_extra_metrics import step_columns, validation_columns

ray_trainer = pytest.importorskip("verl.trainer.ppo.ray_trainer")
trainer_base = pytest.importorskip("verl.trainer.ppo.v1.trainer_base")

from verl import DataProto  # noqa: E402
from verl.trainer.ppo import metric_utils  # noqa: E402
from verl_confprofile.reward import verl_metrics_hook as hook  # noqa: E402
from verl_confprofile.reward.extra_metrics import _FAMILIES, MetricFamily, register_family  # noqa: E402

# The hand-worked step values (test_extra_metrics.test_confprofile_step_metrics_by_hand), a few of them.
STEP_VALUES = {
    "confprofile/gender/agree": 2 / 3,
    "confprofile/age/well_formed": 1 / 2,
    "confprofile/overall/weight": 2.6 / 5,
    "confprofile/overall/label_accuracy": 1.0,
    "confprofile/group/partial": 0.0,
    "confprofile/group/timeout": 0.0,
}


def legacy_batch(extra: dict) -> DataProto:
    """A step batch as the legacy trainer holds it when it calls compute_data_metrics."""
    n, prompt_len, response_len = 4, 3, 5
    response_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    scores = torch.zeros(n, response_len)
    scores[:, 0] = torch.tensor([1.0, -2.0, 0.5, 0.0])
    tensors = {
        "prompts": torch.ones(n, prompt_len, dtype=torch.long),
        "responses": torch.ones(n, response_len, dtype=torch.long),
        "attention_mask": torch.cat([torch.ones(n, prompt_len, dtype=torch.long), response_mask], dim=1),
        "response_mask": response_mask,
        "token_level_scores": scores,
        "token_level_rewards": scores,
        "advantages": scores * 0.5,
        "returns": scores,
    }
    non_tensors = {k: np.array(v) for k, v in extra.items()}
    # columns of the dataset, which are not reward extra info and must not become metrics
    non_tensors["index"] = np.arange(n)
    non_tensors["uid"] = np.array(["u1"] * n, dtype=object)
    return DataProto.from_dict(tensors=tensors, non_tensors=non_tensors, meta_info={"reward_extra_keys": list(extra)})


def test_installed_on_both_trainers_by_the_plugin():
    assert hook.status == {
        "verl.trainer.ppo.ray_trainer.compute_data_metrics": "wrapped",
        "verl.trainer.ppo.ray_trainer.RayPPOTrainer._val_metrics_update": "wrapped",
        "verl.trainer.ppo.v1.trainer_base.PPOTrainer._compute_metrics": "wrapped",
        "verl.trainer.ppo.v1.trainer_base.PPOTrainer._val_metrics_update": "wrapped",
    }
    assert ray_trainer.compute_data_metrics is not metric_utils.compute_data_metrics


def test_legacy_step_metrics_add_keys_and_change_nothing_of_verl():
    extra = {**step_columns(), "acc": [1.0, 0.0, 0.0, 1.0]}
    batch = legacy_batch(extra)
    got = ray_trainer.compute_data_metrics(batch=batch, use_critic=False)  # as RayPPOTrainer.fit calls it
    verl_own = metric_utils.compute_data_metrics(batch=batch, use_critic=False)
    assert {k: got[k] for k in verl_own} == verl_own
    assert got["critic/score/mean"] == pytest.approx((1.0 - 2.0 + 0.5 + 0.0) / 4)
    for key, value in STEP_VALUES.items():
        assert got[key] == pytest.approx(value)
    assert got["reward_extra/acc/mean"] == 0.5  # a key of no family: its mean
    assert not any("index" in k or "uid" in k for k in got)  # dataset columns are not reward extra info


def test_majority_vote_accuracies_are_over_labelled_rollouts_in_the_logged_metrics():
    # 4 rollouts, 2 labelled: label_accuracy 1, 0 and reward_accuracy 1, 1 on those (0.0 on the
    # unlabelled ones, as majority_vote writes them): 1/2 and 2/2, where means of rows say 1/4, 2/4.
    # Group A (rows 1-2) timed out with 2 of 4 members, B (rows 3-4) complete with 4.
    extra = {
        "majority_vote/majority_share": [0.5, 0.5, 0.75, 0.75],
        "majority_vote/agreed": [1.0, 0.0, 1.0, 1.0],
        "majority_vote/answered": [1.0, 1.0, 1.0, 0.0],
        "majority_vote/labelled": [1.0, 1.0, 0.0, 0.0],
        "majority_vote/label_accuracy": [1.0, 0.0, 0.0, 0.0],
        "majority_vote/reward_accuracy": [1.0, 1.0, 0.0, 0.0],
        "majority_vote/group_members": [2.0, 2.0, 4.0, 4.0],
        "majority_vote/group_partial": [1.0, 1.0, 0.0, 0.0],
        "majority_vote/group_timeout": [1.0, 1.0, 0.0, 0.0],
        "majority_vote/group_overflow": [0.0] * 4,
        "majority_vote/group_unreachable": [0.0] * 4,
    }
    got = ray_trainer.compute_data_metrics(batch=legacy_batch(extra), use_critic=False)
    assert {k: v for k, v in got.items() if k.startswith("majority_vote/")} == pytest.approx(
        {
            "majority_vote/majority_share": 0.625,
            "majority_vote/agreed": 0.75,
            "majority_vote/answered": 0.75,
            "majority_vote/labelled": 0.5,
            "majority_vote/label_accuracy": 0.5,
            "majority_vote/reward_accuracy": 1.0,
            "majority_vote/group/members": 3.0,
            "majority_vote/group/partial": 0.5,
            "majority_vote/group/timeout": 0.5,
            "majority_vote/group/overflow": 0.0,
            "majority_vote/group/unreachable": 0.0,
        }
    )
    assert not any(k.startswith("reward_extra/") for k in got)  # every key of majority_vote's is claimed


def test_validation_metrics_in_both_trainers():
    uids, cols = validation_columns()
    sources = np.array(["profiles"] * len(uids), dtype=object)
    for trainer in (ray_trainer.RayPPOTrainer, trainer_base.PPOTrainer):
        # called as the trainers call it, self._val_metrics_update(...); it reads nothing of self
        got = trainer._val_metrics_update(None, sources, uids, {k: list(v) for k, v in cols.items()}, [])
        verl_own = metric_utils.process_validation_metrics(sources, uids, cols)
        # verl's own averages are all there (val-aux/<source>/<key>/mean@2 ...), untouched
        assert got["val-aux/profiles/gender/answered/mean@2"] == verl_own["profiles"]["gender/answered"]["mean@2"]
        assert got["val-core/profiles/reward/mean@2"] == 0.0
        assert got["val-aux/profiles/gender/f1"] == pytest.approx(2 / 3)
        assert got["val-core/profiles/average/f1_of_means"] == pytest.approx(3 / 4)


def test_v1_reads_reward_extra_info_from_transfer_queue(local_ray):
    """The v1 trainer's batch lives in TransferQueue: each rollout's extra_fields as the agent loop puts it."""
    import transfer_queue as tq
    from transfer_queue.metadata import KVBatchMeta
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    tq.init({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}})
    try:
        cols = step_columns()
        rows = [{k: v[i] for k, v in cols.items()} for i in range(4)]
        keys = [f"p0_{i}_0" for i in range(4)] + ["p0_pad_0"]
        fields = [{"extra_fields": {"reward_extra_info": r, "global_steps": 1}, "x": torch.zeros(2)} for r in rows]
        fields.append({"extra_fields": {"reward_extra_info": {**rows[0], "gender/agree": 99.0}}, "x": torch.zeros(2)})
        tags = [{"status": "success"}] * 4 + [{"status": "success", "is_padding": True}]
        tq.kv_batch_put(keys=keys, partition_id="train", fields=list_of_dict_to_tensordict(fields), tags=tags)
        meta = KVBatchMeta(keys=keys, tags=tags, partition_id="train")
        columns = hook.v1_columns(trainer_base.tq, meta)
        assert columns["gender/agree"] == cols["gender/agree"]  # the padding row is left out
        from verl_confprofile.reward.extra_metrics import step_metrics

        got = step_metrics(columns)
        for key, value in STEP_VALUES.items():
            assert got[key] == pytest.approx(value)
    finally:
        tq.close()


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(hook, "_warned", set())
    monkeypatch.setattr(hook, "status", {})


def test_a_moved_function_gives_a_warning_not_a_crash(monkeypatch, fresh_warnings):
    monkeypatch.delattr(ray_trainer, "compute_data_metrics")
    monkeypatch.setattr(ray_trainer.RayPPOTrainer, "_val_metrics_update", lambda self, results: {})
    with pytest.warns(RuntimeWarning) as caught:
        hook.patch_legacy(ray_trainer)  # what the import hook runs when verl loads the module
    messages = [str(w.message) for w in caught]
    assert any("ray_trainer.compute_data_metrics is missing" in m for m in messages)
    assert any("_val_metrics_update no longer takes" in m for m in messages)
    assert all("Training and verl's own metrics are unaffected" in m for m in messages)
    assert not hasattr(ray_trainer, "compute_data_metrics")  # nothing put in its place

    monkeypatch.setattr(trainer_base, "tq", object())  # TransferQueue's client API moved
    with pytest.warns(RuntimeWarning, match="tq.kv_batch_get is missing"):
        hook.patch_v1(trainer_base)


def test_a_failing_reduction_warns_and_leaves_verl_metrics(fresh_warnings):
    def broken(cols):
        raise ZeroDivisionError("boom")

    register_family(MetricFamily("broken", lambda keys: [k for k in keys if k == "acc"], broken))
    try:
        batch = legacy_batch({"acc": [1.0, 0.0, 0.0, 1.0]})
        with pytest.warns(RuntimeWarning, match="training-step metrics skipped"):
            got = ray_trainer.compute_data_metrics(batch=batch, use_critic=False)
        assert got == metric_utils.compute_data_metrics(batch=batch, use_critic=False)
    finally:
        del _FAMILIES["broken"]


SWITCHED_OFF = """
import verl
import verl.trainer.ppo.ray_trainer as rt, verl.trainer.ppo.v1.trainer_base as tb
from verl.trainer.ppo import metric_utils as mu
from verl_confprofile.reward import verl_metrics_hook as hook
assert hook.status == {}, hook.status
assert rt.compute_data_metrics is mu.compute_data_metrics
assert rt.RayPPOTrainer._val_metrics_update.__qualname__ == "RayPPOTrainer._val_metrics_update"
assert not hasattr(rt.RayPPOTrainer._val_metrics_update, hook.MARK)
assert not hasattr(tb.PPOTrainer._compute_metrics, hook.MARK) and not hasattr(tb.PPOTrainer._val_metrics_update, hook.MARK)
print("untouched")
"""


def test_switched_off_verl_is_untouched():
    env = {**os.environ, hook.ENV_SWITCH: "0"}
    out = subprocess.run([sys.executable, "-c", SWITCHED_OFF], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("untouched")


def test_no_warning_when_verl_is_as_expected():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        hook.patch_legacy(ray_trainer)  # already wrapped: a second pass changes nothing, says nothing
        hook.patch_v1(trainer_base)
    assert getattr(ray_trainer.compute_data_metrics, hook.MARK)
    assert not getattr(ray_trainer.compute_data_metrics.__wrapped__, hook.MARK, False)  # wrapped once
