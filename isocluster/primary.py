"""ClusterPrimary: forks workers, routes their messages, supervises them (SPEC §4, §7).

Written against the transport seam only: no processes, sockets, signals or clocks here.
Time is the transport loop's time, so the same code runs on virtual time in tests.
The primary keeps the public API, publishes the events and wires its parts, each deciding
one thing (README, "How it is built"); an event's default action is one part's method.
"""

from __future__ import annotations

import asyncio
import types
from typing import Any, Callable, ClassVar, Iterable, Mapping

from . import dispatch, protocol
from . import signal_actions as signals
from .checks import check_bool, check_seconds, check_worker_count
from .closing import Closing
from .errors import ClusterError, InvalidDestinationError
from .escalation import Escalation
from .figures import primary_counters, primary_figures
from .forking import Forking
from .handle import WorkerHandle
from .heartbeats import Heartbeats
from .lifecycle import Initializable
from .link_events import WorkerEvents
from .listening import Listening
from .observed_publish import observed_publisher
from .out_of_band import decode_parts
from .options import primary_options
from .pacing import DEFAULT_MAX_QUEUED_BYTES
from .readiness import Readiness
from .recycler import Recycler
from .registry import Registry
from .reload import RollingReload
from .replacement import Replacement
from .routing import route
from .sending import Outbox
from .shared_sockets import DEFAULT_MAX_SHARED_SOCKETS
from .states import PrimaryState
from .scaling import Scaling
from .supervision import Backoff, RestartPolicy, Supervisor
from .transport.base import Signals, Transport, WorkerLink
from .worker_actions import DefaultAction, WorkerActions

_MISSING: Any = object()
_FAULTED: Any = object()  # what _decode_rest returns for a body that faulted its worker

_EVENTS = (
    'fork', 'worker_fork', 'worker_online', 'worker_ready', 'add_worker', 'remove_worker',
    'worker_message', 'worker_listening', 'worker_disconnect', 'worker_error', 'worker_exit',
    'restart_limit', 'reload', 'reload_complete', 'no_workers', 'worker_recycle',
)


class ClusterPrimary(Initializable):
    """The primary of a local cluster of workers. See DESIGN.md for the API."""

    _pubsub: ClassVar[dict[str, dict[str, Any]]] = {
        **{name: {} for name in _EVENTS},
        'shut_down': {'complete_once': True},
        'shut_down_complete': {'publish_once': True},
    }

    def __init__(
        self,
        *,
        worker_target: Callable[[], Any] | None = None,
        worker_script: str | None = None,
        worker_args: Iterable[str] | None = None,
        worker_silent: bool = False,
        worker_stdio: Mapping[str, Any] | None = None,
        transport: Transport | None = None,
        codec: 'str | protocol.Codec' = 'json',
        initialize: bool = True,
        restart: str = 'always',
        restart_intensity: int | None = 10,
        restart_period: float = 60.0,
        restart_backoff: Backoff | None = Backoff(),
        restart_policy: RestartPolicy | None = None,
        ready_timeout: float | None = 60.0,
        shutdown_timeout: float = 10.0,
        kill_timeout: float = 5.0,
        heartbeat_interval: float | None = None,
        heartbeat_timeout: float | None = None,
        drain_timeout: float | None = None,
        max_shared_sockets: int = DEFAULT_MAX_SHARED_SOCKETS,
        max_queued_bytes: int | None = DEFAULT_MAX_QUEUED_BYTES,
        max_requests: int | None = None,
        max_requests_jitter: int = 0,
        max_age: float | None = None,
        max_age_jitter: float = 0.0,
        max_memory: int | None = None,
        memory_check_interval: float = 1.0,
    ) -> None:
        self._options = options = primary_options(
            worker_target=worker_target, worker_script=worker_script, worker_args=worker_args,
            worker_silent=worker_silent, worker_stdio=worker_stdio, transport=transport, codec=codec,
            restart=restart, restart_intensity=restart_intensity, restart_period=restart_period,
            restart_backoff=restart_backoff, restart_policy=restart_policy, ready_timeout=ready_timeout,
            shutdown_timeout=shutdown_timeout, kill_timeout=kill_timeout, heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout, drain_timeout=drain_timeout,
            max_shared_sockets=max_shared_sockets, max_queued_bytes=max_queued_bytes,
            max_requests=max_requests, max_requests_jitter=max_requests_jitter, max_age=max_age,
            max_age_jitter=max_age_jitter, max_memory=max_memory, memory_check_interval=memory_check_interval,
        )
        self._owns_transport = transport is None
        if transport is None:
            from .transport import default_transport

            transport = default_transport()
        self._transport: Transport = transport
        self._codec = options.codec
        self._phase = PrimaryState()  # the one place the primary's state changes (states.py)
        self._registry = registry = Registry()
        self._live = registry.live  # read on every link event
        self._requests = registry.requests
        self._round_robin_history = registry.round_robin_history
        self._listening = Listening(transport, options.max_shared_sockets)
        self._shared = self._listening.shared
        self._supervisor = Supervisor(options.policy)
        self._stats = primary_counters()
        self._escalation = Escalation(self._call_later, self._stats, options.shutdown_timeout,
                                      options.kill_timeout, options.drain_timeout, registry, self._now)
        self._heartbeats = Heartbeats(
            options.heartbeat_interval, options.heartbeat_timeout, self._now, self._call_later,
            lambda: self._live.values(), lambda: self._phase.active, lambda handle, error: self._events.fault(handle, error),
            self._stats)
        self._events = WorkerEvents(
            registry=registry, codec=self._codec, transport=transport, heartbeats=self._heartbeats,
            listening=self._listening, stats=self._stats, publish=self._publish, spawn=self._spawn,
            exited=lambda handle: self._actions.after_exit(handle), ready_timeout=options.ready_timeout, now=self._now)

        def leave(worker: WorkerHandle) -> None:  # late-bound: a subclass's (or a test's) is the one run
            self._disconnect_worker(worker)

        self._forking = forking = Forking(
            owner=self, registry=registry, state=self._phase, options=options, transport=transport, events=self._events,
            stats=self._stats, now=self._now, publish=self._publish, call_soon=self._call_soon,
            call_later=self._call_later, leave=leave)
        self._reload = RollingReload(
            fork_one=forking.fork_one, retire=lambda handle: self._scaling.retire(handle),
            active=lambda: self._phase.active, later=self._call_soon,
            inherit=lambda old, new: self._shared.inherit(old.id, new.id),
            reload_complete=lambda count, aborted: self._actions.reload_complete(count, aborted))
        self._scaling = Scaling(state=self._phase, registry=registry, supervisor=self._supervisor, reload=self._reload,
                                publish=self._publish, disconnect=leave)
        self._replacement = Replacement(
            supervisor=self._supervisor, registry=registry, reload=self._reload, shared=self._shared,
            state=self._phase, publish=self._publish, fork_one=forking.fork_one, call_later=self._call_later,
            now=self._now, random=lambda: transport.random(), stats=self._stats)
        self._recycler = Recycler(
            options.recycling, random=lambda: transport.random(), now=self._now, call_soon=self._call_soon,
            call_later=self._call_later, publish=self._publish, state=self._phase, registry=registry)
        self._readiness = Readiness(transport, self._call_later, lambda: self._closing.closed, self._phase, registry)
        self._outbox = Outbox(registry, self._codec, transport, options.max_queued_bytes,
                              self._pubsub_loop, self._resolved_future, self._rejected, self._recycler.handled)
        self._map_parts = dispatch.MapParts(self.after, registry, self._phase, self._outbox)
        self._closing = Closing(
            state=self._phase, registry=registry, readiness=self._readiness, reload=self._reload,
            listening=self._listening, shared=self._shared, replacement=self._replacement, heartbeats=self._heartbeats,
            recycler=self._recycler, publish=self._publish, call_soon=self._call_soon, once_after=self._once_after,
            loop=self._pubsub_loop, shut_down=lambda: self.shut_down(), disconnect=leave)
        self._actions = WorkerActions(
            state=self._phase, registry=registry, supervisor=self._supervisor, replacement=self._replacement,
            shared=self._shared, heartbeats=self._heartbeats, recycler=self._recycler, readiness=self._readiness,
            reload=self._reload, escalation=self._escalation, closing=self._closing, publish=self._publish,
            shut_down=lambda: self.shut_down(), stop_worker=lambda worker, replace: self.stop_worker(worker, replace=replace))
        super().__init__(initialize=initialize)
        # worker_message's publish (when anyone can observe it), its default action routed inline
        self._deliver_message = observed_publisher(self, 'worker_message', '_event_worker_message_',
                                                   ClusterPrimary._event_worker_message)

    # -- loop and lifecycle ----------------------------------------------------------

    def _pubsub_loop(self) -> asyncio.AbstractEventLoop:
        return self._transport.loop

    def _now(self) -> float:
        return self._pubsub_loop().time()

    @property
    def transport(self) -> Transport:
        return self._transport

    def _initialize(self) -> None:
        self._pubsub_loop()  # bind to the transport's loop now (R57)

    def _on_initialized(self) -> None:
        if self._phase.initialized():
            self._readiness.start()

    def _destroy(self, *args: Any, **kwargs: Any) -> None:
        self._closing.destroying()
        super()._destroy(*args, **kwargs)
        if self._owns_transport:
            self._transport.close()
        self._closing.mark_closed()

    def _fatal(self, error: BaseException) -> None:
        """SPEC R34: keep the first fatal error, log it, shut down; run()/wait_closed() raise it."""
        if not self._transport.capture_fatal(error):
            self._closing.fatal(error, lambda: self._event_shut_down(None))

    # -- public API ------------------------------------------------------------------

    @property
    def workers(self) -> list[WorkerHandle]:
        """The ready workers, ascending id; a new list every time."""
        return self._registry.ready()

    @property
    def worker_by_id(self) -> Mapping[int, WorkerHandle]:
        """A read-only snapshot of the ready workers by id."""
        return types.MappingProxyType(dict(self._registry.pool))

    def fork(self, worker_count: int = 1) -> 'ClusterPrimary':
        self._forking.request(worker_count)
        return self

    def round_robin(self, tag: Any = '') -> WorkerHandle | None:
        hash(tag)  # an unhashable tag raises TypeError here (R69)
        return self._registry.round_robin(tag)

    def send(self, message: Any = _MISSING, to: Any = None) -> 'asyncio.Future[None]':
        if message is _MISSING:
            raise TypeError("send() missing required argument: 'message'")
        return self._outbox.send(message, to)

    def request(self, message: Any, to: 'WorkerHandle | int | None' = None, *,
                timeout: float | None = None) -> 'asyncio.Future[Any]':
        """Send `message` to one worker (None: the least busy) and await its reply (the routed
        handler's return value).

        Fails with RequestTimeout, WorkerLost (the worker left first) or RemoteError (its handler raised).
        """
        if timeout is not None:
            check_seconds('timeout', timeout, allow_none=True, allow_zero=False)
        if to is None:
            to = dispatch.pick(self._registry, '')  # least_busy(): a ready worker of this primary
            if to is None:
                return self._rejected(InvalidDestinationError(
                    'request(): no ready worker to send to; wait for worker_ready, or name a worker with to='))
            return self._outbox.request_ready(message, to, timeout)
        return self._outbox.request(message, to, timeout)

    def least_busy(self, tag: Any = '') -> WorkerHandle | None:
        """The ready worker with the fewest requests in flight; ties go in round_robin(tag) order."""
        hash(tag)  # an unhashable tag raises TypeError here, as in round_robin (R69)
        return dispatch.pick(self._registry, tag)

    def in_flight(self, worker: 'WorkerHandle | int') -> int:
        """How many requests sent to `worker` await their answer (0 for an unknown worker)."""
        handle = self._live.get(worker) if type(worker) is int else worker
        return self._requests.in_flight(handle)

    def map(self, messages: Iterable[Any], *, ordered: bool = True, max_in_flight: int = dispatch.DEFAULT_MAX_IN_FLIGHT,
            chunksize: int = 1, timeout: float | None = None, retries: int = 0) -> Any:
        """An async iterator of the replies to `messages`, each sent as a request to the least busy
        worker; see dispatch.MapRun and the README's "Task queues"."""
        return dispatch.map_replies(self._map_parts, messages, ordered=ordered, max_in_flight=max_in_flight,
                                    chunksize=chunksize, timeout=timeout, retries=retries)

    def map_sync(self, messages: Iterable[Any], **options: Any) -> list[Any]:
        """`map()` for a script without its own loop: runs the primary's loop until every reply is in."""
        return dispatch.collect_replies(self._pubsub_loop(), lambda: self.map(messages, **options))

    def bind(self, address: Any) -> Any:
        """Bind a shared address now, for the workers that will `listen()` on it: a busy or
        forbidden address fails here (OSError), before any worker is forked. Returns the bound
        address (the chosen port for port 0)."""
        return self._listening.bind(address)

    def reload(self) -> 'ClusterPrimary':
        """Rolling restart: replace the ready workers one at a time, each new one ready
        before its old one leaves (R132). A no-op unless active and not already reloading."""
        self._actions.request_reload()
        return self

    def stop_worker(self, worker: 'WorkerHandle | int', replace: bool = False) -> 'ClusterPrimary':
        """Retire one live worker (never replaced), or with `replace=True` swap it for a new
        one as a reload step (R135)."""
        check_bool('replace', replace)
        self._scaling.stop_worker(worker, replace)
        return self

    def scale(self, worker_count: int) -> 'ClusterPrimary':
        """Fork or retire workers to reach `worker_count` live ones; re-enables replacement
        after `restart_limit` (R136)."""
        check_worker_count('worker_count', worker_count)
        self._scaling.scale(worker_count)
        return self

    def shut_down(self) -> 'ClusterPrimary':
        self._closing.request_shut_down()
        return self

    def destroy(self, *args: Any, **kwargs: Any) -> 'ClusterPrimary':
        if self._closing.deferred_destroy_cancelled():
            self._destroy(*args, **kwargs)  # the destroy event is complete_once: destroy directly
        else:
            super().destroy(*args, **kwargs)
        return self

    def stats(self) -> dict[str, Any]:
        self._stats['messages_out'] = self._outbox.messages_out
        return primary_figures(self._stats, self._supervisor, self._registry, self._pubsub_loop().time())

    def run(self) -> None:
        """Drive the primary's loop until it is closed; SIGTERM/SIGINT shut down, SIGHUP reloads,
        SIGTTIN / SIGTTOU add / retire one worker."""
        actions = signals.signal_actions(
            shut_down=lambda: None if self._phase.name == 'destroyed' else self.shut_down(), kill_all=self._closing.kill_all,
            reload=self.reload, scale_by=lambda step: signals.scale_by(step, self._scaling.staying(), self.scale),
            guarded=self._guarded)
        signals.run(self._transport, self.wait_closed, actions, self._owns_transport)

    async def wait_closed(self) -> None:
        await self._closing.wait_closed()

    @property
    def closed(self) -> bool:
        return self._closing.closed

    async def __aenter__(self) -> 'ClusterPrimary':
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        """Leaving `async with`: a graceful shutdown, awaited (bounded by the shutdown timeouts),
        then destroy() releases the shared sockets and a transport the primary created."""
        await self._closing.leave_async_with(self.shut_down, self.destroy)

    # -- default actions (R7: found by name, so a subclass may override one) -------------

    _event_fork = DefaultAction('_forking', 'fork')
    _event_worker_fork = DefaultAction('_forking', 'worker_fork')
    _event_worker_online = DefaultAction('_actions', 'worker_online')
    _event_worker_ready = DefaultAction('_actions', 'worker_ready')
    _event_add_worker = DefaultAction('_actions', 'add_worker')
    _event_remove_worker = DefaultAction('_actions', 'remove_worker')
    _event_worker_recycle = DefaultAction('_actions', 'worker_recycle')
    _event_worker_disconnect = DefaultAction('_actions', 'worker_disconnect')
    _event_worker_error = DefaultAction('_actions', 'worker_error')
    _event_worker_exit = DefaultAction('_actions', 'worker_exit')
    _event_no_workers = DefaultAction('_actions', 'no_workers')
    _event_restart_limit = DefaultAction('_actions', 'restart_limit')
    _event_reload = DefaultAction('_actions', 'reload')
    _event_shut_down = DefaultAction('_closing', 'shut_down')

    def _event_worker_message(self, event: Any) -> None:
        route(self, '_event_worker_message_', event)

    def _event_destroy(self, event: Any) -> None:
        self._closing.destroy(event, self._destroy)

    # -- link events (called by the transport: the primary is each link's listener) ----

    def link_frame(self, link: WorkerLink, kind: str, payload: Any) -> None:
        handle = self._live.get(link.id)
        if handle is None or handle.life.error is not None or self._phase.name == 'destroyed':
            return
        try:
            if kind == protocol.MESSAGE and handle.life.state != 'forked':  # the hot path, inline
                try:
                    message = self._codec.decode(payload)
                except Exception as error:
                    return self._worker_fault(handle, protocol.decode_error(self._codec, error, handle.id))
                self._stats['messages_in'] += 1
                handle.life.messages_in += 1
                self._deliver_message(handle, message)  # published when anyone can observe it
            elif kind == protocol.REPLY:  # every request's answer: settled here, not dispatched
                self._events.reply_frame(handle, payload)
            else:
                self._events.control_frame(handle, kind, payload)
        except Exception as error:
            self._fatal(error)

    def link_frames(self, link: WorkerLink, inbox: Any, count: int) -> None:
        """The next `count` frames of `inbox` (the link's deque), each taken off it and handled
        as link_frame handles it: a worker's stream costs a call per batch, not per frame, and
        the per-frame checks are attribute reads. What a raise leaves stays in `inbox`."""
        if type(self).link_frame is not ClusterPrimary.link_frame:  # an override sees every frame
            while count and inbox:
                count -= 1
                frame = inbox.popleft()
                if type(frame) is tuple:
                    self.link_frame(link, *frame)
                else:  # a MESSAGE frame as its payload alone (FrameDecoder.bare_messages)
                    self.link_frame(link, protocol.MESSAGE, frame)
            return
        live, link_id, popleft = self._live, link.id, inbox.popleft
        handle = live.get(link_id)
        life = handle.life if handle is not None else None
        phase, stats, publish = self._phase, self._stats, self._deliver_message
        decode, decode_rest = decode_parts(self._codec.decode)  # pickle: pickle.loads, no wrapper
        message_kind = protocol.MESSAGE
        while count and inbox:
            count -= 1
            payload = popleft()
            if type(payload) is tuple:  # else a MESSAGE frame as its payload alone (bare_messages)
                kind, payload = payload
            else:
                kind = message_kind
            if (kind != message_kind or life is None or life.error is not None or life.state == 'forked'
                    or phase.name == 'destroyed' or live.get(link_id) is not handle):
                self.link_frame(link, kind, payload)  # anything but a stream's message: the general way
                continue
            try:
                try:
                    message = decode(payload)
                except Exception as error:
                    message = self._decode_rest(handle, decode_rest, payload, error)
                    if message is _FAULTED:
                        continue
                stats['messages_in'] += 1
                life.messages_in += 1
                publish(handle, message)  # published when anyone can observe it (observed_publish)
            except Exception as error:
                self._fatal(error)

    def _decode_rest(self, handle: WorkerHandle, rest: Any, payload: Any, error: Exception) -> Any:
        """link_frames' decode once the codec's common case raised `error`: the rest of the
        codec's decode (an out-of-band body), else the worker's fault, and _FAULTED."""
        if rest is not None:
            try:
                return rest(payload, error)
            except Exception as failure:
                error = failure
        self._worker_fault(handle, protocol.decode_error(self._codec, error, handle.id))
        return _FAULTED

    def link_error(self, link: WorkerLink, error: BaseException) -> None:
        handle = self._live.get(link.id)
        if handle is None or self._phase.name == 'destroyed':
            return
        if isinstance(error, ClusterError) and error.worker_id is None:
            error.worker_id = handle.id
        self._guarded(self._events.fault, handle, error)

    def link_closed(self, link: WorkerLink) -> None:
        handle = self._live.get(link.id)
        if handle is None or self._phase.name == 'destroyed':
            return
        self._guarded(self._events.closed, handle)

    def link_exit(self, link: WorkerLink, code: int | None, signal: Signals | None) -> None:
        handle = self._live.get(link.id)
        if handle is None or self._phase.name == 'destroyed':
            return
        if handle.state != 'disconnected':  # the transport promises closed first; stay robust
            self.link_closed(link)
        self._guarded(self._events.exited, handle, code, signal)

    def _worker_fault(self, handle: WorkerHandle, error: BaseException) -> None:
        self._events.fault(handle, error)

    # -- asking a worker to leave (escalation.py decides the steps) ---------------------

    def _disconnect_worker(self, handle: WorkerHandle) -> None:
        if handle.state != 'dead' and self._registry.owns(handle):
            self._escalation.disconnect(handle)

    def __repr__(self) -> str:
        return f'<{type(self).__name__} state={self._phase.name} live={len(self._live)} ready={len(self._registry.pool_ids)}>'
