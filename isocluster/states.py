"""The state tables: every state a worker and the primary can be in, the moves allowed between
them, and which frames a worker may send in each of its states (SPEC §4.13). Every decision
about states reads these tables; nothing else assigns a state.

A worker's other facts (it said READY, it was asked to leave, it faulted ...) live beside its
state in `WorkerLife`; the predicates the primary asks (`faulted`, `heartbeating`) are derived
from them, never stored twice.
"""

from __future__ import annotations

from typing import Any

from . import protocol

# -- a worker, as the primary sees it ------------------------------------------------------

# state -> states it may move to; 'disconnected' is reachable from any live state.
WORKER_TRANSITIONS: dict[str, frozenset[str]] = {
    'forked': frozenset(('online', 'disconnected')),
    'online': frozenset(('ready', 'disconnected')),
    'ready': frozenset(('disconnected',)),
    'disconnected': frozenset(('dead',)),
    'dead': frozenset(),
}
CONNECTED = frozenset(('online', 'ready'))  # a message or request may be sent to it
STARTING = frozenset(('forked', 'online'))  # the ready timer runs
LEAVING = frozenset(('disconnected', 'dead'))  # a reload step has nothing to replace

# kind -> the states in which a worker may send a frame of that kind. 'forked' is before
# ONLINE; a handle leaves the primary's table when it is dead, so no frame is seen later.
_AFTER_ONLINE = frozenset(('online', 'ready', 'disconnected'))
FRAMES_ALLOWED_IN: dict[str, frozenset[str]] = {
    protocol.MESSAGE: _AFTER_ONLINE,
    protocol.ONLINE: frozenset(('forked',)),
    protocol.READY: _AFTER_ONLINE,
    protocol.EXITING: _AFTER_ONLINE,
    protocol.LISTEN: _AFTER_ONLINE,
    protocol.HEARTBEAT_ACK: frozenset(('forked',)) | _AFTER_ONLINE,
    protocol.REQUEST: _AFTER_ONLINE,
    protocol.REPLY: _AFTER_ONLINE,
    protocol.REPLY_BATCH: _AFTER_ONLINE,
}


class WorkerLife:
    """One worker's state and the facts the primary learned about it; owned by the primary's
    parts (never by user code: the public view is `WorkerHandle`)."""

    __slots__ = (
        'worker_id', 'state', 'link', 'start_error', 'error', 'online_accepted', 'ready_received',
        'ever_ready', 'retired', 'asked_to_leave', 'said_exiting', 'last_beat', 'timers',
        'started_at', 'ready_at', 'exited_at', 'messages_in', 'messages_out', 'slot_restarts',
        'recycle_limits', 'recycle_reason',
    )

    def __init__(self, worker_id: int) -> None:
        self.worker_id = worker_id
        self.state = 'forked'
        self.link: Any = None
        self.start_error: BaseException | None = None
        self.error: BaseException | None = None  # the fault its worker_error carried, if any
        self.online_accepted = False  # worker_online's default action ran
        self.ready_received = False  # it sent READY (maybe before worker_online was accepted)
        self.ever_ready = False
        self.retired = False  # leaving on purpose (stop_worker, scale down, a reload step): not replaced
        self.asked_to_leave = False  # the primary sent it DISCONNECT
        self.said_exiting = False  # it sent EXITING: it leaves on its own
        self.last_beat: float | None = None  # None: heartbeats never started for it
        self.timers: dict[str, Any] = {}
        # per-worker figures (stats()) and recycling
        self.started_at = 0.0
        self.ready_at = 0.0
        self.exited_at: float | None = None
        self.messages_in = 0
        self.messages_out = 0
        self.slot_restarts = 0  # replacements after failures that led to this worker
        self.recycle_limits: Any = None  # drawn when it became ready, if recycling is on
        self.recycle_reason: str | None = None  # why worker_recycle was published for it

    def move(self, state: str) -> None:
        if state not in WORKER_TRANSITIONS[self.state]:  # pragma: no cover - a library bug, not user input
            raise AssertionError(f'worker {self.worker_id}: illegal state change {self.state} -> {state}')
        self.state = state
        if state == 'ready':
            self.ever_ready = True

    @property
    def faulted(self) -> bool:
        """Nothing more is read from it: a worker_error was raised for it."""
        return self.error is not None

    @property
    def disconnect_requested(self) -> bool:
        """Its exit is a leave, not a crash (`exited_after_disconnect`)."""
        return self.asked_to_leave or self.said_exiting

    @property
    def heartbeating(self) -> bool:
        """Its heartbeats are checked: started when it became ready, until it faults, is asked
        to leave, or disconnects."""
        return (self.last_beat is not None and self.state == 'ready' and self.error is None
                and not self.asked_to_leave)

    def cancel_timer(self, name: str) -> None:
        timer = self.timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def cancel_timers(self) -> None:
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()


def frame_refusal(kind: str, state: str, ready_received: bool) -> str | None:
    """Why a worker in `state` may not send a `kind` frame now, or None when it may."""
    allowed = FRAMES_ALLOWED_IN.get(kind)
    if allowed is None:
        return f'a {kind.upper()} frame, which only the primary sends'
    if state not in allowed:
        if kind == protocol.ONLINE:
            return 'a second ONLINE'
        return f'a {kind.upper()} frame before ONLINE'
    if kind == protocol.READY and ready_received:
        return 'a second READY'
    return None


# -- the primary ---------------------------------------------------------------------------

PRIMARY_TRANSITIONS: dict[str, frozenset[str]] = {
    'new': frozenset(('active', 'shutting_down', 'destroyed')),
    'active': frozenset(('shutting_down', 'destroyed')),
    'shutting_down': frozenset(('shutting_down', 'shut_down', 'destroyed')),  # a shutdown a handler failed is retried
    'shut_down': frozenset(('destroyed',)),
    'destroyed': frozenset(('destroyed',)),  # destroy is idempotent
}


class PrimaryState:
    """The primary's own state; the only way to change it is one of the named transitions."""

    __slots__ = ('name',)

    def __init__(self) -> None:
        self.name = 'new'

    def _move(self, state: str) -> None:
        if state not in PRIMARY_TRANSITIONS[self.name]:  # pragma: no cover - a library bug
            raise AssertionError(f'the primary cannot go from {self.name} to {state}')
        self.name = state

    def initialized(self) -> bool:
        """True when this made it active (a second initialize changes nothing)."""
        if self.name != 'new':
            return False
        self._move('active')
        return True

    def shutting_down(self) -> None:
        self._move('shutting_down')

    def shut_down(self) -> None:
        self._move('shut_down')

    def destroyed(self) -> None:
        self._move('destroyed')

    @property
    def active(self) -> bool:
        """It starts, replaces and reloads workers."""
        return self.name == 'active'

    @property
    def running(self) -> bool:
        """It has workers to drive to an end: a destroy waits for its shutdown."""
        return self.name in ('active', 'shutting_down')

    @property
    def ended(self) -> bool:
        return self.name in ('shut_down', 'destroyed')

    def __str__(self) -> str:
        return self.name
