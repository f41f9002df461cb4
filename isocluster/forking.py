"""Starting workers (SPEC §4.2): fork's default action starts each worker on the transport and
registers its handle; worker_fork follows on the next loop turn, for all of them, and arms
each one's ready timer. A worker the transport could not start is faulted and ends there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from .checks import check_worker_count
from .errors import NotInitializedError, TransportError
from .figures import worker_figures
from .handle import WorkerHandle
from .states import STARTING
from .supervision import _warn_inactive

if TYPE_CHECKING:
    import asyncio

    from .link_events import WorkerEvents
    from .options import PrimaryOptions
    from .registry import Registry
    from .states import PrimaryState
    from .transport.base import LinkListener, Transport


class Forking:
    def __init__(self, *, owner: Any, registry: 'Registry', state: 'PrimaryState', options: 'PrimaryOptions',
                 transport: 'Transport', events: 'WorkerEvents', stats: dict[str, int], now: Callable[[], float],
                 publish: Callable[[str, dict[str, Any]], Any], call_soon: Callable[..., Any],
                 call_later: Callable[..., 'asyncio.TimerHandle'], leave: Callable[[WorkerHandle], None]) -> None:
        self._owner = owner  # the primary: each handle's sender and each link's listener
        self._registry = registry
        self._state = state
        self._options = options
        self._transport = transport
        self._events = events
        self._stats = stats
        self._now = now
        self._publish = publish
        self._call_soon = call_soon
        self._call_later = call_later
        self._leave = leave

    def request(self, worker_count: Any) -> None:
        """`primary.fork(worker_count)`: checked, then published as fork."""
        check_worker_count('worker_count', worker_count, already=len(self._registry.staying()))
        if self._state.name == 'new':
            raise NotInitializedError('fork(): the primary has not finished initializing; call initialize() first')
        if not self._state.active:
            _warn_inactive('fork', worker_count, self._state.name)
            return
        self._transport.check_spec(self._options.spec(0))
        self._publish('fork', {'worker_count': worker_count})

    def fork(self, event: Any) -> None:
        """fork's default action."""
        count = event.data['worker_count']
        if type(count) is not int or count < 0:
            raise ValueError(f'fork: worker_count must be an int >= 0, got {count!r}')
        if not self._state.active:
            return
        handles = [self._start_worker() for _ in range(count)]
        if handles:
            self._call_soon(self._publish_worker_forks, handles)

    def fork_one(self) -> WorkerHandle | None:
        """Publish fork for one worker: the worker it started, or None (prevented, inactive)."""
        first = self._registry.next_id
        self._publish('fork', {'worker_count': 1})
        started = self._registry.started_since(first)
        return started[-1] if started else None

    def _start_worker(self) -> WorkerHandle:
        requests = self._registry.requests
        handle = WorkerHandle(self._owner, self._registry.new_id(), self._leave,
                              lambda worker: worker_figures(worker, self._now(), requests.in_flight(worker)))
        self._registry.add_live(handle)
        self._stats['forked'] += 1
        handle.life.started_at = self._now()
        listener: 'LinkListener' = self._owner
        try:
            handle.life.link = self._transport.start_worker(self._options.spec(handle.id), listener)
        except TransportError as error:
            error.worker_id = handle.id
            handle.life.start_error = error
        return handle

    def _publish_worker_forks(self, handles: list[WorkerHandle]) -> None:
        for handle in handles:
            self._publish('worker_fork', {'worker': handle})
        events = self._events
        for handle in handles:
            if handle.life.start_error is not None:
                events.fault(handle, handle.life.start_error)
                events.closed(handle)
                events.exited(handle, None, None)

    def worker_fork(self, event: Any) -> None:
        """worker_fork's default action: the ready timer (R87), while the worker is starting."""
        handle = event.data['worker']
        ready_timeout = self._options.ready_timeout
        if ready_timeout is not None and handle.state in STARTING and self._state.active:
            handle.life.timers['ready'] = self._call_later(ready_timeout, self._events.ready_timed_out, handle)
