"""``confprofile eval``: score model samples against a labelled set (section 5.1, Table 7, Figure 5).

Prediction of one user and dimension. The user's samples are voted (Eq. 3-5, ``--voting``); the
voted tag is the prediction, NA when no sample is well-formed for that dimension (an abstention).
Its confidence is the level 1..5 of the winner's S over the user's M samples: the calibrated
level with ``--calibration``, otherwise the linear map of S/M (``Calibrator.linear``: equal-width
intervals of [M, 5M]). With one sample per user the vote is that sample, S/M is its own score and
the linear level equals it, so "one sample, no calibrator" scores each prediction with its own
score. The metrics then follow ``verl_confprofile.metrics`` at tau = 1..5.

Coverage, never silent. Evaluated users are the records with at least one gold label. A labelled
user without samples abstains on every dimension (it lowers recall, never precision); samples of
users that are not labelled records are ignored; both are counted. Gold labels outside the
taxonomy's closed set are not scored and are counted. A dimension without any gold label in the
set has no meaningful precision or recall: it is left out of the tables and of the averages, and
listed under ``records.dimensions_without_gold``.

report.json (values in percent, full precision; key order is stable)::

    {"thresholds": {"1": {"<dim>": {"precision", "recall", "f1"}, ...,
                          "average": {"f1_mean", "precision", "recall", "f1_of_means"}}, ...},
     "counts":  {...},            # of the first run, like "thresholds"
     "runs":    {"<name>": {"samples": FILE, "thresholds": {...}, "counts": {...}}, ...},
     "records": {...}, "options": {...}}

The top-level ``thresholds`` and ``counts`` always describe the first ``--samples`` run, so a
single-run script never has to know about runs; ``runs`` holds every run, the first included, in
command-line order.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from .aggregate import profile_record, read_samples
from .calibration import Calibrator
from .data_prep.outputs import OutputFolder
from .data_prep.records import read_records
from .jsonl import DROP_TRUNCATED_HELP, STRICT_HELP, InputError, SkipLog, truncation_report, truncation_summary, write_json
from .metrics import DEFINITIONS, PRF, THRESHOLDS, threshold_sweep
from .output_guard import declare
from .taxonomy import Taxonomy
from .voting import VOTING_HELP, VOTING_METHODS

AVERAGE_KEY = "average"
# The files eval writes in --out, put in place in this order when all are written (the reports last).
OUTPUTS = ("precision_recall.png", "precision_recall_by_dimension.png", "report.md", "report.json")
EXAMPLES = 10  # user ids listed per count in the reports
RECALL_DEFINITIONS = {
    "paper": "paper: answered / gold-labelled users (Table 7)",
    "standard": "standard: correct / gold-labelled users",
}
Sweep = dict[int, tuple[dict[str, PRF], dict[str, float]]]


@dataclass
class GoldSet:
    """The labelled users of a records file, with canonical gold labels and what was left out."""

    source: str
    labels: dict[str, dict[str, str]]  # user_id -> {dimension: canonical label}, file order
    support: dict[str, int]  # dimension -> users with a real (non-NA) gold label
    unlabelled_records: int = 0
    skipped_records: dict[str, int] = field(default_factory=dict)
    out_of_set: Counter = field(default_factory=Counter)
    out_of_set_examples: dict[str, str] = field(default_factory=dict)
    unknown_label_keys: Counter = field(default_factory=Counter)

    @property
    def scored_dimensions(self) -> list[str]:
        return [k for k, n in self.support.items() if n]

    @property
    def dimensions_without_gold(self) -> list[str]:
        return [k for k, n in self.support.items() if not n]


@dataclass
class RunResult:
    """One --samples file scored: its Table 7 sweep and its coverage counts."""

    name: str
    samples: str
    sweep: Sweep
    counts: dict


def read_gold(path: str | os.PathLike, taxonomy: Taxonomy) -> GoldSet:
    """Gold labels of every labelled record, canonicalised; bad labels counted, not dropped silently."""
    records = read_records(path)
    gold = GoldSet(os.fspath(path), {}, {d.key: 0 for d in taxonomy}, skipped_records=dict(records.skipped))
    for user, record in records.records.items():
        labels = record["labels"]
        if not labels:
            gold.unlabelled_records += 1
            continue
        gold.unknown_label_keys.update(k for k in labels if k not in taxonomy.keys)
        canonical = {}
        for dim in taxonomy:
            raw = labels.get(dim.key)
            if raw is None:
                continue
            label = dim.canonical(raw)
            if label is None:
                gold.out_of_set[dim.key] += 1
                gold.out_of_set_examples.setdefault(dim.key, f"user {user}: {raw!r}")
                continue
            canonical[dim.key] = label
            gold.support[dim.key] += label != dim.na
        gold.labels[user] = canonical
    if not gold.labels:
        raise InputError(f"{path}: no record has 'labels': nothing to evaluate against")
    if not gold.scored_dimensions:
        raise InputError(f"{path}: no gold label other than NA for any of {', '.join(taxonomy.keys)} (wrong --taxonomy?)")
    return gold


def evaluate_run(
    name: str,
    samples_path: str,
    gold: GoldSet,
    taxonomy: Taxonomy,
    calibrator: Calibrator,
    *,
    voting: str = "confidence",
    definition: str = "paper",
    strict: bool = False,
    drop_truncated: bool = False,
) -> RunResult:
    """Vote each labelled user's samples into one prediction per dimension and sweep tau.

    A samples file without any sample of a labelled user is an error: its tables would be all
    zeros, which reads as a result.
    """
    skips, truncated = SkipLog(), SkipLog()
    users = read_samples(samples_path, taxonomy, strict=strict, skips=skips, truncated=truncated, drop_truncated=drop_truncated)
    if not any(u in gold.labels for u in users):
        raise InputError(
            f"{samples_path}: no sample of any labelled user of {gold.source} "
            f"({len(users)} users with samples, skipped lines: {skips.summary()})"
        )
    scored = gold.scored_dimensions
    abstentions = {k: {"na": 0, "malformed": 0, "no_samples": 0} for k in scored}
    malformed_samples: Counter = Counter()
    predicted, missing = [], []
    for user, labels in gold.labels.items():
        real = [k for k in scored if labels.get(k, taxonomy[k].na) != taxonomy[k].na]
        samples = users.get(user)
        if samples is None:
            missing.append(user)
            predicted.append({})
            for k in real:
                abstentions[k]["no_samples"] += 1
            continue
        record = profile_record(user, samples, taxonomy, voting=voting, calibrator=calibrator)
        malformed_samples.update(record["malformed"])
        profile = record["profile"]
        predicted.append({k: (v["tag"], v["confidence"]) for k, v in profile.items()})
        for k in real:
            if profile[k]["votes"] == 0:
                abstentions[k]["malformed"] += 1
            elif profile[k]["tag"] == taxonomy[k].na:
                abstentions[k]["na"] += 1
    unknown = [u for u in users if u not in gold.labels]
    counts = {
        "samples": sum(t.num_samples for t in users.values()),
        "users_with_samples": len(users),
        "users_evaluated": len(gold.labels) - len(missing),
        "missing_users": len(missing),
        "missing_user_examples": missing[:EXAMPLES],
        "unknown_users": len(unknown),
        "unknown_user_examples": unknown[:EXAMPLES],
        "skipped_lines": skips.to_dict(),
        "truncated_samples": truncation_report(skips, truncated, drop_truncated),
        "abstentions_at_tau_1": abstentions,
        "malformed_samples": {k: malformed_samples[k] for k in scored},
    }
    scored_taxonomy = Taxonomy([taxonomy[k] for k in scored], taxonomy.source)
    sweep = threshold_sweep(list(gold.labels.values()), predicted, scored_taxonomy, definition=definition)
    return RunResult(name, samples_path, sweep, counts)


def thresholds_json(sweep: Sweep) -> dict[str, dict]:
    """The stable ``thresholds`` block of report.json, in percent."""
    return {
        str(tau): {
            **{d: {"precision": 100 * s.precision, "recall": 100 * s.recall, "f1": 100 * s.f1} for d, s in per_dim.items()},
            AVERAGE_KEY: {k: 100 * v for k, v in averages.items()},
        }
        for tau, (per_dim, averages) in sweep.items()
    }


def report_json(runs: Sequence[RunResult], gold: GoldSet, options: Mapping) -> dict:
    """The whole report.json; see the module docstring for the layout scripts may rely on."""
    by_name = {r.name: {"samples": r.samples, "thresholds": thresholds_json(r.sweep), "counts": r.counts} for r in runs}
    first = by_name[runs[0].name]
    records = {
        "file": gold.source,
        "labelled_users": len(gold.labels),
        "gold_labelled": {k: n for k, n in gold.support.items() if n},
        "dimensions_without_gold": gold.dimensions_without_gold,
        "unlabelled_records": gold.unlabelled_records,
        "skipped_records": gold.skipped_records,
        "gold_out_of_set": dict(gold.out_of_set),
        "gold_out_of_set_examples": gold.out_of_set_examples,
        "label_keys_outside_taxonomy": dict(gold.unknown_label_keys),
    }
    return {"thresholds": first["thresholds"], "counts": first["counts"], "runs": by_name, "records": records, "options": dict(options)}


# ---------------------------------------------------------------- Markdown


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table; '|' inside a cell (a run name, say) is escaped so columns stay aligned."""

    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [row(header), "|" + "|".join("---" for _ in header) + "|", *map(row, rows)]


def _table7(run: RunResult, taxonomy: Taxonomy) -> list[str]:
    """Table 7: rows tau x {Precision, Recall, F1 Score}, columns dimensions + Average (mean of each row)."""
    dims = list(run.sweep[1][0])
    rows = []
    for tau, (per_dim, avg) in run.sweep.items():
        for i, (label, attr, avg_key) in enumerate(
            [("Precision", "precision", "precision"), ("Recall", "recall", "recall"), ("F1 Score", "f1", "f1_mean")]
        ):
            rows.append([str(tau) if i == 0 else "", label, *(_pct(getattr(per_dim[d], attr)) for d in dims), _pct(avg[avg_key])])
    lines = _table(["τ", "Metric", *(taxonomy[d].name for d in dims), "Average"], rows)
    of_means = ", ".join(f"τ={tau}: {_pct(avg['f1_of_means'])}" for tau, (_, avg) in run.sweep.items())
    return lines + ["", f"F1 of mean precision and mean recall (Tables 2-4): {of_means}."]


def _coverage(run: RunResult, taxonomy: Taxonomy) -> list[str]:
    c = run.counts
    lines = [
        f"Samples: `{run.samples}`: {c['samples']} samples of {c['users_with_samples']} users; "
        f"{c['users_evaluated']} labelled users evaluated.",
    ]
    if c["missing_users"]:
        lines.append(
            f"Labelled users without samples: {c['missing_users']}; they abstain on every dimension, "
            f"which lowers recall: {', '.join(map(str, c['missing_user_examples']))}"
            + (" ..." if c["missing_users"] > EXAMPLES else "")
        )
    if c["unknown_users"]:
        lines.append(
            f"Users with samples who are not labelled records: {c['unknown_users']}; their samples are ignored: "
            f"{', '.join(map(str, c['unknown_user_examples']))}" + (" ..." if c["unknown_users"] > EXAMPLES else "")
        )
    if c["skipped_lines"]:
        lines.append(
            "Sample lines skipped: "
            + "; ".join(f"{reason} {v['count']} (e.g. {v['first'][0]})" for reason, v in c["skipped_lines"].items())
        )
    if c["truncated_samples"]["count"]:
        t = c["truncated_samples"]
        lines.append(f"Samples cut at the token limit: {t['count']} {t['policy']} (e.g. {t['first'][0]})")
    rows = [
        [taxonomy[k].name, str(a["na"]), str(a["malformed"]), str(a["no_samples"]), str(c["malformed_samples"][k])]
        for k, a in c["abstentions_at_tau_1"].items()
    ]
    header = ["Dimension", "voted NA", "no well-formed sample", "no samples", "malformed samples"]
    intro = "Abstentions at τ=1, in gold-labelled users, and malformed samples of the evaluated users:"
    return ["\n\n".join(lines), "", intro, "", *_table(header, rows)]


def report_markdown(runs: Sequence[RunResult], gold: GoldSet, taxonomy: Taxonomy, options: Mapping) -> str:
    definition = RECALL_DEFINITIONS[options["definition"]]
    confidence = (
        f"calibrated levels from `{options['calibration']}`"
        if options["calibration"]
        else "linear map of S/M (a single sample keeps its own score)"
    )
    lines = [
        "# Conf-Profile evaluation",
        "",
        f"Records: `{gold.source}`, {len(gold.labels)} labelled users. Voting: {options['voting']}. "
        f"Confidence: {confidence}. Recall: {definition}. A prediction below τ counts as NA. Values in percent.",
    ]
    notes = []
    if gold.dimensions_without_gold:
        notes.append("not scored (no gold label in the set): " + ", ".join(gold.dimensions_without_gold))
    if gold.out_of_set:
        notes.append(
            "gold labels outside the taxonomy, not scored: "
            + "; ".join(f"{k} {n} (e.g. {gold.out_of_set_examples[k]})" for k, n in gold.out_of_set.items())
        )
    if gold.unlabelled_records:
        notes.append(f"{gold.unlabelled_records} records without labels, not evaluated")
    if gold.skipped_records:
        notes.append("records skipped: " + ", ".join(f"{r} {n}" for r, n in gold.skipped_records.items()))
    if gold.unknown_label_keys:
        notes.append("label keys outside the taxonomy: " + ", ".join(f"{k} {n}" for k, n in gold.unknown_label_keys.items()))
    if notes:
        lines += ["", *(f"- {n}" for n in notes)]
    summary = []
    for run in runs:
        avg = run.sweep[1][1]
        summary.append([run.name, _pct(avg["precision"]), _pct(avg["recall"]), _pct(avg["f1_of_means"]), _pct(avg["f1_mean"])])
    lines += [
        "",
        "## Summary (τ=1)",
        "",
        *_table(["Run", "Precision", "Recall", "F1 of means", "Mean F1"], summary),
    ]
    for run in runs:
        lines += ["", f"## {run.name}", "", *_coverage(run, taxonomy), "", *_table7(run, taxonomy)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- plots (Figure 5)


def _pr_axes(ax, title: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("Recall (%)")
    ax.set_ylabel("Precision (%)")
    ax.grid(True, alpha=0.3)


def _pr_line(ax, run: RunResult, index: int, point) -> None:
    """One run's precision-recall curve across tau, each point annotated with its tau.

    Thresholds that give the same point share one label ("τ=1,2") and each run's labels sit at
    their own height (``index``), so labels do not overprint.
    """
    taus_at: dict[tuple[float, float], list[int]] = {}
    for tau, (per_dim, avg) in run.sweep.items():
        precision, recall = point(per_dim, avg)
        taus_at.setdefault((round(100 * recall, 6), round(100 * precision, 6)), []).append(tau)
    (line,) = ax.plot([x for x, _ in taus_at], [y for _, y in taus_at], marker="o", label=run.name)
    for xy, taus in taus_at.items():
        label = "τ=" + ",".join(map(str, taus))
        ax.annotate(label, xy, textcoords="offset points", xytext=(4, 4 - 10 * index), fontsize=8, color=line.get_color())


def write_plots(runs: Sequence[RunResult], taxonomy: Taxonomy, average_png: str, by_dim_png: str) -> None:
    """Figure 5 (average precision vs recall, one line per run) to ``average_png`` and one panel
    per dimension to ``by_dim_png``, both PNG.

    Figures are drawn on matplotlib's Agg canvas directly, so no pyplot state or display is used.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for index, run in enumerate(runs):
        _pr_line(ax, run, index, lambda per_dim, avg: (avg["precision"], avg["recall"]))
    _pr_axes(ax, "Average precision vs recall across confidence thresholds τ")
    ax.legend()
    fig.tight_layout()
    fig.savefig(average_png, dpi=120, format="png")

    dims = list(runs[0].sweep[1][0])
    cols = min(3, len(dims))
    rows = -(-len(dims) // cols)
    fig = Figure(figsize=(4.5 * cols, 3.6 * rows))
    FigureCanvasAgg(fig)
    for i, dim in enumerate(dims):
        ax = fig.add_subplot(rows, cols, i + 1)
        for index, run in enumerate(runs):
            _pr_line(ax, run, index, lambda per_dim, avg, d=dim: (per_dim[d].precision, per_dim[d].recall))
        _pr_axes(ax, taxonomy[dim].name)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(by_dim_png, dpi=100, format="png")


# ---------------------------------------------------------------- command line


def run_names(samples: Sequence[str], names: Sequence[str] | None) -> list[str]:
    """--name for each --samples, else the file stem (the path as given when stems collide).

    The same file given twice, under any spelling (x.jsonl, ./x.jsonl, a link), is an error.
    """
    seen: dict[str, str] = {}
    for path in samples:
        real = os.path.realpath(path)
        if real in seen:
            raise InputError(f"the same --samples file is given twice: {seen[real]} and {path}")
        seen[real] = path
    if names:
        if len(names) != len(samples):
            raise InputError(f"--name given {len(names)} times for {len(samples)} --samples files: give one per file or none")
        if len(set(names)) != len(names):
            raise InputError(f"--name values must be distinct, got {', '.join(names)}")
        return list(names)
    stems = [Path(p).stem for p in samples]
    return [stem if stems.count(stem) == 1 else path for stem, path in zip(stems, samples)]


def load_calibrator(path: str | None, taxonomy: Taxonomy) -> Calibrator:
    """The calibrator of --calibration (checked to cover the taxonomy), else the linear map."""
    if path is None:
        return Calibrator.linear(taxonomy.keys)
    return Calibrator.load_for(path, taxonomy.keys)


def run(args: argparse.Namespace) -> None:
    """Evaluate every --samples run against --records and write the reports and plots to --out."""
    taxonomy = Taxonomy.load(args.taxonomy)
    if AVERAGE_KEY in taxonomy.keys:
        raise InputError(f"{taxonomy.source}: a dimension named {AVERAGE_KEY!r} would collide with the averages in report.json")
    names = run_names(args.samples, args.name)
    calibrator = load_calibrator(args.calibration, taxonomy)
    gold = read_gold(args.records, taxonomy)
    runs = [
        evaluate_run(name, path, gold, taxonomy, calibrator, voting=args.voting, definition=args.definition, strict=args.strict,
                     drop_truncated=args.drop_truncated)
        for name, path in zip(names, args.samples)
    ]
    options = {
        "records": args.records,
        "samples": dict(zip(names, args.samples)),
        "voting": args.voting,
        "definition": args.definition,
        "calibration": args.calibration,
        "confidence": "calibrated" if args.calibration else "linear",
        "taxonomy": taxonomy.source,
        "strict": args.strict,
        "drop_truncated": args.drop_truncated,
        "thresholds": list(THRESHOLDS),
    }
    with OutputFolder(args.out, OUTPUTS) as folder:
        write_plots(runs, taxonomy, folder.file(OUTPUTS[0]), folder.file(OUTPUTS[1]))
        with open(folder.file("report.md"), "w", encoding="utf-8") as fh:
            fh.write(report_markdown(runs, gold, taxonomy, options))
        write_json(report_json(runs, gold, options), folder.file("report.json"))
    out = Path(args.out)
    for r in runs:
        avg = r.sweep[1][1]
        c = r.counts
        print(
            f"{r.name}: {c['users_evaluated']} users evaluated, {c['missing_users']} labelled users without samples, "
            f"{c['unknown_users']} users with samples but no labelled record (ignored), {truncation_summary(c['truncated_samples'])}; tau=1 precision {_pct(avg['precision'])}, recall {_pct(avg['recall'])}, "
            f"F1 of means {_pct(avg['f1_of_means'])}, mean F1 {_pct(avg['f1_mean'])}"
        )
    print(f"wrote {', '.join(str(out / name) for name in OUTPUTS)}")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``confprofile eval`` to the command line."""
    p = subparsers.add_parser(
        "eval",
        help="precision / recall / F1 of model samples on a labelled set, tau = 1..5 (Table 7, Figure 5)",
        description="Score model samples against the gold labels of a records file at confidence thresholds 1..5.",
    )
    p.add_argument("--records", required=True, metavar="FILE", help="records JSONL; users with 'labels' are evaluated")
    p.add_argument("--samples", required=True, action="append", metavar="FILE", help="samples JSONL (user_id, sample_idx, model, text); repeat to compare runs")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for report.md, report.json and the plots")
    p.add_argument("--name", action="append", metavar="NAME", help="name of each --samples run, in the same order (default: file stem)")
    p.add_argument("--calibration", metavar="FILE", help="calibration JSON; without it, confidence is the linear map of S/M (one sample: its own score)")
    p.add_argument("--voting", choices=VOTING_METHODS, default="confidence", help=f"how the samples of a user are combined: {VOTING_HELP}")
    p.add_argument(
        "--definition",
        choices=DEFINITIONS,
        default="paper",
        help="recall: 'paper' = answered / gold-labelled (Table 7); 'standard' = correct / gold-labelled",
    )
    p.add_argument("--taxonomy", metavar="FILE", help="taxonomy YAML (default: the bundled ProfileBench taxonomy)")
    p.add_argument("--strict", action="store_true", help=STRICT_HELP)
    p.add_argument("--drop-truncated", action="store_true", help=DROP_TRUNCATED_HELP)
    p.set_defaults(func=run)
    declare(p, inputs=("records", "samples", "calibration", "taxonomy"), folder=True)
