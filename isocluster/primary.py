"""ClusterPrimary: forks workers, routes their messages, supervises them (SPEC §4, §7).

Written against the transport seam only: no processes, sockets, signals or clocks here.
Time is the transport loop's time, so the same code runs on virtual time in tests.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import sys
import types
from collections import deque
from typing import Any, Callable, ClassVar, Iterable, Mapping

from . import frames, protocol
from .errors import (
    ClusterError, DecodeError, DestroyedError, EncodeError, HeartbeatTimeout, InvalidDestinationError, ListenError,
    NoWorkersError, NotInitializedError, ProtocolError, ReadyTimeout, SendError, TransportError, WorkerLost,
)
from .handle import WorkerHandle
from .lifecycle import Initializable
from . import dispatch
from .inflight import CountingRequests
from .routing import Request, route
from .checks import MIN_HEARTBEAT_INTERVAL, check_bool, check_positive_int, check_seconds, check_worker_count
from .pacing import DEFAULT_MAX_QUEUED_BYTES, admits, check_max_queued_bytes, over_cap
from .shared_sockets import DEFAULT_MAX_SHARED_SOCKETS, SharedSockets, address_key
from .supervision import Backoff, RestartPolicy, Supervision, _Reload, _warn_inactive
from .readiness import Readiness
from .recycler import Recycler
from .recycling import RecyclePolicy
from .transport.base import SIGKILL, SIGTERM, Signals, Transport, WorkerLink, WorkerSpec
from .transport.flow import HIGH_WATER, all_resolved

logger = logging.getLogger('isocluster')

_MISSING: Any = object()

_EVENTS = (
    'fork', 'worker_fork', 'worker_online', 'worker_ready', 'add_worker', 'remove_worker',
    'worker_message', 'worker_listening', 'worker_disconnect', 'worker_error', 'worker_exit',
    'restart_limit', 'reload', 'reload_complete', 'no_workers', 'worker_recycle',
)


_CONNECTED = frozenset(('online', 'ready'))
DEFAULT_DRAIN_TIMEOUT = 5.0  # drain_timeout=None: this, or half of shutdown_timeout when that is shorter


def _write_failure(target: WorkerHandle, error: TransportError) -> SendError:
    failure = SendError(
        f'could not write to worker {target.id}: {error}; the worker is gone or its link broke',
        worker_id=target.id,
    )
    failure.__cause__ = error
    return failure


def _over_cap(target: WorkerHandle, pending: int, cap: float) -> SendError:
    return over_cap(f'the link to worker {target.id}', target.id, pending, cap)


def _check_drain_timeout(drain_timeout: Any, shutdown_timeout: float) -> float:
    """The time a leaving worker gets to finish its connections. SIGTERM comes shutdown_timeout
    after DISCONNECT, so the drain must end before it, with time left for the worker's cleanup."""
    if drain_timeout is None:
        return min(DEFAULT_DRAIN_TIMEOUT, shutdown_timeout / 2)
    seconds = check_seconds('drain_timeout', drain_timeout)
    if seconds and seconds >= shutdown_timeout:
        raise ValueError(
            f'drain_timeout ({seconds}) must be less than shutdown_timeout ({shutdown_timeout}): SIGTERM comes '
            'shutdown_timeout after a worker is asked to leave; raise shutdown_timeout too'
        )
    return seconds


class ClusterPrimary(Supervision, Recycler, Readiness, Initializable):
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
        self._recycling = RecyclePolicy(max_requests, max_requests_jitter, max_age, max_age_jitter, max_memory,
                                        memory_check_interval)
        self._queue_cap = check_max_queued_bytes(max_queued_bytes)
        self._configure(
            worker_target, worker_script, worker_args, worker_silent, worker_stdio, transport, codec,
            restart, restart_intensity, restart_period, restart_backoff, restart_policy,
            ready_timeout, shutdown_timeout, kill_timeout, heartbeat_interval, heartbeat_timeout,
        )
        self._drain_timeout = _check_drain_timeout(drain_timeout, self._shutdown_timeout)
        self._shared = SharedSockets(check_positive_int('max_shared_sockets', max_shared_sockets))
        self._state = 'new'
        self._next_id = 1
        self._live: dict[int, WorkerHandle] = {}
        self._pool: dict[int, WorkerHandle] = {}
        self._pool_ids: list[int] = []
        self._round_robin_history: dict[Any, dict[int, int]] = {}
        self._round_robin_counter = 0
        self._sockets: dict[Any, Any] = self._shared.sockets  # address key -> shared listening socket
        self._reuse_port_addresses: dict[Any, Any] = {}  # asked address -> the one the first socket got
        self._restart_times: deque[float] = deque()
        self._replacement_stopped = False
        self._backoff_attempt = 0
        self._pending_restarts: set[asyncio.TimerHandle] = set()
        self._restart_limit_ran = False
        self._last_forked: list[WorkerHandle] = []
        self._reload: _Reload | None = None
        self._heartbeat_timer: asyncio.TimerHandle | None = None
        self._requests = CountingRequests()
        self._destroy_deferred = False
        self._fatal_error: BaseException | None = None
        self._end_error: NoWorkersError | None = None
        self._any_ever_ready = False
        self._boot_failures = 0
        self._unreplaced_failure: WorkerHandle | None = None
        self._no_workers_ran = False
        self._closed = False
        self._closed_future: asyncio.Future[None] | None = None
        self._stats = dict.fromkeys(
            ('forked', 'exited', 'restarts', 'killed_by_timeout', 'messages_in', 'messages_out'), 0
        )
        super().__init__(initialize=initialize)

    # -- options ---------------------------------------------------------------------

    def _configure(
        self, worker_target: Any, worker_script: Any, worker_args: Any, worker_silent: Any,
        worker_stdio: Any, transport: Any, codec: Any, restart: Any, restart_intensity: Any,
        restart_period: Any, restart_backoff: Any, restart_policy: Any, ready_timeout: Any,
        shutdown_timeout: Any, kill_timeout: Any, heartbeat_interval: Any, heartbeat_timeout: Any,
    ) -> None:
        if worker_target is not None and worker_script is not None:
            raise ValueError('worker_target and worker_script: give one of them, not both')
        if worker_target is not None and not callable(worker_target):
            raise TypeError(f'worker_target: expected a callable, got {worker_target!r}')
        if worker_script is not None and not isinstance(worker_script, str):
            raise TypeError(f'worker_script: expected a path string, got {worker_script!r}')
        if worker_args is not None:
            if worker_target is not None:
                raise ValueError('worker_args: only for script workers; a worker_target takes no arguments')
            if isinstance(worker_args, str):
                raise TypeError(f'worker_args: expected a list of strings, got {worker_args!r}')
            worker_args = tuple(worker_args)  # once: it may be a one-shot iterator
            if not all(isinstance(arg, str) for arg in worker_args):
                raise TypeError(f'worker_args: expected a list of strings, got {worker_args!r}')
        if worker_stdio is not None and not isinstance(worker_stdio, Mapping):
            raise TypeError(f'worker_stdio: expected a mapping of stdin/stdout/stderr, got {worker_stdio!r}')
        if worker_stdio is not None:
            unknown = set(worker_stdio) - {'stdin', 'stdout', 'stderr'}
            if unknown:
                raise ValueError(f'worker_stdio: unknown streams {sorted(unknown)}; use stdin, stdout, stderr')
        if transport is not None and not isinstance(transport, Transport):
            raise TypeError(f'transport: expected a Transport, got {transport!r}')
        self._codec = protocol.get_codec(codec)
        self._ready_timeout = check_seconds('ready_timeout', ready_timeout, allow_none=True, allow_zero=False)
        self._shutdown_timeout = check_seconds('shutdown_timeout', shutdown_timeout)
        self._kill_timeout = check_seconds('kill_timeout', kill_timeout)
        interval = check_seconds('heartbeat_interval', heartbeat_interval, allow_none=True, allow_zero=False)
        timeout = check_seconds('heartbeat_timeout', heartbeat_timeout, allow_none=True, allow_zero=False)
        if interval is not None and timeout is None:
            timeout = 3 * interval
        elif timeout is not None and interval is None:
            interval = timeout / 3
        if interval is not None and timeout is not None and timeout <= interval:
            raise ValueError(
                f'heartbeat_timeout ({timeout}) must be greater than heartbeat_interval ({interval})'
            )
        if interval is not None and interval < MIN_HEARTBEAT_INTERVAL:
            name = 'heartbeat_interval' if heartbeat_interval is not None else 'heartbeat_timeout'
            raise ValueError(
                f'{name}: heartbeats every {interval}s are below the minimum interval of '
                f'{MIN_HEARTBEAT_INTERVAL}s (heartbeat_timeout must be at least {3 * MIN_HEARTBEAT_INTERVAL}s)'
            )
        self._heartbeat_interval, self._heartbeat_timeout = interval, timeout
        if restart_policy is not None:
            if not isinstance(restart_policy, RestartPolicy):
                raise TypeError(f'restart_policy: expected a RestartPolicy, got {restart_policy!r}')
            defaults = (restart, restart_intensity, restart_period, restart_backoff) == ('always', 10, 60.0, Backoff())
            if not defaults:
                raise ValueError('restart_policy: give either restart_policy or the restart_* options, not both')
            self._policy = restart_policy
        else:
            self._policy = RestartPolicy(restart, restart_intensity, restart_period, restart_backoff)
        self._worker_target = worker_target
        self._worker_script = worker_script
        self._worker_args = worker_args
        self._worker_silent = check_bool('worker_silent', worker_silent)
        self._worker_stdio = dict(worker_stdio) if worker_stdio is not None else None
        self._owns_transport = transport is None
        if transport is None:
            from .transport import default_transport

            transport = default_transport()
        self._transport: Transport = transport

    # -- loop and lifecycle ----------------------------------------------------------

    def _pubsub_loop(self) -> asyncio.AbstractEventLoop:
        return self._transport.loop

    @property
    def transport(self) -> Transport:
        return self._transport

    def _initialize(self) -> None:
        self._pubsub_loop()  # bind to the transport's loop now (R57)

    def _on_initialized(self) -> None:
        if self._state == 'new':
            self._state = 'active'
            self._readiness_start()

    def _destroy(self, *args: Any, **kwargs: Any) -> None:
        self._state = 'destroyed'
        self._cancel_all_timers()
        self._requests.lose(None, lambda: WorkerLost('the primary was destroyed before the reply arrived'))
        self._pool.clear()
        self._pool_ids.clear()
        self._round_robin_history.clear()
        self._shared.close_all()
        super()._destroy(*args, **kwargs)
        if self._owns_transport:
            self._transport.close()
        self._mark_closed()

    def _fatal(self, error: BaseException) -> None:
        """SPEC R34: keep the first fatal error, log it, shut down; run()/wait_closed() raise it."""
        if self._transport.capture_fatal(error):
            return
        logger.critical('fatal error in the cluster primary; shutting down', exc_info=error)
        if self._fatal_error is None:
            self._fatal_error = error
        elif error is not self._fatal_error:
            self._fatal_error.add_note(f'also during shutdown: {error!r}')
        if self._state == 'active':
            try:
                self.shut_down()
            except Exception as again:
                self._fatal_error.add_note(f'also during shutdown: {again!r}')
            if self._state == 'active':
                # A shut_down handler raised before the default action ran: shut down anyway,
                # without the handlers, so that a fatal error always ends in a closed cluster.
                self._event_shut_down(None)

    # -- public API ------------------------------------------------------------------

    @property
    def workers(self) -> list[WorkerHandle]:
        """The ready workers, ascending id; a new list every time."""
        pool = self._pool
        return [pool[worker_id] for worker_id in self._pool_ids]

    @property
    def worker_by_id(self) -> Mapping[int, WorkerHandle]:
        """A read-only snapshot of the ready workers by id."""
        return types.MappingProxyType(dict(self._pool))

    def fork(self, worker_count: int = 1) -> 'ClusterPrimary':
        check_worker_count('worker_count', worker_count, already=self._staying_count())
        if self._state == 'new':
            raise NotInitializedError('fork(): the primary has not finished initializing; call initialize() first')
        if self._state != 'active':
            _warn_inactive('fork', worker_count, self._state)
            return self
        self._transport.check_spec(self._spec(0))
        self._publish('fork', {'worker_count': worker_count})
        return self

    def round_robin(self, tag: Any = '') -> WorkerHandle | None:
        hash(tag)  # an unhashable tag raises TypeError here (R69)
        if not self._pool_ids:
            return None
        history = self._round_robin_history.setdefault(tag, {})
        chosen = None
        oldest = 0
        for worker_id in self._pool_ids:
            picked = history.get(worker_id)
            if picked is None:
                chosen = worker_id
                break
            if chosen is None or picked < oldest:
                chosen, oldest = worker_id, picked
        self._round_robin_counter += 1
        history[chosen] = self._round_robin_counter
        return self._pool[chosen]

    def send(self, message: Any = _MISSING, to: Any = None) -> 'asyncio.Future[None]':
        if message is _MISSING:
            raise TypeError("send() missing required argument: 'message'")
        try:
            data = protocol.encode_message(self._codec, message, self._transport.max_frame_size)
        except EncodeError as error:
            return self._rejected(error)
        if type(to) is WorkerHandle and to._primary is self and to.state in _CONNECTED:
            # One connected worker, the common case: no destination lists.
            link = to._link
            flow = link.flow
            if flow.pending and flow.pending + len(data) > self._queue_cap:
                return self._rejected(_over_cap(to, flow.pending, self._queue_cap))
            try:
                link.write(protocol.MESSAGE, data)
            except TransportError as error:
                return self._rejected(_write_failure(to, error))
            self._stats['messages_out'] += 1
            to._messages_out += 1
            if to._recycle_limits is not None:
                self._recycle_counted(to, 1)
            if flow.pending > HIGH_WATER:  # backpressure: resolves once the link has drained
                return flow.completion()
            return self._resolved_future()
        destinations = self._resolve_destinations(to)
        if not destinations:
            return self._resolved_future()
        failures: list[tuple[Any, BaseException]] = []
        waiting: dict[Any, asyncio.Future[None]] = {}
        for destination, target in destinations:
            if isinstance(target, BaseException):
                failures.append((destination, target))
                continue
            flow = target._link.flow
            if not admits(flow.pending, len(data), self._queue_cap):
                failures.append((destination, _over_cap(target, flow.pending, self._queue_cap)))
                continue
            try:
                target._link.write(protocol.MESSAGE, data)
            except TransportError as error:
                failures.append((destination, _write_failure(target, error)))
            else:
                self._stats['messages_out'] += 1
                self._handled(target)
                if flow.pending > HIGH_WATER:  # the same link twice waits for its later mark
                    waiting[flow] = flow.completion()
        if not failures:
            if not waiting:
                return self._resolved_future()
            return all_resolved(self._pubsub_loop(), list(waiting.values()))  # backpressure
        if len(destinations) == 1:
            return self._rejected(failures[0][1])
        return self._rejected(SendError(
            f'{len(failures)} of {len(destinations)} destinations failed: '
            + '; '.join(f'{destination!r}: {error}' for destination, error in failures),
            failures=failures,
        ))

    def request(self, message: Any, to: 'WorkerHandle | int | None' = None, *,
                timeout: float | None = None) -> 'asyncio.Future[Any]':
        """Send `message` to one worker (None: the least busy) and await its reply (the routed
        handler's return value).

        Fails with RequestTimeout, WorkerLost (the worker left first) or RemoteError (its handler raised).
        """
        check_seconds('timeout', timeout, allow_none=True, allow_zero=False)
        if to is None:
            to = self.least_busy()
            if to is None:
                return self._rejected(InvalidDestinationError(
                    'request(): no ready worker to send to; wait for worker_ready, or name a worker with to='))
        if isinstance(to, (list, tuple)):
            return self._rejected(InvalidDestinationError(f'request(): to must name one worker, got {to!r}'))
        try:
            data = protocol.encode_message(self._codec, message, self._transport.max_frame_size,
                                           overhead=protocol.REQUEST_OVERHEAD)
        except EncodeError as error:
            return self._rejected(error)
        target = self._resolve_one(to)
        if isinstance(target, BaseException):
            return self._rejected(target)
        request_id, reply = self._requests.open(self._pubsub_loop(), target, timeout, f'the request to worker {target.id}')
        try:
            target._link.write(protocol.REQUEST, (request_id, data))
        except TransportError as error:
            self._requests.cancel(request_id)
            return self._rejected(_write_failure(target, error))
        self._stats['messages_out'] += 1
        self._handled(target)
        return reply

    def least_busy(self, tag: Any = '') -> WorkerHandle | None:
        """The ready worker with the fewest requests in flight; ties go in round_robin(tag) order."""
        hash(tag)  # an unhashable tag raises TypeError here, as in round_robin (R69)
        return dispatch.pick(self, tag)

    def in_flight(self, worker: 'WorkerHandle | int') -> int:
        """How many requests sent to `worker` await their answer (0 for an unknown worker)."""
        handle = self._live.get(worker) if type(worker) is int else worker
        return self._requests.in_flight(handle)

    def map(self, messages: Iterable[Any], *, ordered: bool = True, max_in_flight: int = dispatch.DEFAULT_MAX_IN_FLIGHT,
            chunksize: int = 1, timeout: float | None = None, retries: int = 0) -> Any:
        """An async iterator of the replies to `messages`, each sent as a request to the least busy
        worker; see dispatch.MapRun and the README's "Task queues"."""
        check_seconds('timeout', timeout, allow_none=True, allow_zero=False)
        return dispatch.map_replies(self, messages, ordered=ordered, max_in_flight=max_in_flight,
                                    chunksize=chunksize, timeout=timeout, retries=retries)

    def map_sync(self, messages: Iterable[Any], **options: Any) -> list[Any]:
        """`map()` for a script without its own loop: runs the primary's loop until every reply is in."""
        loop = self._pubsub_loop()
        if loop.is_running():
            raise RuntimeError("map_sync(): the primary's loop is already running; use `async for reply in primary.map(...)`")
        replies = self.map(messages, **options)

        async def collect() -> list[Any]:
            return [reply async for reply in replies]

        return loop.run_until_complete(collect())

    def _resolve_destinations(self, to: Any) -> list[tuple[Any, Any]]:
        if to is None:
            return [(handle, handle) for handle in self.workers]
        if isinstance(to, (list, tuple)):
            return [(item, self._resolve_one(item)) for item in to]
        return [(to, self._resolve_one(to))]

    def _resolve_one(self, destination: Any) -> Any:
        if isinstance(destination, WorkerHandle):
            if destination._primary is self and destination.state in _CONNECTED:
                return destination
            return InvalidDestinationError(
                f'invalid message destination {destination!r}: not a connected worker of this primary',
                worker_id=destination.id,
            )
        if type(destination) is int:
            handle = self._pool.get(destination)
            if handle is not None:
                return handle
            return InvalidDestinationError(
                f'invalid message destination {destination!r}: no ready worker has this id', worker_id=destination
            )
        return InvalidDestinationError(
            f'invalid message destination {destination!r}: use a WorkerHandle, a worker id (int), '
            'a list of them, or None for every ready worker'
        )

    def shut_down(self) -> 'ClusterPrimary':
        if self._state == 'destroyed':
            raise DestroyedError('shut_down(): this ClusterPrimary has been destroyed')
        self._publish('shut_down', {})
        return self

    def destroy(self, *args: Any, **kwargs: Any) -> 'ClusterPrimary':
        if self._state == 'shut_down' and self._destroy_deferred:
            # The deferred destroy was cancelled by a prevented shut_down_complete (R94); the
            # destroy event is complete_once, so a later destroy() destroys directly.
            self._destroy(*args, **kwargs)
            return self
        super().destroy(*args, **kwargs)
        return self

    def _event_destroy(self, event: Any) -> None:
        args, kwargs = event.data['args'], event.data['kwargs']
        if self._state in ('active', 'shutting_down'):
            self._destroy_deferred = True
            # R93/R94: subscribed now, so it runs after every earlier after-handler.
            self._once_after('shut_down_complete', lambda _event: self._destroy(*args, **kwargs))
            if self._state == 'active':
                self.shut_down()
        else:
            self._destroy(*args, **kwargs)

    def stats(self) -> dict[str, Any]:
        now = self._pubsub_loop().time()
        return {
            **self._stats,
            'restarts_in_window': sum(1 for when in self._restart_times if now - when < self._policy.period),
            'live': len(self._live),
            'ready': len(self._pool_ids),
            'late_replies': self._requests.late_replies,
            'workers': {worker_id: handle.stats() for worker_id, handle in sorted(self._live.items())},
        }

    def run(self) -> None:
        """Drive the primary's loop until it is closed; SIGTERM/SIGINT shut down, SIGHUP reloads,
        SIGTTIN / SIGTTOU add / retire one worker."""
        loop = self._pubsub_loop()
        if loop.is_running():
            raise RuntimeError('run(): the primary\'s loop is already running; use await primary.wait_closed()')
        interrupts = 0

        def interrupted() -> None:
            nonlocal interrupts
            interrupts += 1
            if interrupts > 1:
                self._kill_all()
            elif self._state != 'destroyed':
                self.shut_down()

        def terminated() -> None:
            if self._state != 'destroyed':
                self.shut_down()

        restore = self._transport.install_signal_handlers({
            SIGTERM: lambda: self._guarded(terminated),
            Signals.SIGINT: lambda: self._guarded(interrupted),
            Signals.SIGHUP: lambda: self._guarded(self.reload),
            Signals.SIGTTIN: lambda: self._guarded(self._scale_by, 1),
            Signals.SIGTTOU: lambda: self._guarded(self._scale_by, -1),
        })
        try:
            loop.run_until_complete(self.wait_closed())
        finally:
            restore()
            if self._owns_transport:
                self._transport.close()  # now that the loop has stopped, it can be closed too

    def _scale_by(self, step: int) -> None:
        """SIGTTIN / SIGTTOU: one worker more or less than those staying (never below one, as
        gunicorn). A reload step's leaving worker is not counted: its new one takes its place."""
        reload = self._reload
        leaving = reload.old if reload is not None and reload.new is not None else None
        staying = sum(1 for handle in self._live.values() if not handle._retired and handle is not leaving)
        if staying + step < 1:
            logger.warning('SIGTTOU: the last worker is not retired; SIGTERM shuts the cluster down',
                           extra={'reason': 'scale_by_signal'})
            return
        self.scale(staying + step)

    async def wait_closed(self) -> None:
        if not self._closed:
            if self._closed_future is None:
                self._closed_future = self._pubsub_loop().create_future()
            await asyncio.shield(self._closed_future)
        if self._fatal_error is not None:
            raise self._fatal_error
        if self._end_error is not None:
            raise self._end_error

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> 'ClusterPrimary':
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        """Leaving `async with`: a graceful shutdown, awaited (bounded by the shutdown timeouts),
        then destroy() releases the shared sockets and a transport the primary created."""
        if self._state in ('new', 'active'):
            self.shut_down()
        try:
            await self.wait_closed()
        finally:
            if self._state != 'destroyed':
                self.destroy()

    # -- forking ---------------------------------------------------------------------

    def _spec(self, worker_id: int) -> WorkerSpec:
        script, args = self._worker_script, self._worker_args
        if self._worker_target is None and script is None:
            script = sys.argv[0]
        if script is not None and args is None:
            args = tuple(sys.argv[1:])
        return WorkerSpec(
            id=worker_id, codec=self._codec, target=self._worker_target, script=script,
            args=args or (), silent=self._worker_silent, stdio=self._worker_stdio,
        )

    def _event_fork(self, event: Any) -> None:
        count = event.data['worker_count']
        if type(count) is not int or count < 0:
            raise ValueError(f'fork: worker_count must be an int >= 0, got {count!r}')
        if self._state != 'active':
            self._last_forked = []
            return
        handles = [self._start_worker() for _ in range(count)]
        self._last_forked = handles
        if handles:
            self._call_soon(self._publish_worker_forks, handles)

    def _start_worker(self) -> WorkerHandle:
        handle = WorkerHandle(self, self._next_id)
        self._next_id += 1
        self._live[handle.id] = handle
        self._stats['forked'] += 1
        handle._started_at = self._pubsub_loop().time()
        try:
            handle._link = self._transport.start_worker(self._spec(handle.id), self)
        except TransportError as error:
            error.worker_id = handle.id
            handle._start_error = error
        return handle

    def _publish_worker_forks(self, handles: list[WorkerHandle]) -> None:
        for handle in handles:
            self._publish('worker_fork', {'worker': handle})
        for handle in handles:
            if handle._start_error is not None:
                self._worker_fault(handle, handle._start_error)
                self._worker_closed(handle)
                self._worker_exited(handle, None, None)

    def _event_worker_fork(self, event: Any) -> None:
        handle = event.data['worker']
        if self._ready_timeout is not None and handle.state in ('forked', 'online') and self._state == 'active':
            handle._timers['ready'] = self._call_later(self._ready_timeout, self._ready_timed_out, handle)

    def _ready_timed_out(self, handle: WorkerHandle) -> None:
        handle._timers.pop('ready', None)
        if handle.state in ('forked', 'online'):
            self._stats['killed_by_timeout'] += 1
            self._worker_fault(handle, ReadyTimeout(
                f'worker {handle.id} did not become ready within ready_timeout={self._ready_timeout}s; '
                'it is killed (check its initialization, or raise ready_timeout)', worker_id=handle.id,
            ))

    # -- link events (called by the transport) ----------------------------------------

    def link_frame(self, link: WorkerLink, kind: str, payload: Any) -> None:
        handle = self._live.get(link.id)
        if handle is None or handle._faulted or self._state == 'destroyed':
            return
        try:
            if kind == protocol.MESSAGE and handle.state != 'forked':  # the hot path, inline
                try:
                    message = self._codec.decode(payload)
                except Exception as error:
                    return self._worker_fault(handle, protocol.decode_error(self._codec, error, handle.id))
                self._stats['messages_in'] += 1
                handle._messages_in += 1
                self._publish('worker_message', {'worker': handle, 'message': message})
            else:
                self._dispatch_frame(handle, kind, payload)
        except Exception as error:
            self._fatal(error)

    def _dispatch_frame(self, handle: WorkerHandle, kind: str, payload: Any) -> None:
        try:
            why = frames.refusal(kind, handle.state, handle._ready_received)
            if why is None:
                frames.check_payload(kind, payload)
        except ProtocolError as error:
            why = str(error)
        except Exception as error:  # whatever a worker's bytes make fail is its violation
            why = f'{frames.describe(kind)} that could not be checked ({error!r})'
        if why is not None:
            return self._protocol_violation(handle, why, kind)
        if kind == protocol.HEARTBEAT_ACK:
            handle._last_beat = self._pubsub_loop().time()
        elif kind == protocol.REPLY or kind == protocol.REPLY_BATCH:
            if kind == protocol.REPLY_BATCH:  # a chunk's answer settles its request like a REPLY
                payload = (payload[0], True, payload[1])
            try:
                why = self._requests.settle(payload, self._codec, handle.id, handle)
            except Exception as error:
                why = f'a {kind.upper()} that could not be read ({error!r})'
            if why is not None:
                self._protocol_violation(handle, why, kind)
        elif kind == protocol.REQUEST:
            request_id, data = payload
            try:
                message = protocol.decode_message(self._codec, data, handle.id)
            except DecodeError as error:
                return self._worker_fault(handle, error)
            self._stats['messages_in'] += 1
            handle._messages_in += 1
            link = handle._link
            request = Request(request_id, lambda reply: link.write(protocol.REPLY, reply), self._codec, self._spawn,
                              self._transport.max_frame_size)
            try:
                self._publish('worker_message', {'worker': handle, 'message': message, 'request': request})
            except Exception as error:
                if request.answered:
                    raise
                request.fail(error)
            request.settle_unanswered(message.get('type') if type(message) is dict else None)
        elif kind == protocol.ONLINE:
            handle._move('online')
            self._publish('worker_online', {'worker': handle})
        elif kind == protocol.READY:
            handle._ready_received = True
            if handle._online_accepted and handle.state == 'online':
                self._publish('worker_ready', {'worker': handle})
        elif kind == protocol.EXITING:
            handle._disconnect_requested = True
        elif kind == protocol.LISTEN:
            self._listen(handle, payload)

    def _protocol_violation(self, handle: WorkerHandle, what: str, kind: str | None = None) -> None:
        error = ProtocolError(
            f'worker {handle.id} broke the link protocol: {what}; it is killed and replaced',
            worker_id=handle.id,
        )
        error.frame_kind = kind
        self._worker_fault(handle, error)

    def link_error(self, link: WorkerLink, error: BaseException) -> None:
        handle = self._live.get(link.id)
        if handle is None or self._state == 'destroyed':
            return
        if isinstance(error, ClusterError) and error.worker_id is None:
            error.worker_id = handle.id
        try:
            self._worker_fault(handle, error)
        except Exception as failure:
            self._fatal(failure)

    def link_closed(self, link: WorkerLink) -> None:
        handle = self._live.get(link.id)
        if handle is None or self._state == 'destroyed':
            return
        try:
            self._worker_closed(handle)
        except Exception as error:
            self._fatal(error)

    def link_exit(self, link: WorkerLink, code: int | None, signal: Signals | None) -> None:
        handle = self._live.get(link.id)
        if handle is None or self._state == 'destroyed':
            return
        if handle.state != 'disconnected':  # the transport promises closed first; stay robust
            self.link_closed(link)
        try:
            self._worker_exited(handle, code, signal)
        except Exception as error:
            self._fatal(error)

    def _worker_fault(self, handle: WorkerHandle, error: BaseException) -> None:
        """A fault on a worker: read nothing more from it, publish worker_error once (R85)."""
        handle._faulted = True
        if handle._error is None:
            handle._error = error
        if handle._error_published or handle.state == 'dead':
            return
        handle._error_published = True
        handle._cancel_timer('ready')
        self._stop_heartbeat(handle)
        self._log_worker_error(handle, error)
        self._publish('worker_error', {'worker': handle, 'error': error})

    def _worker_closed(self, handle: WorkerHandle) -> None:
        if handle.state in ('disconnected', 'dead'):
            return
        handle._move('disconnected')
        handle._cancel_timer('ready')
        self._stop_heartbeat(handle)
        self._requests.lose(handle, lambda: WorkerLost(
            f'worker {handle.id} disconnected before it replied', worker_id=handle.id,
        ))
        self._publish('worker_disconnect', {'worker': handle})

    def _worker_exited(self, handle: WorkerHandle, code: int | None, signal: Signals | None) -> None:
        handle._move('dead')
        handle._cancel_timers()
        handle.exit_code, handle.exit_signal = code, signal
        handle.exited_after_disconnect = handle._disconnect_requested
        handle._exited_at = self._pubsub_loop().time()
        del self._live[handle.id]
        self._stats['exited'] += 1
        self._log_worker_exit(handle)
        try:
            self._publish('worker_exit', {'worker': handle, 'code': code, 'signal': signal})
        finally:
            # Even when a handler raised (fatal, R34), the cluster must still close: the
            # bookkeeping that leads to shut_down_complete does not depend on the handlers.
            self._after_worker_exit(handle)

    def _after_worker_exit(self, handle: WorkerHandle) -> None:
        self._shared.release(handle.id)  # after the replacement decision: a replacement inherits
        reload = self._reload
        if reload is not None and handle is reload.old:
            reload.old = None
            if reload.new is None:  # the step was retiring it: the step is done
                reload.replaced += 1
                self._reload_next_step()
            # else it left early; the step completes when its new worker is ready
        if self._state == 'shutting_down' and not self._live:
            self._call_soon(self._publish_shut_down_complete)

    # -- default actions -------------------------------------------------------------

    def _event_worker_online(self, event: Any) -> None:
        event.data['worker']._online_accepted = True

    def _event_worker_ready(self, event: Any) -> None:
        handle = event.data['worker']
        if handle.state != 'online':
            return
        handle._move('ready')
        handle._ever_ready = True
        self._any_ever_ready = True
        handle._cancel_timer('ready')
        if self._heartbeat_interval is not None and self._state == 'active':
            self._start_heartbeat(handle)
        self._add_worker(handle)
        self._recycle_start(handle)
        self._tell_ready_once()
        reload = self._reload
        if reload is not None and handle is reload.new and not handle._retired:
            reload.new = None
            old = reload.old
            if old is None or old.state == 'dead':
                reload.old = None
                reload.replaced += 1
                self._call_soon(self._reload_next_step)
            else:
                old._retired = True
                self._disconnect_worker(old)

    def _add_worker(self, worker: WorkerHandle) -> None:
        self._publish('add_worker', {'worker': worker})

    def _remove_worker(self, worker: WorkerHandle) -> None:
        if worker.id in self._pool:
            self._publish('remove_worker', {'worker': worker})

    def _event_add_worker(self, event: Any) -> None:
        handle = event.data['worker']
        if handle.id not in self._pool and self._state != 'destroyed':
            self._pool[handle.id] = handle
            bisect.insort(self._pool_ids, handle.id)

    def _event_remove_worker(self, event: Any) -> None:
        handle = event.data['worker']
        if self._pool.pop(handle.id, None) is not None:
            self._pool_ids.remove(handle.id)
            for history in self._round_robin_history.values():
                history.pop(handle.id, None)

    def _event_worker_message(self, event: Any) -> None:
        route(self, '_event_worker_message_', event)

    def _event_worker_disconnect(self, event: Any) -> None:
        self._remove_worker(event.data['worker'])

    def _event_worker_error(self, event: Any) -> None:
        handle = event.data['worker']
        self._remove_worker(handle)
        self._kill_worker(handle)

    def _event_worker_exit(self, event: Any) -> None:
        handle = event.data['worker']
        self._remove_worker(handle)
        self._supervise_exit(handle, event.data['code'], event.data['signal'])

    def _event_shut_down(self, event: Any) -> None:
        self._tell('STOPPING=1', when_active=True)
        self._state = 'shutting_down'
        self._cancel_all_timers()
        reload, self._reload = self._reload, None
        if reload is not None and reload.announced:
            self._call_soon(self._publish_reload_complete, reload.replaced, True)
        self._close_shared_sockets()
        if not self._live:
            self._call_soon(self._publish_shut_down_complete)
            return
        for handle in list(self._live.values()):
            self._disconnect_worker(handle)

    def _publish_shut_down_complete(self) -> None:
        if self._state != 'shutting_down':
            return
        self._state = 'shut_down'
        logger.debug('cluster shut down')
        try:
            self._publish('shut_down_complete', {})
        finally:
            self._mark_closed()

    def _mark_closed(self) -> None:
        # Closed once shut_down_complete has run all its stages, or once destroyed; a deferred
        # destroy runs inside shut_down_complete's after stage, so it is complete by now.
        if self._state in ('shut_down', 'destroyed') and not self._closed:
            self._closed = True
            self._readiness_stop()
            future = self._closed_future
            if future is not None and not future.done():
                future.set_result(None)

    # -- disconnecting and killing ---------------------------------------------------

    def _disconnect_worker(self, handle: WorkerHandle) -> None:
        """DISCONNECT now, SIGTERM after shutdown_timeout, SIGKILL kill_timeout later (R89)."""
        if handle.state == 'dead' or handle._primary is not self:
            return
        handle._disconnect_requested = True
        handle._cancel_timer('ready')
        self._stop_heartbeat(handle)
        link = handle._link
        if link is not None and link.is_open and not handle._faulted:
            try:
                link.write(protocol.DISCONNECT, {'drain_timeout': self._drain_timeout} if self._drain_timeout else None)
            except TransportError:
                pass
        if 'terminate' not in handle._timers and 'kill' not in handle._timers:
            handle._timers['terminate'] = self._call_later(self._shutdown_timeout, self._terminate_worker, handle)

    def _terminate_worker(self, handle: WorkerHandle) -> None:
        handle._timers.pop('terminate', None)
        if handle.state != 'dead':
            self._stats['killed_by_timeout'] += 1
            logger.warning(
                'worker %s did not exit within shutdown_timeout=%ss; sending SIGTERM', handle.id,
                self._shutdown_timeout, extra={'worker_id': handle.id, 'reason': 'shutdown_timeout'},
            )
            self._kill_worker(handle)

    def _kill_worker(self, handle: WorkerHandle) -> None:
        """SIGTERM now, SIGKILL if still alive kill_timeout later (R86)."""
        if handle.state == 'dead' or 'kill' in handle._timers:
            return
        handle._cancel_timer('terminate')
        handle.kill(SIGTERM)
        if handle.state != 'dead':
            handle._timers['kill'] = self._call_later(self._kill_timeout, self._force_kill, handle)

    def _force_kill(self, handle: WorkerHandle) -> None:
        handle._timers.pop('kill', None)
        if handle.state != 'dead':
            logger.warning(
                'worker %s survived SIGTERM for kill_timeout=%ss; sending SIGKILL', handle.id,
                self._kill_timeout, extra={'worker_id': handle.id, 'reason': 'kill_timeout'},
            )
            handle.kill(SIGKILL)

    def _kill_all(self) -> None:
        for handle in list(self._live.values()):
            handle.kill(SIGKILL)

    def _cancel_all_timers(self) -> None:
        for timer in self._pending_restarts:
            timer.cancel()
        self._pending_restarts.clear()
        self._shared.drop_reservations()  # the delayed replacements will not come
        if self._heartbeat_timer is not None:
            self._heartbeat_timer.cancel()
            self._heartbeat_timer = None
        self._recycle_stop()
        for handle in self._live.values():
            handle._cancel_timer('ready')
            handle._heartbeating = False
            if self._state == 'destroyed':
                handle._cancel_timers()

    # -- shared listening sockets ----------------------------------------------------

    def bind(self, address: Any) -> Any:
        """Bind a shared address now, for the workers that will `listen()` on it: a busy or
        forbidden address fails here (OSError), before any worker is forked. Returns the bound
        address (the chosen port for port 0)."""
        key = address_key(address)
        if key is None:
            raise ValueError(f'address: expected a (host, port) tuple or a Unix socket path, got {address!r}')
        sock = self._shared.get(key)
        if sock is None:
            if self._shared.full():
                raise ListenError(f'the primary already shares {self._shared.limit} listening sockets '
                                  f'(max_shared_sockets={self._shared.limit}); raise max_shared_sockets')
            sock = self._transport.bind(key)
            self._shared.add(key, sock)
        self._shared.pin(key)  # bound by the application: kept until shutdown, worker or not
        return sock.getsockname()

    def _close_shared_sockets(self) -> None:
        # Shutting down: new clients are refused while the draining workers still accept the
        # ones queued, instead of waiting in the backlog to be reset at the last close.
        self._shared.close_all(self._transport.close_listening)

    def _listen(self, handle: WorkerHandle, payload: Any) -> None:
        if not isinstance(payload, dict) or 'id' not in payload or 'address' not in payload:
            return self._protocol_violation(handle, 'a malformed LISTEN frame')
        key = address_key(payload['address'])
        if key is None:
            return self._protocol_violation(handle, 'a LISTEN frame whose address is neither (host, port) nor a path')
        reuse_port = payload.get('reuse_port') is True
        shared = self._shared
        sock = None
        try:
            if reuse_port:  # the worker's own SO_REUSEPORT socket: it ends with its worker
                sock = self._bind_reuse_port(key)
            else:
                sock = shared.get(key)
                if sock is None:
                    if shared.full():
                        raise ListenError(
                            f'the primary already shares {shared.limit} listening sockets (max_shared_sockets='
                            f'{shared.limit}); reuse an address, or raise max_shared_sockets', worker_id=handle.id,
                        )
                    sock = self._transport.bind(key)
                    shared.add(key, sock)
            bound = sock.getsockname()
            handle._link.send_socket(sock, {'id': payload['id'], 'address': bound, **({'reuse_port': True} if reuse_port else {})})
        except TransportError:  # the link is gone: nobody to answer
            shared.close_unclaimed()
            return
        except (OSError, ValueError, TypeError, ClusterError) as error:
            # Any bind or descriptor failure (EADDRINUSE, EACCES, EMFILE, an unsupported transport)
            # is this worker's failed listen(), never the primary's.
            shared.close_unclaimed()
            try:
                handle._link.write(protocol.LISTENING, {
                    'id': payload['id'], 'error': f'{type(error).__name__}: {error}',
                    'errno': getattr(error, 'errno', None), 'strerror': getattr(error, 'strerror', None),
                })
            except TransportError:
                pass
            return
        finally:
            if reuse_port and sock is not None:
                sock.close()  # the worker's copy is the only one
        if not reuse_port:
            shared.claim(key, handle.id)
        self._publish('worker_listening', {'worker': handle, 'address': bound})

    def _bind_reuse_port(self, key: Any) -> Any:
        # Each worker gets a SO_REUSEPORT socket of its own; port 0 is the port the first one got.
        sock = self._transport.bind(self._reuse_port_addresses.get(key, key), reuse_port=True)
        self._reuse_port_addresses[key] = sock.getsockname()
        return sock

    # -- logging ---------------------------------------------------------------------

    def _log_worker_exit(self, handle: WorkerHandle) -> None:
        signal_name = handle.exit_signal.name if handle.exit_signal is not None else None
        failed = signal_name is not None or handle.exit_code != 0
        logger.log(
            logging.WARNING if failed and not handle._disconnect_requested else logging.INFO,
            'worker %s exited (code=%s, signal=%s%s)', handle.id, handle.exit_code, signal_name,
            ', after disconnect' if handle._disconnect_requested else '',
            extra={
                'worker_id': handle.id, 'exit_code': handle.exit_code, 'signal': signal_name,
                'reason': 'disconnect' if handle._disconnect_requested else ('crash' if failed else 'exit'),
            },
        )

    def _log_worker_error(self, handle: WorkerHandle, error: BaseException) -> None:
        extra: dict[str, Any] = {'worker_id': handle.id, 'reason': type(error).__name__}
        if isinstance(error, HeartbeatTimeout):
            extra['heartbeat_age'] = self._pubsub_loop().time() - handle._last_beat
        logger.warning('worker %s error: %s', handle.id, error, extra=extra)

    def _live_handle(self, worker: Any, method: str) -> WorkerHandle:
        if isinstance(worker, WorkerHandle):
            handle = self._live.get(worker.id)
            if handle is worker:
                return handle
        elif type(worker) is int and worker in self._live:
            return self._live[worker]
        raise ValueError(f'{method}(): {worker!r} is not a live worker of this primary')

    def __repr__(self) -> str:
        return f'<{type(self).__name__} state={self._state} live={len(self._live)} ready={len(self._pool_ids)}>'
