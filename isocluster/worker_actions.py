"""The default actions of the worker events (SPEC §4, §7): what the primary does after its
handlers let an event complete. The pool follows add_worker / remove_worker; a ready worker
starts its heartbeats and recycling; an errored one is killed; an exited one goes to
`replacement`; restart_limit stops replacement; no_workers ends the cluster; reload starts
a rolling reload.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .closing import Closing
    from .escalation import Escalation
    from .handle import WorkerHandle
    from .heartbeats import Heartbeats
    from .readiness import Readiness
    from .recycler import Recycler
    from .registry import Registry
    from .reload import RollingReload
    from .replacement import Replacement
    from .shared_sockets import SharedSockets
    from .states import PrimaryState
    from .supervision import Supervisor

logger = logging.getLogger('isocluster')


class DefaultAction:
    """An event's default action on the primary, carried out by one of its parts: found by
    name on the primary (R7), so a subclass may still override it with a method of its own."""

    def __init__(self, part: str, action: str) -> None:
        self.part = part
        self.action = action

    def __get__(self, primary: Any, owner: type | None = None) -> Any:
        if primary is None:
            return self
        return getattr(getattr(primary, self.part), self.action)


class WorkerActions:
    def __init__(self, *, state: 'PrimaryState', registry: 'Registry', supervisor: 'Supervisor',
                 replacement: 'Replacement', shared: 'SharedSockets', heartbeats: 'Heartbeats', recycler: 'Recycler',
                 readiness: 'Readiness', reload: 'RollingReload', escalation: 'Escalation', closing: 'Closing',
                 publish: Callable[[str, dict[str, Any]], Any], shut_down: Callable[[], Any],
                 stop_worker: Callable[['WorkerHandle', bool], Any]) -> None:
        self._state = state
        self._registry = registry
        self._supervisor = supervisor
        self._replacement = replacement
        self._shared = shared
        self._heartbeats = heartbeats
        self._recycler = recycler
        self._readiness = readiness
        self._reload = reload
        self._escalation = escalation
        self._closing = closing
        self._publish = publish
        self._shut_down = shut_down  # the primary's public ones, late-bound
        self._stop_worker = stop_worker

    # -- a worker's life ---------------------------------------------------------------

    def worker_online(self, event: Any) -> None:
        event.data['worker'].life.online_accepted = True

    def worker_ready(self, event: Any) -> None:
        handle = event.data['worker']
        if handle.state != 'online':
            return
        handle.life.move('ready')
        self._supervisor.ready()
        handle.life.cancel_timer('ready')
        if self._state.active:
            self._heartbeats.start(handle)
        self._publish('add_worker', {'worker': handle})
        self._recycler.start(handle)
        self._readiness.ready_once()
        self._reload.worker_ready(handle)

    def worker_recycle(self, event: Any) -> None:
        handle = event.data['worker']
        if self._state.active and self._registry.owns(handle) and not handle.life.retired:
            self._stop_worker(handle, True)

    def add_worker(self, event: Any) -> None:
        if self._state.name != 'destroyed':
            self._registry.pool_add(event.data['worker'])

    def remove_worker(self, event: Any) -> None:
        self._registry.pool_remove(event.data['worker'])

    def _remove(self, worker: 'WorkerHandle') -> None:
        if worker.id in self._registry.pool:
            self._publish('remove_worker', {'worker': worker})

    def worker_disconnect(self, event: Any) -> None:
        self._remove(event.data['worker'])

    def worker_error(self, event: Any) -> None:
        handle = event.data['worker']
        self._remove(handle)
        self._escalation.kill(handle)

    def worker_exit(self, event: Any) -> None:
        handle = event.data['worker']
        self._remove(handle)
        self._replacement.exited(handle, event.data['code'], event.data['signal'])

    def after_exit(self, handle: 'WorkerHandle') -> None:
        """After worker_exit, whatever its handlers did."""
        self._shared.release(handle.id)  # after the replacement decision: a replacement inherits
        self._reload.worker_exited(handle)
        self._closing.worker_gone()

    # -- the cluster's -----------------------------------------------------------------

    def no_workers(self, event: Any) -> None:
        self._replacement.no_workers_ran = True
        error = event.data['error']
        if not self._state.active:
            return
        if error is not None:
            self._closing.end_error = error
            logger.error('%s', error, extra={'reason': 'no_workers', 'end': event.data['reason'],
                                             'worker_id': error.worker_id})
        else:
            logger.info('every worker has exited and none is replaced (restart=%r); shutting down',
                        self._supervisor.policy.restart, extra={'reason': 'no_workers', 'end': event.data['reason']})
        self._shut_down()

    def restart_limit(self, event: Any) -> None:
        self._replacement.limit_ran = True
        self._supervisor.stop()
        policy = self._supervisor.policy
        logger.error(
            'restart limit reached: more than %s restarts within %ss; automatic replacement stopped '
            '(call scale() to resume)', policy.intensity, policy.period,
            extra={'reason': 'restart_limit', 'live': len(self._registry.live)},
        )

    def request_reload(self) -> None:
        """`primary.reload()`: a no-op unless active and not already reloading."""
        if self._state.active and not self._reload.announced:
            self._publish('reload', {'worker_count': len(self._registry.pool_ids)})

    def reload(self, event: Any) -> None:
        if self._state.active and not self._reload.announced:
            self._readiness.tell('RELOADING=1')  # also when it joins a running stop_worker step
            self._reload.start(self._registry.ready())

    def reload_complete(self, count: int, aborted: bool) -> None:
        if self._state.name != 'destroyed':
            self._readiness.tell('READY=1', when_active=True)
            self._publish('reload_complete', {'worker_count': count, 'aborted': aborted})
