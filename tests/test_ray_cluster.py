"""The Ray transport on a multi-node Ray cluster, and losing a node (issue 17).

One `ray.cluster_utils.Cluster` on this machine serves the module (`ray_local.start_cluster`:
every process on 127.0.0.1): a head, where the driver (the primary) runs, and two worker
nodes. Each node offers a custom resource of its own (`head`, `node_a`, `node_b`), so
`worker_options` places a worker on a node and the worker observes where it runs; every
node also offers `slot`s, the resource replacements ask for, so they can go anywhere.
The node-loss tests add a node of their own and remove it (`cluster.remove_node`, without a
graceful stage: a crashed host). Runs in `make test-ray`; skipped without ray or under xdist.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from isocluster.transport import ray_local

ray = ray_local.ray_for_tests()

from test_ray_transport import Cluster  # noqa: E402

from isocluster import ClusterPrimary, ClusterWorker, ReadyTimeout, WorkerLost  # noqa: E402
from ray_links import RecordingRayTransport  # noqa: E402

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SLOTS = 4
NODES = {'node_a': {'node_a': 100, 'slot': SLOTS}, 'node_b': {'node_b': 100, 'slot': SLOTS}}
READY_TIMEOUT = 30.0  # an actor process starting on a loaded 2-core machine
WAIT = 60.0  # a guard against hanging, never a measured bound


@pytest.fixture(scope='module')
def ray_cluster():
    cluster = ray_local.start_cluster(NODES, paths=[TESTS, ROOT], head_resources={'head': 100, 'slot': SLOTS})
    yield cluster
    ray_local.stop_cluster(cluster)


@pytest.fixture
def node_names(ray_cluster) -> dict[str, str]:
    """Node id -> the name of its own resource, for the nodes alive now."""
    names = {}
    for node in ray.nodes():
        if node['Alive']:
            own = [r for r in node['Resources'] if r in ('head', 'node_a', 'node_b') or r.startswith('doomed')]
            names[node['NodeID']] = own[0] if own else '?'
    return names


# -- the worker (module level: the actors import it by name) ---------------------------------


class NodeWorker(ClusterWorker):
    def _event_primary_message_where(self, event: Any) -> dict[str, Any]:
        context = ray.get_runtime_context()
        return {'worker_id': ClusterWorker.worker_id, 'node_id': context.get_node_id(), 'pid': os.getpid()}

    def _event_primary_message_echo(self, event: Any) -> None:
        self.send({'type': 'echo', 'n': event.data['message']['n'], 'worker_id': ClusterWorker.worker_id})

    def _event_primary_message_double(self, event: Any) -> int:
        return 2 * event.data['message']['n']

    async def _event_primary_message_hold(self, event: Any) -> None:
        self.send({'type': 'holding', 'worker_id': ClusterWorker.worker_id})
        await asyncio.get_running_loop().create_future()  # never answers


def node_worker() -> None:
    NodeWorker()


def placed(by_id: dict[int, str], otherwise: str = 'slot') -> Callable[[Any], dict[str, Any]]:
    """worker_options: worker `id` on the node offering resource `by_id[id]`; any other
    worker (a replacement) asks for `otherwise` only."""
    def options(spec: Any) -> dict[str, Any]:
        own = by_id.get(spec.id)
        resources = {own: 1, 'slot': 1} if own is not None else {otherwise: 1}
        return {'num_cpus': 0, 'resources': resources}

    return options


async def where(cluster: Cluster, workers: list[Any]) -> dict[int, str]:
    replies = await asyncio.gather(*(cluster.primary.request({'type': 'where'}, to=w) for w in workers))
    return {reply['worker_id']: reply['node_id'] for reply in replies}


def start(by_id: dict[int, str], **options: Any) -> Cluster:
    options.setdefault('ready_timeout', READY_TIMEOUT)
    return Cluster(node_worker, transport=RecordingRayTransport(worker_options=placed(by_id)), **options)


def run(main: Callable[[], Any]) -> Any:
    return asyncio.run(asyncio.wait_for(main(), 4 * WAIT))


# -- loopback --------------------------------------------------------------------------------


def test_every_ray_process_listens_on_loopback_only(ray_cluster):
    async def main() -> None:
        cluster = start({1: 'node_a', 2: 'node_b'})
        cluster.primary.fork(2)
        await cluster.ready(2, WAIT)
        listeners = ray_local.ray_listeners()
        commands = ' '.join(command for _, command, _, _ in listeners)
        assert 'raylet' in commands and 'gcs_server' in commands, listeners  # it sees Ray's processes
        assert [entry for entry in listeners if not ray_local.is_loopback(entry[2])] == []
        await cluster.close()

    run(main)


# -- placement, messages, requests, round_robin, reload across nodes ---------------------------


def test_workers_placed_across_nodes_answer_messages_and_requests(ray_cluster, node_names):
    async def main() -> None:
        cluster = start({1: 'node_a', 2: 'node_b', 3: 'node_a', 4: 'node_b'})
        primary = cluster.primary
        primary.fork(4)
        workers = await cluster.ready(4, WAIT)
        nodes = await where(cluster, workers)
        assert {i: node_names[n] for i, n in nodes.items()} == {1: 'node_a', 2: 'node_b', 3: 'node_a', 4: 'node_b'}
        assert ray.get_runtime_context().get_node_id() not in nodes.values()  # none on the primary's node
        n = 300
        for i in range(n):
            primary.send({'type': 'echo', 'n': i})  # to all
        await cluster.until(lambda: len(cluster.received('echo')) == 4 * n, WAIT)
        for worker in workers:
            assert [m['n'] for m in cluster.received('echo', worker.id)] == list(range(n))
        doubled = await asyncio.gather(*(primary.request({'type': 'double', 'n': w.id}, to=w) for w in workers))
        assert doubled == [2, 4, 6, 8]
        await cluster.close()

    run(main)


def test_round_robin_spreads_requests_over_nodes(ray_cluster, node_names):
    async def main() -> None:
        cluster = start({1: 'node_a', 2: 'node_b', 3: 'node_a', 4: 'node_b'})
        primary = cluster.primary
        primary.fork(4)
        await cluster.ready(4, WAIT)
        picks = [await primary.request({'type': 'where'}, to=primary.round_robin()) for _ in range(8)]
        per_worker = {i: sum(p['worker_id'] == i for p in picks) for i in (1, 2, 3, 4)}
        per_node = {name: sum(node_names[p['node_id']] == name for p in picks) for name in ('node_a', 'node_b')}
        assert per_worker == {1: 2, 2: 2, 3: 2, 4: 2}
        assert per_node == {'node_a': 4, 'node_b': 4}
        await cluster.close()

    run(main)


def test_least_busy_prefers_the_idle_node(ray_cluster, node_names):
    if not hasattr(ClusterPrimary, 'least_busy'):
        pytest.skip('ClusterPrimary.least_busy() does not exist on this branch (issue 15)')

    async def main() -> None:
        cluster = start({1: 'node_a', 2: 'node_b', 3: 'node_a', 4: 'node_b'})
        primary = cluster.primary
        primary.fork(4)
        workers = await cluster.ready(4, WAIT)
        held = [primary.request({'type': 'hold'}, to=w) for w in workers if w.id in (1, 3)]  # node_a busy
        await cluster.until(lambda: len(cluster.received('holding')) == 2, WAIT)
        for _ in range(4):
            reply = await primary.request({'type': 'where'}, to=primary.least_busy())
            assert node_names[reply['node_id']] == 'node_b'
        await cluster.close()
        for request in held:
            with pytest.raises(WorkerLost):
                await request

    run(main)


def test_rolling_reload_across_nodes(ray_cluster, node_names):
    async def main() -> None:
        by_id = {1: 'node_a', 2: 'node_b', 3: 'node_a', 4: 'node_b'}  # 3 and 4: the new workers
        cluster = start(by_id)
        primary = cluster.primary
        primary.fork(2)
        await cluster.ready(2, WAIT)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        primary.on('reload_complete', lambda e: done.done() or done.set_result(e.data))
        # requests keep flowing to the round-robin pick while the pool is replaced
        primary.reload()
        answered = 0
        while not done.done():
            worker = primary.round_robin()
            if worker is not None:
                answered += await primary.request({'type': 'double', 'n': 1}, to=worker) == 2
            await asyncio.sleep(0.01)
        assert (await done)['aborted'] is False
        assert [w.id for w in primary.workers] == [3, 4]
        nodes = await where(cluster, primary.workers)
        assert {i: node_names[n] for i, n in nodes.items()} == {3: 'node_a', 4: 'node_b'}
        assert [cluster.exit_of(i) for i in (1, 2)] == [(0, None), (0, None)]  # left gracefully
        assert answered > 0
        await cluster.close()

    run(main)


# -- node loss -------------------------------------------------------------------------------

_doomed = iter(range(1, 1000))


def doomed_node(ray_cluster: Any, **extra: float) -> tuple[Any, str]:
    name = f'doomed_{next(_doomed)}'
    return ray_local.add_node(ray_cluster, {name: 100, 'slot': SLOTS, **extra}), name


def test_node_loss_fails_requests_and_replaces_workers_on_the_live_nodes(ray_cluster):
    async def main() -> None:
        node, name = doomed_node(ray_cluster)
        cluster = start({1: name, 2: name, 3: 'node_a', 4: 'node_b'}, restart='on-failure', restart_intensity=10)
        primary = cluster.primary
        primary.fork(4)
        workers = await cluster.ready(4, WAIT)
        assert set((await where(cluster, workers[:2])).values()) == {node.node_id}
        in_flight = [primary.request({'type': 'hold'}, to=w) for w in workers]
        await cluster.until(lambda: len(cluster.received('holding')) == 4, WAIT)
        restarts = primary.stats()['restarts']

        removing = time.monotonic()
        ray_cluster.remove_node(node, allow_graceful=False)
        removed = time.monotonic()
        lost = asyncio.gather(*in_flight[:2], return_exceptions=True)
        errors = await asyncio.wait_for(lost, WAIT)  # the requests have no timeout: only a loss ends them
        print(f'node removed in {removed - removing:.2f}s; requests failed {time.monotonic() - removed:.2f}s after')
        assert [type(e) for e in errors] == [WorkerLost, WorkerLost]
        assert all(f'worker {i}' in str(e) for i, e in zip((1, 2), errors))
        await cluster.until(lambda: [w.id for w in primary.workers] == [3, 4, 5, 6], WAIT)
        for i in (1, 2):
            assert cluster.events(i) == ['worker_fork', 'worker_online', 'worker_ready', 'worker_disconnect',
                                         'worker_exit']
            assert cluster.exit_of(i) == (None, signal.SIGKILL)
        # SIGKILL is a failure: 'on-failure' replaced both, and each took one restart of the budget
        assert primary.stats()['restarts'] == restarts + 2
        assert primary.stats()['restarts_in_window'] == 2
        replaced = await where(cluster, primary.workers[2:])
        assert node.node_id not in replaced.values() and set(replaced.values()) <= {
            n['NodeID'] for n in ray.nodes() if n['Alive']}
        # the workers of the other nodes were not touched: their requests still wait
        assert not any(f.done() for f in in_flight[2:])
        assert await primary.request({'type': 'double', 'n': 21}, to=workers[2]) == 42
        await cluster.close()
        assert all(isinstance(f.exception(), WorkerLost) for f in in_flight[2:])

    run(main)


def test_node_loss_without_room_for_replacements_is_reported_and_the_rest_keeps_serving(ray_cluster):
    async def main() -> None:
        node, name = doomed_node(ray_cluster)
        ready_timeout = READY_TIMEOUT  # also the first workers' start: a loaded machine needs it
        # the replacement of worker 1 asks for the lost node's resource: no live node has it
        options = placed({1: name, 2: 'node_a'}, otherwise=name)
        cluster = Cluster(node_worker, transport=RecordingRayTransport(worker_options=options),
                          ready_timeout=ready_timeout, restart_intensity=1)
        primary = cluster.primary
        reported: list[Any] = []
        primary.on('worker_error', lambda e: reported.append((e.data['worker'].id, e.data['error'])))
        primary.on('restart_limit', lambda e: reported.append(('restart_limit', e.data['worker_count'])))
        primary.fork(2)
        workers = await cluster.ready(2, READY_TIMEOUT)
        in_flight = primary.request({'type': 'hold'}, to=workers[0])
        await cluster.until(lambda: cluster.received('holding'), WAIT)

        ray_cluster.remove_node(node, allow_graceful=False)
        with pytest.raises(WorkerLost):
            await asyncio.wait_for(in_flight, WAIT)
        # Worker 3, its replacement, is never ready: it waits for a node that offers its resource
        # until ready_timeout (worker_error ReadyTimeout), or, when Ray placed it on the lost node
        # before noticing the loss, it dies at once (SIGKILL). Either way the budget (1) is spent,
        # and replacing it again stops with restart_limit ...
        await cluster.until(lambda: ('restart_limit', 1) in reported, ready_timeout + WAIT)
        assert 'worker_ready' not in cluster.events(3)
        timed_out = [i for i, e in reported if isinstance(e, ReadyTimeout)]
        assert timed_out == [3] or (timed_out == [] and cluster.exit_of(3) == (None, signal.SIGKILL)), cluster.log
        print(f"the replacement without room: {'ReadyTimeout' if timed_out else 'died with the lost node'}")
        # ... and the primary keeps serving with the worker it has
        assert [w.id for w in primary.workers] == [2]
        assert await primary.request({'type': 'double', 'n': 4}, to=primary.round_robin()) == 8
        await cluster.close()
        assert cluster.exit_of(3) is not None

    run(main)


# -- the primary's own death -----------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        with open(f'/proc/{pid}/stat') as stat:
            return stat.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


ORPHAN_BOUND = 30.0  # README: a killed primary's actors end within this many seconds


def test_actors_end_within_the_documented_bound_when_their_primary_is_killed(ray_cluster):
    paths = os.pathsep.join([str(TESTS), str(ROOT)])
    driver = subprocess.Popen([sys.executable, str(TESTS / 'ray_orphan_driver.py'), ray_cluster.address, paths],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    guard = threading.Timer(WAIT, driver.kill)  # a driver that never gets ready ends the loop below
    guard.start()
    try:
        pids = []
        for line in driver.stdout:  # Ray writes its own notices to the driver's stdout too
            if line.startswith('pid '):
                pids.append(int(line.split()[1]))
                if len(pids) == 2:
                    break
            if driver.poll() is not None:
                break
        assert len(pids) == 2 and all(_alive(pid) for pid in pids)
        driver.send_signal(signal.SIGKILL)
        driver.wait(WAIT)
        killed = time.monotonic()
        while any(_alive(pid) for pid in pids) and time.monotonic() - killed < 2 * ORPHAN_BOUND:
            time.sleep(0.1)
        elapsed = time.monotonic() - killed
        print(f'actors of a SIGKILLed primary ended {elapsed:.2f}s after it')
        assert not any(_alive(pid) for pid in pids), f'actors alive {elapsed:.1f}s after their primary died'
        assert elapsed < ORPHAN_BOUND
    finally:
        guard.cancel()
        if driver.poll() is None:
            driver.kill()
            driver.wait()
