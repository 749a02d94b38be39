"""Confidence calibration (section 4.2): map an aggregated score S to a level 1..5 per dimension.

Scale. S of M samples lies in [1, 5M]; the calibrator works on s = S / M (mean confidence per
sample, in (0, 5]) so one fitted on M=10 teacher samples applies to a student pass of another M.

Equal frequency (the paper's). s is discrete with heavy ties, and tied samples must share a
level, so exact quintiles are impossible. Rule: sort the fitted values; each distinct value v
gets the quintile of its mid-rank, level(v) = min(5, 1 + floor(5 * q)), where q is the share
of fitted samples strictly below v plus half the share equal to v. A value common enough to
straddle a boundary lands where most of its mass lies; a constant dimension lands on level 3.
Cut points t_1..t_4 sit halfway between the last value of level <= k and the first of level > k
(0 or 5 when a side is empty), and level(s) = 1 + #{k : s > t_k}, which also places unseen s.

Linear (``--no-calibration``, Table 4): five equal-width intervals of [M, 5M], i.e. cut points
1.8, 2.6, 3.4, 4.2 on the s scale.
"""

from __future__ import annotations

import json
import os
from bisect import bisect_left
from collections import Counter
from typing import Iterable, Mapping, Sequence

from .jsonl import InputError

LEVELS = 5
LINEAR_CUTS = (1.8, 2.6, 3.4, 4.2)
METHODS = ("equal_frequency", "linear")


def equal_frequency_cuts(values: Iterable[float]) -> tuple[list[float], dict[float, int]]:
    """Fit the four cut points of one dimension; also return the level given to each value."""
    counts = sorted(Counter(values).items())
    total = sum(c for _, c in counts)
    if total == 0:
        return list(LINEAR_CUTS), {}
    levels: dict[float, int] = {}
    below = 0
    for value, count in counts:
        q = (below + count / 2) / total
        levels[value] = min(LEVELS, 1 + int(LEVELS * q))
        below += count
    cuts = []
    for k in range(1, LEVELS):
        low = [v for v, lv in levels.items() if lv <= k]
        high = [v for v, lv in levels.items() if lv > k]
        if not low:
            cuts.append(0.0)
        elif not high:
            cuts.append(float(LEVELS))
        else:
            cuts.append((max(low) + min(high)) / 2)
    return cuts, levels


class Calibrator:
    """Per-dimension map from S (with its M) to a confidence level 1..5; fit/transform/save/load."""

    def __init__(self, method: str = "equal_frequency", cuts: Mapping[str, Sequence[float]] | None = None):
        if method not in METHODS:
            raise ValueError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
        self.method = method
        self.cuts: dict[str, list[float]] = {k: [float(x) for x in v] for k, v in (cuts or {}).items()}

    @classmethod
    def linear(cls, dims: Iterable[str]) -> "Calibrator":
        return cls("linear", {d: LINEAR_CUTS for d in dims})

    def fit(self, scores: Mapping[str, Iterable[tuple[float, int]]]) -> "Calibrator":
        """Fit from {dim: [(S, M), ...]}; a linear calibrator keeps its fixed cuts."""
        for dim, pairs in scores.items():
            if self.method == "linear":
                self.cuts[dim] = list(LINEAR_CUTS)
            else:
                self.cuts[dim] = equal_frequency_cuts(s / m for s, m in pairs if m > 0)[0]
        return self

    def transform(self, dim: str, score: float, num_samples: int) -> int:
        """Level 1..5 of aggregated score S over M = ``num_samples`` samples."""
        if num_samples <= 0 or score <= 0:
            return 1
        try:
            cuts = self.cuts[dim]
        except KeyError:
            raise KeyError(f"calibrator has no dimension {dim!r} (fitted: {sorted(self.cuts)})") from None
        return 1 + bisect_left(cuts, score / num_samples)

    def to_dict(self) -> dict:
        return {"method": self.method, "scale": "S/M", "cuts": self.cuts}

    @classmethod
    def from_dict(cls, data: object, source: str = "<memory>") -> "Calibrator":
        if not isinstance(data, dict) or "cuts" not in data or not isinstance(data["cuts"], dict):
            raise ValueError(f"{source}: not a calibration file (expected 'method' and 'cuts')")
        for dim, cuts in data["cuts"].items():
            if (
                not isinstance(cuts, list)
                or len(cuts) != LEVELS - 1
                or not all(type(x) in (int, float) and 0 <= x <= LEVELS for x in cuts)
                or sorted(cuts) != cuts
            ):
                # A NaN or a boolean compares like no number: every level would become 1.
                raise ValueError(f"{source}: cuts.{dim}: expected {LEVELS - 1} ascending numbers from 0 to {LEVELS}, got {cuts!r}")
        try:
            return cls(data.get("method", "equal_frequency"), data["cuts"])
        except ValueError as exc:
            raise ValueError(f"{source}: method: {exc}") from None

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=2)
            fh.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Calibrator":
        try:
            with open(path, encoding="utf-8-sig") as fh:
                data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {exc.lineno}: invalid JSON: {exc.msg}") from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not UTF-8 text: {exc.reason}") from None
        return cls.from_dict(data, os.fspath(path))

    @classmethod
    def load_for(cls, path: str | os.PathLike, keys: Iterable[str]) -> "Calibrator":
        """``load``, checked to have cut points for every dimension in ``keys``."""
        calibrator = cls.load(path)
        missing = [k for k in keys if k not in calibrator.cuts]
        if missing:
            raise InputError(f"{path}: no cut points for {', '.join(missing)} (calibrated: {', '.join(calibrator.cuts) or 'none'})")
        return calibrator
