"""MemoryTransport: starts simulated workers, drives the simulation, injects faults."""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import random
import sys
import threading
import traceback
from typing import Any, Callable

from ... import protocol
from .. import base
from ..base import LinkListener, Signals, Transport, WorkerSpec
from ..partial import DEFAULT_FRAME_TIMEOUT, check_frame_timeout
from ..runtime import PARENT_DEATH_WATCHDOG, exit_code_of
from ..sockets import bind_listening
from .links import _EOF, MemoryWorkerLink, _Pipe, _RawBytes
from .loop import _KERNEL, SimulationDeadlock, VirtualLoop, _process, _SimProcess


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
        self._loop.call_at(self._loop.time() + delay, link.primary_link.boot, context=link.process.context)
        return link

    def bind(self, address: Any, reuse_port: bool = False) -> Any:
        return bind_listening(address, reuse_port)  # a real socket: simulated servers may really serve

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
        if not link.primary_link.kill_timer_armed():
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
                self._end(self._links[process.id], exit_code_of(exit_), None)
            except BaseException as error:
                self.tracebacks[process.id] = ''.join(traceback.format_exception(error))
                print(self.tracebacks[process.id], file=sys.stderr, end='')
                self._end(self._links[process.id], 1, None)
        return worker_callback

    def _primary_soon(self, function: Callable[..., Any], *args: Any) -> None:
        self._loop.call_soon(function, *args, context=self._primary.context)

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
        link.primary_link.discard_backlog()
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

