"""Backpressure (issue 7): a sender that awaits send() cannot outpace a slow worker by more
than the link's high-water mark, so the primary's memory stays bounded."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from isocluster import ClusterPrimary, ClusterWorker
from isocluster.transport.base import HIGH_WATER
from tests.cluster_helpers import ready_waiter, run_cluster

CHUNK = 'x' * (256 * 1024)
COUNT = 40  # 10 MiB in all, ten times the high-water mark


class SlowWorker(ClusterWorker):
    received = 0

    def _event_primary_message_block(self, event: Any) -> None:
        time.sleep(0.5)  # the worker's loop reads nothing meanwhile: it is the slow consumer

    def _event_primary_message_chunk(self, event: Any) -> None:
        self.received += 1
        if self.received == COUNT:
            self.send({'type': 'received', 'count': self.received})


def slow_worker() -> None:
    SlowWorker()


def test_awaited_sends_to_a_slow_worker_keep_the_buffer_bounded() -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        worker = primary.workers[0]
        received = asyncio.get_running_loop().create_future()
        primary.on('worker_message', lambda event: received.set_result(event.data['message']['count']))
        await primary.send({'type': 'block'}, to=worker)
        largest = 0
        for _ in range(COUNT):
            sent = primary.send({'type': 'chunk', 'data': CHUNK}, to=worker)
            largest = max(largest, primary.transport.links[worker.id].pending_writes())
            await sent
        return largest, await received

    largest, received = run_cluster('process', scenario, worker_target=slow_worker)
    assert received == COUNT
    assert HIGH_WATER < largest <= HIGH_WATER + len(CHUNK) + 1024  # it did fill up, and no further


def test_unawaited_sends_are_still_all_delivered() -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        worker = primary.workers[0]
        received = asyncio.get_running_loop().create_future()
        primary.on('worker_message', lambda event: received.set_result(event.data['message']['count']))
        primary.send({'type': 'block'}, to=worker)
        futures = [primary.send({'type': 'chunk', 'data': CHUNK}, to=worker) for _ in range(COUNT)]
        pending_at_once = sum(not future.done() for future in futures)
        await asyncio.gather(*futures)
        return pending_at_once, await received

    pending_at_once, received = run_cluster('process', scenario, worker_target=slow_worker)
    assert received == COUNT
    assert pending_at_once > 0  # the futures past the high-water mark waited for the drain
