"""The ``confprofile`` reward manager for verl's reward loop (verl >= 0.9).

Select it with ``reward.reward_manager.name=confprofile``; options come from the top-level
``confprofile:`` config block (see ``reward.options``). Each ``run_single`` call decodes and
parses one rollout, posts it to the group's vote board (``reward.vote_board``, a named Ray
actor shared by all reward workers) and waits for the quasi ground truth of its ``uid`` group
(Eq. 6), then computes its own reward (Eq. 7-8). It never raises on any model output; if the
board itself fails, the rollout is scored against a vote of itself and marked partial.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
import uuid

import ray
from omegaconf import OmegaConf

from verl import DataProto
from verl.experimental.reward_loop.reward_manager import register
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase
from verl_confprofile.profile_format import parse_profile
from verl_confprofile.voting import Vote, vote_profile

from .options import read_options
from .rows import covered_by_labels, is_validation, labels_of, score_row
from .vote_board import VoteBoard

logger = logging.getLogger(__name__)

try:  # the concurrency Ray gives an async actor that, like verl's RewardLoopWorker, sets none
    from ray._common.ray_constants import DEFAULT_MAX_CONCURRENCY_ASYNC as ACTOR_CONCURRENCY
except ImportError:  # pragma: no cover - older Ray layouts
    ACTOR_CONCURRENCY = 1000
BOARD_CONCURRENCY = 1_000_000
STUCK_AFTER_S = 2.0  # a saturated worker with no group resolved for this long is relieved


def streaming_overflow(config, capacity: int = ACTOR_CONCURRENCY) -> str | None:
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
        f"confprofile: reward.num_workers={workers} is too few for {total} rollouts per step: one reward worker "
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

    async def vote(self, uid: str, member: tuple, expected: int, timeout_s: float) -> dict:
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
        """Ask the board to vote early the fullest groups waiting here, to free ``slots`` calls."""
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


def board_client(taxonomy: dict, voting: str) -> BoardClient:
    """This process's client of the named board for a taxonomy and voting method.

    The board actor is created by whichever worker asks first (``get_if_exists``); a
    different taxonomy or voting method gets a board of its own.
    """
    key = hashlib.sha1(json.dumps([taxonomy, voting], sort_keys=True).encode()).hexdigest()[:16]
    if key not in _CLIENTS:
        board = (
            ray.remote(VoteBoard)
            .options(name=f"confprofile_vote_board_{key}", get_if_exists=True, max_concurrency=BOARD_CONCURRENCY, num_cpus=0)
            .remote(taxonomy, voting)
        )
        _CLIENTS[key] = BoardClient(board)
    return _CLIENTS[key]


@register("confprofile")
class ConfProfileRewardManager(RewardManagerBase):
    """Per-rollout Conf-Profile reward with cross-worker quasi-ground-truth voting."""

    def __init__(self, config, tokenizer, compute_score=None, reward_router_address=None, reward_model_tokenizer=None):
        super().__init__(config, tokenizer, compute_score)
        self.options = read_options(config.get("confprofile"))
        problem = streaming_overflow(config)
        if problem:
            raise ValueError(problem)
        rollout = config.actor_rollout_ref.rollout
        self.group_size = {False: int(rollout.n), True: int(OmegaConf.select(rollout, "val_kwargs.n", default=1))}
        self._taxonomy_dict = self.options.taxonomy.to_dict()
        self._open = 0
        self._resolved = 0
        self._watchdog: asyncio.Task | None = None

    async def run_single(self, data: DataProto) -> dict:
        self._open += 1
        try:
            return await self._score(data[-1:][0])
        finally:
            self._open -= 1
            self._resolved += 1

    async def _score(self, item) -> dict:
        tax, spec = self.options.taxonomy, self.options.spec
        text = await self.loop.run_in_executor(None, self._decode, item)
        parsed = parse_profile(text, tax)
        row = item.non_tensor_batch
        labels = labels_of((row.get("reward_model") or {}).get("ground_truth"))
        info_row = row.get("extra_info")
        group = {"votes": {}, "members": 0, "partial": False}
        if not (spec.use_labels == "when_present" and covered_by_labels(labels, tax)):
            group = await self._group_vote(row.get("uid"), parsed, is_validation(info_row))
        votes = {k: Vote(*v) for k, v in group["votes"].items()}
        total, info = score_row(parsed, votes, labels, info_row, self.options, members=group["members"], partial=group["partial"])
        return {"reward_score": total, "reward_extra_info": info}

    def _decode(self, item) -> str:
        response_ids = item.batch["responses"]
        length = int(item.batch["attention_mask"][-response_ids.shape[-1] :].sum())
        return self.tokenizer.decode(response_ids[:length], skip_special_tokens=True)

    def _client(self) -> BoardClient:
        return board_client(self._taxonomy_dict, self.options.spec.voting)

    async def _group_vote(self, uid, parsed, validation: bool) -> dict:
        if uid is None:  # not a GRPO group: the rollout is its own group
            return self._local_vote(parsed, partial=False)
        self._ensure_watchdog()
        member = tuple((o.tag, o.score) for o in parsed.values())
        try:
            return await self._client().vote(str(uid), member, self.group_size[validation], self.options.group_timeout_s)
        except Exception as exc:  # the board died or is unreachable: score alone rather than fail the step
            logger.warning("confprofile: vote board unavailable (%s); scoring the rollout against itself", exc)
            _CLIENTS.clear()
            return self._local_vote(parsed, partial=True)

    def _local_vote(self, parsed, partial: bool) -> dict:
        votes = vote_profile([parsed], self.options.taxonomy, self.options.spec.voting)
        return {"votes": {k: tuple(v) for k, v in votes.items()}, "members": 1, "partial": partial}

    def _ensure_watchdog(self) -> None:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        """Relieve the board when every call slot of this worker waits and nothing resolves.

        Calls beyond the slots are queued by Ray and cannot post their members, so the groups
        waiting here could only finish by timeout; instead the fullest of them are voted now.
        """
        stuck_since, seen = None, self._resolved
        while self._open:
            await asyncio.sleep(STUCK_AFTER_S / 8)
            now = time.monotonic()
            if self._open >= ACTOR_CONCURRENCY and self._resolved == seen:
                stuck_since = stuck_since or now
                if now - stuck_since >= STUCK_AFTER_S:
                    freed = await self._client().relieve(ACTOR_CONCURRENCY // 4)
                    logger.warning(
                        "confprofile: all %d call slots of this reward worker held waiting groups; voted groups "
                        "early on the members present to free %d (raise reward.num_workers to avoid this)",
                        ACTOR_CONCURRENCY,
                        freed,
                    )
                    stuck_since = None
            else:
                stuck_since = None
            seen = self._resolved
