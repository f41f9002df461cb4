"""Shutdown escalation (R86, R89): how a worker is made to leave. DISCONNECT first; SIGTERM
when it is still there after shutdown_timeout; SIGKILL when it survives SIGTERM for
kill_timeout. Each worker's pending step is a timer in its `life.timers` ('terminate', 'kill').

A worker asked to leave gets no new work at once (the registry's choosers skip it). When it
still has requests in flight, DISCONNECT waits for their answers, at most drain_timeout: the
worker closes its link on DISCONNECT (R109), so a reply written after it would be lost, and a
retirement (recycling, reload, scale down, shutdown) would fail or repeat the requests it had
started. The worker's own drain then gets what is left of drain_timeout.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from . import protocol
from .errors import TransportError
from .transport.base import SIGKILL, SIGTERM

if TYPE_CHECKING:
    from .handle import WorkerHandle
    from .registry import Registry

logger = logging.getLogger('isocluster')


class Escalation:
    """Carries out leave requests and kills, escalating on the configured timeouts."""

    def __init__(self, call_later: Callable[..., Any], stats: dict[str, int], shutdown_timeout: float,
                 kill_timeout: float, drain_timeout: float, registry: 'Registry', now: Callable[[], float]) -> None:
        self._call_later = call_later
        self._stats = stats
        self.shutdown_timeout = shutdown_timeout
        self.kill_timeout = kill_timeout
        self.drain_timeout = drain_timeout
        self._registry = registry
        self._now = now
        self._answering: dict['WorkerHandle', float] = {}  # leaving, DISCONNECT held until -> this deadline

    def disconnect(self, handle: 'WorkerHandle') -> None:
        """DISCONNECT now (or once its requests in flight are answered, at most drain_timeout
        later), SIGTERM after shutdown_timeout, SIGKILL kill_timeout later (R89)."""
        life = handle.life
        life.asked_to_leave = True
        self._registry.leaving_add(handle)
        life.cancel_timer('ready')
        if handle in self._answering:
            return  # asked already: DISCONNECT follows its answers
        link = life.link
        if link is not None and link.is_open and not life.faulted:
            if self.drain_timeout and self._registry.requests.in_flight(handle):
                self._hold_disconnect(handle)
            else:
                self._write_disconnect(handle, self.drain_timeout)
        if 'terminate' not in life.timers and 'kill' not in life.timers:
            life.timers['terminate'] = self._call_later(self.shutdown_timeout, self._terminate, handle)

    def _write_disconnect(self, handle: 'WorkerHandle', drain_timeout: float) -> None:
        link = handle.life.link
        if link is None or not link.is_open or handle.life.faulted:
            return
        try:
            link.write(protocol.DISCONNECT, {'drain_timeout': drain_timeout} if drain_timeout > 0 else None)
        except TransportError:
            pass

    def _hold_disconnect(self, handle: 'WorkerHandle') -> None:
        if not self._answering:
            self._registry.requests.on_end.add(self._answered)
        self._answering[handle] = self._now() + self.drain_timeout
        handle.life.timers['answers'] = self._call_later(self.drain_timeout, self._release, handle)

    def _answered(self) -> None:
        """A request ended somewhere: release the leaving workers with nothing left in flight."""
        in_flight = self._registry.requests.in_flight
        for handle in [handle for handle in self._answering if not in_flight(handle) or handle.state == 'dead']:
            self._release(handle)

    def _release(self, handle: 'WorkerHandle') -> None:
        deadline = self._answering.pop(handle, None)
        if not self._answering:
            self._registry.requests.on_end.discard(self._answered)
        if deadline is None:
            return
        handle.life.cancel_timer('answers')
        if handle.state != 'dead':
            self._write_disconnect(handle, deadline - self._now())

    def _terminate(self, handle: 'WorkerHandle') -> None:
        handle.life.timers.pop('terminate', None)
        if handle.state != 'dead':
            self._stats['killed_by_timeout'] += 1
            logger.warning(
                'worker %s did not exit within shutdown_timeout=%ss; sending SIGTERM', handle.id,
                self.shutdown_timeout, extra={'worker_id': handle.id, 'reason': 'shutdown_timeout'},
            )
            self.kill(handle)

    def kill(self, handle: 'WorkerHandle') -> None:
        """SIGTERM now, SIGKILL if still alive kill_timeout later (R86)."""
        life = handle.life
        if life.state == 'dead' or 'kill' in life.timers:
            return
        life.cancel_timer('terminate')
        handle.kill(SIGTERM)
        if life.state != 'dead':
            life.timers['kill'] = self._call_later(self.kill_timeout, self._force_kill, handle)

    def _force_kill(self, handle: 'WorkerHandle') -> None:
        handle.life.timers.pop('kill', None)
        if handle.state != 'dead':
            logger.warning(
                'worker %s survived SIGTERM for kill_timeout=%ss; sending SIGKILL', handle.id,
                self.kill_timeout, extra={'worker_id': handle.id, 'reason': 'kill_timeout'},
            )
            handle.kill(SIGKILL)
