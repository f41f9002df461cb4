"""Task queues on the Ray transport (issue 15): least-busy requests, map with chunks, a worker
lost mid-map, max_concurrency. The same rules (R140-R146) as tests/test_dispatch.py.

Skipped when `ray` is not installed. One local Ray instance, on 127.0.0.1 only, serves the
module; every actor is killed by the primary's destroy (RayTransport.close)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Callable

import pytest

from isocluster.transport import ray_local  # noqa: E402

ray = ray_local.ray_for_tests()

from isocluster import ClusterPrimary, ClusterWorker, MapError, WorkerLost  # noqa: E402
from ray_links import RecordingRayTransport  # noqa: E402

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
RAY_TIMEOUT = 90.0  # wall-clock seconds for one scenario (each worker is a new actor process)


@pytest.fixture(scope='module', autouse=True)
def ray_instance():
    if ray.is_initialized():  # pragma: no cover - another module left it running
        ray.shutdown()
    # A Ray instance of its own on 127.0.0.1 only; the actors import this module's targets by name.
    ray_local.start_local(paths=[TESTS, ROOT])
    yield
    ray.shutdown()


class QueueWorker(ClusterWorker):
    def _event_primary_message_square(self, event: Any) -> int:
        return event.data['message']['value'] ** 2

    async def _event_primary_message_wait(self, event: Any) -> list[Any]:
        message = event.data['message']
        await asyncio.sleep(message['seconds'])
        return [message['value'], ClusterWorker.worker_id]


def queue_worker() -> None:
    QueueWorker()


def one_at_a_time_worker() -> None:
    QueueWorker(max_concurrency=1)


def run(scenario: Callable[[ClusterPrimary], Any], target: Callable[[], None] = queue_worker, workers: int = 2) -> Any:
    async def main() -> Any:
        primary = ClusterPrimary(worker_target=target, transport=RecordingRayTransport(), ready_timeout=60.0)
        ready = asyncio.get_running_loop().create_future()
        primary.after('worker_ready', lambda event: len(primary.workers) >= workers and not ready.done()
                      and ready.set_result(None))
        try:
            primary.fork(workers)
            await asyncio.wait_for(ready, RAY_TIMEOUT)
            return await asyncio.wait_for(scenario(primary), RAY_TIMEOUT)
        finally:
            primary.destroy()
            await asyncio.wait_for(primary.wait_closed(), RAY_TIMEOUT)

    return asyncio.run(main())


def test_map_with_chunks_and_requests_to_the_least_busy_worker() -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        first, second = primary.workers
        hanging = primary.request({'type': 'wait', 'seconds': 5.0, 'value': -1}, to=first)
        chosen = primary.least_busy().id
        reply = await primary.request({'type': 'wait', 'seconds': 0.0, 'value': 0})
        ordered = [value async for value in primary.map([{'type': 'square', 'value': n} for n in range(30)], chunksize=4)]
        hanging.cancel()
        return chosen, reply, ordered

    chosen, reply, ordered = run(scenario)
    assert chosen == 2 and reply == [0, 2]
    assert ordered == [n ** 2 for n in range(30)]


def test_a_worker_killed_mid_map_has_its_messages_resent_with_retries() -> None:
    tasks = [{'type': 'wait', 'seconds': 0.2, 'value': n} for n in range(12)]

    async def scenario(primary: ClusterPrimary) -> Any:
        victim = primary.workers[0]
        replies = []
        async for reply in primary.map(tasks, max_in_flight=2, retries=2):
            replies.append(reply)
            if len(replies) == 2:
                ray.kill(primary.transport.link_of(victim).actor)  # from outside the cluster's code, mid-map
        return replies

    replies = run(scenario)
    assert [value for value, _worker in replies] == list(range(12))


def test_a_worker_killed_mid_map_without_retries_fails_naming_a_message() -> None:
    tasks = [{'type': 'wait', 'seconds': 0.5, 'value': n} for n in range(8)]

    async def scenario(primary: ClusterPrimary) -> Any:
        victim = primary.workers[0]
        with pytest.raises(MapError) as error:
            async for _reply in primary.map(tasks, max_in_flight=1):
                ray.kill(primary.transport.link_of(victim).actor)
        return error.value

    error = run(scenario)
    assert 0 <= error.index < 8 and isinstance(error.__cause__, WorkerLost)


def test_max_concurrency_serves_one_request_at_a_time() -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        (worker,) = primary.workers
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.gather(*[primary.request({'type': 'wait', 'seconds': 0.3, 'value': n}, to=worker) for n in range(3)])
        return loop.time() - start

    elapsed = run(scenario, target=one_at_a_time_worker, workers=1)
    assert elapsed >= 0.9  # three 0.3 s requests, one after the other (at once: 0.3 s)
