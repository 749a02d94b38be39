"""The vote board and the workers' board client, driven on one asyncio loop without Ray.

``Handle`` gives a plain VoteBoard the calling convention of a Ray actor handle
(``board.method.remote(...)``), so the real BoardClient runs against it. The board combines
with confprofile's vote (``profile_board(voting)``); it knows nothing else of profiles.
Taxonomy for hand-worked votes: gender [Female, Male, NA], age [young, old, NA].
"""

import asyncio
import random
from functools import partial

import pytest

from verl_confprofile.reward.confprofile_reward import vote_members
from verl_confprofile.reward.group_loop import BoardClient
from verl_confprofile.reward.vote_board import VoteBoard
from verl_confprofile.taxonomy import Taxonomy


class Handle:
    def __init__(self, board: VoteBoard):
        self.board = board

    def __getattr__(self, name):
        method = getattr(self.board, name)

        class Remote:
            @staticmethod
            def remote(*args):
                result = method(*args)
                if asyncio.iscoroutine(result):
                    return asyncio.ensure_future(result)
                future = asyncio.get_running_loop().create_future()
                future.set_result(result)
                return future

        return Remote


def clients(board, n):
    handle = Handle(board)
    return [BoardClient(handle, f"w{i}") for i in range(n)]

TAXONOMY = {
    "na_label": "NA",
    "dimensions": {"gender": {"labels": ["Female", "Male", "NA"]}, "age": {"labels": ["young", "old", "NA"]}},
}

# Group of four: gender (Male,5) (Male,1) (Female,4) (Female,4) -> S_Male=6, S_Female=8: Female, S=8,
# 2 votes, margin 8-6=2. age (old,2) malformed (young,3) (young,1) -> S_young=4 (2 votes) beats
# S_old=2: young, S=4, margin 2, 3 valid.
GROUP = [
    (("Male", 5), ("old", 2)),
    (("Male", 1), (None, None)),
    (("Female", 4), ("young", 3)),
    (("Female", 4), ("young", 1)),
]


def profile_board(voting, **kwargs):
    return VoteBoard(partial(vote_members, Taxonomy.from_dict(TAXONOMY, "<test>"), voting), **kwargs)


def run(coro):
    return asyncio.run(coro)


def test_complete_group_same_vote_for_all_members_in_any_order():
    async def main(order):
        board = profile_board("confidence")
        workers = clients(board, 2)
        tasks = [asyncio.create_task(workers[i % 2].vote("g", GROUP[i], 4, 30.0)) for i in order]
        return await asyncio.gather(*tasks)

    for seed in range(5):
        order = list(range(4))
        random.Random(seed).shuffle(order)
        results = run(main(order))
        assert all(r == results[0] for r in results)
        assert results[0]["result"]["gender"] == ("Female", 8.0, 2, 2.0, 4)
        assert results[0]["result"]["age"] == ("young", 4.0, 2, 2.0, 3)
        assert results[0]["members"] == 4 and not results[0]["partial"]
        assert results[0]["reason"] == "complete"


def test_majority_board():
    # majority on gender: counts tie 2-2, then S 8 > 6 -> Female, margin in votes 2-2 = 0.
    async def main():
        (client,) = clients(profile_board("majority"), 1)
        return await asyncio.gather(*(client.vote("g", m, 4, 30.0) for m in GROUP))

    result = run(main())[0]
    assert result["result"]["gender"] == ("Female", 8.0, 2, 0.0, 4)


def test_missing_member_times_out_with_partial_vote_and_late_member_gets_frozen_vote():
    # A voted group is remembered for its timeout (1 s): the late member must come within it,
    # which a loaded machine pausing this process for a fraction of a second must not prevent.
    async def main():
        board = profile_board("confidence", sweep_s=0.01)
        client, other = clients(board, 2)
        first = await asyncio.gather(*(client.vote("g", m, 4, 1.0) for m in GROUP[:3]))
        late = await other.vote("g", GROUP[3], 4, 1.0)
        return first, late, board.stats()

    first, late, stats = run(main())
    # Members 1-3 only: gender Male 5+1=6 (2 votes) vs Female 4 -> Male, margin 2; age old 2 vs young 3 -> young.
    assert first[0]["result"]["gender"] == ("Male", 6.0, 2, 2.0, 3)
    assert first[0]["result"]["age"] == ("young", 3.0, 1, 1.0, 2)
    assert all(r == first[0] for r in first)
    assert first[0]["partial"] and first[0]["reason"] == "timeout" and first[0]["members"] == 3
    assert late == first[0]
    assert stats["groups_timeout"] == 1 and stats["late_members"] == 1


def test_relieve_votes_fullest_waiting_group_of_that_worker():
    async def main():
        board = profile_board("confidence")
        w0, w1 = clients(board, 2)
        big = [asyncio.create_task(w0.vote("big", m, 8, 60.0)) for m in GROUP[:3]]
        small = [asyncio.create_task(w0.vote("small", GROUP[0], 8, 60.0))]
        other = [asyncio.create_task(w1.vote("other", GROUP[0], 8, 60.0)) for _ in range(5)]
        await asyncio.sleep(0.05)
        freed = board.relieve("w0", 2)
        done = await asyncio.gather(*big)
        pending = [t for t in small + other if not t.done()]
        for t in pending + [w0.poller, w1.poller]:
            t.cancel()
        return freed, done, len(pending)

    freed, done, still_waiting = run(main())
    assert freed == 3  # the fullest group of w0 ("big", 3 waiting) is enough for 2 slots
    assert all(r["reason"] == "overflow" and r["partial"] and r["members"] == 3 for r in done)
    assert still_waiting == 6  # "small" (w0) and "other" (w1) keep waiting


def test_state_is_released_after_each_step():
    async def main():
        board = profile_board("confidence", sweep_s=0.01)
        workers = clients(board, 2)
        sizes = []
        for step in range(1000):
            await asyncio.gather(
                *(workers[i % 2].vote(f"s{step}-g{g}", m, 4, 0.02) for g in range(2) for i, m in enumerate(GROUP))
            )
            sizes.append(board.stats()["groups"])
            await asyncio.sleep(0.002)  # a step takes time; groups must not outlive their grace period
        await asyncio.sleep(0.2)
        return sizes, board.stats()

    sizes, final = run(main())
    # Voted groups linger only for their grace period (0.02 s, about 10 steps here): without release
    # the board would hold all 2000.
    assert max(sizes) < 200
    assert final["groups"] == 0 and final["timers"] == 0 and final["undelivered"] == 0
    assert final["groups_complete"] == 2000


def test_group_of_one_resolves_immediately():
    async def main():
        (client,) = clients(profile_board("confidence"), 1)
        return await asyncio.wait_for(client.vote("solo", GROUP[2], 1, 60.0), 5)

    result = run(main())
    assert result["result"]["gender"] == ("Female", 4.0, 1, 4.0, 1)
    assert not result["partial"]


@pytest.mark.parametrize("expected", [0, -3])
def test_nonpositive_expected_counts_as_one(expected):
    async def main():
        (client,) = clients(profile_board("confidence"), 1)
        return await asyncio.wait_for(client.vote("x", GROUP[0], expected, 60.0), 5)

    assert run(main())["members"] == 1
