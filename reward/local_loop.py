"""Run verl's real reward loop on this machine: no GPU, no rollout engine, no model weights.

The demo, the benchmarks and the tests use this to score rollouts exactly as a verl 0.9 trainer
does: the config is verl's own ``ppo_trainer`` composed with Hydra overrides (as typed after
``python -m verl.trainer.main_ppo``), the scorers are ``RewardLoopWorker`` Ray actors built by
``RewardLoopManager``, and the rollouts reach them either

- chunked: ``RewardLoopManager.compute_rm_score(batch)``, the trainer's path for a colocated
  reward model, or
- streamed: one single-row ``DataProto`` per rollout sent to a randomly chosen worker, as
  ``AgentLoopWorker._compute_score`` does in normal training (and validation).
Only the generation is replaced: responses are given as text (``reward.group.Rollout``: row,
response, and a chat prompt, a default one when None) and tokenised.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

import numpy as np
import ray
import torch
from omegaconf import DictConfig, OmegaConf

from .group import Rollout

DEFAULT_PROMPT = [{"role": "user", "content": "Profile this user."}]


def compose_ppo_config(
    overrides: list[str], config_dir: str | None = None, config_name: str = "ppo_trainer"
) -> DictConfig:
    """A trainer config as ``main_ppo --config-path DIR --config-name NAME [overrides]`` composes it.

    Defaults to verl's own ``ppo_trainer``; pass this package's configs folder and
    ``confprofile_grpo`` for the recipe's config.
    """
    import verl
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    config_dir = config_dir or os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=os.path.abspath(config_dir), version_base=None):
        config = compose(config_name=config_name, overrides=list(overrides))
    OmegaConf.resolve(config)
    return config


def init_ray(num_cpus: int | None = None) -> None:
    """Start a local Ray (once per process) with verl's runtime env for PPO workers."""
    if ray.is_initialized():
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def _object_array(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


class LocalRewardLoop:
    """A ``RewardLoopManager`` on local Ray, with the two ways verl feeds it rollouts.

    Use as a context manager; on exit the reward workers are killed so another loop (whose
    workers take the same actor names) can start in the same Ray session.
    """

    def __init__(self, config: DictConfig, ready_timeout_s: float = 600):
        from verl.experimental.reward_loop import RewardLoopManager

        self.manager = RewardLoopManager(config)
        self.workers = self.manager.reward_loop_workers
        try:  # a worker that fails to start (e.g. a refused config) only shows it here
            ray.get([w.__ray_ready__.remote() for w in self.workers], timeout=ready_timeout_s)
        except Exception:
            self.close()
            raise

    def __enter__(self) -> "LocalRewardLoop":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self, timeout_s: float = 60) -> None:
        """Kill the reward workers and wait until their actor names are free again."""
        for worker in self.workers:
            ray.kill(worker)
        deadline = time.monotonic() + timeout_s
        for i in range(len(self.workers)):
            while time.monotonic() < deadline:
                try:
                    ray.get_actor(f"reward_loop_worker_{i}")
                except ValueError:
                    break
                time.sleep(0.05)
        self.workers = []

    def score_chunked(self, batch) -> list[dict]:
        """Score a ``rollout_batch`` through ``compute_rm_score``: {reward_score, reward_extra_info} per row."""
        out = self.manager.compute_rm_score(batch)
        scores = out.batch["rm_scores"].sum(dim=-1).tolist()
        keys = out.meta_info["reward_extra_keys"]
        return [
            {"reward_score": s, "reward_extra_info": {k: out.non_tensor_batch[k][i] for k in keys}}
            for i, s in enumerate(scores)
        ]

    def score_streaming(self, items: list, seed: int = 0, timeout_s: float | None = None) -> list[dict]:
        """Send every ``stream_item`` at once, shuffled, each to a random worker; results in input order.

        ``timeout_s`` bounds the wait for all results (asyncio.TimeoutError past it).
        """
        rng = random.Random(seed)
        order = list(range(len(items)))
        rng.shuffle(order)

        async def run() -> list[dict]:
            calls = {i: rng.choice(self.workers).compute_score.remote(items[i]) for i in order}
            gathered = asyncio.gather(*(calls[i] for i in range(len(items))))
            return list(await asyncio.wait_for(gathered, timeout_s))

        return asyncio.run(run())


def _prompt(rollout: Rollout) -> list:
    return DEFAULT_PROMPT if rollout.prompt is None else rollout.prompt


def _tokens(tokenizer, rollout: Rollout) -> tuple[list[int], list[int]]:
    enc = tokenizer.apply_chat_template(_prompt(rollout), add_generation_prompt=True, tokenize=True)
    prompt = list(enc if isinstance(enc, list) else enc["input_ids"])
    response = tokenizer.encode(rollout.response, add_special_tokens=False) + [tokenizer.eos_token_id]
    return prompt, response


def _data_proto(prompts: torch.Tensor, responses: torch.Tensor, mask: torch.Tensor, non_tensor: dict):
    """A ``DataProto`` of prompt and response ids with their attention mask, as after generation."""
    from tensordict import TensorDict

    from verl import DataProto
    from verl.utils.model import compute_position_id_with_mask

    tensors = {
        "prompts": prompts,
        "responses": responses,
        "input_ids": torch.cat([prompts, responses], dim=1),
        "attention_mask": mask,
        "position_ids": compute_position_id_with_mask(mask),
    }
    return DataProto(batch=TensorDict(tensors, batch_size=len(prompts)), non_tensor_batch=non_tensor)


def rollout_batch(tokenizer, rollouts: list[Rollout]):
    """A padded batch as the trainer holds it after generation (the chunked path's input)."""
    pad = tokenizer.pad_token_id
    pairs = [_tokens(tokenizer, r) for r in rollouts]
    p_len, r_len = max(len(p) for p, _ in pairs), max(len(r) for _, r in pairs)
    prompts = torch.tensor([[pad] * (p_len - len(p)) + p for p, _ in pairs])
    responses = torch.tensor([r + [pad] * (r_len - len(r)) for _, r in pairs])
    mask = torch.tensor([[0] * (p_len - len(p)) + [1] * len(p) + [1] * len(r) + [0] * (r_len - len(r)) for p, r in pairs])
    keys = rollouts[0].row.keys()
    non_tensor = {k: _object_array([r.row[k] for r in rollouts]) for k in keys}
    non_tensor["raw_prompt"] = _object_array([_prompt(r) for r in rollouts])
    return _data_proto(prompts, responses, mask, non_tensor)


def stream_item(tokenizer, rollout: Rollout):
    """The single-row ``DataProto`` the agent loop sends to a reward worker."""
    prompt, response = _tokens(tokenizer, rollout)
    prompts, responses = torch.tensor([prompt]), torch.tensor([response])
    mask = torch.ones(1, len(prompt) + len(response), dtype=torch.int64)
    non_tensor = {k: _object_array([v]) for k, v in rollout.row.items()}
    non_tensor.update(
        raw_prompt=_object_array([_prompt(rollout)]),
        __num_turns__=np.array([2]),
        prompt_len=np.array([len(prompt)]),
        response_len=np.array([len(response)]),
    )
    return _data_proto(prompts, responses, mask, non_tensor)
