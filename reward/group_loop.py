"""Group rewards in verl's reward loop (verl >= 0.9): ``GroupRewardManager`` and its vote board.

Subclass ``GroupRewardManager`` with a ``name`` and a ``group_reward`` (see ``reward.group``) and
select it with ``reward.reward_manager.name=<registered name>`` (register it with verl's
``register``, e.g. from a ``verl.plugins`` entry point) or ``reward.reward_manager.source=
importlib``. Options come from the top-level config block named ``name``.

Each ``run_single`` call decodes one rollout and computes its contribution (in the worker's
executor), posts it to the group's vote board (``reward.vote_board``, a named Ray actor shared
by all reward workers) and waits for the group's combined result, then computes its own
reward. It never raises: if the board fails, the rollout is combined alone and marked partial
(reason ``unreachable``); a failing user function scores the rollout 0.0 (``SafeGroupReward``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
import uuid
from typing import Any, Callable

import ray
from omegaconf import DictConfig, OmegaConf

from verl import DataProto
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

from .group import DescribedReward, Group, Rollout, SafeGroupReward, group_key
from .vote_board import VoteBoard

logger = logging.getLogger(__name__)

try:  # the concurrency Ray gives an async actor that, like verl's RewardLoopWorker, sets none
    from ray._common.ray_constants import DEFAULT_MAX_CONCURRENCY_ASYNC as ACTOR_CONCURRENCY
except ImportError:  # pragma: no cover - older Ray layouts
    ACTOR_CONCURRENCY = 1000
BOARD_CONCURRENCY = 1_000_000
STUCK_AFTER_S = 2.0  # a saturated worker with no group resolved for this long is relieved


def streaming_overflow(config, capacity: int = ACTOR_CONCURRENCY, who: str = "group reward") -> str | None:
    """Why this config could put more waiting calls on one reward worker than Ray runs at once.

    Rollouts are streamed to reward workers chosen at random, so a worker's share of the
    T = train_batch_size * rollout.n rollouts of a step is Binomial(T, 1/W). Members wait for
    their siblings, so if a worker's share can exceed its call slots, the calls holding the
    slots wait on calls queued behind them. We accept W when mean + 6 sd stays below the slots.
    """
    sel = lambda key, default=None: OmegaConf.select(config, key, default=default)  # noqa: E731
    if sel("reward.reward_model.enable", False) and not sel("reward.reward_model.enable_resource_pool", False):
        return None  # rewards computed in chunks after rollout: one call per worker, no waiting slots
    batch, n, workers = sel("data.train_batch_size"), sel("actor_rollout_ref.rollout.n", 1), sel("reward.num_workers", 1)
    if not batch or not workers:
        return None
    total = int(batch) * int(n) + (int(batch) if str(sel("algorithm.adv_estimator", "")) == "remax" else 0)

    def bound(w: int) -> float:
        return total / w + 6 * math.sqrt(total * (1 / w) * (1 - 1 / w))

    if bound(int(workers)) < capacity:
        return None
    need = next(w for w in range(int(workers), total + 2) if bound(w) < capacity)
    return (
        f"{who}: reward.num_workers={workers} is too few for {total} rollouts per step: one reward worker "
        f"could hold about {bound(int(workers)):.0f} rollouts waiting for their group, more than the {capacity} "
        f"calls a Ray async actor runs at once, and group voting would stall. "
        f"Fix: set reward.num_workers={need} (or more)."
    )


class BoardClient:
    """This worker's side of the vote board: one Ray call per batch, not per rollout.

    Members posted in the same event-loop turn go to the board in one ``submit`` call, and the
    results of all this worker's groups come back through one long-polling ``poll`` loop, so a
    step costs a few board calls per worker instead of one per rollout.
    """

    def __init__(self, board: ray.actor.ActorHandle, worker: str | None = None):
        self.board, self.worker = board, worker or uuid.uuid4().hex
        self.pending: list[tuple] = []
        self.waiters: dict[str, list[asyncio.Future]] = {}
        self.poller: asyncio.Task | None = None

    async def vote(self, uid: str, member: Any, expected: int, timeout_s: float) -> dict:
        """Post one member's contribution and wait for its group's result (the board's dict)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.waiters.setdefault(uid, []).append(future)
        if not self.pending:
            loop.call_soon(self._flush)
        self.pending.append((uid, member, expected, timeout_s))
        if self.poller is None or self.poller.done():
            self.poller = loop.create_task(self._poll())
        return await future

    async def relieve(self, slots: int) -> int:
        """Ask the board to combine early the fullest groups waiting here, to free ``slots`` calls."""
        return await self.board.relieve.remote(self.worker, slots)

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        self.board.submit.remote(self.worker, batch)

    async def _poll(self) -> None:
        try:
            while self.waiters:
                for uid, result in await self.board.poll.remote(self.worker):
                    for future in self.waiters.pop(uid, ()):
                        if not future.done():
                            future.set_result(result)
        except Exception as exc:  # the board is gone: every waiting member falls back
            waiters, self.waiters = self.waiters, {}
            for future in (f for fs in waiters.values() for f in fs):
                if not future.done():
                    future.set_exception(exc)


_CLIENTS: dict[str, BoardClient] = {}


def board_client(name: str, options: Any, combine: Callable[[list], Any]) -> BoardClient:
    """This process's client of the named board of a group reward and its options.

    The board actor is created by whichever worker asks first (``get_if_exists``), with that
    worker's ``combine``; a reward with other options gets a board of its own.
    """
    key = hashlib.sha1(json.dumps([name, options], sort_keys=True, default=repr).encode()).hexdigest()[:16]
    if key not in _CLIENTS:
        board = (
            ray.remote(VoteBoard)
            .options(name=f"{name}_vote_board_{key}", get_if_exists=True, max_concurrency=BOARD_CONCURRENCY, num_cpus=0)
            .remote(combine)
        )
        _CLIENTS[key] = BoardClient(board)
    return _CLIENTS[key]


class GroupRewardManager(DescribedReward, RewardManagerBase):
    """A verl reward-loop manager for a ``GroupReward``: subclass with ``name`` and ``group_reward``.

    ``group_reward`` is a ``GroupReward`` (its only option is ``<name>.group_timeout_s``) or a
    function from the top-level ``<name>:`` config block (None when absent) to one, which
    validates the options and refuses bad ones with an error naming them.
    """

    def __init__(self, config, tokenizer, compute_score=None, reward_router_address=None, reward_model_tokenizer=None):
        super().__init__(config, tokenizer, compute_score)
        name = self.reward_name()
        block = config.get(name)
        self.spec = self.described(block)
        problem = streaming_overflow(config, who=name)
        if problem:
            raise ValueError(problem)
        self.safe = SafeGroupReward(self.spec, name)
        rollout = config.actor_rollout_ref.rollout
        self.group_size = {False: int(rollout.n), True: int(OmegaConf.select(rollout, "val_kwargs.n", default=1))}
        self._board = (name, OmegaConf.to_container(block, resolve=True) if isinstance(block, DictConfig) else block)
        self._open = 0
        self._progress = 0  # rollouts contributed or finished: a worker that moves is not stuck
        self._watchdog: asyncio.Task | None = None

    async def run_single(self, data: DataProto) -> dict:
        self._open += 1
        try:
            score, info = await self._score(data[-1:][0])
        except Exception:  # a fault of the mechanism itself must not fail the training step
            logger.exception("%s: scoring a rollout failed; it is scored 0.0", self._board[0])
            score, info = self.safe.fallback()
        finally:
            self._open -= 1
            self._progress += 1
        return {"reward_score": score, "reward_extra_info": info}

    async def _score(self, item) -> tuple[float, dict]:
        rollout, own = await self.loop.run_in_executor(None, self._contribute, item)
        self._progress += 1
        expected = self.group_size[rollout.validation]
        if not self.safe.needs_group(rollout):
            return self.safe.score(own, Group(None, 0, expected, False, None), rollout)
        group, error = await self._gather(group_key(rollout.row.get("uid")), own, expected)
        return self.safe.score(own, group, rollout, error)

    def _contribute(self, item) -> tuple[Rollout, Any]:
        response_ids = item.batch["responses"]
        length = int(item.batch["attention_mask"][-response_ids.shape[-1] :].sum())
        row = item.non_tensor_batch
        rollout = Rollout(row, self.tokenizer.decode(response_ids[:length], skip_special_tokens=True), row.get("raw_prompt"))
        return rollout, self.safe.contribute(rollout)

    def _client(self) -> BoardClient:
        return board_client(*self._board, self.spec.combine)

    async def _gather(self, uid: str | None, own: Any, expected: int) -> tuple[Group, str | None]:
        if uid is None:  # not a GRPO group: the rollout is its own group
            return self._alone(own, 1, "complete")
        self._ensure_watchdog()
        try:
            out = await self._client().vote(uid, own, expected, self.spec.group_timeout_s)
        except Exception as exc:  # the board died or is unreachable: score alone rather than fail the step
            logger.warning("%s: vote board unavailable (%s); scoring the rollout against itself", self._board[0], exc)
            _CLIENTS.clear()
            return self._alone(own, expected, "unreachable")
        if out["error"] is not None:
            self.safe.failed("combine", out["error"])
        return Group(out["result"], out["members"], out["expected"], out["partial"], out["reason"]), out["error"]

    def _alone(self, own: Any, expected: int, reason: str) -> tuple[Group, str | None]:
        """The rollout combined as a group of itself; partial unless that is the whole group."""
        result, error = self.safe.combine([own])
        return Group(result, 1, expected, reason != "complete", reason), error

    def _ensure_watchdog(self) -> None:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        """Relieve the board when every call slot of this worker waits and nothing moves.

        Calls beyond the slots are queued by Ray and cannot post their members, so the groups
        waiting here could only finish by timeout; instead the fullest of them are combined now.
        Streamed rollouts are one Ray call each, so a starved worker holds exactly as many as
        there are slots; a chunk of the batch is one call holding any number of rollouts that
        are all posted in time (more than the slots, or fewer: never starved). A worker still
        computing contributions is not stuck either.
        """
        stuck_since, seen = None, self._progress
        while self._open:
            await asyncio.sleep(STUCK_AFTER_S / 8)
            now = time.monotonic()
            if self._open == ACTOR_CONCURRENCY and self._progress == seen:
                stuck_since = stuck_since or now
                if now - stuck_since >= STUCK_AFTER_S:
                    freed = await self._client().relieve(ACTOR_CONCURRENCY // 4)
                    logger.warning(
                        "%s: all %d call slots of this reward worker held waiting groups; combined groups "
                        "early on the members present to free %d (raise reward.num_workers to avoid this)",
                        self._board[0],
                        ACTOR_CONCURRENCY,
                        freed,
                    )
                    stuck_since = None
            else:
                stuck_since = None
            seen = self._progress
