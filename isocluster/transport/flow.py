"""Flow control of one link direction: how many bytes wait to be written, and when the
send() futures made while it was congested resolve.

Every transport keeps one `LinkFlow` per direction and tells it two things: bytes were
queued (`queued`) and bytes left the queue (`flushed`, or `discarded` when the queue is
thrown away). The core decides whether a frame still fits under its cap (`pending`) and,
after a write that left the link congested, asks for a future (`completion`).

Waiting sends cost one future each (~150 bytes) and a slot in a FIFO of buckets: no task, no
coroutine, and one `flushed` call resolves every future whose bytes are out, in send order.
The sends of a bucket (up to BUCKET bytes apart) resolve together, at the mark of its last
send: a FIFO entry per send would cost ~100 bytes more than a ~100-byte message. A future
resolves once at most LOW_WATER of the bytes queued before it remain unwritten, as the
awaited `drain()` of earlier versions did: an awaiting sender keeps the socket busy and its
queue under HIGH_WATER plus one message.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

# Bytes a link may buffer before send() futures wait for it to drain (backpressure).
HIGH_WATER = 1024 * 1024
LOW_WATER = HIGH_WATER // 4
BUCKET = 16 * 1024


class LinkFlow:
    __slots__ = ('loop', 'pending', '_flushed', '_waiters', '_bucket_start')

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending = 0  # bytes queued and not yet written
        self._flushed = 0  # bytes written since the link opened: the FIFO's clock
        self._waiters: deque[list[Any]] = deque()  # [mark, [future, ...]]: in send order
        self._bucket_start = 0  # the mark of the first send in the last bucket

    # -- the transport's side ----------------------------------------------------------

    def queued(self, size: int) -> None:
        self.pending += size

    def flushed(self, size: int) -> None:
        self.pending -= size
        self._flushed += size
        waiters = self._waiters
        if waiters and waiters[0][0] <= self._flushed:
            self._release(self._flushed)

    def discarded(self) -> None:
        """The queue was thrown away (the link broke or closed): the waiting sends resolve,
        as a resolved send means written, not received (R116)."""
        self.pending = 0
        self._release(None)

    def _release(self, upto: int | None) -> None:
        waiters = self._waiters
        while waiters and (upto is None or waiters[0][0] <= upto):
            for future in waiters.popleft()[1]:
                if not future.done():
                    future.set_result(None)

    # -- the core's side ---------------------------------------------------------------

    def congested(self) -> bool:
        return self.pending > HIGH_WATER

    def completion(self) -> 'asyncio.Future[None]':
        """A future that resolves once at most LOW_WATER of the bytes queued so far remain."""
        future: asyncio.Future[None] = self.loop.create_future()
        mark = self._flushed + self.pending - LOW_WATER
        waiters = self._waiters
        if waiters and mark - self._bucket_start < BUCKET:
            last = waiters[-1]
            last[0] = mark
            last[1].append(future)
        else:
            self._bucket_start = mark
            waiters.append([mark, [future]])
        return future

    async def drain(self) -> None:
        if self.pending > HIGH_WATER:
            await self.completion()


def all_resolved(loop: asyncio.AbstractEventLoop, futures: list['asyncio.Future[None]']) -> 'asyncio.Future[None]':
    """One future for a broadcast that waits on several links: resolves when all have."""
    if len(futures) == 1:
        return futures[0]
    combined: asyncio.Future[None] = loop.create_future()
    remaining = [len(futures)]

    def arrived(_: Any) -> None:
        remaining[0] -= 1
        if not remaining[0] and not combined.done():
            combined.set_result(None)

    for future in futures:
        future.add_done_callback(arrived)
    return combined
