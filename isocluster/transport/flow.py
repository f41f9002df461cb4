"""Flow control of one link direction: how many bytes wait to be written, and when the
send() futures made while it was congested resolve.

Every transport keeps one `LinkFlow` per direction and tells it two things: bytes were
queued (`queued`) and bytes left the queue (`flushed`, or `discarded` when the queue is
thrown away). The core decides whether a frame still fits under its cap (`pending`) and,
after a write that left the link congested, asks for a future (`completion`).

Waiting sends cost no task, no coroutine, no closure: one `flushed` call resolves every future
whose bytes are out, in send order, from a FIFO of buckets (the sends of a bucket, up to
BUCKET bytes apart, resolve together at the mark of its last send). A future resolves once at
most LOW_WATER of the bytes queued before it remain unwritten, as the awaited `drain()` of
earlier versions did: an awaiting sender keeps the socket busy and its queue under
HIGH_WATER plus one message.

The link holds a congested send's future weakly until something waits on it (await, a done
callback, gather, wait_for: all go through add_done_callback, which pins it): a future its
caller dropped (fire and forget, as most users send) is freed at once, so a pending ~100-byte
send costs its bytes, not ~250 bytes of future and bookkeeping besides.
"""

from __future__ import annotations

import asyncio
import sys
import weakref
from collections import deque
from typing import Any

# Bytes a link may buffer before send() futures wait for it to drain (backpressure).
HIGH_WATER = 1024 * 1024
LOW_WATER = HIGH_WATER // 4
BUCKET = 16 * 1024
# Where references are not counted (not CPython) a future is never known unreferenced: never reused.
_refcount = getattr(sys, 'getrefcount', lambda obj: -1)


class _Completion(asyncio.Future):  # type: ignore[type-arg]
    """A congested send's future: held weakly by its link until something waits on it."""

    __slots__ = ('_pins',)

    def add_done_callback(self, fn: Any, *, context: Any = None) -> None:
        pins = self._pins
        if pins is not None:  # the first waiter: from now on the link holds it
            self._pins = None
            if not self.done():
                pins.add(self)
                super().add_done_callback(pins.discard)
        super().add_done_callback(fn, context=context)


class LinkFlow:
    __slots__ = ('loop', 'pending', '_flushed', '_waiters', '_bucket_start', '_pinned', '_last', '_before', '_bucket')

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending = 0  # bytes queued and not yet written
        self._flushed = 0  # bytes written since the link opened: the FIFO's clock
        # [mark, {weakref to a future: None} in send order, that dict's pop]: a weakref's
        # callback (the pop) drops its entry when the future dies, so the key is always there.
        self._waiters: deque[list[Any]] = deque()
        self._bucket_start = 0  # the mark of the first send in the last bucket
        self._pinned: set[asyncio.Future[None]] = set()  # futures something waits on, until done
        # The last two futures completion() made in the bucket `_bucket`: handed out again for
        # a later send of that bucket while nothing but this slot refers to one (see there).
        self._last: _Completion | None = None
        self._before: _Completion | None = None
        self._bucket: list[Any] | None = None

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
            # A snapshot: a future dying meanwhile pops its own entry from the bucket.
            for ref in list(waiters.popleft()[1]):
                future = ref()
                if future is not None and not future.done():
                    future.set_result(None)

    # -- the core's side ---------------------------------------------------------------

    def congested(self) -> bool:
        return self.pending > HIGH_WATER

    def completion(self) -> 'asyncio.Future[None]':
        """A future that resolves once at most LOW_WATER of the bytes queued so far remain."""
        mark = self._flushed + self.pending - LOW_WATER
        waiters = self._waiters
        if waiters and mark - self._bucket_start < BUCKET:
            last = waiters[-1]
            last[0] = mark
            # One of the last two futures made, when it is in this bucket, not done, and its
            # caller dropped it (fire and forget; the second is for a caller that keeps the
            # previous send's future in a variable until the next send returns): nothing else
            # refers to it (2: the slot and getrefcount's argument), so no one can tell it from
            # a new one, and it resolves when a new one would (at the bucket's mark). A
            # congested stream then costs no future per send.
            if self._bucket is last:
                if _refcount(self._last) == 2 and not self._last.done():  # type: ignore[union-attr]
                    return self._last  # type: ignore[return-value]
                if _refcount(self._before) == 2 and not self._before.done():  # type: ignore[union-attr]
                    self._last, self._before = self._before, self._last
                    return self._last  # type: ignore[return-value]
        else:
            self._bucket_start = mark
            bucket: dict[Any, None] = {}
            last = [mark, bucket, bucket.pop]
            waiters.append(last)
        future = _Completion(loop=self.loop)
        future._pins = self._pinned
        last[1][weakref.ref(future, last[2])] = None
        if self._bucket is last:
            self._before = self._last
        else:
            self._bucket = last
            self._before = None
        self._last = future
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
