"""Carrying out the Supervisor's decision on each exit: a replacement now, one after a backoff
delay (when restart_limit was prevented), or the end of the cluster (no_workers). The
decisions are `supervision.Supervisor`'s; this part publishes the events and starts the timers.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable

from .supervision import is_drained

if TYPE_CHECKING:
    from .handle import WorkerHandle
    from .registry import Registry
    from .reload import RollingReload
    from .shared_sockets import SharedSockets
    from .states import PrimaryState
    from .supervision import Supervisor
    from .transport.base import Signals


class Replacement:
    def __init__(self, *, supervisor: 'Supervisor', registry: 'Registry', reload: 'RollingReload',
                 shared: 'SharedSockets', state: 'PrimaryState', publish: Callable[[str, dict[str, Any]], Any],
                 fork_one: Callable[[], 'WorkerHandle | None'], call_later: Callable[..., asyncio.TimerHandle],
                 now: Callable[[], float], random: Callable[[], float], stats: dict[str, int]) -> None:
        self._supervisor = supervisor
        self._registry = registry
        self._reload = reload
        self._shared = shared
        self._state = state
        self._publish = publish
        self._fork_one = fork_one
        self._call_later = call_later
        self._now = now
        self._random = random
        self._stats = stats
        self.pending: set[asyncio.TimerHandle] = set()  # replacements delayed by backoff
        self.limit_ran = False  # restart_limit's default action ran (it was not prevented)
        self.no_workers_ran = False  # no_workers' default action ran

    def exited(self, handle: 'WorkerHandle', code: int | None, signal: 'Signals | None') -> None:
        """worker_exit's default action: replace `handle`, or not, or end the cluster."""
        reload, state = self._reload, self._state
        if reload.leaving() is handle:
            return  # the step's new worker replaces it (R133)
        supervised = state.active and not handle.life.retired  # retired: an empty pool on purpose
        if self._supervisor.exited(handle, code, signal, state.active) and self._no_workers('boot_failure', handle):
            return
        replaced = self._replace(handle, code, signal)
        if replaced:
            self._supervisor.replaced()
        elif reload.is_new(handle):
            reload.abandon()  # the step's new worker died and nothing replaces it (R133)
        if not replaced and supervised and state.active and is_drained(len(self._registry.live), len(self.pending)):
            self._no_workers(self._supervisor.end_reason(), handle)

    def _replace(self, handle: 'WorkerHandle', code: int | None, signal: 'Signals | None') -> bool:
        """Replace `handle` now, later (backoff), or not at all; True when replaced now."""
        life, supervisor = handle.life, self._supervisor
        if not supervisor.wants_restart(code, signal, life.ever_ready, life.retired, self._state.active):
            return False
        if supervisor.admit_restart(self._now()):
            self._stats['restarts'] += 1
            new = self._fork_one()
            if new is not None:
                new.life.slot_restarts = life.slot_restarts + 1
                self._shared.inherit(handle.id, new.id)
            self._reload.replaced_by(handle, new)
            return True
        reloading = self._reload.current is not None
        self.limit_ran = False
        self._publish('restart_limit', {'worker_count': len(self._registry.live)})
        if reloading:
            self._reload.abandon()
        if self.limit_ran or not self._state.active:
            return False
        delay = supervisor.backoff_delay(self._random())
        self._shared.reserve(handle.id)  # its sockets stay open for the delayed replacement
        timer: asyncio.TimerHandle = self._call_later(delay, self._delayed, lambda: timer, handle.id,
                                                      life.slot_restarts)
        self.pending.add(timer)
        return False

    def _delayed(self, timer_of: Callable[[], asyncio.TimerHandle], predecessor: int, restarts: int) -> None:
        self.pending.discard(timer_of())
        if self._state.active:
            self._stats['restarts'] += 1
            new = self._fork_one()
            if new is not None:
                new.life.slot_restarts = restarts + 1
                self._shared.inherit_reserved(predecessor, new.id)
        self._shared.unreserve(predecessor)

    def _no_workers(self, reason: str, handle: 'WorkerHandle') -> bool:
        """Publish no_workers; True unless it was prevented (then supervision goes on)."""
        self.no_workers_ran = False
        self._publish('no_workers', {'reason': reason, 'error': self._supervisor.end_error(reason, handle)})
        return self.no_workers_ran

    def cancel(self) -> None:
        """Shutting down or destroyed: the delayed replacements will not come."""
        for timer in self.pending:
            timer.cancel()
        self.pending.clear()
        self._shared.drop_reservations()
