"""What the primary tells a service manager (issue 16), as a mixin of ClusterPrimary: READY=1
once its first workers are ready, RELOADING=1 / READY=1 around a rolling reload, STOPPING=1 at
shutdown, and WATCHDOG=1 every watchdog interval while its loop runs (a blocked loop misses
them, which is the point). The core only says what; `Transport.notify()` knows how (systemd
on real processes, a recorded list on the memory transport, nothing elsewhere).
"""

from __future__ import annotations

import asyncio


class Readiness:
    _told_ready = False
    _watchdog_timer: asyncio.TimerHandle | None = None

    def _readiness_start(self) -> None:
        interval = self._transport.watchdog_interval()
        if interval is not None and self._watchdog_timer is None:
            self._watchdog_timer = self._call_later(interval, self._watchdog_tick, interval)

    def _watchdog_tick(self, interval: float) -> None:
        self._watchdog_timer = None
        if self._closed:
            return
        self._transport.notify('WATCHDOG=1')
        self._watchdog_timer = self._call_later(interval, self._watchdog_tick, interval)

    def _readiness_stop(self) -> None:
        if self._watchdog_timer is not None:
            self._watchdog_timer.cancel()
            self._watchdog_timer = None

    def _tell_ready_once(self) -> None:
        """After a worker_ready: READY=1 the first time every staying live worker is ready."""
        if self._told_ready or self._state != 'active':
            return
        if all(handle.state == 'ready' for handle in self._live.values() if not handle._retired):
            self._told_ready = True
            self._transport.notify(f'READY=1\nSTATUS={len(self._pool_ids)} workers ready')

    def _tell(self, state: str, *, when_active: bool = False) -> None:
        if not when_active or self._state == 'active':
            self._transport.notify(state)
