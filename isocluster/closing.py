"""How the primary ends (SPEC §4.10, R34, R93-R96): shut_down asks every worker to leave,
shut_down_complete follows once the last one is gone, a destroy during a shutdown waits for
it, and `closed` / wait_closed() report the end with the error that ended the cluster.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Callable

from .errors import DestroyedError, WorkerLost
from .transport.base import SIGKILL

if TYPE_CHECKING:
    from .handle import WorkerHandle
    from .heartbeats import Heartbeats
    from .listening import Listening
    from .readiness import Readiness
    from .recycler import Recycler
    from .registry import Registry
    from .reload import RollingReload
    from .replacement import Replacement
    from .shared_sockets import SharedSockets
    from .states import PrimaryState

logger = logging.getLogger('isocluster')


class Closing:
    """Owns the end: the fatal error, the error that ended the cluster, and `closed`."""

    def __init__(self, *, state: 'PrimaryState', registry: 'Registry', readiness: 'Readiness',
                 reload: 'RollingReload', listening: 'Listening', shared: 'SharedSockets',
                 replacement: 'Replacement', heartbeats: 'Heartbeats', recycler: 'Recycler',
                 publish: Callable[[str, dict[str, Any]], Any], call_soon: Callable[..., Any],
                 once_after: Callable[[str, Callable[[Any], None]], Any],
                 loop: Callable[[], asyncio.AbstractEventLoop], shut_down: Callable[[], Any],
                 disconnect: Callable[['WorkerHandle'], None]) -> None:
        self._state = state
        self._registry = registry
        self._readiness = readiness
        self._reload = reload
        self._listening = listening
        self._shared = shared
        self._replacement = replacement
        self._heartbeats = heartbeats
        self._recycler = recycler
        self._publish = publish
        self._call_soon = call_soon
        self._once_after = once_after
        self._loop = loop
        # The primary's own, late-bound: a subclass's (or a test's) is the one used.
        self._shut_down = shut_down
        self._disconnect = disconnect
        self.destroy_deferred = False
        self.fatal_error: BaseException | None = None
        self.end_error: BaseException | None = None  # why no_workers ended the cluster
        self.closed = False
        self._closed_future: asyncio.Future[None] | None = None

    def fatal(self, error: BaseException, shut_down_anyway: Callable[[], Any]) -> None:
        """SPEC R34: keep the first fatal error, log it, shut down; run()/wait_closed() raise it."""
        logger.critical('fatal error in the cluster primary; shutting down', exc_info=error)
        if self.fatal_error is None:
            self.fatal_error = error
        elif error is not self.fatal_error:
            self.fatal_error.add_note(f'also during shutdown: {error!r}')
        if self._state.active:
            try:
                self._shut_down()
            except Exception as again:
                self.fatal_error.add_note(f'also during shutdown: {again!r}')
            if self._state.active:
                # A shut_down handler raised before the default action ran: shut down anyway,
                # without the handlers, so that a fatal error always ends in a closed cluster.
                shut_down_anyway()

    def request_shut_down(self) -> None:
        """`primary.shut_down()`."""
        if self._state.name == 'destroyed':
            raise DestroyedError('shut_down(): this ClusterPrimary has been destroyed')
        self._publish('shut_down', {})

    def shut_down(self, event: Any = None) -> None:
        """shut_down's default action."""
        self._readiness.tell('STOPPING=1', when_active=True)
        self._state.shutting_down()
        self.cancel_all_timers()
        self._reload.abandon()
        self._listening.close_all()
        live = self._registry.live
        if not live:
            self._call_soon(self.complete)
            return
        for handle in list(live.values()):
            self._disconnect(handle)

    def worker_gone(self) -> None:
        """After a worker's exit: the last one gone completes a shutdown."""
        if self._state.name == 'shutting_down' and not self._registry.live:
            self._call_soon(self.complete)

    def destroy(self, event: Any, destroy_now: Callable[..., None]) -> None:
        """destroy's default action: at once, or after the running shutdown completes."""
        args, kwargs = event.data['args'], event.data['kwargs']
        if self._state.running:
            self.destroy_deferred = True
            # R93/R94: subscribed now, so it runs after every earlier after-handler.
            self._once_after('shut_down_complete', lambda _event: destroy_now(*args, **kwargs))
            if self._state.active:
                self._shut_down()
        else:
            destroy_now(*args, **kwargs)

    def deferred_destroy_cancelled(self) -> bool:
        """A destroy deferred until shut_down_complete that a prevented shut_down_complete
        cancelled (R94): a later destroy() destroys directly."""
        return self._state.name == 'shut_down' and self.destroy_deferred

    def destroying(self) -> None:
        """The primary's own part of a destroy, before its lifecycle's."""
        self._state.destroyed()
        self.cancel_all_timers()
        self._registry.requests.lose(None, lambda: WorkerLost('the primary was destroyed before the reply arrived'))
        self._registry.clear_pool()
        self._shared.close_all()

    def complete(self) -> None:
        if self._state.name != 'shutting_down':
            return
        self._state.shut_down()
        logger.debug('cluster shut down')
        try:
            self._publish('shut_down_complete', {})
        finally:
            self.mark_closed()

    def mark_closed(self) -> None:
        # Closed once shut_down_complete has run all its stages, or once destroyed; a deferred
        # destroy runs inside shut_down_complete's after stage, so it is complete by now.
        if self._state.ended and not self.closed:
            self.closed = True
            self._readiness.stop()
            future = self._closed_future
            if future is not None and not future.done():
                future.set_result(None)

    async def wait_closed(self) -> None:
        if not self.closed:
            if self._closed_future is None:
                self._closed_future = self._loop().create_future()
            await asyncio.shield(self._closed_future)
        if self.fatal_error is not None:
            raise self.fatal_error
        if self.end_error is not None:
            raise self.end_error

    async def leave_async_with(self, shut_down: Callable[[], Any], destroy: Callable[[], Any]) -> None:
        """Leaving `async with`: shut down (unless already), await the end, then destroy."""
        if self._state.name in ('new', 'active'):
            shut_down()
        try:
            await self.wait_closed()
        finally:
            if self._state.name != 'destroyed':
                destroy()

    def kill_all(self) -> None:
        for handle in list(self._registry.live.values()):
            handle.kill(SIGKILL)

    def cancel_all_timers(self) -> None:
        self._replacement.cancel()
        self._heartbeats.stop()
        self._recycler.stop()
        destroyed = self._state.name == 'destroyed'
        for handle in self._registry.live.values():
            if destroyed:
                handle.life.cancel_timers()
            else:
                handle.life.cancel_timer('ready')
