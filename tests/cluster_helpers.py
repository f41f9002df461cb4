"""Run one async scenario against a primary on either transport, cleaning up every child."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any, Awaitable, Callable

from isocluster import ClusterPrimary
from isocluster.transport.watchdog import ORPHAN_GRACE
from isocluster.worker import DEFAULT_KILL_TIMEOUT

TRANSPORTS = ('memory', 'process')
WALL_TIMEOUT = 20.0

# R118: a worker of a SIGKILLed primary that has not armed its kill timer (its loop never
# reached primary_disconnect, or is stuck holding the GIL) is ended ORPHAN_GRACE after its
# primary's death (the parent-death watchdog thread uses the same delay); one that cleans up
# normally ends sooner. The bound adds a wide margin for a loaded 2-core machine and stays
# well short of the kill timer, so it still tells these stages from that later one.
ORPHAN_GONE_BOUND = 2 * ORPHAN_GRACE
assert ORPHAN_GONE_BOUND + 1.0 < DEFAULT_KILL_TIMEOUT


def kill_and_reap(pids: Any) -> None:
    """SIGKILL and reap each worker pid a test started (None and already-reaped ones are skipped):
    a test cleans up every child it started, whatever happened."""
    for pid in pids:
        if pid is None:
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def ready_waiter(primary: ClusterPrimary, count: int) -> 'asyncio.Future[None]':
    """A future resolved once `count` workers are in the pool."""
    future = primary.transport.loop.create_future()

    def check(event: Any) -> None:
        if len(primary.workers) >= count and not future.done():
            future.set_result(None)

    primary.after('worker_ready', check)
    return future


def recording(transport_class: type) -> type:
    """`transport_class`, keeping per worker id the link its `start_worker` returned (`links`):
    a test reaches a worker's link through the transport seam, not the handle's private one."""
    class Recording(transport_class):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.links: dict[int, Any] = {}

        def start_worker(self, spec: Any, listener: Any) -> Any:
            link = super().start_worker(spec, listener)
            self.links[spec.id] = link
            return link

    Recording.__name__ = Recording.__qualname__ = 'Recording' + transport_class.__name__
    return Recording


def _transport_options(options: dict[str, Any]) -> dict[str, Any]:
    return {name: options.pop(name) for name in ('max_frame_size',) if name in options}


def run_cluster(
    transport: str, scenario: Callable[[ClusterPrimary], Awaitable[Any]],
    primary_class: type[ClusterPrimary] = ClusterPrimary, wall_timeout: float = WALL_TIMEOUT, **options: Any,
) -> Any:
    """Build a primary on `transport`, run `scenario(primary)`, then destroy the primary and wait
    until it is closed. Returns the scenario's result. On processes the scenario is bounded by
    `wall_timeout` seconds."""
    if transport == 'memory':
        from isocluster.transport.memory import MemoryTransport

        sim = recording(MemoryTransport)(seed=options.pop('seed', 1), **_transport_options(options))
        primary = primary_class(transport=sim, **options)
        task = sim.loop.create_task(scenario(primary))
        task.add_done_callback(lambda _task: primary.destroy())
        sim.run_until(lambda: task.done() and primary.closed, timeout=600)
        return task.result()

    from isocluster.transport.process import ProcessTransport

    options.pop('seed', None)
    transport_options = _transport_options(options)

    async def main() -> Any:
        primary = primary_class(transport=recording(ProcessTransport)(**transport_options), **options)
        return await drive(primary, scenario(primary), wall_timeout)

    return asyncio.run(main())


async def drive(primary: ClusterPrimary, scenario: Awaitable[Any], timeout: float = WALL_TIMEOUT) -> Any:
    """Await `scenario` (bounded), then destroy `primary`, wait until it is closed, and kill and
    reap every worker process it forked, whatever happened."""
    pids: set[int] = set()
    primary.after('worker_fork', lambda event: pids.add(event.data['worker'].pid))
    try:
        return await asyncio.wait_for(scenario, timeout)
    finally:
        primary.destroy()
        try:
            await asyncio.wait_for(primary.wait_closed(), timeout)
        finally:
            kill_and_reap(pids)
