"""Group commit: concurrent callers share one transaction instead of queuing for one each.

Every caller submits a list of items and gets back one result per item. While a
transaction is running, new submissions wait and then go together into the next one, so
under load the number of transactions stays small however many callers there are, and
when idle a caller's items go at once.

A shared transaction that fails is applied again caller by caller, so that one caller's
bad items (a value the database refuses) fail that caller alone, not the others who
happened to share its transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    def __init__(
        self, apply: Callable[[list[T]], Awaitable[list[R]]], *, max_items: int = 5000
    ) -> None:
        self._apply = apply
        self._max_items = max_items
        self._queue: list[tuple[Sequence[T], asyncio.Future[list[R]]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, items: Sequence[T]) -> list[R]:
        """Apply `items` in the next shared transaction; their results, in order."""
        if not items:
            return []
        future: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        self._queue.append((items, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            group = self._take()
            try:
                results = await self._apply([item for items, _ in group for item in items])
            except Exception as exc:
                if len(group) == 1:
                    _fail(group[0][1], exc)
                else:  # whose items failed it? each caller alone
                    for items, future in group:
                        await self._alone(items, future)
                continue
            start = 0
            for items, future in group:
                if not future.done():  # a caller that gave up (cancelled) is skipped
                    future.set_result(results[start : start + len(items)])
                start += len(items)

    async def _alone(self, items: Sequence[T], future: asyncio.Future[list[R]]) -> None:
        if future.done():  # gave up meanwhile
            return
        try:
            results = await self._apply(list(items))
        except Exception as exc:
            _fail(future, exc)
            return
        if not future.done():
            future.set_result(results)

    def _take(self) -> list[tuple[Sequence[T], asyncio.Future[list[R]]]]:
        group: list[tuple[Sequence[T], asyncio.Future[list[R]]]] = []
        count = 0
        while self._queue and (not group or count + len(self._queue[0][0]) <= self._max_items):
            items, future = self._queue.pop(0)
            group.append((items, future))
            count += len(items)
        return group


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
