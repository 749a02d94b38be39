"""Evaluation with abstention (section 5.1, Table 7), in the style of scikit-learn's metrics.

Only users whose gold label for a dimension is a real label (present, in the closed set, not
NA) are scored on it. A prediction is an answer when it is a non-NA tag whose confidence is at
least tau; anything else (NA, malformed, below tau) abstains.

    precision = correct answers / answers
    recall    = answers / scored users            (definition="paper": matches Table 7, where
                                                   recall is ~100% at tau=1 while precision ~72%)
    recall    = correct answers / scored users    (definition="standard")
    f1        = 2PR / (P + R)

Averages across dimensions, both used by the paper: ``f1_mean`` (mean of per-dimension F1,
Table 1 and Table 7's Average column) and ``f1_of_means`` (F1 of mean P and mean R, Tables 2-4).
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

from .taxonomy import Taxonomy

DEFINITIONS = ("paper", "standard")
THRESHOLDS = (1, 2, 3, 4, 5)


class PRF(NamedTuple):
    precision: float
    recall: float
    f1: float
    support: int


def f1_score(precision: float, recall: float) -> float:
    """Harmonic mean; 0 when both are 0. Scale-free: works on fractions or percents."""
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def precision_recall_f1(
    y_true: Sequence[str | None],
    y_pred: Sequence[str | None],
    confidence: Sequence[float | None] | None = None,
    *,
    tau: float = 1,
    na: str = "NA",
    definition: str = "paper",
) -> PRF:
    """P/R/F1 (fractions) for one dimension; labels must already be canonical."""
    if definition not in DEFINITIONS:
        raise ValueError(f"unknown recall definition {definition!r}; choose one of {', '.join(DEFINITIONS)}")
    if len(y_true) != len(y_pred) or (confidence is not None and len(confidence) != len(y_pred)):
        raise ValueError("y_true, y_pred and confidence must have the same length")
    support = answers = correct = 0
    for i, gold in enumerate(y_true):
        if gold is None or gold == na:
            continue
        support += 1
        pred = y_pred[i]
        if pred is None or pred == na:
            continue
        if confidence is not None and (confidence[i] is None or confidence[i] < tau):
            continue
        answers += 1
        correct += pred == gold
    return prf_from_counts(correct, answers, support, definition=definition)


def prf_from_counts(correct: float, answers: float, support: float, *, definition: str = "paper") -> PRF:
    """P/R/F1 from the three counts of one dimension: the definitions above, in one place.

    ``support`` users have a real gold label, ``answers`` of them got a non-NA prediction at the
    threshold, ``correct`` of those match the label. Counts may come from anywhere (a list of
    predictions here, per-rollout flags summed by the training metrics), so every caller shares
    the same rules, including 0 for an empty denominator.
    """
    if definition not in DEFINITIONS:
        raise ValueError(f"unknown recall definition {definition!r}; choose one of {', '.join(DEFINITIONS)}")
    precision = correct / answers if answers else 0.0
    hits = answers if definition == "paper" else correct
    recall = hits / support if support else 0.0
    return PRF(precision, recall, f1_score(precision, recall), int(support))


def rate(numerator: float, denominator: float) -> float:
    """numerator / denominator, 0 when the denominator is 0 (the convention of precision above).

    For ratio metrics such as pseudo-label accuracy, sum(label_match) / sum(labelled): a mean of
    per-row ratios would weight rows wrongly, so ratios are always formed from sums.
    """
    return numerator / denominator if denominator else 0.0


def average_scores(per_dim: Mapping[str, PRF]) -> dict[str, float]:
    """Both of the paper's averages over dimensions (same scale as the inputs)."""
    n = len(per_dim)
    if n == 0:
        return {"f1_mean": 0.0, "precision": 0.0, "recall": 0.0, "f1_of_means": 0.0}
    p = sum(s.precision for s in per_dim.values()) / n
    r = sum(s.recall for s in per_dim.values()) / n
    return {"f1_mean": sum(s.f1 for s in per_dim.values()) / n, "precision": p, "recall": r, "f1_of_means": f1_score(p, r)}


def profile_scores(
    gold: Sequence[Mapping[str, str | None]],
    predicted: Sequence[Mapping[str, tuple[str | None, float | None]]],
    taxonomy: Taxonomy,
    *,
    tau: float = 1,
    definition: str = "paper",
) -> dict[str, PRF]:
    """Per-dimension P/R/F1 of predicted {dim: (tag, confidence)} against gold {dim: label}."""
    out = {}
    for dim in taxonomy:
        y_true = [dim.canonical(g.get(dim.key)) for g in gold]
        pairs = [p.get(dim.key, (None, None)) for p in predicted]
        out[dim.key] = precision_recall_f1(
            y_true, [t for t, _ in pairs], [c for _, c in pairs], tau=tau, na=dim.na, definition=definition
        )
    return out


def threshold_sweep(
    gold: Sequence[Mapping[str, str | None]],
    predicted: Sequence[Mapping[str, tuple[str | None, float | None]]],
    taxonomy: Taxonomy,
    *,
    thresholds: Sequence[float] = THRESHOLDS,
    definition: str = "paper",
) -> dict[float, tuple[dict[str, PRF], dict[str, float]]]:
    """Table 7: per-dimension scores and both averages at every threshold tau."""
    sweep = {}
    for tau in thresholds:
        per_dim = profile_scores(gold, predicted, taxonomy, tau=tau, definition=definition)
        sweep[tau] = (per_dim, average_scores(per_dim))
    return sweep
