"""A deterministic in-memory transport: virtual time, a seeded scheduler, fault injection.

Every simulated worker is a set of callbacks on one asyncio loop, tagged with the
simulated process they belong to through a ContextVar. The loop wraps each callback so
that a dead or hung process runs nothing, an exception escaping a worker's callback ends
that worker with code 1 (SPEC R33), and one escaping the primary's stops the simulation
(R35). Time is virtual: the selector never waits, it moves the clock to the next timer.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import random
import sys
import threading
import traceback
import weakref
from collections import deque
from typing import Any, Callable

from .. import protocol
from ..errors import ProtocolError, TransportError
from . import base
from .partial import DEFAULT_FRAME_TIMEOUT, PartialFrameDeadline, check_frame_timeout
from .base import SIGTERM, LinkListener, PrimaryLink, Signals, Transport, WorkerLink, WorkerSpec
from .flow import LinkFlow

# Frames that carry user bytes, and so can exceed the maximum frame size (R120).
_SIZED_KINDS = frozenset({protocol.MESSAGE, protocol.REQUEST, protocol.REPLY, protocol.REQUEST_BATCH, protocol.REPLY_BATCH})

# Which simulated process a callback belongs to: None is the primary (and the test driving
# it); _KERNEL marks the transport's own timers, which run even when a process hangs.
_process: contextvars.ContextVar[Any] = contextvars.ContextVar('isocluster_sim_process', default=None)
_KERNEL = object()

_FINISH_TURNS = 100
PARENT_DEATH_WATCHDOG = 1.5  # virtual seconds, as the process transport's watchdog  # loop turns a finishing worker's cancelled tasks get to clean up
_EOF = object()


class _RawBytes:
    """Bytes written to a link outside the framing: see MemoryTransport.inject_bytes."""

    __slots__ = ('data',)

    def __init__(self, data: bytes) -> None:
        self.data = data


class SimulationDeadlock(RuntimeError):
    """The simulation has nothing left to run but the caller is still waiting."""


class _VirtualSelector:
    def __init__(self, loop: 'VirtualLoop') -> None:
        self._loop = loop

    def select(self, timeout: float | None) -> list[Any]:
        if timeout is None:
            raise SimulationDeadlock('the simulation is idle: nothing is scheduled and nothing can happen')
        if timeout > 0:
            self._loop._clock += timeout
        return []


class VirtualLoop(asyncio.BaseEventLoop):
    """An asyncio loop on virtual time whose callbacks belong to simulated processes."""

    def __init__(self, transport: 'MemoryTransport') -> None:
        super().__init__()
        self._clock = 0.0
        self._clock_resolution = 1e-9
        self._selector = _VirtualSelector(self)
        self._transport = transport

    def time(self) -> float:
        return self._clock

    def _process_events(self, event_list: list[Any]) -> None:
        pass

    def _write_to_self(self) -> None:
        pass

    def call_soon(self, callback: Callable[..., Any], *args: Any, context: contextvars.Context | None = None) -> asyncio.Handle:
        process = context.get(_process) if context is not None else _process.get()
        handle = super().call_soon(self._transport._guard(process, callback), *args, context=context)
        if process is not None and process is not _KERNEL:
            process.handles.add(handle)
        return handle

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any, context: contextvars.Context | None = None) -> asyncio.TimerHandle:
        process = context.get(_process) if context is not None else _process.get()
        handle = super().call_at(when, self._transport._guard(process, callback), *args, context=context)
        if process is not None and process is not _KERNEL:
            process.handles.add(handle)
        return handle

    def create_task(self, coro: Any, *, name: str | None = None, context: contextvars.Context | None = None) -> asyncio.Task[Any]:
        task = super().create_task(coro, name=name, context=context)
        process = context.get(_process) if context is not None else _process.get()
        if process is not None and process is not _KERNEL:
            process.tasks.add(task)
        return task

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        error = context.get('exception')
        # A future nobody awaited is only reported, as asyncio always does (R34); an
        # exception escaping a callback is fatal.
        unretrieved = 'future' in context and 'handle' not in context
        if isinstance(error, BaseException) and not isinstance(error, asyncio.CancelledError) and not unretrieved:
            self._transport._capture(error)
        else:
            super().call_exception_handler(context)

    def __del__(self) -> None:
        pass  # a virtual loop holds no OS resource: nothing to warn about when it is dropped

    def is_idle(self) -> bool:
        return not self._ready and all(handle.cancelled() for handle in self._scheduled)


class _SimProcess:
    """One simulated process: the primary (id 0) or a worker."""

    def __init__(self, transport: 'MemoryTransport', worker_id: int) -> None:
        self.transport = transport
        self.id = worker_id
        self.alive = True
        self.hung = False
        self.ignore_sigterm = False
        self.handles: weakref.WeakSet[asyncio.Handle] = weakref.WeakSet()
        self.tasks: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        self.context = contextvars.copy_context()
        if worker_id:
            self.context.run(_process.set, self)

    def stop_running(self) -> None:
        for handle in list(self.handles):
            handle.cancel()
        self.handles.clear()
        for task in list(self.tasks):
            task._log_destroy_pending = False  # type: ignore[attr-defined]  # a dead process's tasks just vanish
        self.tasks.clear()


class _Pipe:
    """One direction of a link: a FIFO delivered one frame at a time after seeded latencies."""

    def __init__(self, transport: 'MemoryTransport', deliver: Callable[[Any], None], context: contextvars.Context) -> None:
        self.transport = transport
        self.deliver = deliver
        self.context = context
        self.queue: deque[Any] = deque()
        self.held = False
        self.scheduled = False
        self.fail_next = False
        # A frame counts as queued until it is delivered: a held or slow link congests as a
        # socket would, so backpressure and the queued-bytes cap behave as on real links.
        self.flow = LinkFlow(transport.loop)

    def push(self, item: Any) -> None:
        self.queue.append(item)
        self.flow.queued(_frame_bytes(item))
        self.schedule()

    def clear(self) -> None:
        self.queue.clear()
        self.flow.discarded()

    def schedule(self) -> None:
        if self.scheduled or self.held or not self.queue:
            return
        self.scheduled = True
        loop = self.transport.loop
        loop.call_at(loop.time() + self.transport._latency(), self._deliver_one, context=self.context)

    def _deliver_one(self) -> None:
        self.scheduled = False
        if self.held or not self.queue:
            return
        item = self.queue.popleft()
        self.flow.flushed(_frame_bytes(item))
        self.schedule()
        self.deliver(item)


class MemoryWorkerLink(WorkerLink):
    """The primary's end of a simulated link."""

    def __init__(self, transport: 'MemoryTransport', spec: WorkerSpec, listener: LinkListener) -> None:
        self.id = spec.id
        self.pid = None
        self.transport = transport
        self.spec = spec
        self.listener = listener
        self.process = _SimProcess(transport, spec.id)
        self.primary_link = MemoryPrimaryLink(self)
        self.open = True  # the primary's end
        self.worker_open = True  # the worker's end
        self.faulted = False
        self.closed_reported = False
        self.exit_status: tuple[int | None, Signals | None] | None = None
        self.kill_deadline: asyncio.TimerHandle | None = None
        self.kill_deadline_at = float('inf')
        self.to_worker = _Pipe(transport, self.primary_link._receive, self.process.context)
        self.to_primary = _Pipe(transport, self._receive, transport._primary.context)
        self.decoder: protocol.FrameDecoder | None = None  # made by the first inject_bytes()
        self.partial_deadline = PartialFrameDeadline(transport.loop, transport.frame_timeout, self._partial_frame_expired)
        self.flow = self.to_worker.flow
        self.primary_link.flow = self.to_primary.flow
        self.resident: int | None = None  # set_resident_bytes(): a simulated worker has no real memory
        self.cpu: float | None = None

    def resident_bytes(self) -> int | None:
        return self.resident if self.process.alive else None

    def cpu_seconds(self) -> float | None:
        return self.cpu if self.process.alive else None

    @property
    def is_open(self) -> bool:
        return self.open and not self.faulted

    def write(self, kind: str, payload: Any) -> None:
        self._check_writable()
        if self.to_worker.fail_next:
            self._break(self.to_worker, 'the next send to the worker was made to fail (fail_next_send)')
        self.to_worker.push((kind, _roundtrip_control(kind, payload)))

    def send_socket(self, sock: Any, payload: Any) -> None:
        self._check_writable()
        frame_payload = dict(_roundtrip_control(protocol.LISTENING, payload))
        frame_payload['socket'] = sock.dup()  # the worker's own descriptor, as over SCM_RIGHTS
        self.to_worker.push((protocol.LISTENING, frame_payload))

    def _check_writable(self) -> None:
        if not self.open or self.faulted:
            raise TransportError(f'the link to worker {self.id} is closed', worker_id=self.id)
        if not self.process.alive or not self.worker_open:
            raise TransportError(f'worker {self.id} is gone (broken pipe)', worker_id=self.id)

    def _break(self, pipe: _Pipe, why: str) -> None:
        pipe.fail_next = False
        error = TransportError(f'write to worker {self.id} failed: {why}', worker_id=self.id)
        self.faulted = True
        self.transport._primary_soon(self.listener.link_error, self, error)
        raise error

    def close(self) -> None:
        if self.open:
            self.open = False
            self.to_worker.push(_EOF)

    def kill(self, signal: Signals) -> None:
        process = self.process
        if not process.alive or signal == 0:
            return
        if signal == SIGTERM and process.hung and process.ignore_sigterm:
            return
        self.transport._end(self, None, Signals(signal))

    def _receive(self, frame: Any) -> None:
        """A frame (or EOF) from the worker arrives at the primary."""
        if type(frame) is _RawBytes or (self.decoder is not None and self.decoder.pending and frame is not _EOF):
            return self._receive_bytes(frame.data if type(frame) is _RawBytes else protocol.encode_frame(*frame))
        if frame is _EOF:
            if self.decoder is not None and self.decoder.pending and not self.faulted:
                self._protocol_fault(ProtocolError(
                    f'its link ended in the middle of a frame ({self.decoder.pending} bytes of it received)'))
            self.partial_deadline.cancel()
            self.closed_reported = True
            self.listener.link_closed(self)
            if self.exit_status is not None:
                self.transport._primary_soon(self.listener.link_exit, self, *self.exit_status)
            return
        if self.faulted:
            return
        kind, payload = frame
        if kind in _SIZED_KINDS and (size := protocol.frame_size(kind, payload)) > self.transport.max_frame_size:
            self.faulted = True
            self.listener.link_error(self, ProtocolError(
                f'frame of {size} bytes exceeds the maximum frame size of '
                f'{self.transport.max_frame_size} bytes', worker_id=self.id,
            ))
            return
        self.listener.link_frame(self, kind, payload)


    def _receive_bytes(self, data: bytes) -> None:
        """Raw bytes from the worker, cut into frames as the process transport cuts them."""
        if self.faulted:
            return
        decoder = self.decoder
        if decoder is None:
            decoder = self.decoder = protocol.FrameDecoder(self.transport.max_frame_size)
        try:
            frames = decoder.feed(data)
        except ProtocolError:
            frames = []
        for kind, payload in frames:
            if self.faulted:
                return
            self.listener.link_frame(self, kind, payload)
        if decoder.error is not None:
            self._protocol_fault(decoder.error)
        else:
            self.partial_deadline.update(decoder.pending if not self.faulted else 0, bool(frames))

    def _partial_frame_expired(self) -> None:
        if self.faulted or self.decoder is None:
            return
        pending = self.decoder.pending
        self.decoder.discard()
        self._protocol_fault(ProtocolError(
            f'began a frame and did not finish it within frame_timeout={self.transport.frame_timeout}s '
            f'({pending} bytes received)'))

    def _protocol_fault(self, error: ProtocolError) -> None:
        self.faulted = True
        self.partial_deadline.cancel()
        named = ProtocolError(
            f'worker {self.id} broke the link protocol: {error}; it is killed and replaced', worker_id=self.id,
        )
        named.frame_kind = error.frame_kind
        self.listener.link_error(self, named)


class MemoryPrimaryLink(PrimaryLink):
    """A simulated worker's end of its link."""

    def __init__(self, link: MemoryWorkerLink) -> None:
        self.worker_id = link.id
        self.codec = link.spec.codec
        self.loop = link.transport.loop
        self.max_frame_size = link.transport.max_frame_size
        self._link = link
        self._receivers: list[Any] = []
        self._early: list[Any] = []
        self._attached_once = False

    @property
    def is_open(self) -> bool:
        return self._link.worker_open

    def attach(self, receiver: Any) -> None:
        self._receivers.append(receiver)
        if not self._attached_once:
            self._attached_once = True
            early, self._early = self._early, []
            for frame in early:
                self.loop.call_soon(self._receive, frame)

    def detach(self, receiver: Any) -> None:
        if receiver in self._receivers:
            self._receivers.remove(receiver)

    def write(self, kind: str, payload: Any) -> None:
        link = self._link
        if not link.worker_open:
            raise TransportError(f'worker {link.id}: the link to the primary is closed', worker_id=link.id)
        if link.to_primary.fail_next:
            link.to_primary.fail_next = False
            error = TransportError(f'worker {link.id}: write to the primary failed (fail_next_send)', worker_id=link.id)
            self._primary_lost()
            raise error
        link.to_primary.push((kind, _roundtrip_control(kind, payload)))

    def _primary_lost(self) -> None:
        """The link broke under the worker: it behaves as if its primary were gone."""
        self.loop.call_soon(self._receive, _EOF)

    def close(self) -> None:
        link = self._link
        if link.worker_open:
            link.worker_open = False
            link.to_primary.push(_EOF)

    def arm_kill_timer(self, seconds: float) -> None:
        link = self._link
        deadline = self.loop.time() + seconds
        if deadline >= link.kill_deadline_at or not link.process.alive:
            return
        if link.kill_deadline is not None:
            link.kill_deadline.cancel()
        link.kill_deadline_at = deadline
        # Scheduled outside the process, so it fires even when the worker hangs.
        link.kill_deadline = self.loop.call_at(deadline, link.transport._end, link, 0, None, context=link.transport._kernel)

    def finish(self) -> None:
        link = self._link
        for task in list(link.process.tasks):
            task.cancel()
        link.transport._kernel.run(self.loop.call_soon, link.transport._finish, link, _FINISH_TURNS)

    def run(self) -> None:
        raise TransportError('the memory transport runs only worker_target workers; there is no script to run')

    def _receive(self, frame: Any) -> None:
        """A frame (or EOF) from the primary arrives at the worker."""
        if not self._receivers:
            if frame is _EOF or frame[0] == protocol.DISCONNECT:
                if not self._attached_once:
                    self._link.transport._end(self._link, 0, None)  # R102: never built a ClusterWorker
                return
            if not self._attached_once:
                self._early.append(frame)
            elif frame[0] == protocol.LISTENING and frame[1].get('socket') is not None:
                frame[1]['socket'].close()
            return
        for receiver in list(self._receivers):
            if frame is _EOF:
                receiver.link_closed()
            else:
                receiver.link_frame(*frame)


def _frame_bytes(item: Any) -> int:
    """What a frame would take in a socket's buffer (control frames: their header only, they
    are a few bytes and encoding them twice would cost every simulated write)."""
    if item is _EOF:
        return 0
    if type(item) is _RawBytes:
        return len(item.data)
    kind, payload = item
    if kind == protocol.MESSAGE:
        return protocol.HEADER_SIZE + len(payload)
    if kind in (protocol.REQUEST, protocol.REPLY, protocol.REQUEST_BATCH, protocol.REPLY_BATCH):
        return protocol.HEADER_SIZE + len(payload[-1])
    return protocol.HEADER_SIZE


def _roundtrip_control(kind: str, payload: Any) -> Any:
    # Control payloads cross a real link as JSON; doing the same here keeps tests honest.
    if kind == protocol.MESSAGE:
        return payload
    return protocol.decode_body(kind, protocol.encode_body(kind, payload))


class MemoryTransport(Transport):
    """Deterministic simulated workers on a virtual clock. Same seed, same trace."""

    def __init__(self, seed: int = 0, *, max_frame_size: int = protocol.DEFAULT_MAX_FRAME_SIZE, latency: float = 0.001,
                 frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT) -> None:
        self.seed = seed
        self.max_frame_size = max_frame_size
        self.frame_timeout = check_frame_timeout(frame_timeout)
        self._latency_bound = latency
        self._random = random.Random(seed)
        self._loop = VirtualLoop(self)
        self._kernel = contextvars.copy_context()
        self._kernel.run(_process.set, _KERNEL)
        self._primary = _SimProcess(self, 0)
        self._links: dict[int, MemoryWorkerLink] = {}
        self._listener: LinkListener | None = None
        self._slow_boots: list[float] = []
        self._captured: BaseException | None = None
        self.tracebacks: dict[int, str] = {}
        self.exits: dict[int, tuple[int | None, Signals | None]] = {}
        # The service manager, simulated: what the primary told it, (virtual time, state); set
        # `watchdog` (seconds between WATCHDOG=1) before the primary is built to expect pings.
        self.notifications: list[tuple[float, str]] = []
        self.watchdog: float | None = None

    # -- Transport -------------------------------------------------------------------

    @property
    def loop(self) -> VirtualLoop:
        return self._loop

    def check_spec(self, spec: WorkerSpec) -> None:
        if spec.target is None:
            raise ValueError(
                'the memory transport runs only worker_target workers: pass worker_target=<callable> '
                '(worker_script and the current-script default need real processes)'
            )

    def start_worker(self, spec: WorkerSpec, listener: LinkListener) -> MemoryWorkerLink:
        self.check_spec(spec)
        if self._listener is None:
            self._listener = listener
        elif listener is not self._listener:
            # Worker ids are per primary (R56), and faults name workers by id.
            raise ValueError('a MemoryTransport serves one primary: create one MemoryTransport per ClusterPrimary')
        link = MemoryWorkerLink(self, spec, listener)
        self._links[spec.id] = link
        delay = self._slow_boots.pop(0) if self._slow_boots else self._latency()
        self._loop.call_at(self._loop.time() + delay, self._boot, link, context=link.process.context)
        return link

    def bind(self, address: Any, reuse_port: bool = False) -> Any:
        return base.bind_listening(address, reuse_port)  # a real socket: simulated servers may really serve

    def random(self) -> float:
        return self._random.random()

    def notify(self, state: str) -> None:
        self.notifications.append((self._loop.time(), state))

    def watchdog_interval(self) -> float | None:
        return self.watchdog

    def capture_fatal(self, error: BaseException) -> bool:
        self._capture(error)
        return True

    # -- driving the simulation ------------------------------------------------------

    def run_until(self, predicate: Callable[[], bool], timeout: float = 3600.0) -> None:
        """Run until `predicate()` is true; TimeoutError once virtual time passes `timeout`."""
        self._drive(predicate, timeout, 'run_until')

    def run_until_idle(self, timeout: float = 3600.0) -> None:
        """Run until nothing is runnable, in flight or scheduled."""
        self._drive(self._loop.is_idle, timeout, 'run_until_idle')

    def advance(self, seconds: float) -> None:
        """Run everything due in the next `seconds` of virtual time."""
        target = self._loop.time() + seconds
        self._drive(lambda: False, seconds, 'advance', quiet_at=target)

    def _drive(self, done: Callable[[], bool], timeout: float, what: str, quiet_at: float | None = None) -> None:
        loop = self._loop
        if loop.is_running():
            raise RuntimeError(f'{what}(): the simulation is already running (called from inside a callback?)')
        deadline = loop.time() + timeout
        previous = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(loop)
        loop._thread_id = threading.get_ident()  # type: ignore[attr-defined]
        try:
            while True:
                self._raise_captured()
                if done():
                    return
                if not loop._ready:  # type: ignore[attr-defined]
                    upcoming = self._next_timer()
                    if upcoming is None:
                        if quiet_at is not None:
                            loop._clock = max(loop._clock, quiet_at)
                            return
                        raise SimulationDeadlock(f'{what}(): the simulation went idle before the condition held')
                    if upcoming > deadline:
                        if quiet_at is not None:
                            loop._clock = max(loop._clock, quiet_at)
                            return
                        loop._clock = max(loop._clock, deadline)
                        raise TimeoutError(f'{what}(): condition not reached within {timeout} virtual seconds')
                loop._run_once()  # type: ignore[attr-defined]
        finally:
            loop._thread_id = None  # type: ignore[attr-defined]
            asyncio.events._set_running_loop(previous)

    def _next_timer(self) -> float | None:
        scheduled = self._loop._scheduled  # type: ignore[attr-defined]
        while scheduled and scheduled[0].cancelled():
            heapq.heappop(scheduled)
            self._loop._timer_cancelled_count = max(0, self._loop._timer_cancelled_count - 1)  # type: ignore[attr-defined]
        return scheduled[0].when() if scheduled else None

    def _raise_captured(self) -> None:
        error, self._captured = self._captured, None
        if error is not None:
            raise error

    def _capture(self, error: BaseException) -> None:
        if self._captured is None:
            self._captured = error
        elif error is not self._captured:
            self._captured.add_note(f'also: {error!r}')

    # -- fault injection -------------------------------------------------------------

    def crash(self, worker: Any, code: int | None = None, signal: int | Signals | None = None) -> None:
        """The worker dies now, with exactly one of `code` or `signal`."""
        if (code is None) == (signal is None):
            raise ValueError('crash(): give exactly one of code or signal')
        if code is not None and type(code) is not int:
            raise TypeError(f'code: expected an int, got {code!r}')
        link = self._link(worker)
        if link.process.alive:
            self._end(link, code, base.signal_of(signal))

    def hang(self, worker: Any, ignore_sigterm: bool = False) -> None:
        """The worker stays alive but runs nothing; SIGKILL (and SIGTERM unless ignored) ends it."""
        link = self._link(worker)
        process = link.process
        if process.alive:
            process.hung = True
            process.ignore_sigterm = ignore_sigterm
            process.stop_running()

    def hold(self, worker: Any, direction: str = 'both') -> None:
        """Keep frames on the link (in `direction`) until release()."""
        for pipe in self._pipes(worker, direction):
            pipe.held = True

    def release(self, worker: Any, direction: str = 'both') -> None:
        for pipe in self._pipes(worker, direction):
            pipe.held = False
            pipe.schedule()

    def fail_next_send(self, worker: Any, direction: str = 'to_worker') -> None:
        """Make the next write in `direction` ('to_worker' or 'to_primary') fail."""
        if direction not in ('to_worker', 'to_primary'):
            raise ValueError("direction: expected 'to_worker' or 'to_primary'")
        link = self._link(worker)
        getattr(link, direction).fail_next = True

    def inject_bytes(self, worker: Any, data: bytes) -> None:
        """Raw bytes arrive at the primary on the worker's link as if the worker wrote them,
        in order with its other frames: a hostile or broken worker (R120, SPEC §6.1)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f'data: expected bytes, got {type(data).__name__}')
        link = self._link(worker)
        if not link.process.alive or not link.worker_open:
            raise ValueError(f'inject_bytes(): worker {link.id} is gone; its link carries nothing more')
        link.to_primary.push(_RawBytes(bytes(data)))

    def kill_primary(self) -> None:
        """The primary vanishes: it publishes nothing more, and every worker sees EOF."""
        primary = self._primary
        primary.alive = False
        primary.stop_running()
        for link in self._links.values():
            if link.open:
                link.open = False
                link.to_worker.push(_EOF)
            if link.process.alive:
                # The parent-death watchdog of the process transport: a worker that has not
                # reached primary_disconnect (hung, or its link held) ends (R118).
                self._loop.call_at(
                    self._loop.time() + PARENT_DEATH_WATCHDOG, self._parent_death_check, link, context=self._kernel,
                )

    def _parent_death_check(self, link: MemoryWorkerLink) -> None:
        if link.kill_deadline is None:
            self._end(link, 0, None)

    def slow_boot(self, delay: float, count: int = 1) -> None:
        """The next `count` workers started wait `delay` virtual seconds before ONLINE."""
        if delay < 0 or count < 1:
            raise ValueError('slow_boot(): delay must be >= 0 and count >= 1')
        self._slow_boots.extend([float(delay)] * count)

    def set_resident_bytes(self, worker: Any, resident: int | None, cpu_seconds: float | None = None) -> None:
        """What the primary reads as the worker's resident memory (and CPU seconds); None: unknown."""
        link = self._link(worker)
        link.resident = resident
        link.cpu = cpu_seconds

    def alive(self, worker: Any) -> bool:
        return self._link(worker).process.alive

    def _link(self, worker: Any) -> MemoryWorkerLink:
        worker_id = worker if type(worker) is int else getattr(worker, 'id', None)
        try:
            return self._links[worker_id]
        except KeyError:
            raise ValueError(f'{worker!r} is not a worker of this transport') from None

    def _pipes(self, worker: Any, direction: str) -> list[_Pipe]:
        link = self._link(worker)
        pipes = {'to_worker': [link.to_worker], 'to_primary': [link.to_primary], 'both': [link.to_worker, link.to_primary]}
        if direction not in pipes:
            raise ValueError("direction: expected 'to_worker', 'to_primary' or 'both'")
        return pipes[direction]

    # -- the simulated processes -----------------------------------------------------

    def _latency(self) -> float:
        return self._random.random() * self._latency_bound

    def _guard(self, process: Any, callback: Callable[..., Any]) -> Callable[..., Any]:
        if process is _KERNEL:
            return callback
        if process is None:
            process = self._primary

            def primary_callback(*args: Any) -> None:
                if not process.alive:
                    return
                try:
                    callback(*args)
                except Exception as error:
                    self._capture(error)
            return primary_callback

        def worker_callback(*args: Any) -> None:
            if not process.alive or process.hung:
                return
            try:
                callback(*args)
            except SystemExit as exit_:
                self._end(self._links[process.id], base.exit_code_of(exit_), None)
            except BaseException as error:
                self.tracebacks[process.id] = ''.join(traceback.format_exception(error))
                print(self.tracebacks[process.id], file=sys.stderr, end='')
                self._end(self._links[process.id], 1, None)
        return worker_callback

    def _primary_soon(self, function: Callable[..., Any], *args: Any) -> None:
        self._loop.call_soon(function, *args, context=self._primary.context)

    def _boot(self, link: MemoryWorkerLink) -> None:
        primary_link = link.primary_link
        base._current_link.set(primary_link)
        primary_link.write(protocol.ONLINE, None)
        result = link.spec.target()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            task = asyncio.ensure_future(result, loop=self._loop)
            task.add_done_callback(_reraise)

    def _finish(self, link: MemoryWorkerLink, turns: int) -> None:
        if not link.process.alive:
            return
        if turns > 0 and any(not task.done() for task in link.process.tasks):
            self._loop.call_soon(self._finish, link, turns - 1, context=self._kernel)
            return
        self._end(link, 0, None)

    def _end(self, link: MemoryWorkerLink, code: int | None, signal: Signals | None) -> None:
        """The worker process ends: the primary sees frames already written, EOF, then the exit."""
        process = link.process
        if not process.alive:
            return
        process.alive = False
        process.stop_running()
        if link.kill_deadline is not None:
            link.kill_deadline.cancel()
        link.worker_open = False
        link.to_worker.clear()
        link.exit_status = (code, signal)
        self.exits[link.id] = (code, signal)
        for receiver_frame in link.primary_link._early:
            if receiver_frame[0] == protocol.LISTENING and receiver_frame[1].get('socket') is not None:
                receiver_frame[1]['socket'].close()
        if not link.closed_reported and (not link.to_primary.queue or link.to_primary.queue[-1] is not _EOF):
            link.to_primary.push(_EOF)
        elif link.closed_reported:
            self._primary_soon(link.listener.link_exit, link, code, signal)

    def close(self) -> None:
        for link in self._links.values():
            link.process.alive = False
            link.process.stop_running()
        if not self._loop.is_running():
            self._loop.close()



def _reraise(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]
