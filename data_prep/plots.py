"""The figures of the two builds, drawn with matplotlib's Agg canvas (no display, no pyplot state).

- ``confidence_figure`` (Figure 3): per dimension, the raw aggregated confidence S/M before
  calibration and the calibrated levels 1..5 after it.
- ``difficulty_figure`` (Table 3's shapes): users per difficulty level before and after filtering.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from .difficulty import LEVELS


def _canvas(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=80)
    FigureCanvasAgg(fig)
    return fig


def confidence_figure(
    path: str,
    before: Mapping[str, Mapping[float, int]],
    after: Mapping[str, Mapping[int, int]],
    cuts: Mapping[str, Sequence[float]],
    names: Mapping[str, str],
) -> None:
    """Per dimension (one row each): users per S/M value with the calibrator's cut points (left)
    and users per calibrated level (right). Few ticks: tick objects are most of the drawing time."""
    from matplotlib.ticker import MaxNLocator

    fig = _canvas(9, 2.2 * len(before))
    axes = fig.subplots(len(before), 2, squeeze=False)
    for (left, right), key in zip(axes, before):
        values = sorted(before[key])
        left.vlines(values, 0, [before[key][v] for v in values], linewidth=3, color="tab:gray")
        for cut in cuts[key]:
            left.axvline(cut, color="tab:red", linestyle="--", linewidth=1)
        left.set_xlim(0, 5.2)
        left.set_xticks(range(6))
        left.set_title(f"{names[key]}: S/M before calibration (dashed: cut points)", fontsize=9)
        right.bar(LEVELS, [after[key].get(lv, 0) for lv in LEVELS], color="tab:blue")
        right.set_xticks(LEVELS)
        right.set_title(f"{names[key]}: calibrated level", fontsize=9)
        for ax in (left, right):
            ax.yaxis.set_major_locator(MaxNLocator(3))
    fig.subplots_adjust(left=0.07, right=0.98, top=1 - 0.35 / len(before), bottom=0.25 / len(before), hspace=0.6, wspace=0.2)
    fig.savefig(path)


def difficulty_figure(path: str, before: Sequence[int], after: Sequence[int], shape: str) -> None:
    """Users per difficulty level 1..5 before and after filtering by ``shape``."""
    fig = _canvas(6, 3.5)
    ax = fig.subplots()
    ax.bar([lv - 0.2 for lv in LEVELS], before, width=0.4, label="before", color="tab:gray")
    ax.bar([lv + 0.2 for lv in LEVELS], after, width=0.4, label=f"after ({shape})", color="tab:blue")
    ax.set_xticks(LEVELS)
    ax.set_xlabel("difficulty level (mean calibrated confidence; 1 = least confident)")
    ax.set_ylabel("users")
    ax.legend()
    fig.subplots_adjust(left=0.12, right=0.97, top=0.95, bottom=0.16)
    fig.savefig(path)
