"""Every recipe, checked against verl's real config schema.

Each recipe runs with DRY_RUN=1, which prints its commands. Every verl command it would launch
is then run with ``--cfg job`` (verl composes the config and rejects unknown keys, no GPU
needed), and the composed values are compared with the paper's settings and the ablation.
"""

import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ABLATIONS = [
    "main", "sft_majority", "no_calibration", "shape_original", "shape_uniform", "shape_v",
    "shape_inverted_v", "self_confidence", "rl_majority", "profile_llm",
]


def dry_run(name: str, script: str = "run_ablation.sh", *args: str, **env: str) -> list[list[str]]:
    """The commands a recipe prints with DRY_RUN=1 (``env``: its settings), run in this environment
    (its python reads the configs)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    out = subprocess.run(
        ["bash", str(ROOT / "recipes" / script), name, *args],
        env={**os.environ, "PATH": path, "DRY_RUN": "1", **env}, capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout
    return [shlex.split(line[2:]) for line in out.splitlines() if line.startswith("+ ")]


def option(command: list[str], name: str) -> str:
    """The value of the only ``name`` option of a command."""
    assert command.count(name) == 1, (name, command)
    return command[command.index(name) + 1]


def override(command: list[str], key: str) -> str:
    """The value of the only ``key=...`` Hydra override of a verl command."""
    values = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"{key}=")]
    assert len(values) == 1, (key, command)
    return values[0]


def shipped(config: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / config).read_text())


def composed(command: list[str]) -> dict:
    """The config verl composes for a recipe's main_ppo or sft_trainer command."""
    module = command[command.index("-m") + 1]
    args = command[command.index("-m") + 2 :]
    done = subprocess.run(
        [sys.executable, "-m", module, *args, "--cfg", "job"], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return yaml.safe_load(done.stdout)


@pytest.fixture(scope="module")
def recipes():
    commands = {name: dry_run(name) for name in ABLATIONS}
    verl_commands = [(name, i, c) for name, cs in commands.items() for i, c in enumerate(cs) if "-m" in c]
    with ThreadPoolExecutor(max_workers=2) as pool:
        configs = dict(zip([(n, i) for n, i, _ in verl_commands], pool.map(composed, [c for _, _, c in verl_commands])))
    return {name: [(c, configs.get((name, i))) for i, c in enumerate(cs)] for name, cs in commands.items()}


def step(recipe, program):
    """(command, composed config) of the first command of a recipe whose text contains ``program``."""
    return next((c, cfg) for c, cfg in recipe if program in " ".join(c))


def grpo(recipe):
    return step(recipe, "verl.trainer.main_ppo")[1]


def test_main_grpo_has_the_papers_settings(recipes):
    cfg = grpo(recipes["main"])
    actor, rollout = cfg["actor_rollout_ref"]["actor"], cfg["actor_rollout_ref"]["rollout"]
    assert cfg["data"]["train_batch_size"] == 128
    assert actor["use_kl_loss"] is True and actor["kl_loss_coef"] == 0.001
    assert actor["optim"]["lr"] == 1e-6
    assert rollout["n"] == 32 and rollout["temperature"] == 1.0 and rollout["top_p"] == 0.95
    assert cfg["trainer"]["total_training_steps"] == 45
    # The composed prompt limit is the budget build-rl fitted the prompts to.
    assert cfg["data"]["max_prompt_length"] == int(option(step(recipes["main"], "build-rl")[0], "--max-prompt-length"))
    assert cfg["algorithm"]["adv_estimator"] == "grpo"
    assert cfg["reward"]["reward_manager"]["name"] == "confprofile"
    assert cfg["data"]["train_files"] == "data/grpo/rl_train.parquet"
    assert cfg["confprofile"] == {
        "taxonomy": "profilebench", "voting": "confidence", "weighting": "frozen", "format_penalty": -1.0,
        "weight_min": 0.2, "weight_max": 1.0, "use_labels": "never", "group_timeout_s": 300,
    }


@pytest.mark.parametrize("name", [n for n in ABLATIONS if n != "sft_majority"])
def test_grpo_validates_on_the_held_out_users_of_build_rl(recipes, name):
    """Validation on: rl_val.parquet (rows with split "val", voted in groups of val_kwargs.n)."""
    recipe = recipes[name]
    prep = step(recipe, "build-rl")[0]
    out = prep[prep.index("--out") + 1]
    assert prep.count("--val-fraction") == 1 and float(prep[prep.index("--val-fraction") + 1]) == 0.05
    cfg = grpo(recipe)
    assert cfg["data"]["val_files"] == f"{out}/rl_val.parquet"
    assert cfg["data"]["train_files"] == f"{out}/rl_train.parquet"
    assert cfg["trainer"]["val_before_train"] is True and cfg["trainer"]["test_freq"] == 5


def test_shipped_grpo_config_validates_on_rl_val():
    cfg = yaml.safe_load((ROOT / "configs" / "confprofile_grpo.yaml").read_text())
    assert cfg["data"]["val_files"] == "data/rl/rl_val.parquet"
    assert cfg["data"]["train_files"] == "data/rl/rl_train.parquet"
    assert cfg["trainer"]["val_before_train"] is True and cfg["trainer"]["test_freq"] > 0


def test_main_sft_has_the_papers_settings(recipes):
    command, cfg = step(recipes["main"], "verl.trainer.sft_trainer")
    # The trainer's composed limit is the one build-sft skipped rows over.
    assert cfg["data"]["max_length"] == int(option(step(recipes["main"], "build-sft")[0], "--max-length"))
    assert cfg["data"]["truncation"] == "error"
    assert command[0] == "torchrun"
    assert cfg["optim"]["lr"] == 1e-5
    assert cfg["data"]["train_batch_size"] == 32
    assert cfg["trainer"]["total_epochs"] == 2
    assert cfg["model"]["lora_rank"] == 0  # full-parameter
    assert cfg["model"]["path"] == "Qwen/Qwen3-8B"
    assert cfg["data"]["train_files"] == "data/sft/sft_train.parquet" and cfg["data"]["messages_key"] == "messages"


def test_voting_ablation_changes_only_the_sft_data(recipes):
    prep, _ = step(recipes["sft_majority"], "build-sft")
    assert prep[prep.index("--voting") + 1] == "majority"
    assert step(recipes["sft_majority"], "sft_trainer")[1]["data"]["train_files"] == "data/sft_majority/sft_train.parquet"
    assert not any("main_ppo" in " ".join(c) for c, _ in recipes["sft_majority"])


def test_calibration_ablation_runs_both_stages_on_linear_data(recipes):
    recipe = recipes["no_calibration"]
    assert "--no-calibration" in step(recipe, "build-sft")[0]
    rl_prep = step(recipe, "build-rl")[0]
    assert rl_prep[rl_prep.index("--calibration") + 1] == "data/sft_linear/calibration.json"
    assert grpo(recipe)["data"]["train_files"] == "data/grpo_linear/rl_train.parquet"
    # under DRY_RUN the SFT run's folder is printed unresolved (its latest global_step_N/huggingface when run)
    assert grpo(recipe)["actor_rollout_ref"]["model"]["path"] == "checkpoints/confprofile/sft_linear"


@pytest.mark.parametrize("shape", ["original", "uniform", "v", "inverted_v"])
def test_shape_ablations_are_one_data_option_and_the_matching_train_files(recipes, shape):
    recipe = recipes[f"shape_{shape}"]
    prep = step(recipe, "build-rl")[0]
    assert prep.count("--shape") == 1 and prep[prep.index("--shape") + 1] == shape
    cfg = grpo(recipe)
    assert cfg["data"]["train_files"] == f"data/grpo_shape_{shape}/rl_train.parquet"
    assert cfg["confprofile"]["weighting"] == "frozen"


def test_reward_variants_are_single_overrides(recipes):
    assert grpo(recipes["self_confidence"])["confprofile"]["weighting"] == "self"
    assert grpo(recipes["rl_majority"])["confprofile"]["voting"] == "majority"
    assert grpo(recipes["self_confidence"])["confprofile"]["voting"] == "confidence"


def test_profile_llm_baseline_uses_no_confidence(recipes):
    recipe = recipes["profile_llm"]
    sft_prep = step(recipe, "build-sft")[0]
    assert "--no-calibration" in sft_prep and sft_prep[sft_prep.index("--voting") + 1] == "majority"
    rl_prep = step(recipe, "build-rl")[0]
    assert rl_prep[rl_prep.index("--shape") + 1] == "original"
    cfg = grpo(recipe)["confprofile"]
    assert (cfg["voting"], cfg["weighting"]) == ("majority", "none")


def test_unknown_ablation_is_refused():
    done = subprocess.run(["bash", str(ROOT / "recipes" / "run_ablation.sh"), "nope"], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown ablation: nope" in done.stderr


# ---------------------------------------------------------------- token budgets (dry runs only: fast)


def budget(command: list[str]) -> tuple[str, int]:
    return option(command, "--tokenizer"), int(option(command, "--max-prompt-length"))


def named(commands: list[list[str]], program: str) -> list[str]:
    return next(c for c in commands if program in " ".join(c))


@pytest.mark.parametrize("env", [{}, {"TOKENIZER": "/models/tok", "MAX_PROMPT_LENGTH": "1000", "SFT_MAX_LENGTH": "3000"}])
def test_sft_recipe_gives_teacher_and_build_one_budget_and_the_trainers_max_length(env):
    commands = dry_run("sft", "run_sft.sh", **env)
    synthesize, build, train = (named(commands, p) for p in ("synthesize", "build-sft", "sft_trainer"))
    tokenizer = env.get("TOKENIZER", "Qwen/Qwen3-8B")  # default: MODEL
    prompt_limit = int(env.get("MAX_PROMPT_LENGTH", shipped("confprofile_grpo.yaml")["data"]["max_prompt_length"]))
    row_limit = int(env.get("SFT_MAX_LENGTH", shipped("confprofile_sft.yaml")["data"]["max_length"]))
    assert budget(synthesize) == budget(build) == (tokenizer, prompt_limit)
    assert int(option(build, "--max-length")) == row_limit == int(override(train, "data.max_length"))


@pytest.mark.parametrize("overrides, limit", [((), None), (("--", "data.max_prompt_length=2048"), 2048)])
def test_grpo_recipe_gives_student_pass_build_and_trainer_one_prompt_budget(overrides, limit):
    commands = dry_run("grpo", "run_grpo.sh", "ckpt/sft", *overrides)
    synthesize, build, train = (named(commands, p) for p in ("synthesize", "build-rl", "main_ppo"))
    limit = limit or shipped("confprofile_grpo.yaml")["data"]["max_prompt_length"]
    assert budget(synthesize) == budget(build) == ("Qwen/Qwen3-8B", limit)
    # main_ppo gets the limit, then the user's override (the last value wins in Hydra): the same.
    given = [arg for arg in train if arg.startswith("data.max_prompt_length=")]
    assert given and {int(arg.split("=", 1)[1]) for arg in given} == {limit}


@pytest.mark.parametrize("name", ABLATIONS)
def test_every_ablation_uses_one_budget_for_every_data_step(name):
    commands = dry_run(name)
    data_steps = [c for c in commands if c[:2] in (["confprofile", "synthesize"], ["confprofile", "build-sft"], ["confprofile", "build-rl"])]
    assert data_steps and {budget(c) for c in data_steps} == {("Qwen/Qwen3-8B", shipped("confprofile_grpo.yaml")["data"]["max_prompt_length"])}
    for command in commands:
        if "sft_trainer" in " ".join(command):
            build = named(commands, "build-sft")
            assert option(build, "--max-length") == override(command, "data.max_length")


# ---------------------------------------------------------------- the pipeline's contract (dry runs)


def synthesize_steps(commands: list[list[str]]) -> list[list[str]]:
    return [c for c in commands if c[:2] == ["confprofile", "synthesize"]]


def test_one_taxonomy_reaches_every_step(tmp_path):
    taxonomy = tmp_path / "mine.yaml"
    taxonomy.write_text("dimensions: {}\n")  # only its path matters to a dry run
    commands = dry_run("main", TAXONOMY=str(taxonomy))
    data_steps = [c for c in commands if c[0] == "confprofile"]
    assert {c[1] for c in data_steps} == {"synthesize", "build-sft", "build-rl", "eval"}
    assert all(option(c, "--taxonomy") == str(taxonomy) for c in data_steps)
    assert override(named(commands, "main_ppo"), "confprofile.taxonomy") == str(taxonomy)


def test_a_relative_taxonomy_file_is_made_absolute_for_the_reward_workers(tmp_path):
    (tmp_path / "tax.yaml").write_text("dimensions: {}\n")
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    out = subprocess.run(["bash", str(ROOT / "recipes" / "run_grpo.sh"), "grpo", "ckpt/sft"], cwd=tmp_path, text=True,
                         env={**os.environ, "PATH": path, "DRY_RUN": "1", "TAXONOMY": "tax.yaml"}, capture_output=True, check=True).stdout
    train = next(shlex.split(line[2:]) for line in out.splitlines() if "main_ppo" in line)
    assert override(train, "confprofile.taxonomy") == str(tmp_path / "tax.yaml")


@pytest.mark.parametrize("ablation", ["shape_uniform", "self_confidence", "rl_majority"])
def test_rl_ablations_share_the_main_runs_seeded_student_pass_outside_every_output_folder(ablation):
    main_pass = synthesize_steps(dry_run("main"))[2]  # teacher, SFT evaluation, student
    commands = dry_run(ablation)
    student = synthesize_steps(commands)[0]
    assert student == main_pass
    samples = option(student, "--out")
    assert option(student, "--seed") == "0" and option(student, "--model") == "checkpoints/confprofile/sft"
    build = named(commands, "build-rl")
    assert option(build, "--samples") == samples
    assert not Path(samples).is_relative_to(option(build, "--out"))
    # the student pass is cut where GRPO cuts a rollout
    assert int(option(student, "--max-tokens")) == int(override(named(commands, "main_ppo"), "data.max_response_length"))


def test_the_student_backend_and_its_options_come_from_the_environment():
    vllm = synthesize_steps(dry_run("grpo", "run_grpo.sh", "ckpt/sft"))[0]
    assert option(vllm, "--backend") == "vllm" and option(vllm, "--engine-arg") == "tensor_parallel_size=8"
    hf = synthesize_steps(dry_run("grpo", "run_grpo.sh", "ckpt/sft", STUDENT_BACKEND="transformers",
                                  STUDENT_ARGS="--device cuda:1 --batch-size 64"))[0]
    assert option(hf, "--backend") == "transformers" and "--engine-arg" not in hf
    assert option(hf, "--device") == "cuda:1" and option(hf, "--batch-size") == "64"


def test_site_overrides_reach_each_trainer_last():
    site = {"SFT_OVERRIDES": "trainer.logger=[console,wandb] trainer.nnodes=2",
            "GRPO_OVERRIDES": "trainer.logger=[console,wandb] actor_rollout_ref.rollout.gpu_memory_utilization=0.5"}
    commands = dry_run("main", **site)
    sft, ppo = named(commands, "sft_trainer"), named(commands, "main_ppo")
    assert sft[-2:] == site["SFT_OVERRIDES"].split()
    assert ppo[-2:] == site["GRPO_OVERRIDES"].split()
    assert composed(ppo)["actor_rollout_ref"]["rollout"]["gpu_memory_utilization"] == 0.5
    assert composed(sft)["trainer"]["nnodes"] == 2
    build = named(dry_run("shape_v", BUILD_RL_ARGS="--engine ray"), "build-rl")
    assert option(build, "--engine") == "ray" and build.index("--engine") < build.index("--shape")


def test_every_trained_model_is_evaluated_on_the_labelled_users():
    commands = dry_run("main")
    evals = [c for c in commands if c[:2] == ["confprofile", "eval"]]
    assert [option(c, "--name") for c in evals] == ["sft", "grpo"]
    passes = synthesize_steps(commands)
    for name, command in zip(("sft", "grpo"), evals):
        sampled = next(p for p in passes if option(p, "--out") == option(command, "--samples"))
        assert option(sampled, "--records") == option(command, "--records") == "data/eval_records.jsonl"
        assert option(sampled, "--model") == f"checkpoints/confprofile/{name}"
        assert option(command, "--out") == f"out/eval/{name}"


def test_trainers_save_hugging_face_weights_the_next_stage_reads():
    assert "hf_model" in shipped("confprofile_sft.yaml")["checkpoint"]["save_contents"]
    grpo_cfg = shipped("confprofile_grpo.yaml")
    assert "hf_model" in grpo_cfg["actor_rollout_ref"]["actor"]["checkpoint"]["save_contents"]
    assert grpo_cfg["trainer"]["save_freq"] > 0  # verl saves nothing at -1, not even the last step


def fake_checkpoint(folder: Path, weights: bool = True) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    if weights:
        (folder / "model.safetensors").write_bytes(b"")


def recipe(script: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(["bash", str(ROOT / "recipes" / script), *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PATH": path, **env})


def test_the_sft_hand_off_resolves_the_latest_hugging_face_checkpoint(tmp_path):
    run = tmp_path / "ckpt" / "sft"
    fake_checkpoint(run / "global_step_9" / "huggingface")
    fake_checkpoint(run / "global_step_12" / "huggingface")
    fake_checkpoint(run / "global_step_100" / "huggingface", weights=False)  # config only: verl without hf_model
    (run / "latest_checkpointed_iteration.txt").write_text("12\n")
    done = recipe("run_grpo.sh", "grpo", str(run), cwd=tmp_path, DRY_RUN="1")
    train = next(shlex.split(line[2:]) for line in done.stdout.splitlines() if "main_ppo" in line)
    assert override(train, "actor_rollout_ref.model.path") == str(run / "global_step_12" / "huggingface")
    # a GRPO run's folder: the actor's Hugging Face weights
    policy = tmp_path / "ckpt" / "grpo"
    fake_checkpoint(policy / "global_step_2" / "actor" / "huggingface")
    done = recipe("run_eval.sh", "grpo", str(policy), cwd=tmp_path, DRY_RUN="1")
    sampled = next(shlex.split(line[2:]) for line in done.stdout.splitlines() if "synthesize" in line)
    assert option(sampled, "--model") == str(policy / "global_step_2" / "actor" / "huggingface")


def test_a_missing_checkpoint_stops_before_any_step(tmp_path):
    fake_checkpoint(tmp_path / "sft" / "global_step_4" / "huggingface", weights=False)
    done = recipe("run_grpo.sh", "grpo", str(tmp_path / "sft"), cwd=tmp_path)
    assert done.returncode == 2
    assert f"{tmp_path / 'sft'} holds no Hugging Face model" in done.stderr and not done.stdout.strip()
    assert not (tmp_path / "data").exists()  # nothing ran
