"""The vote board: gathers the members of a GRPO group from every reward worker and votes once.

verl 0.9 scores each rollout alone (``run_single``), on whichever ``RewardLoopWorker`` actor it
was sent to, so the members of one group (one ``uid``) are spread over processes. Workers post
their parsed members here (``submit``, batched per worker) and collect the results of their
groups by long polling (``poll``); the board votes each group (Eq. 6) exactly once and sends
the same frozen result to every worker holding one of its members. A group is voted when:

- ``expected`` members have arrived (the normal case);
- ``timeout_s`` has passed since its first member arrived (a member that never comes: an
  aborted rollout, a filtered sample): voted over the members present, marked partial;
- a worker reports that all its concurrent call slots are held by waiting members while
  nothing resolves (``relieve``): the calls that would complete those groups are queued behind
  them inside Ray and cannot start, so waiting cannot help. The board votes, over the members
  present, the fullest groups waiting in that worker until enough slots are free (partial).

A member arriving after its group was voted gets the frozen result (padding duplicates and
stragglers). A voted group is forgotten ``timeout_s`` after its vote, so the state holds at
most the groups of the last ``timeout_s`` seconds and nothing accumulates across steps. This
class is plain asyncio; ``reward.manager`` runs it as a named Ray actor.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import Counter

from verl_confprofile.taxonomy import Taxonomy
from verl_confprofile.voting import vote

# Compact per-member payload: one (tag, confidence) pair per dimension, (None, None) if malformed.
Member = tuple[tuple[str | None, int | None], ...]


class _Group:
    __slots__ = ("members", "expected", "timeout_s", "waiting", "result", "forget_at")

    def __init__(self, expected: int, timeout_s: float):
        self.members: list[Member] = []
        self.expected = expected
        self.timeout_s = timeout_s
        self.waiting: Counter = Counter()
        self.result: dict | None = None
        self.forget_at = float("inf")


class VoteBoard:
    """Group barrier with a single vote per ``uid``; all methods run on one event loop."""

    def __init__(self, taxonomy: dict, voting: str, sweep_s: float = 0.05):
        self.taxonomy = Taxonomy.from_dict(taxonomy, "<vote board>")
        self.voting = voting
        self.sweep_s = sweep_s
        self.groups: dict[str, _Group] = {}
        self._timers: list[tuple[float, str]] = []
        self._outbox: dict[str, list[tuple[str, dict]]] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._sweeper: asyncio.Task | None = None
        self.counters: Counter = Counter()

    def submit(self, worker: str, entries: list[tuple[str, Member, int, float]]) -> None:
        """Add (uid, member, expected, timeout_s) entries from one worker; results come by ``poll``."""
        for uid, member, expected, timeout_s in entries:
            group = self.groups.get(uid)
            if group is None:
                group = self.groups[uid] = _Group(max(1, int(expected)), float(timeout_s))
                self._schedule(time.monotonic() + group.timeout_s, uid)
            if group.result is not None:
                self.counters["late_members"] += 1
                self._send(worker, uid, group.result)
                continue
            group.members.append(member)
            group.waiting[worker] += 1
            if len(group.members) >= group.expected:
                self._resolve(uid, group, "complete")

    async def poll(self, worker: str, wait_s: float = 1.0) -> list[tuple[str, dict]]:
        """The (uid, result) pairs voted for ``worker`` since its last poll; waits up to ``wait_s``."""
        wake = self._wakeups.setdefault(worker, asyncio.Event())
        if not self._outbox.get(worker):
            try:
                await asyncio.wait_for(wake.wait(), wait_s)
            except asyncio.TimeoutError:
                pass
        wake.clear()
        return self._outbox.pop(worker, [])

    def relieve(self, worker: str, slots: int) -> int:
        """Vote early the fullest groups waiting in ``worker`` until ``slots`` calls are freed."""
        pending = [(uid, g) for uid, g in self.groups.items() if g.result is None and g.waiting[worker] > 0]
        pending.sort(key=lambda item: len(item[1].members), reverse=True)
        freed = 0
        for uid, group in pending:
            if freed >= slots:
                break
            freed += group.waiting[worker]
            self._resolve(uid, group, "overflow")
        return freed

    def stats(self) -> dict:
        """Live state sizes and lifetime counters, for monitoring and tests."""
        undelivered = sum(len(v) for v in self._outbox.values())
        return {"groups": len(self.groups), "timers": len(self._timers), "undelivered": undelivered, **self.counters}

    def _send(self, worker: str, uid: str, result: dict) -> None:
        self._outbox.setdefault(worker, []).append((uid, result))
        self._wakeups.setdefault(worker, asyncio.Event()).set()

    def _resolve(self, uid: str, group: _Group, reason: str) -> None:
        votes = {d.key: tuple(vote((m[i] for m in group.members), d, self.voting)) for i, d in enumerate(self.taxonomy)}
        self.counters[f"groups_{reason}"] += 1
        group.result = {
            "votes": votes,
            "members": len(group.members),
            "expected": group.expected,
            "partial": len(group.members) < group.expected,
            "reason": reason,
        }
        group.forget_at = time.monotonic() + group.timeout_s
        self._schedule(group.forget_at, uid)
        for worker, waiting in group.waiting.items():
            if waiting:
                self._send(worker, uid, group.result)
        group.waiting.clear()

    def _schedule(self, when: float, uid: str) -> None:
        heapq.heappush(self._timers, (when, uid))
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        """Vote groups past their timeout; forget voted groups past their grace period."""
        while self._timers:
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, uid = heapq.heappop(self._timers)
                group = self.groups.get(uid)
                if group is None:
                    continue
                if group.result is None:
                    self._resolve(uid, group, "timeout")
                elif group.forget_at <= now:
                    del self.groups[uid]
            await asyncio.sleep(self.sweep_s)
