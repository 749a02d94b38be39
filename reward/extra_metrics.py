"""Metrics from any reward manager's ``reward_extra_info``: training steps and validation.

verl puts every rollout's ``reward_extra_info`` into the batch, but its training-step metrics
never read it, and its validation only averages each key. This module turns those columns
(key -> one value per rollout) into metrics; ``reward.verl_metrics_hook`` feeds it from verl's
trainers. It imports neither verl nor torch.

- Every numeric key becomes ``reward_extra/<key>/mean`` in the step metrics, for any manager.
- A reward manager whose keys need other reductions registers a :class:`MetricFamily`: ratios
  of sums (sum(label_match) / sum(labelled) is not a mean of rows), precision / recall / F1,
  its own section name. The keys a family claims are reduced by it alone. Registration runs
  when the manager's module is imported, which the ``verl.plugins`` entry point does in every
  process, the trainer's included. A group reward's ``group_info`` keys become
  ``<section>/group/...`` through ``group_metrics``.

A family's validation reducer adds metrics per data source, next to verl's own
``val-aux/<data_source>/<key>/mean@N``: ``val-core/<data_source>/<name>`` for the headline
numbers and ``val-aux/<data_source>/<name>`` for the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real
from typing import Callable, Collection, Mapping, Sequence

import numpy as np

from .group import GROUP_FIELDS

GENERIC_SECTION = "reward_extra"

Columns = Mapping[str, np.ndarray]  # float arrays, one value per rollout, NaN where a rollout has none


@dataclass(frozen=True)
class MetricFamily:
    """How one reward manager's keys become metrics.

    claims: given every numeric key of a batch, the keys this family reduces (empty: none of
        its keys are here). Claimed keys are left out of the generic means.
    step: the claimed columns -> training-step metrics, full names (``section/name``).
    validation: the claimed columns of one data source and each row's prompt uid ->
        (val-core names, val-aux names), both relative to ``val-*/<data_source>/``.
    """

    name: str
    claims: Callable[[Collection[str]], Collection[str]]
    step: Callable[[Columns], dict[str, float]]
    validation: Callable[[Columns, Sequence], tuple[dict[str, float], dict[str, float]]] | None = None


_FAMILIES: dict[str, MetricFamily] = {}


def register_family(family: MetricFamily) -> MetricFamily:
    """Register (or replace, on re-import) a family; families claim keys in registration order."""
    _FAMILIES[family.name] = family
    return family


def registered_families() -> list[MetricFamily]:
    return list(_FAMILIES.values())


def group_metrics(columns: Columns, prefix: str, section: str) -> dict[str, float]:
    """``<section>/group/<field>``: the mean over rollouts of each ``reward.group.group_info`` key
    written under ``prefix`` (members per group; the shares of rollouts whose group was partial,
    and by each cause, which add up to the partial share)."""
    return {f"{section}/group/{field}": float(np.nanmean(columns[prefix + field])) for field in GROUP_FIELDS}


def as_floats(values: Sequence | np.ndarray) -> np.ndarray | None:
    """A column as a 1-D float array (None -> NaN), or None when it is not numeric."""
    array = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object)
    if array.ndim != 1:
        return None
    if array.dtype.kind in "biuf":
        return array.astype(float)
    if array.dtype != object:
        return None  # strings, bytes, dates
    out = np.empty(len(array))
    for i, value in enumerate(array):
        if value is None:
            out[i] = np.nan
        elif isinstance(value, (Real, np.bool_)) and not isinstance(value, str):
            out[i] = float(value)
        else:
            return None
    return out


def numeric_columns(columns: Mapping[str, Sequence]) -> dict[str, np.ndarray]:
    """The numeric columns, as float arrays; other columns (text, nested values) are skipped."""
    out = {}
    for key, values in columns.items():
        array = as_floats(values)
        if array is not None and len(array) and not np.isnan(array).all():
            out[key] = array
    return out


def _claimed(columns: Columns) -> list[tuple[MetricFamily, dict[str, np.ndarray]]]:
    free = dict(columns)
    out = []
    for family in registered_families():
        keys = [k for k in family.claims(list(free)) if k in free]
        if keys:
            out.append((family, {k: free.pop(k) for k in keys}))
    out.append((None, free))
    return out


def step_metrics(columns: Mapping[str, Sequence]) -> dict[str, float]:
    """Training-step metrics of one batch's reward_extra_info columns."""
    out: dict[str, float] = {}
    for family, cols in _claimed(numeric_columns(columns)):
        if family is not None:
            out.update(family.step(cols))
        else:
            out.update({f"{GENERIC_SECTION}/{k}/mean": float(np.nanmean(v)) for k, v in cols.items()})
    return out


def validation_metrics(data_sources: Sequence, uids: Sequence, columns: Mapping[str, Sequence]) -> dict[str, float]:
    """The families' validation metrics, per data source (verl already averages every key)."""
    sources = np.asarray([str(s) for s in data_sources], dtype=object)
    uid_array = np.asarray(list(uids), dtype=object)
    numeric = {k: v for k, v in numeric_columns(columns).items() if len(v) == len(sources)}
    out: dict[str, float] = {}
    for source in dict.fromkeys(sources):
        rows = sources == source
        for family, cols in _claimed({k: v[rows] for k, v in numeric.items()}):
            if family is None or family.validation is None:
                continue
            core, aux = family.validation(cols, uid_array[rows])
            out.update({f"val-core/{source}/{k}": v for k, v in core.items()})
            out.update({f"val-aux/{source}/{k}": v for k, v in aux.items()})
    return out
