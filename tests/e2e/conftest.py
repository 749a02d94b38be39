"""Fixtures of the end-to-end tests: project data, the tiny model, verl's SFT and GRPO trainers on CPU.

Reuse from any test under ``tests/e2e/``:

- ``e2e_data``: the project's own commands run on a simulated population with a two-dimension
  taxonomy (``E2EData``: records, SFT and RL parquet files, the taxonomy file);
- ``tiny_model``: a random Qwen3-architecture model with the real Qwen tokenizer (a folder);
- ``sft_run``: verl's SFT trainer run on ``e2e_data.sft_train`` from ``tiny_model`` (``SFTRun``:
  its Hugging Face checkpoint and its logged steps);
- ``run_grpo``: ``run_grpo(name, overrides=(), *, model=None, train_file=None, val_file=None)``
  runs ``python -m verl.trainer.main_ppo --config-name=confprofile_grpo`` for 2 small GRPO steps
  (``GRPO_TEST_OVERRIDES``) from the SFT checkpoint on the RL set, with validation before and
  after training, and returns a ``GRPORun``: ``steps`` (the metrics dict of every training
  step, as verl logged it), ``validation`` (every validation pass), ``rollout_dir`` and
  ``validation_dir`` (verl's dumps, ``<step>.jsonl``). Runs are cached per ``name``, so tests
  asking for the same run share it. ``overrides`` win over the defaults, e.g.
  ``["reward.reward_manager.name=majority_vote", "trainer.total_training_steps=1"]``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import pytest

from verl_cpu_harness import runner
from verl_cpu_harness.runner import GRPO_TEST_OVERRIDES, SEED, SFT_TEST_OVERRIDES

TAXONOMY_YAML = """\
na_label: NA
dimensions:
  gender: {name: Gender, labels: [Female, Male, NA]}
  age: {name: Age, labels: [young, old, NA]}
"""
SFT_USERS, RL_USERS, SAMPLES = 64, 40, 5

@dataclass(frozen=True)
class E2EData:
    taxonomy: Path
    sft_train: Path
    rl_train: Path
    rl_val: Path
    rl_report: dict


@dataclass(frozen=True)
class SFTRun:
    checkpoint: str
    steps: list[dict]


def confprofile(*args: str) -> None:
    """Run a command of this project's CLI as a user would."""
    subprocess.run([sys.executable, "-m", "verl_confprofile.cli", *args], check=True, capture_output=True, text=True)


@pytest.fixture(scope="session")
def e2e_data(tmp_path_factory) -> E2EData:
    """Demo-style data made by the project's commands: simulated teacher -> build-sft; student -> build-rl."""
    from verl_confprofile.data_prep.simulated import SimulatedPopulation
    from verl_confprofile.taxonomy import Taxonomy

    root = tmp_path_factory.mktemp("e2e_data")
    taxonomy = root / "taxonomy.yaml"
    taxonomy.write_text(TAXONOMY_YAML)
    population = SimulatedPopulation(Taxonomy.load(str(taxonomy)), seed=SEED)
    for pool, n, labels in (("sft", SFT_USERS, False), ("rl", RL_USERS, True)):
        with open(root / f"{pool}_records.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps(population.record(f"{pool}-{i:04d}", with_labels=labels)) + "\n")
    tax = ("--taxonomy", str(taxonomy))
    confprofile("synthesize", "--records", str(root / "sft_records.jsonl"), "--out", str(root / "teacher.jsonl"),
                "--backend", "simulated", "--num-samples", str(SAMPLES), "--seed", str(SEED), *tax)
    confprofile("build-sft", "--records", str(root / "sft_records.jsonl"), "--samples", str(root / "teacher.jsonl"),
                "--out", str(root / "sft"), *tax)
    confprofile("synthesize", "--records", str(root / "rl_records.jsonl"), "--out", str(root / "student.jsonl"),
                "--backend", "simulated", "--num-samples", str(SAMPLES), "--seed", str(SEED), *tax)
    confprofile("build-rl", "--records", str(root / "rl_records.jsonl"), "--samples", str(root / "student.jsonl"),
                "--calibration", str(root / "sft" / "calibration.json"), "--out", str(root / "rl"),
                "--val-fraction", "0.2", "--seed", str(SEED), *tax)
    return E2EData(
        taxonomy=taxonomy,
        sft_train=root / "sft" / "sft_train.parquet",
        rl_train=root / "rl" / "rl_train.parquet",
        rl_val=root / "rl" / "rl_val.parquet",
        rl_report=json.loads((root / "rl" / "report.json").read_text()),
    )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, qwen_tokenizer_dir) -> str:
    return runner.build_tiny_model(tmp_path_factory.mktemp("tiny_model"), qwen_tokenizer_dir, seed=SEED)


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory, tiny_model, e2e_data) -> SFTRun:
    work = tmp_path_factory.mktemp("sft_run")
    checkpoint = runner.run_sft(work, tiny_model, str(e2e_data.sft_train), overrides=SFT_TEST_OVERRIDES)
    steps, _ = runner.read_metrics(work / "metrics.jsonl", training_prefix="train/")
    return SFTRun(checkpoint=checkpoint, steps=steps)


@pytest.fixture(scope="session")
def run_grpo(tmp_path_factory, request) -> Callable[..., runner.GRPORun]:
    """``run_grpo(name, overrides=(), *, model=None, train_file=None, val_file=None) -> GRPORun``.

    Defaults: the SFT checkpoint of ``sft_run`` and the RL files of ``e2e_data`` (each built
    only when a run needs it). Runs are cached by ``name`` for the session.
    """
    runs: dict[str, runner.GRPORun] = {}

    def run(name: str, overrides: Sequence[str] = (), *, model: str | None = None,
            train_file: str | None = None, val_file: str | None = None) -> runner.GRPORun:
        if name not in runs:
            data = request.getfixturevalue("e2e_data")
            runs[name] = runner.run_main_ppo(
                tmp_path_factory.mktemp(f"grpo_{name}"),
                model or request.getfixturevalue("sft_run").checkpoint,
                train_file or str(data.rl_train),
                val_file or str(data.rl_val),
                overrides=[*GRPO_TEST_OVERRIDES, f"confprofile.taxonomy={data.taxonomy}", *overrides],
            )
        return runs[name]

    return run
