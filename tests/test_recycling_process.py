"""Recycling and per-worker figures on real processes (issue 16): resident memory and CPU time
come from /proc through the process transport."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from isocluster import ClusterPrimary, ClusterWorker
from isocluster.transport import procfs
from tests.cluster_helpers import ready_waiter, run_cluster

GROWTH = 128 * 1024 * 1024
held: list[bytes] = []


def growing_worker() -> None:
    worker = ClusterWorker()

    def on_message(event: Any) -> None:
        if event.data['message'] == 'grow':
            held.append(b'x' * GROWTH)  # written, so resident
        elif event.data['message'] == 'burn':
            started = time.process_time()
            while time.process_time() - started < 0.3:
                pass
        worker.send('done')

    worker.on('primary_message', on_message)


def test_a_worker_above_max_memory_is_replaced_first_then_retired() -> None:
    baseline = procfs.resident_bytes(os.getpid())
    assert baseline is not None

    async def scenario(primary: ClusterPrimary) -> Any:
        loop = asyncio.get_running_loop()
        recycled = loop.create_future()
        old_exit = loop.create_future()
        order: list[str] = []
        primary.on('worker_recycle', lambda event: recycled.done() or recycled.set_result(
            (event.data['worker'].id, event.data['reason'], event.data['value'])))
        primary.on('worker_ready', lambda event: order.append(f"ready {event.data['worker'].id}"))
        primary.on('worker_disconnect', lambda event: order.append(f"disconnect {event.data['worker'].id}"))
        primary.on('worker_exit', lambda event: event.data['worker'].id == 1 and old_exit.set_result(None))
        primary.fork(1)
        await ready_waiter(primary, 1)
        await primary.send('grow', to=1)
        worker_id, reason, value = await recycled
        await old_exit
        return worker_id, reason, value, order, [handle.id for handle in primary.workers], primary.stats()

    worker_id, reason, value, order, workers, stats = run_cluster(
        'process', scenario, worker_target=growing_worker,
        max_memory=baseline + GROWTH // 2, memory_check_interval=0.05, restart_intensity=0,
    )
    assert (worker_id, reason) == (1, 'max_memory') and value > baseline + GROWTH // 2
    assert order.index('ready 2') < order.index('disconnect 1')
    assert workers == [2] and stats['restarts'] == 0


def test_per_worker_figures_on_processes() -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        done = asyncio.get_running_loop().create_future()
        primary.on('worker_message', lambda event: done.done() or done.set_result(None))
        primary.fork(2)
        await ready_waiter(primary, 2)
        first = primary.workers[0]
        before = first.stats()
        await primary.send('burn', to=first)
        await done
        return first.pid, before, first.stats(), primary.stats()['workers']

    pid, before, after, workers = run_cluster('process', scenario, worker_target=growing_worker)
    assert after['pid'] == pid and after['id'] == 1 and after['state'] == 'ready'
    assert after['resident_bytes'] > 1024 * 1024
    assert after['cpu_seconds'] - before['cpu_seconds'] >= 0.2  # it burned 0.3 s of CPU
    assert after['uptime'] > before['uptime'] > 0
    assert (after['messages_out'], after['messages_in'], after['in_flight'], after['restarts']) == (1, 1, 0, 0)
    assert sorted(workers) == [1, 2] and workers[2]['messages_out'] == 0 and workers[2]['pid'] != pid
