"""The in-memory sending queue: records wait in a deque; a ticket names what a consumer took."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence


class MemoryQueue:
    """Records in arrival order. ``size`` counts records queued and handed out but not acknowledged."""

    persistent = False

    def __init__(self) -> None:
        self._items: deque[bytes] = deque()
        self._inflight: dict[int, int] = {}
        self._next_ticket = 0
        self._ready = asyncio.Event()
        self.size = 0
        self.bytes = 0
        self.corrupt = 0

    async def open(self) -> None:
        return None

    async def put(self, items: Sequence[bytes]) -> None:
        self._items.extend(items)
        self.size += len(items)
        self._ready.set()

    async def get(self, max_items: int) -> tuple[int, list[bytes]]:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        take = min(max_items, len(self._items))
        items = [self._items.popleft() for _ in range(take)]
        ticket = self._next_ticket
        self._next_ticket += 1
        self._inflight[ticket] = take
        return ticket, items

    async def ack(self, ticket: int) -> None:
        self.size -= self._inflight.pop(ticket)

    async def close(self) -> None:
        return None
