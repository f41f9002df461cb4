"""How many workers there are, on request (SPEC R135, R136): `scale(n)` forks or retires
workers to reach n staying ones, `stop_worker()` retires one or swaps it for a new one. A
retired worker is asked to leave and never replaced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from .handle import WorkerHandle
from .supervision import _warn_inactive

if TYPE_CHECKING:
    from .registry import Registry
    from .reload import RollingReload
    from .states import PrimaryState
    from .supervision import Supervisor


class Scaling:
    def __init__(self, *, state: 'PrimaryState', registry: 'Registry', supervisor: 'Supervisor',
                 reload: 'RollingReload', publish: Callable[[str, dict[str, Any]], Any],
                 disconnect: Callable[[WorkerHandle], None]) -> None:
        self._state = state
        self._registry = registry
        self._supervisor = supervisor
        self._reload = reload
        self._publish = publish
        self._disconnect = disconnect  # the primary's, late-bound: a subclass's is the one used

    def retire(self, handle: WorkerHandle) -> None:
        handle.life.retired = True
        self._disconnect(handle)

    def stop_worker(self, worker: Any, replace: bool) -> None:
        handle = self._live_handle(worker, 'stop_worker')
        if not replace:
            self.retire(handle)
        elif self._state.active:
            self._reload.replace_one(handle)

    def scale(self, worker_count: int) -> None:
        state = self._state
        if not state.active:
            _warn_inactive('scale', worker_count, state.name)
            return
        self._supervisor.resume()
        # A reload step's old worker is leaving: its new worker takes its place.
        reload = self._reload
        leaving = reload.leaving()
        staying = self._registry.staying(leaving)
        if worker_count > len(staying):
            self._publish('fork', {'worker_count': worker_count - len(staying)})
        else:
            surplus = staying[worker_count:]
            if leaving is not None and reload.current.new in surplus:
                surplus.append(leaving)  # its replacement is retired: nothing takes its place
            for handle in reversed(surplus):
                self.retire(handle)

    def staying(self) -> int:
        """How many workers stay: a reload step's leaving worker is not counted, its new one takes its place."""
        return len(self._registry.staying(self._reload.leaving()))

    def _live_handle(self, worker: Any, method: str) -> WorkerHandle:
        registry = self._registry
        if isinstance(worker, WorkerHandle):
            if registry.owns(worker):
                return worker
        elif type(worker) is int and worker in registry.live:
            return registry.live[worker]
        raise ValueError(f'{method}(): {worker!r} is not a live worker of this primary')
