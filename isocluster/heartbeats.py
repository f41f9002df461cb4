"""Heartbeats (R130): the primary sends HEARTBEAT every interval to each ready worker and
faults a worker whose last answer is older than heartbeat_timeout (its loop is blocked).

One timer for all workers; it runs while any worker is heartbeating (`WorkerLife.heartbeating`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Callable, Iterable

from . import protocol
from .errors import HeartbeatTimeout, TransportError

if TYPE_CHECKING:
    from .handle import WorkerHandle


class Heartbeats:
    def __init__(self, interval: float | None, timeout: float | None, now: Callable[[], float],
                 call_later: Callable[..., asyncio.TimerHandle], live: Callable[[], 'Iterable[WorkerHandle]'],
                 active: Callable[[], bool], timed_out: Callable[['WorkerHandle', BaseException], None],
                 stats: dict[str, int]) -> None:
        self.interval = interval
        self.timeout = timeout
        self._now = now
        self._call_later = call_later
        self._live = live
        self._active = active
        self._timed_out = timed_out
        self._stats = stats
        self._timer: asyncio.TimerHandle | None = None

    def start(self, handle: 'WorkerHandle') -> None:
        """`handle` just became ready (and the primary is active)."""
        if self.interval is None:
            return
        handle.life.last_beat = self._now()
        if self._timer is None:
            self._timer = self._call_later(self.interval, self._tick)

    def answered(self, handle: 'WorkerHandle') -> None:
        handle.life.last_beat = self._now()

    def age(self, handle: 'WorkerHandle') -> float:
        return self._now() - (handle.life.last_beat or 0.0)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        if not self._active():
            return
        now = self._now()
        for handle in [handle for handle in self._live() if handle.life.heartbeating]:
            age = now - handle.life.last_beat
            if age > self.timeout:
                self._stats['killed_by_timeout'] += 1
                self._timed_out(handle, HeartbeatTimeout(
                    f'worker {handle.id} has not answered heartbeats for {age:.3f}s '
                    f'(heartbeat_timeout={self.timeout}s): its event loop is blocked; '
                    'it is killed and replaced', worker_id=handle.id,
                ))
                continue
            try:
                handle.life.link.write(protocol.HEARTBEAT, None)
            except TransportError:
                pass
        if any(handle.life.heartbeating for handle in self._live()):
            self._timer = self._call_later(self.interval, self._tick)
