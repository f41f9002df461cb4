"""Test helpers for apps built on isocluster: a pytest plugin and a simulated cluster.

Installed with isocluster, the plugin (entry point `pytest11`, name `isocluster`) gives every
test the `sim_cluster` fixture: a `MemoryTransport` (virtual time, seeded scheduler, fault
injection) with a few helpers. Nothing is awaited: the simulation runs only inside the
helper calls, so a test reads top to bottom::

    from isocluster import ClusterPrimary
    from isocluster.testing import assert_trace

    def test_a_crashed_worker_is_replaced(sim_cluster):
        primary = ClusterPrimary(worker_target=my_worker_main, transport=sim_cluster)
        trace = sim_cluster.record(primary, 'worker_ready', 'worker_exit')
        primary.fork(worker_count=2)
        sim_cluster.next_event(primary, 'worker_ready')
        sim_cluster.next_event(primary, 'worker_ready')
        sim_cluster.crash(primary.workers[0], code=1)
        sim_cluster.next_event(primary, 'worker_ready', timeout=5)  # the replacement
        assert_trace(trace, ['worker_ready 1', 'worker_ready 2', 'worker_exit 1', 'worker_ready 3'])

Timers of any length cost no wall time: `sim_cluster.advance(3600)` runs an hour of the app
in milliseconds. The seed is random unless `--isocluster-seed=N` is given; a failing test's
report shows the seed, and rerunning with it replays the same schedule.
"""

from __future__ import annotations

import difflib
import random
from typing import Any, Callable, Iterable, NamedTuple

from .pubsub import Event, Publisher
from .transport.memory import MemoryTransport, SimulationDeadlock

__all__ = ['SimCluster', 'TraceEntry', 'Trace', 'assert_trace']

SEED_OPTION = '--isocluster-seed'
_SEED_KEY = '_isocluster_seed'
DEFAULT_TIMEOUT = 3600.0  # virtual seconds


class TraceEntry(NamedTuple):
    """One recorded event: virtual time, stage, event name, the worker id it concerns."""

    time: float
    stage: str
    name: str
    worker_id: int | None
    event: Event

    def __str__(self) -> str:
        return self.name if self.worker_id is None else f'{self.name} {self.worker_id}'


class Trace(list):
    """Recorded `TraceEntry`s, in order. `str(entry)` is `'<event> <worker id>'`, the form
    `assert_trace` compares; `names()` and `timed()` give other views."""

    def names(self) -> list[str]:
        return [str(entry) for entry in self]

    def timed(self) -> list[str]:
        return [f'{entry.time:10.3f} {entry}' for entry in self]

    def of(self, worker_id: int | None) -> 'Trace':
        return Trace(entry for entry in self if entry.worker_id == worker_id)


def _worker_id(event: Event) -> int | None:
    data = event.data if isinstance(event.data, dict) else {}
    return getattr(data.get('worker'), 'id', None)


class SimCluster(MemoryTransport):
    """A `MemoryTransport` with helpers for tests; build primaries with `transport=sim_cluster`.

    Everything of `MemoryTransport` works: `run_until`, `run_until_idle`, `advance`, `crash`,
    `hang`, `hold`/`release`, `fail_next_send`, `kill_primary`, `slow_boot`.
    """

    def __init__(self, seed: int, **options: Any) -> None:
        super().__init__(seed=seed, **options)
        self._primaries: list[Any] = []

    @property
    def time(self) -> float:
        """Virtual seconds since the simulation started."""
        return self.loop.time()

    def start_worker(self, spec: Any, listener: Any) -> Any:
        if listener not in self._primaries:
            self._primaries.append(listener)  # destroyed at teardown if the test did not
        return super().start_worker(spec, listener)

    def next_event(self, publisher: Publisher, name: str, *, timeout: float = DEFAULT_TIMEOUT,
                   where: Callable[[Event], bool] | None = None) -> Event:
        """Run the simulation until `publisher` publishes `name` (and `where(event)` holds,
        when given); return that event. Only events from now on count. The event has been
        fully handled when this returns (its default action and `after` stage have run).
        `TimeoutError` when `timeout` virtual seconds pass first."""
        seen: list[Event] = []

        def catch(event: Event) -> None:
            if not seen and (where is None or where(event)):
                seen.append(event)

        subscription = publisher.on(name, catch)
        try:
            try:
                self.run_until(lambda: bool(seen), timeout=timeout)
            except TimeoutError:
                raise TimeoutError(
                    f'next_event({name!r}): not published within {timeout} virtual seconds '
                    f'(now t={self.time:.3f}, seed {self.seed})'
                ) from None
            except SimulationDeadlock:
                raise SimulationDeadlock(
                    f'next_event({name!r}): the simulation went idle at t={self.time:.3f} without '
                    f'publishing it: nothing is scheduled that could (seed {self.seed})'
                ) from None
        finally:
            subscription.unsubscribe()
        return seen[0]

    def record(self, publisher: Publisher, *names: str, stage: str = 'on') -> Trace:
        """Start recording `names` events of `publisher` (at `stage`: 'before', 'on' or
        'after'); returns the `Trace` that fills as the simulation runs."""
        if not names:
            raise ValueError('record(): name at least one event')
        if stage not in ('before', 'on', 'after'):
            raise ValueError("record(): stage must be 'before', 'on' or 'after'")
        trace = Trace()
        subscribe = getattr(publisher, stage)
        for name in names:
            subscribe(name, lambda event, name=name: trace.append(
                TraceEntry(self.time, stage, name, _worker_id(event), event)))
        return trace

    def close_all(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Destroy every primary that forked on this transport and is not closed yet, run
        until they are, then close the transport. The fixture calls it at teardown."""
        try:
            if self._primary.alive:  # after kill_primary() nothing of the primary runs any more
                for primary in self._primaries:
                    if not primary.closed and not primary.destroyed:
                        primary.destroy()
                self.run_until(lambda: all(p.closed or p.destroyed for p in self._primaries), timeout=timeout)
        finally:
            self.close()


def assert_trace(recorded: Iterable[Any], expected: Iterable[Any], *, partial: bool = False) -> None:
    """Assert that `recorded` (a `Trace` or any iterable; items compared as `str`) equals
    `expected`, or, with `partial=True`, contains it as an ordered subsequence. On failure
    the message is a line diff: `-` expected, `+` recorded."""
    __tracebackhide__ = True
    got = [str(item) for item in recorded]
    want = [str(item) for item in expected]
    if partial:
        position = 0
        for item in got:
            if position < len(want) and item == want[position]:
                position += 1
        if position == len(want):
            return
        raise AssertionError(
            f'trace does not contain the expected entries in order: matched {position} of {len(want)}, '
            f'missing from {want[position]!r} on\n' + _diff(want, got)
        )
    if got != want:
        raise AssertionError('trace differs from expected (- expected, + recorded):\n' + _diff(want, got))


def _diff(want: list[str], got: list[str]) -> str:
    lines = difflib.ndiff(want, got)
    return '\n'.join('  ' + line.rstrip('\n') for line in lines if not line.startswith('?'))


# -- the pytest plugin ------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - the helpers above work without pytest
    pytest = None  # type: ignore[assignment]


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup('isocluster')
    group.addoption(
        SEED_OPTION, dest='isocluster_seed', type=int, default=None, metavar='N',
        help='seed of the sim_cluster fixture (default: a random seed per test, shown when it fails)',
    )


def _seed_for(request: Any) -> int:
    seed = request.config.getoption('isocluster_seed', default=None)
    return random.SystemRandom().randrange(2 ** 32) if seed is None else seed


if pytest is not None:
    @pytest.fixture
    def sim_cluster(request: Any) -> Any:
        """A simulated cluster transport (`SimCluster`, a seeded `MemoryTransport`). Primaries
        that forked on it are destroyed at teardown; its seed is shown when the test fails."""
        seed = _seed_for(request)
        setattr(request.node, _SEED_KEY, seed)
        sim = SimCluster(seed)
        yield sim
        sim.close_all()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(item: Any, call: Any) -> Any:
        outcome = yield
        report = outcome.get_result()
        seed = getattr(item, _SEED_KEY, None)
        if seed is not None and report.failed:
            report.sections.append((
                'isocluster',
                f'sim_cluster seed: {seed}\nreplay: pytest {item.nodeid} {SEED_OPTION}={seed}',
            ))
