"""A transformers-``generate`` rollout backend for verl's agent loop, registered as ``hf``.

verl 0.9.1 serves rollouts through a *replica* (``RolloutReplicaRegistry``) that launches one
server actor per replica, and a *rollout* object inside each hybrid actor/rollout worker
(``verl.workers.rollout.base._ROLLOUT_REGISTRY``) that syncs the trainer's weights into that
server. vLLM, SGLang and TensorRT-LLM are the registered backends; none runs here. This module
plays both parts with a Hugging Face model on the CPU, behind the same interface:

- ``HFReplica.launch_servers`` starts ``HFRolloutServer`` (a named Ray actor, as vLLM's
  ``vllm_server_<replica>_<node>``), whose async ``generate`` takes token ids and sampling
  parameters and answers a ``TokenOutput`` with ``extra_fields["global_steps"]``, as vLLM does
  (the v1 trainer reads it). Concurrent requests are gathered into batches for ``generate``.
- ``HFServerAdapter.update_weights`` streams the trainer's full tensors into the server, so the
  rollouts of step k come from the policy after step k-1.

Sleep, wake-up, cache and profiling calls have nothing to free on a CPU and do nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any, Generator, Optional

import ray
import torch

from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

logger = logging.getLogger(__name__)

BACKEND = "hf"
# A batch is closed once no new request has arrived for this long (the agent loop sends a step's
# requests one by one, a few milliseconds apart; generating them together is far faster on a CPU).
BATCH_WINDOW_S = 0.3
# If set, the server appends one JSON line per event (weights loaded, batch generated) to this file.
EVENTS_ENV = "VERL_CPU_HARNESS_EVENTS"


def server_name(replica_rank: int, node_rank: int = 0) -> str:
    return f"{BACKEND}_server_{replica_rank}_{node_rank}"


class HFRolloutServer:
    """Token-in, token-out generation with ``transformers`` ``generate``, one process per replica."""

    def __init__(self, config: Any, model_path: str, replica_rank: int) -> None:
        from transformers import AutoModelForCausalLM

        torch.manual_seed(int(config.seed) + replica_rank)
        self.config = config
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=torch.float32, attn_implementation="eager"
        ).eval()
        gen = self.model.generation_config
        eos = gen.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = gen.pad_token_id if gen.pad_token_id is not None else next(iter(self.eos_ids))
        self.global_steps: Optional[int] = None
        self.weight_updates = 0
        self._pending: list[tuple[list[int], dict, asyncio.Future]] = []
        self._batcher: Optional[asyncio.Task] = None
        self._lock = asyncio.Lock()

    def _event(self, kind: str, **fields: Any) -> None:
        path = os.environ.get(EVENTS_ENV)
        if path:
            with open(path, "a") as f:
                f.write(json.dumps({"event": kind, "time": time.time(), **fields}) + "\n")

    # --- generation -------------------------------------------------------------------------

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: Optional[list[Any]] = None,
        video_data: Optional[list[Any]] = None,
        **kwargs: Any,
    ) -> TokenOutput:
        prompt_ids = list(prompt_ids)
        params = dict(sampling_params)
        max_tokens = params.pop("max_tokens", params.pop("max_new_tokens", None))
        if max_tokens is None:
            max_tokens = min(
                self.config.response_length,
                self.config.prompt_length + self.config.response_length - len(prompt_ids),
            )
        params["max_tokens"] = max(1, int(max_tokens))
        future = asyncio.get_running_loop().create_future()
        self._pending.append((prompt_ids, params, future))
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.create_task(self._run_batches())
        token_ids, log_probs = await future
        return TokenOutput(
            token_ids=token_ids,
            log_probs=log_probs,
            stop_reason="completed",
            extra_fields={"global_steps": self.global_steps},
        )

    async def _run_batches(self) -> None:
        while self._pending:
            seen = -1
            while seen != len(self._pending):
                seen = len(self._pending)
                await asyncio.sleep(BATCH_WINDOW_S)
            batch, self._pending = self._pending, []
            groups: dict[tuple, list] = {}
            for item in batch:
                groups.setdefault(tuple(sorted(item[1].items())), []).append(item)
            for items in groups.values():
                async with self._lock:
                    try:
                        results = await asyncio.to_thread(self._generate_batch, [i[0] for i in items], items[0][1])
                    except Exception as exc:  # hand the error to every waiting request
                        for _, _, fut in items:
                            if not fut.done():
                                fut.set_exception(exc)
                        continue
                self._event("generate", requests=len(items), global_steps=self.global_steps)
                for (_, _, fut), result in zip(items, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)

    @torch.no_grad()
    def _generate_batch(self, prompts: list[list[int]], params: dict) -> list[tuple[list[int], Optional[list[float]]]]:
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):  # left padding, as generate expects
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention[row, width - len(ids):] = 1
        temperature = float(params.get("temperature") or 0.0)
        top_k = int(params.get("top_k") or -1)
        sample = temperature > 0
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            max_new_tokens=params["max_tokens"],
            do_sample=sample,
            temperature=temperature if sample else None,
            top_p=float(params.get("top_p", 1.0)) if sample else None,
            top_k=top_k if sample and top_k > 0 else None,
            eos_token_id=sorted(self.eos_ids),
            pad_token_id=self.pad_id,
            output_logits=bool(params.get("logprobs")),
            return_dict_in_generate=True,
        )
        results = []
        for row in range(len(prompts)):
            new = out.sequences[row, width:].tolist()
            end = next((i + 1 for i, t in enumerate(new) if t in self.eos_ids), len(new))
            tokens = new[:end]
            log_probs = None
            if params.get("logprobs"):
                log_probs = [
                    torch.log_softmax(out.logits[i][row].float(), dim=-1)[t].item() for i, t in enumerate(tokens)
                ]
            results.append((tokens, log_probs))
        return results

    # --- weights ----------------------------------------------------------------------------

    async def update_weights(self, state: dict[str, torch.Tensor], global_steps: Optional[int]) -> int:
        """Load the trainer's full tensors (HF names); refuses names the model does not have."""
        async with self._lock:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            if unexpected:
                raise KeyError(f"weights the rollout model does not have: {unexpected[:5]}")
            self.weight_updates += 1
            if global_steps is not None:
                self.global_steps = global_steps
            checksum = float(sum(t.double().sum() for t in state.values()))
            self._event("weights", tensors=len(state), missing=len(missing), global_steps=global_steps, checksum=checksum)
        return len(state)

    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps

    async def get_state(self) -> dict[str, Any]:
        return {"global_steps": self.global_steps, "weight_updates": self.weight_updates}

    # --- lifecycle calls of verl's replica interface: nothing to free on a CPU ---------------

    async def wake_up(self, tags: Optional[list[str]] = None) -> None:
        return None

    async def sleep(self) -> None:
        return None

    async def clear_kv_cache(self) -> None:
        return None

    async def release_kv_cache(self) -> None:
        return None

    async def resume_kv_cache(self) -> None:
        return None

    async def wait_for_requests_to_drain(self) -> None:
        while self._pending or (self._batcher is not None and not self._batcher.done()):
            await asyncio.sleep(BATCH_WINDOW_S)

    async def abort_all_requests(self, reset_prefix_cache: bool = True, reject_request: bool = False) -> dict:
        return {"aborted_count": 0, "request_ids": []}

    async def resume_generation(self) -> None:
        return None

    async def start_profile(self, **kwargs: Any) -> None:
        return None

    async def stop_profile(self) -> None:
        return None


class HFReplica(RolloutReplica):
    """One ``HFRolloutServer`` per replica, next to the hybrid workers it serves."""

    async def launch_servers(self) -> None:
        assert len(self.workers) == self.world_size, (len(self.workers), self.world_size)
        name = server_name(self.replica_rank) + self.name_suffix
        server = (
            ray.remote(HFRolloutServer)
            .options(name=name, max_concurrency=self.max_concurrency, num_cpus=0)
            .remote(config=self.config, model_path=self.model_config.path, replica_rank=self.replica_rank)
        )
        await server.get_state.remote()  # surfaces a failed start here, not at the first request
        self.servers = [server]
        self._server_handle = server
        self._server_address = name


class HFServerAdapter(BaseRollout):
    """The rollout object of a hybrid worker: pushes the trainer's weights into its replica's server."""

    def __init__(self, config: Any, model_config: Any, device_mesh: Any, replica_rank: int = -1) -> None:
        super().__init__(config, model_config, device_mesh)
        world = self.config.tensor_model_parallel_size * self.config.data_parallel_size * self.config.pipeline_model_parallel_size
        rank = int(os.environ.get("RANK", "0"))
        self.replica_rank = rank // world if replica_rank == -1 else replica_rank
        self.is_leader = rank % world == 0
        self._server = None

    def _server_handle(self):
        if self._server is None:
            self._server = ray.get_actor(server_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]) -> None:
        return None

    async def release(self) -> None:
        return None

    @torch.no_grad()
    async def update_weights(
        self,
        weights: Generator[tuple[str, torch.Tensor], None, None],
        wire_format: str = "named_tensors",
        global_steps: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        assert wire_format == "named_tensors", f"the hf rollout takes full tensors, not {wire_format!r}"
        state = {}
        for name, tensor in weights:  # every rank must drain the generator (it may gather shards)
            if self.is_leader:
                state[name] = tensor.detach().to("cpu", copy=True)
        if self.is_leader:
            await self._server_handle().update_weights.remote(state, global_steps)


def register() -> None:
    """Make ``actor_rollout_ref.rollout.name=hf`` resolve in verl's two rollout registries."""
    from verl.workers.rollout import base
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    RolloutReplicaRegistry.register(BACKEND, lambda: HFReplica)
    base._ROLLOUT_REGISTRY[(BACKEND, "async")] = f"{__name__}.HFServerAdapter"
