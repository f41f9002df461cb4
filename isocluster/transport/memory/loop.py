"""The simulation's loop and processes: an asyncio loop on virtual time whose callbacks each
belong to a simulated process (through a ContextVar), so that a dead or hung process runs
nothing. The selector never waits: it moves the clock to the next timer."""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .transport import MemoryTransport

# Which simulated process a callback belongs to: None is the primary (and the test driving
# it); _KERNEL marks the transport's own timers, which run even when a process hangs.
_process: contextvars.ContextVar[Any] = contextvars.ContextVar('isocluster_sim_process', default=None)
_KERNEL = object()


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
