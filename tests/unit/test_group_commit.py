"""Group commit: concurrent callers share transactions and each gets its own results."""

from __future__ import annotations

import asyncio

import pytest

from crm_shared.store.group_commit import GroupCommit


class Recorder:
    def __init__(self, fail_on: int | None = None) -> None:
        self.groups: list[list[int]] = []
        self.fail_on = fail_on

    async def __call__(self, items: list[int]) -> list[int]:
        self.groups.append(items)
        await asyncio.sleep(0.01)  # a transaction takes time; others queue meanwhile
        if self.fail_on in items:
            raise RuntimeError("database is away")
        return [i * 10 for i in items]


async def test_callers_arriving_during_a_transaction_share_the_next_one() -> None:
    apply = Recorder()
    group = GroupCommit(apply)
    first = asyncio.create_task(group.submit([0, 100]))
    await asyncio.sleep(0.001)  # the first transaction is running now
    later = await asyncio.gather(*(group.submit([i, i + 100]) for i in range(1, 20)))
    assert await first == [0, 1000]
    assert later == [[i * 10, (i + 100) * 10] for i in range(1, 20)]
    assert [len(g) for g in apply.groups] == [2, 38]  # the first alone, then all who waited


async def test_a_group_never_exceeds_the_item_limit() -> None:
    apply = Recorder()
    group = GroupCommit(apply, max_items=5)
    await asyncio.gather(*(group.submit([i, i, i]) for i in range(6)))
    assert all(len(g) <= 5 for g in apply.groups) and len(apply.groups) == 6


async def test_a_failed_transaction_fails_only_the_caller_whose_items_fail_it() -> None:
    apply = Recorder(fail_on=7)
    group = GroupCommit(apply)
    first = asyncio.create_task(group.submit([1]))
    await asyncio.sleep(0)  # the first transaction starts with item 1 alone
    bad, good = (asyncio.create_task(group.submit(items)) for items in ([7, 6], [8]))
    assert await first == [10]
    with pytest.raises(RuntimeError, match="away"):
        await bad
    assert await good == [80]
    assert apply.groups[1:] == [[7, 6, 8], [7, 6], [8]]  # together, then each caller alone
    assert await group.submit([9]) == [90]  # the next group goes through
