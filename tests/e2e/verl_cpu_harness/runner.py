"""Driver side of the CPU harness: a tiny model, and verl's trainers run as subprocesses.

Nothing here is imported by a trainer process; the trainers import the harness package itself
through ``VERL_USE_EXTERNAL_MODULES`` (see ``cpu_env``).

- ``build_tiny_model``: a random Qwen3-architecture model with a given tokenizer (``task_tokenizer``
  fits a small one to the task).
- ``run_recipe``: a recipe (``recipes/run_*.sh``) as a user runs it, with the harness's overrides
  passed through the recipes' site variables ``SFT_OVERRIDES`` / ``GRPO_OVERRIDES``.
- ``run_main_ppo``: ``python -m verl.trainer.main_ppo --config-name=confprofile_grpo`` with the
  CPU overrides plus the caller's, returning what the trainer logged (verl's ``file`` logger:
  one JSON line per step) and the folders it dumped rollouts into.

Every trainer runs in its own session with its own Ray temp folder; on return (success, failure
or timeout) the session and every process started under that Ray folder are killed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .hf_rollout import EVENTS_ENV

HARNESS_DIR = Path(__file__).resolve().parent
REPO = HARNESS_DIR.parents[2]
CONFIGS = REPO / "configs"

# What makes configs/confprofile_grpo.yaml run on this harness: the cpu device; one logical GPU
# for verl's Ray placement (its workers ask for a GPU bundle); the hf rollout backend with one
# replica and one agent-loop worker (the batch must divide by the workers); full weights at
# start (no dummy load); padded batches and eager attention (no flash-attn on a CPU); FSDP2
# (FSDP1 wants parameters on an accelerator); one TransferQueue storage unit (each takes a Ray
# CPU, 8 by default).
CPU_GRPO_OVERRIDES = (
    "trainer.device=cpu",
    "trainer.n_gpus_per_node=1",
    "trainer.nnodes=1",
    "+ray_kwargs.ray_init.num_gpus=1",
    "actor_rollout_ref.rollout.name=hf",
    "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
    "actor_rollout_ref.rollout.agent.num_workers=1",
    "actor_rollout_ref.rollout.load_format=auto",
    "actor_rollout_ref.model.use_remove_padding=false",
    "+actor_rollout_ref.model.override_config.attn_implementation=eager",
    "actor_rollout_ref.model.enable_gradient_checkpointing=false",
    "actor_rollout_ref.actor.strategy=fsdp2",
    "actor_rollout_ref.ref.strategy=fsdp2",
    "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
)
# The same for configs/confprofile_sft.yaml, with the dataset read in the trainer's process.
CPU_SFT_OVERRIDES = (
    "trainer.device=cpu",
    "trainer.n_gpus_per_node=1",
    "trainer.nnodes=1",
    "engine.strategy=fsdp2",
    "model.use_remove_padding=false",
    "+model.override_config.attn_implementation=eager",
    "model.enable_gradient_checkpointing=false",
    "data.num_workers=0",
)
# Ray's logical CPUs: verl's placement groups ask for 3 per GPU bundle, TransferQueue's
# controller and storage unit for one each, the reward workers for one each.
LOGICAL_CPUS = 16
SEED = 0
# Where a run's rollout server writes its events (weight loads, batches), inside the run's folder.
EVENTS_FILE = "rollout_server.jsonl"

# Sizes for the tests: 2 prompts x 4 rollouts a step, 2 steps, short responses, validation
# before training and after the last step. The KL loss is off because verl's FSDP2 reference
# model pins host memory, which needs an accelerator; the rest is configs/confprofile_grpo.yaml.
GRPO_TEST_OVERRIDES = (
    "data.train_batch_size=2",
    "actor_rollout_ref.rollout.n=4",
    "actor_rollout_ref.actor.ppo_mini_batch_size=2",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
    "actor_rollout_ref.actor.use_kl_loss=false",
    "actor_rollout_ref.actor.optim.lr=1e-4",
    "data.max_prompt_length=512",
    "data.max_response_length=64",
    "trainer.total_training_steps=2",
    "trainer.val_before_train=true",
    "trainer.test_freq=2",
    "reward.num_workers=2",
    f"data.seed={SEED}",
    f"actor_rollout_ref.rollout.seed={SEED}",
)
SFT_TEST_OVERRIDES = (
    "data.train_batch_size=2",
    "data.micro_batch_size_per_gpu=2",
    "optim.lr=1e-2",
    "trainer.total_epochs=1",
    "trainer.total_training_steps=8",
    f"trainer.seed={SEED}",
)


# Only stops a hung trainer: a run takes 2-4 minutes on 2 idle cores, and a loaded machine
# must not make it fail.
TRAINER_TIMEOUT_S = 1800


class TrainerFailed(RuntimeError):
    """A trainer subprocess exited non-zero or ran out of time; the message ends with its log."""


def build_tiny_model(out_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike, *, hidden: int = 64,
                     layers: int = 2, seed: int = 0) -> str:
    """A random Qwen3-architecture causal LM with the tokenizer in ``tokenizer_dir``, saved in ``out_dir``.

    The output layer is as wide as the tokenizer's vocabulary, rounded up to a multiple of 64:
    about 152,000 entries with the real Qwen tokenizer, under a thousand with one fitted to the task.
    """
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    out = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=-(-len(tokenizer) // 64) * 64,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id], pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return str(out)


def cpu_env(workdir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a trainer process: the harness imported by ``import verl`` everywhere."""
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HARNESS_DIR.parent), env.get("PYTHONPATH", "")])),
        "VERL_USE_EXTERNAL_MODULES": "verl_cpu_harness",
        "VERL_PLATFORM": "cpu",
        "VERL_ENGINE_DEVICE": "cuda",  # verl registers its FSDP engines for cuda and npu only
        "VERL_FILE_LOGGER_PATH": str(workdir / "metrics.jsonl"),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "RAY_DEDUP_LOGS": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("CUDA_VISIBLE_DEVICES", None)  # Ray refuses a logical GPU when this names none
    env.update(extra or {})
    return env


def _session_pids(sid: int) -> list[int]:
    """Pids of the processes in session ``sid`` (the trainer and everything it started, Ray included)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # fields after the parenthesised command: state ppid pgrp session ...
        if int(stat.rsplit(")", 1)[1].split()[3]) == sid:
            pids.append(int(entry.name))
    return pids


def _kill_session(sid: int) -> None:
    """SIGKILL every process of the trainer's session, by pid, until none is left."""
    for _ in range(50):
        pids = _session_pids(sid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.2)


def _run(cmd: Sequence[str], workdir: Path, env: dict[str, str], timeout: float) -> str:
    """Run a trainer in its own session, log to ``workdir/trainer.log``; clean up whatever happens.

    Ray's processes (GCS, raylet, workers) are started by the trainer and stay in its session,
    so killing the session ends them all, also after a failure or a timeout.
    """
    log_path = workdir / "trainer.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(list(cmd), cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            _kill_session(proc.pid)
            proc.wait()
    text = log_path.read_text(errors="replace")
    if code != 0:
        reason = "timed out" if code is None else f"exited with {code}"
        raise TrainerFailed(f"{' '.join(cmd[:4])} ... {reason}; last lines of {log_path}:\n{text[-6000:]}")
    return text


@dataclass
class GRPORun:
    """What one main_ppo run logged and dumped."""

    steps: list[dict[str, Any]]  # per training step: the metrics dict verl handed to its loggers
    validation: list[dict[str, Any]]  # per validation pass: the val-core/val-aux metrics (with its step)
    rollout_dir: Path  # trainer.rollout_data_dir: <step>.jsonl per training step
    validation_dir: Path  # trainer.validation_data_dir: <step>.jsonl per validation pass
    server_events: list[dict[str, Any]]  # the hf rollout server's weight loads and generated batches
    log: str = field(repr=False)

    def rollouts(self, step: int) -> list[dict[str, Any]]:
        """The training rollouts verl dumped at ``step`` (one dict per rollout)."""
        return read_jsonl(self.rollout_dir / f"{step}.jsonl")

    def validation_rollouts(self, step: int) -> list[dict[str, Any]]:
        """The validation generations verl dumped for the validation pass at ``step``."""
        return read_jsonl(self.validation_dir / f"{step}.jsonl")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_metrics(path: Path, training_prefix: str = "critic/") -> tuple[list[dict], list[dict]]:
    """Split verl's file-logger lines (``{"step", "data"}``) into training steps and validation passes.

    A line with a key starting with ``training_prefix`` is a training step (``critic/`` for PPO,
    ``train/`` for SFT); its ``val-*`` keys, if any, also make a validation pass (verl logs the
    validation of a step together with the step).
    """
    steps, validation = [], []
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        data = entry["data"]
        if any(k.startswith(training_prefix) for k in data):
            steps.append({"step": entry["step"], **data})
        if any(k.startswith("val-") for k in data):
            validation.append({"step": entry["step"], **{k: v for k, v in data.items() if k.startswith("val-")}})
    return steps, validation


def _ray_tmp() -> Path:
    """A fresh Ray temp folder for one run, short enough for Ray's socket paths."""
    return Path("/tmp") / f"ray_e2e_{os.getpid()}_{time.monotonic_ns() % 10**9}"


def _grpo_harness(work: Path, ray_tmp: Path) -> list[str]:
    """The harness's main_ppo overrides for a run in ``work``: the CPU pieces, Ray's resources and
    folder, the rollout and validation dumps under ``work``, and verl's file logger."""
    return [
        *CPU_GRPO_OVERRIDES,
        f"+ray_kwargs.ray_init.num_cpus={LOGICAL_CPUS}",
        f"+ray_kwargs.ray_init._temp_dir={ray_tmp}",
        "+ray_kwargs.ray_init.include_dashboard=false",
        f"trainer.rollout_data_dir={work / 'rollouts'}",
        f"trainer.validation_data_dir={work / 'validation'}",
        "trainer.logger=[console,file]",
    ]


def run_recipe(script: str, args: Sequence[str], workdir: str | os.PathLike, settings: dict[str, str], *,
               sft_overrides: Sequence[str] = (), grpo_overrides: Sequence[str] = (),
               timeout: float = TRAINER_TIMEOUT_S) -> str:
    """``bash recipes/<script> ARGS`` as a user runs it, on this harness; returns its output.

    ``settings`` are the recipes' variables (DATA_DIR, MODEL, TAXONOMY, ...). The harness's own
    overrides reach the trainers through the recipes' site variables ``SFT_OVERRIDES`` and
    ``GRPO_OVERRIDES``, the way a cluster user passes a logger or node settings, followed by the
    caller's. The project's ``python`` and ``confprofile`` come first on PATH. verl's file logger,
    rollout dumps and the rollout server's events go under ``workdir``; the recipe runs in its own
    session, ended with everything it started (Ray included) whatever happens.
    """
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    ray_tmp = _ray_tmp()
    grpo = [*_grpo_harness(work, ray_tmp), *grpo_overrides]
    sft = [*CPU_SFT_OVERRIDES, "trainer.logger=[console,file]", *sft_overrides]
    for override in (*sft, *grpo):
        if any(c.isspace() for c in override):
            raise ValueError(f"an override holds whitespace, which the recipes split on: {override!r}")
    env = cpu_env(work, {EVENTS_ENV: str(work / EVENTS_FILE), **settings})
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["SFT_OVERRIDES"] = " ".join(sft)
    env["GRPO_OVERRIDES"] = " ".join(grpo)
    try:
        return _run(["bash", str(REPO / "recipes" / script), *args], work, env, timeout)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def run_main_ppo(workdir: str | os.PathLike, model_dir: str, train_file: str, val_file: str,
                 overrides: Sequence[str] = (), timeout: float = TRAINER_TIMEOUT_S) -> GRPORun:
    """``python -m verl.trainer.main_ppo --config-name=confprofile_grpo`` on the CPU harness.

    ``overrides`` come last and win over the harness's defaults (e.g. another reward manager,
    ``trainer.use_v1=false``, ``trainer.total_training_steps=1``).
    """
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    ray_tmp = _ray_tmp()
    cmd = [
        sys.executable, "-m", "verl.trainer.main_ppo", f"--config-path={CONFIGS}", "--config-name=confprofile_grpo",
        *_grpo_harness(work, ray_tmp),
        f"data.train_files={train_file}",
        f"data.val_files={val_file}",
        f"actor_rollout_ref.model.path={model_dir}",
        f"trainer.default_local_dir={work / 'checkpoints'}",
        "trainer.save_freq=-1",
        *overrides,
    ]
    try:
        log = _run(cmd, work, cpu_env(work, {EVENTS_ENV: str(work / EVENTS_FILE)}), timeout)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return grpo_run(work, log)


def grpo_run(work: Path, log: str) -> GRPORun:
    """What a main_ppo run in ``work`` (``run_main_ppo`` or a recipe through ``run_recipe``) logged and dumped."""
    events = work / EVENTS_FILE
    steps, validation = read_metrics(work / "metrics.jsonl")
    return GRPORun(steps=steps, validation=validation, rollout_dir=work / "rollouts", validation_dir=work / "validation",
                   server_events=read_jsonl(events) if events.exists() else [], log=log)
