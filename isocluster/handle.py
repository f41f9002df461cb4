"""WorkerHandle: the primary's view of one worker (SPEC §4.13)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .figures import worker_figures
from .transport.base import SIGTERM, Signals, WorkerLink

if TYPE_CHECKING:
    from .primary import ClusterPrimary

# state -> states it may move to (SPEC §4.13); 'disconnected' is reachable from any live state.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    'forked': ('online', 'disconnected'),
    'online': ('ready', 'disconnected'),
    'ready': ('disconnected',),
    'disconnected': ('dead',),
    'dead': (),
}


class WorkerHandle:
    """One worker as the primary sees it. Created by the primary; never construct one."""

    def __init__(self, primary: 'ClusterPrimary', worker_id: int) -> None:
        self.id = worker_id
        self.state = 'forked'
        self.exit_code: int | None = None
        self.exit_signal: Signals | None = None
        self.exited_after_disconnect = False
        self._primary = primary
        self._link: WorkerLink | None = None
        self._start_error: BaseException | None = None
        self._error: BaseException | None = None  # what its worker_error carried, if any
        # supervision bookkeeping, owned by the primary
        self._online_accepted = False
        self._ready_received = False
        self._ever_ready = False
        self._faulted = False
        self._error_published = False
        self._retired = False
        self._disconnect_requested = False
        self._last_beat = 0.0
        self._heartbeating = False
        self._timers: dict[str, asyncio.TimerHandle] = {}
        # per-worker figures (stats()) and recycling, kept by the primary
        self._started_at = 0.0
        self._ready_at = 0.0
        self._exited_at: float | None = None
        self._messages_in = 0
        self._messages_out = 0
        self._slot_restarts = 0
        self._recycle_limits: Any = None
        self._recycle_reason: str | None = None

    @property
    def pid(self) -> int | None:
        """The OS process id, or None where the transport has no OS process."""
        return self._link.pid if self._link is not None else None

    def _move(self, state: str) -> None:
        if state not in TRANSITIONS[self.state]:  # pragma: no cover - a library bug, not user input
            raise AssertionError(f'worker {self.id}: illegal state change {self.state} -> {state}')
        self.state = state

    def send(self, message: Any) -> 'asyncio.Future[None]':
        """Same as `primary.send(message, to=self)`."""
        return self._primary.send(message, to=self)

    def disconnect(self) -> 'WorkerHandle':
        """Ask the worker to leave (DISCONNECT, then SIGTERM and SIGKILL on timeouts)."""
        self._primary._disconnect_worker(self)
        return self

    def kill(self, signal: Signals | int = SIGTERM) -> 'WorkerHandle':
        """Send `signal`; a no-op once the worker is dead (never signals a reused pid)."""
        if self.state != 'dead' and self._link is not None:
            self._link.kill(Signals(signal))
        return self

    def stats(self) -> dict[str, Any]:
        """This worker's figures: pid, state, uptime (seconds since it was forked; frozen at its
        exit), resident_bytes and cpu_seconds (None where the transport cannot tell), messages_in
        / messages_out (with the primary), in_flight requests, restarts of its slot (replacements
        after failures that led to this worker; reloads and recycling do not count)."""
        return worker_figures(self)

    def is_connected(self) -> bool:
        return self.state in ('online', 'ready')

    def is_dead(self) -> bool:
        return self.state == 'dead'

    def _cancel_timer(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def _cancel_timers(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def __repr__(self) -> str:
        pid = f' pid={self.pid}' if self.pid is not None else ''
        return f'<WorkerHandle id={self.id}{pid} state={self.state}>'
