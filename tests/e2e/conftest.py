"""Fixtures of the end-to-end tests: the recipes as a user runs them, on verl's trainers on CPU.

Reuse from any test under ``tests/e2e/``:

- ``world``: a simulated population with a two-dimension taxonomy (``World``: the taxonomy file,
  SFT, RL and labelled evaluation records) and a tiny random Qwen3-architecture model with a
  byte-level BPE fitted to the task's text (Qwen's special tokens and chat template), plus the
  recipes' variables for it (``World.settings``: simulated teacher, transformers student);
- ``tiny_model``: that model's folder;
- ``sft_run``: ``bash recipes/run_sft.sh`` (teacher samples, ``build-sft``, verl's SFT trainer) from
  ``tiny_model`` (``SFTRun``: the Hugging Face checkpoint the recipe reported, the logged steps,
  the recipe's output);
- ``run_grpo``: ``run_grpo(name, overrides=(), *, model=None, train_file=None, val_file=None)``.
  Without ``model``/``train_file``/``val_file`` it runs the recipe ``RECIPE_RUNS[name]`` from the
  SFT run: ``v1`` is ``run_grpo.sh grpo_v1``, ``legacy`` the ``shape_original`` ablation of
  ``run_ablation.sh`` (each: the student pass with the transformers backend, ``build-rl``,
  ``main_ppo`` with 2 small GRPO steps, ``GRPO_TEST_OVERRIDES`` and ``overrides`` given as
  ``GRPO_OVERRIDES``; the ablation then evaluates its policy with ``run_eval.sh``); with them it
  runs ``main_ppo`` alone on those files. Either returns a ``GRPORun``: ``steps``
  (the metrics dict of every training step, as verl logged it), ``validation`` (every validation
  pass), ``rollout_dir`` and ``validation_dir`` (verl's dumps, ``<step>.jsonl``), ``log`` (the
  recipe's output). Runs are cached per ``name``, so tests asking for the same run share it;
- ``e2e_data``: the SFT and RL sets the recipes wrote (``E2EData``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import pytest

from verl_cpu_harness import runner
from verl_cpu_harness.runner import GRPO_TEST_OVERRIDES, SEED, SFT_TEST_OVERRIDES
from verl_cpu_harness.task_tokenizer import fit_task_tokenizer, task_texts

TAXONOMY_YAML = """\
na_label: NA
dimensions:
  gender: {name: Gender, labels: [Female, Male, NA]}
  age: {name: Age, labels: [young, old, NA]}
"""
SFT_USERS, RL_USERS, EVAL_USERS, SAMPLES = 64, 40, 12, 5
# The GRPO runs of the tests: a recipe and its arguments ({sft}: the SFT run's checkpoint folder).
# Both build the RL set without difficulty filter (a model after 8 SFT steps has no spread of
# difficulty to shape) from the same student pass: the legacy run is the shape_original ablation.
RECIPE_RUNS = {
    "v1": ("run_grpo.sh", ("grpo_v1", "{sft}", "--shape", "original")),
    "legacy": ("run_ablation.sh", ("shape_original",)),
}


@dataclass(frozen=True)
class World:
    root: Path
    taxonomy: Path
    model: str
    settings: dict[str, str]  # the recipes' variables


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
    log: str


def reported(log: str, what: str) -> str:
    """The path a recipe printed on its ``<what> checkpoint: PATH`` line."""
    found = re.findall(rf"^{what} checkpoint: (.+)$", log, re.M)
    assert len(found) == 1, f"the recipe printed {len(found)} '{what} checkpoint:' lines"
    return found[0]


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    """Records of three pools, the task tokenizer and the tiny model, and the recipes' settings."""
    from verl_confprofile.data_prep.simulated import SimulatedPopulation
    from verl_confprofile.taxonomy import Taxonomy

    root = tmp_path_factory.mktemp("world")
    taxonomy = root / "taxonomy.yaml"
    taxonomy.write_text(TAXONOMY_YAML)
    tax = Taxonomy.load(str(taxonomy))
    population = SimulatedPopulation(tax, seed=SEED)
    records = []
    for pool, n, labels in (("sft", SFT_USERS, False), ("rl", RL_USERS, True), ("eval", EVAL_USERS, True)):
        pool_records = [population.record(f"{pool}-{i:04d}", with_labels=labels) for i in range(n)]
        (root / f"{pool}_records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool_records))
        records += pool_records
    answers = [population.sample_text(r["user_id"], i) for r in records for i in range(2)]
    tokenizer = fit_task_tokenizer(task_texts(records, tax, answers), root / "tokenizer")
    model = runner.build_tiny_model(root / "model", tokenizer, seed=SEED)
    settings = {
        "DATA_DIR": str(root / "data"), "CKPT_DIR": str(root / "checkpoints"), "EVAL_DIR": str(root / "eval"),
        "MODEL": model, "TAXONOMY": str(taxonomy), "TEACHER_BACKEND": "simulated", "NUM_SAMPLES": str(SAMPLES),
        "SFT_RECORDS": str(root / "sft_records.jsonl"), "RL_RECORDS": str(root / "rl_records.jsonl"),
        "EVAL_RECORDS": str(root / "eval_records.jsonl"), "EVAL_NUM_SAMPLES": "2", "NGPUS": "1",
        "MAX_PROMPT_LENGTH": "512", "MAX_RESPONSE_LENGTH": "64", "SFT_MAX_LENGTH": "768", "VAL_FRACTION": "0.2",
        "SEED": str(SEED), "STUDENT_BACKEND": "transformers", "STUDENT_ARGS": "--device cpu",
        # go on although nearly every block the 8-step model writes is malformed (build-rl stops
        # on that by default: it is the mark of a wrong taxonomy)
        "BUILD_RL_ARGS": "--allow-mismatch",
    }
    return World(root=root, taxonomy=taxonomy, model=model, settings=settings)


@pytest.fixture(scope="session")
def tiny_model(world) -> str:
    return world.model


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory, world) -> SFTRun:
    work = tmp_path_factory.mktemp("sft_run")
    log = runner.run_recipe("run_sft.sh", [], work, world.settings, sft_overrides=SFT_TEST_OVERRIDES)
    steps, _ = runner.read_metrics(work / "metrics.jsonl", training_prefix="train/")
    return SFTRun(checkpoint=reported(log, "SFT"), steps=steps, log=log)


@pytest.fixture(scope="session")
def run_grpo(tmp_path_factory, request, world) -> Callable[..., runner.GRPORun]:
    """``run_grpo(name, overrides=(), *, model=None, train_file=None, val_file=None) -> GRPORun`` (see above)."""
    runs: dict[str, runner.GRPORun] = {}

    def run(name: str, overrides: Sequence[str] = (), *, model: str | None = None,
            train_file: str | None = None, val_file: str | None = None) -> runner.GRPORun:
        if name in runs:
            return runs[name]
        work = tmp_path_factory.mktemp(f"grpo_{name}")
        if model is None and train_file is None and val_file is None:
            request.getfixturevalue("sft_run")
            script, args = RECIPE_RUNS[name]
            sft = str(Path(world.settings["CKPT_DIR"]) / "sft")
            log = runner.run_recipe(script, [a.format(sft=sft) for a in args], work, world.settings,
                                    grpo_overrides=[*GRPO_TEST_OVERRIDES, *overrides])
            runs[name] = runner.grpo_run(work, log)
        else:
            data = request.getfixturevalue("e2e_data")
            runs[name] = runner.run_main_ppo(
                work, model or request.getfixturevalue("sft_run").checkpoint, train_file or str(data.rl_train),
                val_file or str(data.rl_val), overrides=[*GRPO_TEST_OVERRIDES, f"confprofile.taxonomy={world.taxonomy}", *overrides],
            )
        return runs[name]

    return run


@pytest.fixture(scope="session")
def e2e_data(world, run_grpo) -> E2EData:
    """The SFT set of the SFT run and the RL set of the ``v1`` GRPO run (``grpo_v1``), as the recipes wrote them."""
    run_grpo("v1")
    data = Path(world.settings["DATA_DIR"])
    return E2EData(
        taxonomy=world.taxonomy,
        sft_train=data / "sft" / "sft_train.parquet",
        rl_train=data / "grpo_v1" / "rl_train.parquet",
        rl_val=data / "grpo_v1" / "rl_val.parquet",
        rl_report=json.loads((data / "grpo_v1" / "report.json").read_text()),
    )
