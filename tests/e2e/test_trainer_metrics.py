"""The method's diagnostics in what verl's real trainers log, checked against what they dumped.

The GRPO runs are those of test_trainers.py (shared through the ``run_grpo`` fixture): 2 steps
from the SFT checkpoint, validation on ``rl_val.parquet`` before and after training, with the v1
trainer and the legacy one. ``reward.verl_metrics_hook`` is installed by the plugin entry point
in the trainer's own process, nothing else asks for it.

- Training steps: every ``confprofile/*`` metric verl handed its loggers at step s equals the
  same reduction recomputed here from the rollouts verl dumped for step s: each dumped output is
  parsed, voted with the other rollouts of its prompt, rewarded (and the reward must be the
  score verl dumped), with the row's gold labels and reference confidences from the parquet.
- Validation: the P/R/F1 verl logged for a pass equal ``confprofile eval`` run on the
  generations verl dumped for that pass and the gold labels of the validation set.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from test_trainers import ROLLOUT_N, TRAINERS
from verl_confprofile.cli import main
from verl_confprofile.profile_format import parse_profile
from verl_confprofile.reward.confprofile_metrics import FIELDS
from verl_confprofile.reward.extra_metrics import step_metrics
from verl_confprofile.reward.group import Group
from verl_confprofile.reward.options import read_options
from verl_confprofile.reward.rows import labels_of, score_row
from verl_confprofile.voting import vote_profile

STEP_NAMES = ("well_formed", "agree", "na", "weight", "ref_missing", "margin", "share", "label_accuracy")


def by_prompt(lines: list[dict]) -> dict[str, list[dict]]:
    """Dumped rollouts grouped by their prompt (both trainers dump the decoded prompt as ``input``)."""
    groups = defaultdict(list)
    for line in lines:
        groups[line["input"]].append(line)
    return groups


def row_of(rows: list[dict], prompt: str) -> dict:
    """The parquet row whose user message is in a dumped prompt (chat template applied, decoded)."""
    hits = [r for r in rows if r["prompt"][-1]["content"] in prompt]
    assert len(hits) == 1, f"{len(hits)} parquet rows match a dumped prompt"
    return hits[0]


def recompute_step(lines: list[dict], rows: list[dict], options) -> dict[str, float]:
    """The confprofile step metrics of one step's dumped rollouts, recomputed from their text."""
    tax = options.taxonomy
    infos = []
    for prompt, members in by_prompt(lines).items():
        row = row_of(rows, prompt)
        parsed = [parse_profile(m["output"], tax) for m in members]
        votes = vote_profile(parsed, tax, options.spec.voting)
        labels = labels_of(row["reward_model"]["ground_truth"])
        group = Group(None, len(members), len(members), False, "complete")
        for member, p in zip(members, parsed):
            # every group voted complete (the caller checks the logged partial share is 0)
            total, info = score_row(p, votes, labels, row["extra_info"], options, group)
            assert total == pytest.approx(member["score"], abs=1e-5)  # the reward verl trained on
            infos.append(info)
    return step_metrics({k: [i[k] for i in infos] for k in infos[0]})


@pytest.fixture(scope="module")
def options(e2e_data):
    return read_options({"taxonomy": str(e2e_data.taxonomy)})


@pytest.mark.parametrize("trainer", TRAINERS)
def test_step_metrics_match_the_dumped_rollouts(run_grpo, e2e_data, options, trainer):
    run = run_grpo(trainer, TRAINERS[trainer])
    rows = pq.read_table(e2e_data.rl_train).to_pylist()
    dims = [*options.taxonomy.keys, "overall"]
    assert [s["step"] for s in run.steps] == [1, 2]
    for logged in run.steps:
        missing = [f"confprofile/{d}/{n}" for d in dims for n in STEP_NAMES if f"confprofile/{d}/{n}" not in logged]
        assert not missing, f"step {logged['step']} lacks {missing}"
        # every group voted complete with rollout.n members: none partial, for any cause
        assert logged["confprofile/group/members"] == ROLLOUT_N and logged["confprofile/group/partial"] == 0.0
        assert [logged[f"confprofile/group/{c}"] for c in ("timeout", "overflow", "unreachable")] == [0.0] * 3
        want = recompute_step(run.rollouts(logged["step"]), rows, options)
        got = {k: v for k, v in logged.items() if k.startswith("confprofile/")}
        assert got == pytest.approx(want, abs=1e-6)
        # flat section/name keys: no double prefix, and no key of confprofile's left to the generic means
        assert not any(k.startswith(("confprofile/confprofile", "reward_extra/")) for k in logged)


def eval_report(lines: list[dict], val_rows: list[dict], taxonomy: Path, out: Path) -> dict:
    """``confprofile eval`` on dumped validation generations: one user per prompt, its gold labels."""
    records, samples = [], []
    for user, (prompt, members) in enumerate(by_prompt(lines).items()):
        labels = labels_of(row_of(val_rows, prompt)["reward_model"]["ground_truth"]) or {}
        records.append({"user_id": str(user), "behaviors": {"dumped": ["prompt"]}, "labels": labels})
        samples += [{"user_id": str(user), "sample_idx": i, "model": "policy", "text": m["output"]} for i, m in enumerate(members)]
    out.mkdir(parents=True)
    (out / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    args = ["eval", "--records", str(out / "records.jsonl"), "--samples", str(out / "samples.jsonl")]
    assert main([*args, "--out", str(out / "report"), "--taxonomy", str(taxonomy)]) == 0
    return json.loads((out / "report" / "report.json").read_text())["thresholds"]["1"]


@pytest.mark.parametrize("trainer", TRAINERS)
def test_validation_prf_equals_confprofile_eval(run_grpo, e2e_data, trainer, tmp_path):
    run = run_grpo(trainer, TRAINERS[trainer])
    val_rows = pq.read_table(e2e_data.rl_val).to_pylist()
    source = val_rows[0]["data_source"]
    assert [v["step"] for v in run.validation] == [0, 2]
    for logged in run.validation:
        report = eval_report(run.validation_rollouts(logged["step"]), val_rows, e2e_data.taxonomy, tmp_path / str(logged["step"]))
        want = {f"val-core/{source}/average/{k}": v / 100 for k, v in report.pop("average").items()}
        want.update({f"val-aux/{source}/{d}/{k}": v / 100 for d, s in report.items() for k, v in s.items()})
        assert set(want) >= {f"val-aux/{source}/{d}/f1" for d in ("gender", "age")}
        assert {k: logged.get(k) for k in want} == pytest.approx(want, abs=1e-9)
        # verl's own average of every key is there too, under the data source, without a double prefix
        assert all(f"val-aux/{source}/{d}/{f}/mean@1" in logged for d in ("gender", "age") for f in FIELDS)
