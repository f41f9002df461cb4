"""The worker's end of the transport contract (transport/base.py, SPEC §6), checked the same
way on every transport: memory, process (fork: worker_target), process (fork + exec:
worker_script) and Ray when it is installed.

Each transport implements the worker's end separately; these tests hold them to one
contract: the frame limit in both directions, ONLINE before any application code, EOF
after every frame written, exit reporting (R33), and the kill timer (R112, R113).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest

from tests.cluster_helpers import drive

from isocluster import ClusterPrimary, EncodeError, protocol

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import contract_workers  # noqa: E402

KINDS = ('memory', 'fork', 'script', 'ray')
WALL_TIMEOUT = 60.0  # seconds for one scenario on a real loop (a Ray worker is a new process)
LIMIT = 4096  # max_frame_size of the transports that check the frame limits
EVENTS = ('worker_online', 'worker_ready', 'worker_message', 'worker_disconnect', 'worker_exit', 'worker_error')
# Bounded, so that a worker that never ends cannot hang the suite: the kill timer and EOF
# clauses are checked by how the worker ends, never by how long it took.
FAST_END = {'shutdown_timeout': 2.0, 'kill_timeout': 2.0}
# How long a worker may take to come online: an exec'd interpreter, or a new Ray actor process.
START_BOUND = {'ray': 45.0}
DEFAULT_START_BOUND = 10.0


@pytest.fixture(scope='module')
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if os.environ.get('PYTEST_XDIST_WORKER'):
        pytest.skip('the Ray cases run in `make test-ray` (one Ray instance at a time), not under xdist')
    from isocluster.transport import ray_local

    ray_local.prepare_environment()  # 127.0.0.1 only: Ray reads this once, at import
    ray = pytest.importorskip('ray')  # the only skip: isocluster's own imports must not fail quietly
    started = ray_local.start_local(paths=[HERE, ROOT], _temp_dir=tempfile.mkdtemp(prefix='rayc-', dir='/tmp'))
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == 'ray':
        request.getfixturevalue('ray_cluster')
    return request.param


class Trace:
    """The worker events a primary published, in order, and waits on them."""

    def __init__(self, primary: ClusterPrimary) -> None:
        self.events: list[tuple[str, int, dict[str, Any]]] = []
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        for name in EVENTS:
            primary.after(name, self._record)

    def _record(self, event: Any) -> None:
        data = dict(event.data)
        self.events.append((event.name, data.pop('worker').id, data))
        for check, future in list(self._waiters):
            if not future.done() and check():
                future.set_result(None)

    async def until(self, check: Callable[[], bool]) -> None:
        if check():
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((check, future))
        await future

    def of(self, worker_id: int) -> list[tuple[str, dict[str, Any]]]:
        return [(name, data) for name, wid, data in self.events if wid == worker_id]

    def count(self, name: str) -> int:
        return sum(1 for event in self.events if event[0] == name)

    def messages(self, type_: str) -> list[dict[str, Any]]:
        return [data['message'] for name, _, data in self.events
                if name == 'worker_message' and data['message'].get('type') == type_]

    def exits(self) -> dict[int, tuple[Any, Any]]:
        return {wid: (data['code'], data['signal']) for name, wid, data in self.events if name == 'worker_exit'}


def _worker_options(kind: str, target: str, script_args: tuple[str, ...]) -> dict[str, Any]:
    if kind == 'script':
        if target == 'idle':
            return {'worker_script': str(HERE / 'idle_script.py'), 'worker_args': list(script_args)}
        return {'worker_script': str(HERE / 'contract_script.py'), 'worker_args': [target]}
    return {'worker_target': getattr(contract_workers, target)}


def run_on(kind: str, scenario: Callable[[ClusterPrimary, Trace], Awaitable[Any]], *, target: str = 'contract',
           max_frame_size: int | None = None, script_args: tuple[str, ...] = (), **options: Any) -> Any:
    """Run `scenario(primary, trace)` on a primary of `kind`, then destroy it and wait until it
    is closed; every worker process it started is killed and reaped."""
    options = {'restart': 'never', **FAST_END, **_worker_options(kind, target, script_args), **options}
    limits = {'max_frame_size': max_frame_size} if max_frame_size else {}
    if kind == 'memory':
        from isocluster.transport.memory import MemoryTransport

        sim = MemoryTransport(seed=1, **limits)
        primary = ClusterPrimary(transport=sim, **options)
        _keep_up_when_empty(primary)
        task = sim.loop.create_task(scenario(primary, Trace(primary)))
        task.add_done_callback(lambda _task: primary.destroy())
        sim.run_until(lambda: task.done() and primary.closed, timeout=600)
        return task.result()

    async def main() -> Any:
        if kind == 'ray':
            from isocluster.transport.ray import RayTransport

            transport: Any = RayTransport(**limits)
        else:
            from isocluster.transport.process import ProcessTransport

            transport = ProcessTransport(**limits)
        primary = ClusterPrimary(transport=transport, **options)
        _keep_up_when_empty(primary)
        return await drive(primary, scenario(primary, Trace(primary)), WALL_TIMEOUT)  # Ray handles have no pid

    return asyncio.run(main())


def _keep_up_when_empty(primary: ClusterPrimary) -> None:
    # The contract is the worker end's: a worker that exits leaves the primary up (no_workers
    # prevented), so the scenario observes its exit and the primary is destroyed as usual.
    primary.on('no_workers', lambda event: event.prevent())


async def _ready(primary: ClusterPrimary, trace: Trace, count: int) -> None:
    primary.fork(count)
    await trace.until(lambda: len(primary.workers) == count)


def _largest_echo(limit: int) -> int:
    """The size of the largest `echo` message whose frame fits `limit` exactly."""
    codec = protocol.get_codec('json')
    size = limit
    while True:
        try:
            protocol.encode_message(codec, {'type': 'echo', 'data': 'x' * size}, limit)
            return size
        except EncodeError:
            size -= 1


# -- frame limits --------------------------------------------------------------------------


def test_a_frame_at_the_limit_crosses_both_ways_and_one_byte_more_is_refused_by_the_primary(kind: str) -> None:
    size = _largest_echo(LIMIT)

    async def scenario(primary: ClusterPrimary, trace: Trace) -> Any:
        await _ready(primary, trace, 1)
        worker = primary.workers[0]
        await primary.send({'type': 'echo', 'data': 'x' * size}, to=worker)
        await trace.until(lambda: trace.messages('echo'))
        oversized = primary.send({'type': 'echo', 'data': 'x' * (size + 1)}, to=worker)
        with pytest.raises(EncodeError):
            await oversized
        return [len(message['data']) for message in trace.messages('echo')], trace.count('worker_error')

    assert run_on(kind, scenario, max_frame_size=LIMIT) == ([size], 0)


def test_a_worker_refuses_to_send_a_frame_over_its_transports_limit(kind: str) -> None:
    size = _largest_echo(LIMIT)

    async def scenario(primary: ClusterPrimary, trace: Trace) -> Any:
        await _ready(primary, trace, 1)
        worker = primary.workers[0]
        for request in (size, size + 1):
            await primary.send({'type': 'send', 'size': request}, to=worker)
        await trace.until(lambda: len(trace.messages('outcome')) == 2 or trace.count('worker_error') > 0)
        outcomes = [message['outcome'] for message in trace.messages('outcome')]
        return outcomes, [len(message['data']) for message in trace.messages('echo')], trace.count('worker_error')

    assert run_on(kind, scenario, max_frame_size=LIMIT) == (['accepted', 'rejected'], [size], 0)


# -- ONLINE before application code -----------------------------------------------------


def test_online_is_published_before_the_first_message_of_the_application(kind: str) -> None:
    async def scenario(primary: ClusterPrimary, trace: Trace) -> Any:
        await _ready(primary, trace, 1)
        await trace.until(lambda: trace.messages('hello'))
        return [name for name, data in trace.of(1) if name == 'worker_online'
                or data.get('message', {}).get('type') == 'hello']

    assert run_on(kind, scenario) == ['worker_online', 'worker_message']


def test_a_worker_is_online_before_its_code_builds_a_cluster_worker(kind: str) -> None:
    # The script form imports isocluster and builds nothing: online all the same (R62).
    async def scenario(primary: ClusterPrimary, trace: Trace) -> Any:
        primary.fork(1)
        await trace.until(lambda: trace.count('worker_online') == 1 or trace.count('worker_exit') == 1)
        return [name for name, _ in trace.of(1)]

    # Without ONLINE the worker would be killed by its ready timeout, and the trace would say so.
    bound = START_BOUND.get(kind, DEFAULT_START_BOUND)
    assert run_on(kind, scenario, target='idle', script_args=('import',), ready_timeout=bound) == ['worker_online']


# -- EOF ---------------------------------------------------------------------------------


def test_every_frame_a_worker_wrote_arrives_before_its_disconnect_and_exit(kind: str) -> None:
    count = 300

    async def scenario(primary: ClusterPrimary, trace: Trace) -> Any:
        await _ready(primary, trace, 1)
        primary.send({'type': 'burst', 'count': count, 'code': 3}, to=primary.workers[0])
        await trace.until(lambda: trace.count('worker_exit') == 1)
        ends = [name for name, _ in trace.of(1) if name in ('worker_disconnect', 'worker_exit')]
        after_burst = [name for name, data in trace.of(1)
                       if name != 'worker_message' or data['message'].get('type') == 'burst'][-count - 2:]
        return [message['n'] for message in trace.messages('burst')], ends, after_burst[-2:], trace.exits()

    numbers, ends, last, exits = run_on(kind, scenario)
    assert numbers == list(range(count))
    assert ends == last == ['worker_disconnect', 'worker_exit']
    assert exits == {1: (3, None)}


def test_the_primary_closing_its_end_ends_the_worker_with_code_0(kind: str) -> None:
    # EOF without DISCONNECT (what a worker sees when its primary dies): primary_disconnect's
    # default action ends the worker normally (R110, R111).
    async def scenario(primary: ClusterPrimary, trace: Trace) -> Any:
        await _ready(primary, trace, 1)
        primary.workers[0].life.link.close()
        await trace.until(lambda: trace.count('worker_exit') == 1)
        return trace.exits()

    assert run_on(kind, scenario) == {1: (0, None)}


# -- exit reporting and the kill timer ---------------------------------------------------


def test_exit_codes_follow_the_systemexit_rules(kind: str) -> None:
    instructions = {
        1: {'type': 'exit', 'code': None},
        2: {'type': 'exit', 'code': 7},
        3: {'type': 'exit', 'code': 'printed, then code 1'},
        4: {'type': 'throw'},
        5: {'type': 'destroy'},
        6: {'type': 'linger'},
    }

    async def scenario(primary: ClusterPrimary, trace: Trace) -> Any:
        await _ready(primary, trace, len(instructions) + 1)  # the last one stays: the pool never empties
        for worker_id, message in instructions.items():
            primary.send(message, to=worker_id)
        await trace.until(lambda: trace.count('worker_exit') == len(instructions))
        return trace.exits()

    assert run_on(kind, scenario) == {1: (0, None), 2: (7, None), 3: (1, None), 4: (1, None), 5: (0, None),
                                      6: (0, None)}


# -- the script bootstrap (process transport) ------------------------------------------------


def test_a_script_that_never_imports_isocluster_is_online() -> None:
    async def scenario(primary: ClusterPrimary, trace: Trace) -> Any:
        primary.fork(1)
        await trace.until(lambda: trace.count('worker_online') == 1 or trace.count('worker_exit') == 1)
        return [name for name, _ in trace.of(1)]

    assert run_on('script', scenario, target='idle', ready_timeout=DEFAULT_START_BOUND) == ['worker_online']


def test_a_script_runs_as_main_with_its_own_argv_and_path() -> None:
    script = HERE / 'introspect_script.py'

    async def scenario(primary: ClusterPrimary, trace: Trace) -> Any:
        await _ready(primary, trace, 1)
        await trace.until(lambda: trace.messages('started'))
        return trace.messages('started')[0]

    started = run_on('script', scenario, worker_script=str(script), worker_args=['--flag', 'value'])
    assert started == {
        'type': 'started', 'argv': [str(script), '--flag', 'value'], 'path0': str(HERE), 'name': '__main__',
        'file': str(script), 'main_is_me': True, 'isocluster_env': [],
    }
