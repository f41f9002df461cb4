"""What the primary tells a service manager (issue 16): READY=1 once its first workers are
ready, RELOADING=1 / READY=1 around a rolling reload, STOPPING=1 at shutdown, and WATCHDOG=1
every watchdog interval while its loop runs (a blocked loop misses them, which is the point).
The core only says what; `Transport.notify()` knows how (systemd on real processes, a recorded
list on the memory transport, nothing elsewhere).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .registry import Registry
    from .states import PrimaryState
    from .transport.base import Transport


class Readiness:
    def __init__(self, transport: 'Transport', call_later: Callable[..., asyncio.TimerHandle],
                 closed: Callable[[], bool], state: 'PrimaryState', registry: 'Registry') -> None:
        self._transport = transport
        self._call_later = call_later
        self._closed = closed
        self._state = state
        self._registry = registry
        self._told_ready = False
        self._watchdog_timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        interval = self._transport.watchdog_interval()
        if interval is not None and self._watchdog_timer is None:
            self._watchdog_timer = self._call_later(interval, self._watchdog_tick, interval)

    def _watchdog_tick(self, interval: float) -> None:
        self._watchdog_timer = None
        if self._closed():
            return
        self._transport.notify('WATCHDOG=1')
        self._watchdog_timer = self._call_later(interval, self._watchdog_tick, interval)

    def stop(self) -> None:
        if self._watchdog_timer is not None:
            self._watchdog_timer.cancel()
            self._watchdog_timer = None

    def ready_once(self) -> None:
        """After a worker_ready: READY=1 the first time every staying live worker is ready."""
        if self._told_ready or not self._state.active:
            return
        if all(handle.state == 'ready' for handle in self._registry.live.values() if not handle.life.retired):
            self._told_ready = True
            self._transport.notify(f'READY=1\nSTATUS={len(self._registry.pool_ids)} workers ready')

    def tell(self, state: str, *, when_active: bool = False) -> None:
        if not when_active or self._state.active:
            self._transport.notify(state)
