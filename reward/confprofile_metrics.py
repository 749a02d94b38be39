"""The ``confprofile`` manager's training-step and validation metrics (its MetricFamily).

Reads the per-rollout keys that ``reward.rows.extra_info`` writes (``<dim>/<field>``,
``group_members``, ``group_partial`` and its causes ``group_timeout``, ``group_overflow``,
``group_unreachable``) and reduces them:

Training step, ``confprofile/<dim>/<name>`` per dimension and ``confprofile/overall/<name>``
over every (rollout, dimension) pair (pooled: sums over all dimensions):
    well_formed     share of rollouts whose block is well-formed
    agree           agreement with the target among well-formed answers: sum(agree) / sum(well_formed)
    na              NA answers among well-formed answers
    weight          mean weight w used, over well-formed answers
    ref_missing     well-formed answers without a valid reference confidence (w fell back to 1)
    margin, share   the group vote's margin and the winner's share of the group, per rollout
    label_accuracy  pseudo-label accuracy, sum(label_match) / sum(labelled); only when some
                    rows carry gold labels
and ``confprofile/group/members`` (mean members voted per group, per rollout),
``confprofile/group/partial`` (share of rollouts whose group was voted partial) and, the same
share split by cause, ``confprofile/group/timeout``, ``overflow`` and ``unreachable``.

Validation, per data source (one prediction per prompt, its group's vote, as ``confprofile
eval`` votes the samples of a user), at tau = 1 with the paper's recall:
    val-aux/<data_source>/<dim>/precision, recall, f1     dimensions with a gold label only
    val-core/<data_source>/average/precision, recall, f1_mean, f1_of_means
The counts go through ``verl_confprofile.metrics``, the code ``confprofile eval`` uses.
"""

from __future__ import annotations

from typing import Collection, Sequence

import numpy as np

from verl_confprofile.metrics import PRF, average_scores, prf_from_counts, rate

from .extra_metrics import Columns, MetricFamily, group_metrics, register_family
from .group import group_keys
from .rows import FIELDS

SECTION = "confprofile"
OVERALL = "overall"
GROUP_PREFIX = "group_"
GROUP_KEYS = group_keys(GROUP_PREFIX)
WELL_FORMED_RATES = ("agree", "na", "weight", "ref_missing")  # sums over well-formed answers
ROLLOUT_MEANS = ("margin", "share")


def dimensions(keys: Collection[str]) -> list[str]:
    """The dimensions whose every field is present (in key order); none without the group keys."""
    present = set(keys)
    if not all(k in present for k in GROUP_KEYS):
        return []
    dims = dict.fromkeys(k.rsplit("/", 1)[0] for k in keys if k.endswith("/well_formed"))
    return [d for d in dims if all(f"{d}/{f}" in present for f in FIELDS)]


def claims(keys: Collection[str]) -> list[str]:
    dims = dimensions(keys)
    return [f"{d}/{f}" for d in dims for f in FIELDS] + list(GROUP_KEYS) if dims else []


def _sums(cols: Columns, dims: Sequence[str]) -> dict[str, float]:
    return {f: float(sum(np.nansum(cols[f"{d}/{f}"]) for d in dims)) for f in FIELDS}


def _rates(sums: dict[str, float], pairs: float) -> dict[str, float]:
    """The step metrics of summed fields over ``pairs`` (rollout, dimension) pairs."""
    well_formed = sums["well_formed"]
    out = {"well_formed": rate(well_formed, pairs)}
    out.update({f: rate(sums[f], well_formed) for f in WELL_FORMED_RATES})
    out.update({f: rate(sums[f], pairs) for f in ROLLOUT_MEANS})
    if sums["labelled"]:
        out["label_accuracy"] = rate(sums["label_match"], sums["labelled"])
    return out


def step(cols: Columns) -> dict[str, float]:
    dims = dimensions(cols)
    rows = int(np.isfinite(cols["group_members"]).sum())
    out = {}
    blocks = [(d, [d], rows) for d in dims]
    if OVERALL not in dims:  # a dimension of that name keeps its own values; the pooled block is left out
        blocks.append((OVERALL, dims, rows * len(dims)))
    for name, group, pairs in blocks:
        out.update({f"{SECTION}/{name}/{k}": v for k, v in _rates(_sums(cols, group), pairs).items()})
    out.update(group_metrics(cols, GROUP_PREFIX, SECTION))  # group_members -> confprofile/group/members, ...
    return out


def first_of_each(uids: Sequence) -> np.ndarray:
    """Index of the first row of every prompt uid: one prediction per prompt (rows without a uid count alone)."""
    seen, first = set(), []
    for i, uid in enumerate(uids):
        if uid is None:
            first.append(i)
        elif uid not in seen:
            seen.add(uid)
            first.append(i)
    return np.asarray(first, dtype=int)


def validation(cols: Columns, uids: Sequence) -> tuple[dict[str, float], dict[str, float]]:
    """P/R/F1 per dimension and both averages, at tau = 1, as ``confprofile eval`` defines them."""
    rows = first_of_each(uids)
    per_dim: dict[str, PRF] = {}
    for d in dimensions(cols):
        gold = np.nan_to_num(cols[f"{d}/gold"][rows])
        support = gold.sum()
        if not support:  # no gold label: left out, as in confprofile eval
            continue
        answers = (gold * np.nan_to_num(cols[f"{d}/answered"][rows])).sum()
        correct = (gold * np.nan_to_num(cols[f"{d}/correct"][rows])).sum()
        per_dim[d] = prf_from_counts(correct, answers, support)
    if not per_dim:
        return {}, {}
    aux = {f"{d}/{k}": float(getattr(s, k)) for d, s in per_dim.items() for k in ("precision", "recall", "f1")}
    core = {f"average/{k}": float(v) for k, v in average_scores(per_dim).items()}
    return core, aux


FAMILY = register_family(MetricFamily(SECTION, claims, step, validation))
