"""Shutdown escalation (R86, R89): how a worker is made to leave. DISCONNECT first; SIGTERM
when it is still there after shutdown_timeout; SIGKILL when it survives SIGTERM for
kill_timeout. Each worker's pending step is a timer in its `life.timers` ('terminate', 'kill').
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from . import protocol
from .errors import TransportError
from .transport.base import SIGKILL, SIGTERM

if TYPE_CHECKING:
    from .handle import WorkerHandle

logger = logging.getLogger('isocluster')


class Escalation:
    """Carries out leave requests and kills, escalating on the configured timeouts."""

    def __init__(self, call_later: Callable[..., Any], stats: dict[str, int], shutdown_timeout: float,
                 kill_timeout: float, drain_timeout: float) -> None:
        self._call_later = call_later
        self._stats = stats
        self.shutdown_timeout = shutdown_timeout
        self.kill_timeout = kill_timeout
        self.drain_timeout = drain_timeout

    def disconnect(self, handle: 'WorkerHandle') -> None:
        """DISCONNECT now, SIGTERM after shutdown_timeout, SIGKILL kill_timeout later (R89)."""
        life = handle.life
        life.asked_to_leave = True
        life.cancel_timer('ready')
        link = life.link
        if link is not None and link.is_open and not life.faulted:
            try:
                link.write(protocol.DISCONNECT, {'drain_timeout': self.drain_timeout} if self.drain_timeout else None)
            except TransportError:
                pass
        if 'terminate' not in life.timers and 'kill' not in life.timers:
            life.timers['terminate'] = self._call_later(self.shutdown_timeout, self._terminate, handle)

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
