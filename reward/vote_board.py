"""The vote board: gathers the members of a GRPO group from every reward worker and combines them once.

verl 0.9 scores each rollout alone (``run_single``), on whichever ``RewardLoopWorker`` actor it
was sent to, so the members of one group (one ``uid``) are spread over processes. Workers post
their members' contributions here (``submit``, batched per worker) and collect the results of
their groups by long polling (``poll``); the board combines each group exactly once with the
group reward's ``combine`` (``reward.group``; for confprofile, the vote of Eq. 6) and sends the
same frozen result to every worker holding one of its members. It knows nothing of what the
contributions mean. A group is combined when:

- ``expected`` members have arrived (the normal case);
- ``timeout_s`` has passed since its first member arrived (a member that never comes: an
  aborted rollout, a filtered sample): voted over the members present, marked partial;
- a worker reports that all its concurrent call slots are held by waiting members while
  nothing resolves (``relieve``): the calls that would complete those groups are queued behind
  them inside Ray and cannot start, so waiting cannot help. The board combines, over the
  members present, the fullest groups waiting in that worker until enough slots are free
  (partial).

A member arriving after its group was combined gets the frozen result (padding duplicates and
stragglers). A group's contributions are dropped once it is combined, and the group itself is
forgotten ``timeout_s`` later, so the state holds at most the groups of the last ``timeout_s``
seconds and nothing accumulates across steps. A ``combine`` that raises resolves its group with
an error (the workers score its members as failed) and never stops the board. This class is
plain asyncio; ``reward.group_loop`` runs it as a named Ray actor.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import Counter
from typing import Any, Callable

from .group import combine_safely


class _Group:
    __slots__ = ("members", "arrived", "expected", "timeout_s", "waiting", "result", "forget_at")

    def __init__(self, expected: int, timeout_s: float):
        self.members: list = []
        self.arrived = 0
        self.expected = expected
        self.timeout_s = timeout_s
        self.waiting: Counter = Counter()
        self.result: dict | None = None
        self.forget_at = float("inf")


class VoteBoard:
    """Group barrier with a single ``combine`` per ``uid``; all methods run on one event loop."""

    def __init__(self, combine: Callable[[list], Any], sweep_s: float = 0.05):
        self.combine = combine
        self.sweep_s = sweep_s
        self.groups: dict[str, _Group] = {}
        self._timers: list[tuple[float, str]] = []
        self._outbox: dict[str, list[tuple[str, dict]]] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._sweeper: asyncio.Task | None = None
        self.counters: Counter = Counter()

    def submit(self, worker: str, entries: list[tuple[str, Any, int, float]]) -> None:
        """Add (uid, contribution, expected, timeout_s) entries from one worker; results come by ``poll``."""
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
            group.arrived += 1
            group.waiting[worker] += 1
            if group.arrived >= group.expected:
                self._resolve(uid, group, "complete")

    async def poll(self, worker: str, wait_s: float = 1.0) -> list[tuple[str, dict]]:
        """The (uid, result) pairs resolved for ``worker`` since its last poll; waits up to ``wait_s``."""
        wake = self._wakeups.setdefault(worker, asyncio.Event())
        if not self._outbox.get(worker):
            try:
                await asyncio.wait_for(wake.wait(), wait_s)
            except asyncio.TimeoutError:
                pass
        wake.clear()
        return self._outbox.pop(worker, [])

    def relieve(self, worker: str, slots: int) -> int:
        """Combine early the fullest groups waiting in ``worker`` until ``slots`` calls are freed."""
        pending = [(uid, g) for uid, g in self.groups.items() if g.result is None and g.waiting[worker] > 0]
        pending.sort(key=lambda item: item[1].arrived, reverse=True)
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
        result, error = combine_safely(self.combine, group.members)
        self.counters[f"groups_{reason}"] += 1
        if error is not None:
            self.counters["combine_errors"] += 1
        group.result = {
            "result": result,
            "members": group.arrived,
            "expected": group.expected,
            "partial": group.arrived < group.expected,
            "reason": reason,
            "error": error,
        }
        group.members = []  # combined: the contributions are no longer needed
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
        """Combine groups past their timeout; forget combined groups past their grace period."""
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
