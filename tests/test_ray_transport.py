"""The Ray transport (issue 8): each worker is a Ray actor.

Skipped when `ray` is not installed and under xdist (`make test` stays ray-free); `make test-ray`
installs the extra and runs this file. One local Ray instance on 127.0.0.1 serves the module
(`ray_local.start_local`: 2 CPUs, 80 MB object store);
its workers import the targets below (and `scenario_workers`) through PYTHONPATH, as a real
cluster would import them from an installed package.

The SPEC §8 acceptance scenarios that need no OS process of their own and no shared socket
are the `test_scenarios.py` tests themselves, run with a `run_scenario` that builds the
primary on a `RayTransport` (timer D is the process transport's `call_soon` variant).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from isocluster.transport import ray_local

ray = ray_local.ray_for_tests()

import test_scenarios as ts  # noqa: E402
from conftest import Scenario, TransportCase  # noqa: E402

from isocluster import ClusterPrimary, ClusterWorker, NotSupportedError, SendError  # noqa: E402
from isocluster.transport import base  # noqa: E402
from isocluster.transport.ray import RayTransport  # noqa: E402
from ray_links import RecordingRayTransport, actors_alive  # noqa: E402

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
RAY_TIMEOUT = 60.0  # wall-clock seconds for one scenario (each worker is a new actor process)


@pytest.fixture(scope='module', autouse=True)
def ray_instance():
    if ray.is_initialized():  # pragma: no cover - another module left it running
        ray.shutdown()
    # On 127.0.0.1 only; the workers import the targets of this file and scenario_workers by name.
    ray_local.start_local(paths=[TESTS, ROOT], log_to_driver=True)
    yield
    ray.shutdown()


# -- worker targets (module level: Ray imports them in the actor process) -------------------


class EchoWorker(ClusterWorker):
    def _event_primary_message_echo(self, event: Any) -> None:
        message = event.data['message']
        self.send({'type': 'echo', 'n': message['n'], 'worker_id': ClusterWorker.worker_id})

    async def _event_primary_message_produce(self, event: Any) -> None:
        for i in range(event.data['message']['n']):
            self.send({'type': 'produced', 'n': i})
            if i % 256 == 255:
                await asyncio.sleep(0)

    def _event_primary_message_pid(self, event: Any) -> None:
        self.send({'type': 'pid', 'pid': os.getpid(), 'worker_id': ClusterWorker.worker_id})

    def _event_primary_message_exit(self, event: Any) -> None:
        raise SystemExit(event.data['message']['code'])

    def _event_primary_message_throw(self, event: Any) -> None:
        raise RuntimeError('thrown on purpose by a test')

    def _event_primary_message_os_exit(self, event: Any) -> None:
        os._exit(7)

    def _event_primary_message_destroy(self, event: Any) -> None:
        self.destroy()

    async def _event_primary_message_listen(self, event: Any) -> None:
        try:
            await self.listen(('127.0.0.1', 0))
        except Exception as error:
            self.send({'type': 'listen_failed', 'error': type(error).__name__, 'text': str(error)})
        else:
            self.send({'type': 'listen_failed', 'error': None, 'text': ''})


def echo_target() -> None:
    EchoWorker()


async def async_echo_target() -> None:
    await asyncio.sleep(0.01)
    EchoWorker()


def blocking_target() -> None:
    """Prevents primary_disconnect, arms a short kill timer, then blocks its loop for good."""
    worker = EchoWorker()

    def on_disconnect(event: Any) -> None:
        event.prevent()
        base.current_link().arm_kill_timer(0.5)
        asyncio.get_running_loop().call_soon(time.sleep, 3600)

    worker.on('primary_disconnect', on_disconnect)


# -- helpers ----------------------------------------------------------------------------------


class Cluster:
    """A primary on a RayTransport inside the running loop, with a log of what it published."""

    def __init__(self, target: Callable[[], Any] = echo_target, cls: type = ClusterPrimary, **options: Any) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport = options.pop('transport', None) or RecordingRayTransport()
        assert isinstance(self.transport, RecordingRayTransport), 'close() checks the actors the transport started'
        self.primary = cls(worker_target=target, transport=self.transport, **options)
        self.log: list[tuple[str, int, Any, Any]] = []
        self.messages: list[tuple[int, Any]] = []
        for name in ('worker_fork', 'worker_online', 'worker_ready', 'worker_disconnect', 'worker_exit', 'worker_error'):
            self.primary.on(name, self._recorder(name))
        self.primary.on('worker_message', lambda e: self.messages.append((e.data['worker'].id, e.data['message'])))

    def _recorder(self, name: str) -> Callable[[Any], None]:
        def record(event: Any) -> None:
            data = event.data
            self.log.append((name, data['worker'].id, data.get('code'), data.get('signal')))

        return record

    def events(self, worker_id: int) -> list[str]:
        return [name for name, wid, _, _ in self.log if wid == worker_id]

    def exit_of(self, worker_id: int) -> tuple[Any, Any] | None:
        return next(((code, sig) for name, wid, code, sig in self.log if name == 'worker_exit' and wid == worker_id), None)

    async def until(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f'timed out; log: {self.log}')
            await asyncio.sleep(0.005)

    async def ready(self, count: int, timeout: float = 30.0) -> list[Any]:
        await self.until(lambda: len(self.primary.workers) >= count, timeout)
        return self.primary.workers

    def received(self, kind: str, worker_id: int | None = None) -> list[Any]:
        return [m for wid, m in self.messages
                if isinstance(m, dict) and m.get('type') == kind and (worker_id is None or wid == worker_id)]

    async def close(self, timeout: float = 30.0) -> None:
        self.primary.destroy()
        await asyncio.wait_for(self.primary.wait_closed(), timeout)
        assert actors_alive(self.transport, actor_is_dead) == [], 'an actor outlived its primary'
        self.transport.close()


def run(coroutine_function: Callable[[], Any]) -> Any:
    return asyncio.run(coroutine_function())


def actor_is_dead(actor: Any) -> bool:
    try:
        ray.get(actor.pull.remote(), timeout=10)
    except ray.exceptions.RayActorError:
        return True
    return False


# -- basics -------------------------------------------------------------------------------------


def test_every_ray_process_listens_on_loopback_only():
    async def main() -> None:
        cluster = Cluster()
        cluster.primary.fork(1)
        await cluster.ready(1)
        listeners = ray_local.ray_listeners()
        assert 'raylet' in ' '.join(command for _, command, _, _ in listeners), listeners
        assert [entry for entry in listeners if not ray_local.is_loopback(entry[2])] == []
        await cluster.close()

    run(main)


def test_importing_isocluster_does_not_import_ray():
    code = ('import sys, isocluster, isocluster.transport, isocluster.transport.ray; '
            'print("ray" in sys.modules)')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == 'False'


def test_fork_two_workers_ready():
    async def main() -> None:
        cluster = Cluster()
        cluster.primary.fork(2)
        workers = await cluster.ready(2)
        assert [w.id for w in workers] == [1, 2]
        assert all(w.state == 'ready' for w in workers)
        for worker in workers:
            cluster.primary.send({'type': 'pid'}, to=worker)
        await cluster.until(lambda: len(cluster.received('pid')) == 2)
        pids = {m['worker_id']: m['pid'] for m in cluster.received('pid')}
        # each worker is its own actor process, and the handle knows its pid
        assert pids == {w.id: w.pid for w in workers}
        assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
        assert all(cluster.transport.link_of(w).node_id for w in workers)
        assert cluster.events(1) == ['worker_fork', 'worker_online', 'worker_ready']
        await cluster.close()
        assert [cluster.exit_of(i) for i in (1, 2)] == [(0, None), (0, None)]
        assert all(w.exited_after_disconnect for w in workers)
        assert all(actor_is_dead(cluster.transport.link_of(w).actor) for w in workers)

    run(main)


def test_async_target_and_placement_options():
    async def main() -> None:
        seen = []

        def options(spec: base.WorkerSpec) -> dict[str, Any]:
            seen.append(spec.id)
            return {'num_cpus': 0.25}

        cluster = Cluster(async_echo_target, transport=RecordingRayTransport(worker_options=options))
        cluster.primary.fork(1)
        [worker] = await cluster.ready(1)
        cluster.primary.send({'type': 'echo', 'n': 1}, to=worker)
        await cluster.until(lambda: cluster.received('echo'))
        assert cluster.received('echo') == [{'type': 'echo', 'n': 1, 'worker_id': 1}]
        assert seen == [1]
        await cluster.close()

    run(main)


def test_messages_both_ways_keep_per_link_order():
    async def main() -> None:
        cluster = Cluster()
        primary = cluster.primary
        primary.fork(2)
        workers = await cluster.ready(2)
        n = 2000
        for i in range(n):
            for worker in workers:
                primary.send({'type': 'echo', 'n': i}, to=worker)
            if i % 256 == 255:
                await asyncio.sleep(0)
        await cluster.until(lambda: len(cluster.received('echo')) == 2 * n)
        for worker in workers:
            echoed = [m for m in cluster.received('echo', worker.id)]
            assert [m['n'] for m in echoed] == list(range(n))
            assert {m['worker_id'] for m in echoed} == {worker.id}  # worker_id in each actor
        # worker -> primary streaming
        primary.send({'type': 'produce', 'n': 5000}, to=workers[0])
        await cluster.until(lambda: len(cluster.received('produced')) == 5000)
        assert [m['n'] for m in cluster.received('produced', workers[0].id)] == list(range(5000))
        await cluster.close()

    run(main)


class TypedPrimary(ClusterPrimary):
    def _event_worker_message_echo(self, event: Any) -> None:
        self.routed.append(event.data['message']['n'])


def test_typed_routing_on_both_sides():
    async def main() -> None:
        cluster = Cluster(cls=TypedPrimary)
        cluster.primary.routed = []
        cluster.primary.fork(1)
        [worker] = await cluster.ready(1)
        for i in range(3):
            await cluster.primary.send({'type': 'echo', 'n': i}, to=worker)  # routed in the worker
        await cluster.until(lambda: len(cluster.primary.routed) == 3)
        assert cluster.primary.routed == [0, 1, 2]  # and routed back in the primary
        await cluster.close()

    run(main)


# -- death, exit codes and replacement --------------------------------------------------------


@pytest.mark.parametrize('how, expected', [
    ('system_exit', (3, None)),
    ('exception', (1, None)),
    ('handle_kill', (None, signal.SIGTERM)),
    ('handle_kill_9', (None, signal.SIGKILL)),
    ('ray_kill', (None, signal.SIGKILL)),
    ('os_exit', (None, signal.SIGKILL)),  # Ray does not report the exit code of a process
    ('destroy', (0, None)),
])
def test_worker_death_is_disconnect_then_exit_then_replacement(how, expected):
    async def main() -> None:
        cluster = Cluster()
        primary = cluster.primary
        primary.fork(1)
        [worker] = await cluster.ready(1)
        if how == 'system_exit':
            primary.send({'type': 'exit', 'code': 3}, to=worker)
        elif how == 'exception':
            primary.send({'type': 'throw'}, to=worker)
        elif how == 'handle_kill':
            worker.kill()
        elif how == 'handle_kill_9':
            worker.kill(signal.SIGKILL)
        elif how == 'ray_kill':
            ray.kill(cluster.transport.link_of(worker).actor)  # from outside the cluster's code
        elif how == 'os_exit':
            primary.send({'type': 'os_exit'}, to=worker)
        else:
            primary.send({'type': 'destroy'}, to=worker)
        await cluster.until(lambda: 2 in primary.worker_by_id)
        assert cluster.events(1) == ['worker_fork', 'worker_online', 'worker_ready', 'worker_disconnect', 'worker_exit']
        assert cluster.exit_of(1) == expected
        assert worker.exited_after_disconnect is (how == 'destroy')
        assert worker.is_dead() and actor_is_dead(cluster.transport.link_of(worker).actor)
        # the replacement works
        primary.send({'type': 'echo', 'n': 5}, to=2)
        await cluster.until(lambda: cluster.received('echo', 2))
        assert primary.stats()['restarts'] >= 1
        # a write to the dead worker's link is refused, never raised (R116)
        with pytest.raises(Exception):
            cluster.transport.link_of(worker).write('message', b'"late"')
        await cluster.close()

    run(main)


def test_send_to_a_dead_actor_rejects():
    async def main() -> None:
        cluster = Cluster(restart='never')
        cluster.primary.on('no_workers', lambda event: event.prevent())  # stay up with no worker
        cluster.primary.fork(1)
        [worker] = await cluster.ready(1)
        ray.kill(cluster.transport.link_of(worker).actor)
        await cluster.until(lambda: worker.is_dead())
        with pytest.raises(SendError):
            await cluster.primary.send('late', to=worker)
        await cluster.close()

    run(main)


def test_kill_timer_ends_a_worker_with_a_blocked_loop():
    async def main() -> None:
        cluster = Cluster(blocking_target, shutdown_timeout=30.0)
        cluster.primary.fork(1)
        await cluster.ready(1)
        started = time.monotonic()
        cluster.primary.shut_down()
        await asyncio.wait_for(cluster.primary.wait_closed(), 20)
        assert cluster.exit_of(1) == (0, None)  # the kill timer's code, not a signal
        assert time.monotonic() - started < 10  # 0.5 s timer, not shutdown_timeout
        cluster.primary.destroy()
        cluster.transport.close()

    run(main)


# -- what the Ray transport does not do -------------------------------------------------------


def test_listen_and_bind_raise_not_supported():
    async def main() -> None:
        cluster = Cluster()
        cluster.primary.fork(1)
        [worker] = await cluster.ready(1)
        cluster.primary.send({'type': 'listen'}, to=worker)
        await cluster.until(lambda: cluster.received('listen_failed'))
        [failure] = cluster.received('listen_failed')
        assert failure['error'] == 'NotSupportedError'
        assert 'ProcessTransport' in failure['text']
        with pytest.raises(NotSupportedError, match='ProcessTransport'):
            cluster.transport.bind(('127.0.0.1', 0))
        await cluster.close()
        assert cluster.exit_of(1) == (0, None)  # the worker lived on

    run(main)


def test_check_spec_rejects_what_cannot_travel(tmp_path):
    transport = RayTransport()
    script = tmp_path / 'w.py'
    script.write_text('')
    with pytest.raises(ValueError, match='worker_target'):
        transport.check_spec(base.WorkerSpec(id=1, codec=None, script=str(script)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match='worker_stdio'):
        transport.check_spec(base.WorkerSpec(id=1, codec=None, target=echo_target,  # type: ignore[arg-type]
                                             stdio={'stdout': sys.stdout}))
    transport.check_spec(base.WorkerSpec(id=1, codec=None, target=echo_target,  # type: ignore[arg-type]
                                         stdio={'stdout': 'devnull', 'stderr': 'inherit'}))
    transport.close()


def test_primary_run_drives_a_loop_of_its_own():
    primary = ClusterPrimary(worker_target=echo_target, transport=RayTransport())
    got = []

    def on_ready(event: Any) -> None:
        primary.send({'type': 'echo', 'n': 1}, to=event.data['worker'])

    def on_message(event: Any) -> None:
        got.append(event.data['message'])
        primary.shut_down()

    primary.on('worker_ready', on_ready)
    primary.on('worker_message', on_message)
    primary.fork(1)
    primary.run()
    assert got == [{'type': 'echo', 'n': 1, 'worker_id': 1}]
    primary.transport.close()
    assert primary.transport.loop.is_closed()


# -- SPEC §8 acceptance scenarios on the Ray transport ---------------------------------------


class RayScenario(Scenario):
    """A scenario run on a RayTransport in a running loop, real time (like 'process')."""

    @property
    def memory(self) -> bool:
        return False

    @property
    def process(self) -> bool:
        return True  # real time: timer D becomes call_soon from the last expected entry

    def primary(self, cls: type | None = None, *, default_transport: bool = False, **options: Any):
        if cls is None:
            cls = ClusterPrimary
        primary = cls(transport=self.transport, **options)
        self.primaries.append(primary)
        return primary

    def run(self, build: Callable[[Scenario], None], *, timeout: float | None = None) -> 'RayScenario':
        try:
            asyncio.run(self._main(build, RAY_TIMEOUT if timeout is None else timeout))
        except BaseException as error:
            error.add_note(self.describe())
            raise
        if not self.closed():
            self.problems.append('the run ended with a primary that is not destroyed')
        return self

    async def _main(self, build: Callable[[Scenario], None], timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport = RecordingRayTransport()
        try:
            build(self)
            await asyncio.wait_for(asyncio.gather(*(p.wait_closed() for p in self.primaries)), timeout)
            deadline = time.monotonic() + 5.0
            while not self.closed() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if self.tasks:
                await asyncio.wait_for(asyncio.gather(*self.tasks), 5.0)
            alive = actors_alive(self.transport, actor_is_dead)
            if alive:
                self.problems.append(f'actors left after the primary closed: workers {alive}')
        finally:
            self.transport.close()


RAY_CASE = TransportCase('ray')


def ray_run_scenario(build: Callable[[Scenario], None], *, timeout: float | None = None) -> RayScenario:
    return RayScenario(RAY_CASE).run(build, timeout=timeout)


# Scenario 17 needs a shared socket (listen) and 7's control case needs the worker's stdout
# in this process's descriptors: neither applies to Ray actors.
SCENARIOS = [
    'test_scenario_4_construct_a_primary',
    'test_scenario_5_subclass_as_factory',
    'test_scenario_6_fork_a_worker',
    'test_scenario_7_fork_a_silent_worker',
    'test_scenario_8_no_fork_after_shut_down',
    'test_scenario_9_worker_error',
    'test_scenario_10_communicate_with_a_worker',
    'test_scenario_11_route_by_type',
    'test_scenario_12_ignore_untyped_and_unknown_messages',
    'test_scenario_13_send_by_worker_id',
    'test_scenario_14_reject_invalid_destinations',
    'test_scenario_15_no_readiness_before_ready',
    'test_scenario_16_several_workers',
    'test_scenario_18_replace_dead_workers',
    'test_scenario_19_no_replacement_after_shut_down',
    'test_scenario_20_select_a_worker_for_a_task',
]


@pytest.mark.parametrize('name', SCENARIOS)
def test_acceptance_scenario_on_ray(name):
    test = getattr(ts, name)
    arguments: dict[str, Any] = {'run_scenario': ray_run_scenario}
    parameters = inspect.signature(test).parameters
    if 'transport' in parameters:
        arguments['transport'] = RAY_CASE
    if 'capfd' in parameters:
        arguments['capfd'] = None  # only read on the process transport
    test(**arguments)


def test_the_scenario_list_covers_every_transport_scenario():
    every = {name for name in dir(ts) if name.startswith('test_scenario_')}
    left_out = every - set(SCENARIOS)
    assert left_out == {
        'test_scenario_1_construct_a_worker_object', 'test_scenario_2_subclass_as_factory',
        'test_scenario_3_fail_to_initialize_outside_a_worker',  # no transport involved
        'test_scenario_7_control_a_worker_that_is_not_silent_is_heard',  # process stdout only
        'test_scenario_17_observe_listening',  # shared listening socket
    }
