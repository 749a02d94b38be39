"""The one place this package hooks into verl beyond its extension points: reward-extra-info metrics.

verl 0.9.1 has no extension point for training metrics: its step metrics
(``metric_utils.compute_data_metrics``) never read ``reward_extra_info``, and its validation
only averages each key. This module adds the metrics of ``reward.extra_metrics`` to both, in
both trainers, by wrapping four verl callables when their modules are imported (a post-import
hook from ``wrapt``; nothing of verl is imported here):

- legacy trainer (``trainer.use_v1=false``), ``verl.trainer.ppo.ray_trainer``: the module's
  own name ``compute_data_metrics`` (``fit`` calls it with the step's ``DataProto``, whose
  ``non_tensor_batch`` holds the keys listed in ``meta_info["reward_extra_keys"]``), and
  ``RayPPOTrainer._val_metrics_update``;
- v1 trainer (the default), ``verl.trainer.ppo.v1.trainer_base``: ``PPOTrainer._compute_metrics``
  (the batch it receives lives in TransferQueue; each rollout's ``reward_extra_info`` is read
  from its ``extra_fields``, padding rows left out as verl does), and
  ``PPOTrainer._val_metrics_update``.

Guarantees. The wrappers only add keys: verl's result is computed first and returned as is,
and a key verl already has is never overwritten. A target that is missing or whose signature
changed is left alone with a warning that names it; a reduction that fails is skipped for that
step with a warning, never an exception in the trainer. ``CONFPROFILE_VERL_METRICS=0`` (or
false/off/no) in the trainer's environment installs nothing at all.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import warnings
from typing import Any, Callable, Mapping

import wrapt

from .extra_metrics import step_metrics, validation_metrics

logger = logging.getLogger(__name__)

ENV_SWITCH = "CONFPROFILE_VERL_METRICS"
LEGACY_MODULE = "verl.trainer.ppo.ray_trainer"
V1_MODULE = "verl.trainer.ppo.v1.trainer_base"
MARK = "__confprofile_metrics__"  # set on every wrapper, so nothing is wrapped twice
VAL_PARAMS = ("data_sources", "sample_uids", "reward_extra_infos_dict")

# "<module>.<name>" -> "wrapped" or why not; what tests and a curious user can inspect.
status: dict[str, str] = {}
_warned: set[str] = set()


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "off", "no")


def install() -> None:
    """Wrap the trainers' metric functions when (or, if already imported, now that) verl loads them."""
    if not enabled():
        return
    wrapt.register_post_import_hook(patch_legacy, LEGACY_MODULE)
    wrapt.register_post_import_hook(patch_v1, V1_MODULE)


def patch_legacy(module) -> None:
    _wrap(module, None, "compute_data_metrics", ("batch",), _legacy_step)
    _wrap(module, "RayPPOTrainer", "_val_metrics_update", ("self", *VAL_PARAMS), _validation)


def patch_v1(module) -> None:
    tq = getattr(module, "tq", None)
    if not callable(getattr(tq, "kv_batch_get", None)):
        _refuse(f"{module.__name__}.tq.kv_batch_get", "is missing", "training-step")
    else:
        _wrap(module, "PPOTrainer", "_compute_metrics", ("self", "batch", "metrics"), functools.partial(_v1_step, tq))
    _wrap(module, "PPOTrainer", "_val_metrics_update", ("self", *VAL_PARAMS), _validation)


# ---------------------------------------------------------------- wrapping, fail safe


def _wrap(module, owner_name: str | None, name: str, params: tuple[str, ...], make: Callable) -> None:
    """Replace ``module[.owner].name`` by ``make(original, signature)``, or warn and leave it."""
    target = f"{module.__name__}.{owner_name + '.' if owner_name else ''}{name}"
    what = "validation" if name == "_val_metrics_update" else "training-step"
    try:
        owner = getattr(module, owner_name) if owner_name else module
        original = getattr(owner, name, None)
        if original is None or not callable(original):
            return _refuse(target, "is missing", what)
        if getattr(original, MARK, False):
            return
        signature = inspect.signature(original)
        if not set(params) <= set(signature.parameters):
            return _refuse(target, f"no longer takes ({', '.join(params)})", what)
        wrapper = make(original, signature)
        setattr(wrapper, MARK, True)
        setattr(owner, name, wrapper)
        status[target] = "wrapped"
    except Exception as exc:  # an import hook must never break verl's import
        _refuse(target, f"could not be wrapped ({exc!r})", what)


def _refuse(target: str, why: str, what: str) -> None:
    status[target] = why
    _warn(
        target,
        f"confprofile: {target} {why} (verl changed?); the reward-extra-info {what} metrics are off "
        f"for this trainer. Training and verl's own metrics are unaffected.",
    )


def _warn(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        logger.warning(message)


def _add(metrics: dict, compute: Callable[[], Mapping[str, float]], what: str) -> None:
    """Add computed metrics to verl's dict: never a key verl has, never an exception."""
    try:
        extra = compute()
    except Exception as exc:
        _warn(f"failed:{what}", f"confprofile: reward-extra-info {what} metrics skipped ({exc!r}); verl's own metrics are unchanged")
        return
    clashes = [k for k in extra if k in metrics]
    if clashes:
        _warn(f"clash:{what}", f"confprofile: verl already logs {', '.join(clashes[:3])}; its values are kept")
    for key, value in extra.items():
        metrics.setdefault(key, value)


# ---------------------------------------------------------------- the wrappers


def _legacy_step(original: Callable, signature: inspect.Signature) -> Callable:
    @functools.wraps(original)
    def compute_data_metrics(*args, **kwargs):
        metrics = original(*args, **kwargs)
        batch = signature.bind(*args, **kwargs).arguments["batch"]
        _add(metrics, lambda: step_metrics(legacy_columns(batch)), "training-step")
        return metrics

    return compute_data_metrics


def legacy_columns(batch) -> dict[str, Any]:
    """The reward_extra_info columns of a legacy-trainer DataProto (only the keys verl lists as such)."""
    keys = batch.meta_info.get("reward_extra_keys") or []
    return {k: batch.non_tensor_batch[k] for k in keys if k in batch.non_tensor_batch}


def _v1_step(tq, original: Callable, signature: inspect.Signature) -> Callable:
    @functools.wraps(original)
    def _compute_metrics(*args, **kwargs):
        result = original(*args, **kwargs)
        bound = signature.bind(*args, **kwargs).arguments
        _add(bound["metrics"], lambda: step_metrics(v1_columns(tq, bound["batch"])), "training-step")
        return result

    return _compute_metrics


def v1_columns(tq, batch) -> dict[str, list]:
    """The reward_extra_info columns of a v1-trainer batch, read from TransferQueue's extra_fields."""
    keep = [not tag.get("is_padding", False) for tag in batch.tags]
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
    rows = []
    for value, kept in zip(list(data["extra_fields"]), keep, strict=True):
        if kept or not any(keep):  # verl's own rule: all rows when every row is padding
            fields = getattr(value, "data", value)
            info = fields.get("reward_extra_info") if isinstance(fields, Mapping) else None
            rows.append(info if isinstance(info, Mapping) else {})
    keys = dict.fromkeys(k for row in rows for k in row)
    return {k: [row.get(k) for row in rows] for k in keys}


def _validation(original: Callable, signature: inspect.Signature) -> Callable:
    @functools.wraps(original)
    def _val_metrics_update(*args, **kwargs):
        metrics = original(*args, **kwargs)
        bound = signature.bind(*args, **kwargs).arguments
        _add(
            metrics,
            lambda: validation_metrics(bound["data_sources"], bound["sample_uids"], bound["reward_extra_infos_dict"]),
            "validation",
        )
        return metrics

    return _val_metrics_update


install()  # on import: the verl.plugins entry point (reward.plugin) imports this in every process
