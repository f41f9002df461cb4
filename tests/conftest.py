"""Fixtures for the acceptance scenarios (SPEC §8): each scenario is written once, as a
`build(ctx)` function, and runs on both transports.

- memory: `MemoryTransport(seed=S)`, driven with `run_until` in virtual time; timer D is a
  real `call_later(2.584, primary.destroy)` on the virtual clock.
- process: `ProcessTransport()`, the primary built inside a running loop and awaited with
  `wait_closed()` under a wall-clock timeout; timer D is replaced by a `call_soon(destroy)`
  from the handler that records the last expected entry (SPEC §8.1, "Timer D"). Every
  worker process still around afterwards is killed and reaped, pass or fail.

A `build(ctx)` uses: `ctx.primary(...)`, `ctx.record(primary, events)`, `ctx.timer_d(primary)`,
`ctx.last_expected(primary)`, `ctx.start_task(coro)`, `ctx.check(ok, what)`, `ctx.loop`,
`ctx.notes` (a dict for what the assertions need) and `ctx.memory` / `ctx.process`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import glob
import os
import signal
import time
import traceback
from typing import Any, Callable, NamedTuple

import pytest

from memory_helpers import seen

SEEDS = tuple(int(s) for s in os.environ.get('ISOCLUSTER_SCENARIO_SEEDS', '1,2,3').split(','))
D = 2.584  # timer D of SPEC §8.1, seconds
MEMORY_TIMEOUT = 60.0  # virtual seconds
PROCESS_TIMEOUT = 20.0  # wall-clock seconds
# ISOCLUSTER_REAL_TIMER_D=1 runs timer D for real on the process transport too (slower).
REAL_TIMER_D = os.environ.get('ISOCLUSTER_REAL_TIMER_D', '') not in ('', '0')


@dataclasses.dataclass(frozen=True)
class TransportCase:
    name: str  # 'memory' | 'process'
    seed: int | None = None

    def __str__(self) -> str:
        return self.name if self.seed is None else f'{self.name}-seed{self.seed}'


def process_transport_unavailable() -> str | None:
    """Why this platform cannot run the process transport, or None when it can. A process
    transport that fails to import is a failure of the scenario, never a reason to skip it."""
    if not hasattr(os, 'fork'):
        return 'the process transport needs os.fork'
    return None


CASES = [TransportCase('memory', seed) for seed in SEEDS] + [TransportCase('process')]


@pytest.fixture(params=CASES, ids=str)
def transport(request) -> TransportCase:
    """The transport a scenario runs on: memory (several seeds) and process."""
    case = request.param
    if case.name == 'process':
        reason = process_transport_unavailable()
        if reason:
            pytest.skip(reason)
        from isocluster.transport.process import ProcessTransport  # noqa: F401  (fails loudly)
    return case


@pytest.fixture
def process_only(transport: TransportCase) -> TransportCase:
    if transport.name != 'process':
        pytest.skip('process transport only')
    return transport


class Entry(NamedTuple):
    text: str  # 'on fork', 'after worker_ready', ...
    worker: int | None  # the worker it concerns (SPEC §8.1, "Several live workers")
    time: float  # loop.time() when recorded


class Scenario:
    """One run of one scenario on one transport."""

    def __init__(self, case: TransportCase) -> None:
        self.case = case
        self.entries: list[Entry] = []
        self.primaries: list[Any] = []
        self.handles: dict[int, Any] = {}  # id -> WorkerHandle, every worker forked
        self.exits: list[tuple[int, Any, Any]] = []  # (id, code, signal) per worker_exit
        self.problems: list[str] = []
        self.tasks: list[asyncio.Task] = []
        self.notes: dict[str, Any] = {}
        self.transport: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- what a build uses -----------------------------------------------------------------

    @property
    def memory(self) -> bool:
        return self.case.name == 'memory'

    @property
    def process(self) -> bool:
        return self.case.name == 'process'

    def primary(self, cls: type | None = None, *, default_transport: bool = False, **options: Any):
        """Build a primary on this run's transport. `default_transport=True` lets it create its
        own transport on the process side (`ClusterPrimary()` as in scenarios 4 and 5)."""
        if cls is None:
            from isocluster.primary import ClusterPrimary as cls
        if not (default_transport and self.process):
            options['transport'] = self.transport
        primary = cls(**options)
        self.primaries.append(primary)
        return primary

    def record(self, primary: Any, events: tuple[str, ...]) -> None:
        """SPEC §8.1 `record(primary, events)`: one `on` and one `after` recorder per event,
        subscribed before every scenario handler. Each entry keeps the id of the worker it
        concerns: `data['worker'].id`, or for a `fork` nested in a `worker_exit` that exit's
        worker; None for top-level fork, shut_down, shut_down_complete."""
        exiting: list[int | None] = []

        def recorder(stage: str, name: str) -> Callable[[Any], None]:
            text = f'{stage} {name}'

            def handler(event: Any) -> None:
                data = event.data if isinstance(event.data, dict) else {}
                worker = getattr(data.get('worker'), 'id', None)
                if name == 'fork' and exiting:
                    worker = exiting[-1]
                if name == 'worker_exit':
                    if stage == 'on':
                        exiting.append(worker)
                    elif exiting:
                        exiting.pop()
                self.entries.append(Entry(text, worker, self.loop.time()))

            return handler

        for name in events:
            primary.on(name, recorder('on', name))
            primary.after(name, recorder('after', name))
        # Observers that never act: every forked handle (for cleanup and checks) and every exit.
        primary.before('worker_fork', self._track_fork)
        primary.after('worker_exit', self._track_exit)

    def timer_d(self, primary: Any) -> None:
        """'destroy after D' (SPEC §8.1). On the process transport the destroy comes from
        `last_expected` instead, unless ISOCLUSTER_REAL_TIMER_D is set."""
        if self.memory or REAL_TIMER_D:
            self.loop.call_later(D, primary.destroy)

    def last_expected(self, primary: Any) -> None:
        """Called where the last expected entry is recorded: on the process transport this
        schedules the destroy with call_soon (SPEC §8.1 allows it); on memory it does nothing."""
        if self.process and not REAL_TIMER_D:
            self.loop.call_soon(primary.destroy)

    def start_task(self, coroutine: Any) -> asyncio.Task:
        """A scenario task; an exception escaping it becomes a problem of the run."""

        async def guarded() -> None:
            try:
                await coroutine
            except asyncio.CancelledError:
                self.problems.append('a scenario task was cancelled')
                raise
            except BaseException:
                self.problems.append('a scenario task failed:\n' + traceback.format_exc())

        task = self.loop.create_task(guarded())
        self.tasks.append(task)
        return task

    def check(self, ok: bool, what: str) -> None:
        """An assertion made inside a handler, reported when the run ends."""
        if not ok:
            self.problems.append(what)

    # -- reading the result ----------------------------------------------------------------

    @property
    def trace(self) -> list[str]:
        return [entry.text for entry in self.entries]

    def projection(self, worker: int | None) -> list[str]:
        return [entry.text for entry in self.entries if entry.worker == worker]

    def closed(self) -> bool:
        return bool(self.primaries) and all(primary.destroyed for primary in self.primaries)

    def describe(self) -> str:
        lines = [f'scenario run on {self.case}; trace ({len(self.entries)} entries):']
        for index, entry in enumerate(self.entries):
            who = '-' if entry.worker is None else f'w{entry.worker}'
            lines.append(f'  {index:3d} {entry.time:10.4f} {who:>4} {entry.text}')
        lines.append(f'exits (id, code, signal): {self.exits}')
        if self.problems:
            lines.append('problems:')
            lines.extend('  ' + problem for problem in self.problems)
        return '\n'.join(lines)

    # -- running ---------------------------------------------------------------------------

    def run(self, build: Callable[['Scenario'], None], *, timeout: float | None = None) -> 'Scenario':
        try:
            if self.memory:
                self._run_memory(build, MEMORY_TIMEOUT if timeout is None else timeout)
            else:
                self._run_process(build, PROCESS_TIMEOUT if timeout is None else timeout)
        except BaseException as error:
            error.add_note(self.describe())
            raise
        if not self.closed():
            self.problems.append('the run ended with a primary that is not destroyed')
        return self

    def _track_fork(self, event: Any) -> None:
        worker = event.data['worker']
        self.handles[worker.id] = worker

    def _track_exit(self, event: Any) -> None:
        data = event.data
        self.exits.append((data['worker'].id, data.get('code'), data.get('signal')))

    def _run_memory(self, build: Callable[['Scenario'], None], timeout: float) -> None:
        from isocluster.transport.memory import MemoryTransport

        sim = self.transport = MemoryTransport(seed=self.case.seed)
        self.loop = sim.loop
        try:
            build(self)
            sim.run_until(self.closed, timeout=timeout)
            if self.tasks:
                sim.run_until(lambda: all(task.done() for task in self.tasks), timeout=timeout)
        finally:
            sim.close()

    def _run_process(self, build: Callable[['Scenario'], None], timeout: float) -> None:
        from isocluster.transport.process import ProcessTransport

        children_before = _child_pids()

        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.transport = ProcessTransport()
            try:
                await scenario()
            finally:
                try:
                    self._reap(children_before)
                finally:
                    self.transport.close()

        async def scenario() -> None:
            build(self)
            await asyncio.wait_for(
                asyncio.gather(*(primary.wait_closed() for primary in self.primaries)), timeout
            )
            deadline = time.monotonic() + 5.0
            while not self.closed() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if self.tasks:
                await asyncio.wait_for(asyncio.gather(*self.tasks), 5.0)
            # Every worker has exited and been reaped once the primary is closed (R91, R119).
            deadline = time.monotonic() + 1.0
            while (_child_pids() - children_before) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            left = _child_pids() - children_before
            if left:
                self.problems.append(f'child processes left after the primary closed: {sorted(left)} (R95, R119)')

        try:
            asyncio.run(main())
        finally:
            self._reap(children_before)

    def _reap(self, children_before: set[int]) -> None:
        """Kill and reap every worker of this run still around, never a pid already reaped."""
        pids = _child_pids() - children_before
        if not _PROC_CHILDREN:
            pids |= {h.pid for h in self.handles.values() if h.pid and not h.is_dead()}
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


_PROC_CHILDREN = os.path.isdir('/proc/self/task')


@pytest.fixture(autouse=True)
def _clear_seen():
    """`memory_helpers.seen` holds what one test's simulated workers observed: never the last test's."""
    seen.clear()
    yield
    seen.clear()


def _child_pids() -> set[int]:
    """Children of this process (alive or zombie), from /proc on Linux; empty elsewhere."""
    pids: set[int] = set()
    for path in glob.glob(f'/proc/{os.getpid()}/task/*/children'):
        try:
            with open(path) as file:
                pids.update(int(pid) for pid in file.read().split())
        except OSError:
            pass
    return pids


def run_scenario_on(transport_name: str, build: Callable[[Scenario], None], *, seed: int | None = None,
                    timeout: float | None = None) -> Scenario:
    """run_scenario(transport_name, build): run one scenario and return the finished run."""
    if transport_name == 'memory' and seed is None:
        seed = SEEDS[0]
    return Scenario(TransportCase(transport_name, seed)).run(build, timeout=timeout)


@pytest.fixture
def scenario_runner() -> Callable[..., Scenario]:
    """`scenario_runner(transport_name, build, seed=..., timeout=...)`, not tied to `transport`."""
    return run_scenario_on


@pytest.fixture
def run_scenario(transport: TransportCase) -> Callable[..., Scenario]:
    """`run_scenario(build, timeout=...)` on the `transport` of this test."""

    def run(build: Callable[[Scenario], None], *, timeout: float | None = None) -> Scenario:
        return Scenario(transport).run(build, timeout=timeout)

    return run
