"""WorkerHandle: the primary's view of one worker (SPEC §4.13)."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Protocol

from .states import CONNECTED, WORKER_TRANSITIONS, WorkerLife
from .transport.base import SIGTERM, Signals

TRANSITIONS = WORKER_TRANSITIONS  # the table lives in states.py


class _Sender(Protocol):
    def send(self, message: Any, to: Any = None) -> 'asyncio.Future[None]': ...


def _stays(handle: 'WorkerHandle') -> None:
    """A handle no primary registered has nobody to ask to leave."""


class WorkerHandle:
    """One worker as the primary sees it. Created by the primary; never construct one.

    The primary's bookkeeping is `life` (a `states.WorkerLife`). The handle reaches its primary
    only through its public `send(message, to=)` and the `leave` callable it was given (ask this
    worker to leave), and `figures` for its stats(); nothing else of the primary.
    """

    def __init__(self, sender: _Sender, worker_id: int, leave: Callable[['WorkerHandle'], None] = _stays,
                 figures: Callable[['WorkerHandle'], dict[str, Any]] | None = None) -> None:
        self.id = worker_id
        self.exit_code: int | None = None
        self.exit_signal: Signals | None = None
        self.exited_after_disconnect = False
        self.life = WorkerLife(worker_id)
        self._sender = sender
        self._leave = leave
        self._figures = figures

    @property
    def state(self) -> str:
        """'forked' | 'online' | 'ready' | 'disconnected' | 'dead'."""
        return self.life.state

    @property
    def pid(self) -> int | None:
        """The OS process id, or None where the transport has no OS process."""
        link = self.life.link
        return link.pid if link is not None else None

    def send(self, message: Any) -> 'asyncio.Future[None]':
        """Same as `primary.send(message, to=self)`."""
        return self._sender.send(message, to=self)

    def disconnect(self) -> 'WorkerHandle':
        """Ask the worker to leave (DISCONNECT, then SIGTERM and SIGKILL on timeouts)."""
        self._leave(self)
        return self

    def kill(self, signal: Signals | int = SIGTERM) -> 'WorkerHandle':
        """Send `signal`; a no-op once the worker is dead (never signals a reused pid)."""
        link = self.life.link
        if self.life.state != 'dead' and link is not None:
            link.kill(Signals(signal))
        return self

    def stats(self) -> dict[str, Any]:
        """This worker's figures: pid, state, uptime (seconds since it was forked; frozen at its
        exit), resident_bytes and cpu_seconds (None where the transport cannot tell), messages_in
        / messages_out (with the primary), in_flight requests, restarts of its slot (replacements
        after failures that led to this worker; reloads and recycling do not count)."""
        if self._figures is None:
            raise RuntimeError(f'worker {self.id}: this handle belongs to no primary')
        return self._figures(self)

    @property
    def leaving(self) -> bool:
        """The primary asked this worker to leave (retired, recycled, reloaded, shut down,
        disconnected): it gets no new work, though it may still answer what it has (R147)."""
        return self.life.asked_to_leave

    def is_connected(self) -> bool:
        return self.life.state in CONNECTED

    def is_dead(self) -> bool:
        return self.life.state == 'dead'

    def __repr__(self) -> str:
        pid = f' pid={self.pid}' if self.pid is not None else ''
        return f'<WorkerHandle id={self.id}{pid} state={self.state}>'
