"""Supervision on real processes (issue 5): restart limits, bounded shutdown, heartbeats, reload."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

from isocluster import ClusterPrimary, ClusterWorker, HeartbeatTimeout
from tests.cluster_helpers import ready_waiter, run_cluster


def crash_at_boot() -> None:
    raise SystemExit(7)


def test_crash_at_boot_gives_exactly_intensity_restarts_then_restart_limit() -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        limit = asyncio.get_running_loop().create_future()
        forks: list[int] = []
        primary.after('worker_fork', lambda event: forks.append(event.data['worker'].id))
        primary.after('restart_limit', lambda event: limit.set_result(event.data['worker_count']))
        primary.on('no_workers', lambda event: event.prevent())  # past the 3 failed starts that stop it
        primary.fork(1)
        live = await limit
        return forks, live, primary.stats()

    forks, live, stats = run_cluster('process', scenario, worker_target=crash_at_boot, restart_intensity=5)
    assert forks == [1, 2, 3, 4, 5, 6]  # the first worker and 5 replacements (R128)
    assert live == 0
    assert stats['restarts'] == 5


def ignore_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    worker = ClusterWorker()
    worker.on('primary_disconnect', lambda event: event.prevent())  # stays alive after DISCONNECT


def test_worker_ignoring_disconnect_and_sigterm_is_killed_within_both_timeouts() -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        worker = primary.workers[0]
        closed = asyncio.get_running_loop().create_future()
        primary.after('shut_down_complete', lambda event: closed.set_result(None))
        started = time.monotonic()
        primary.shut_down()
        await closed
        return time.monotonic() - started, worker.exit_signal

    elapsed, exit_signal = run_cluster(
        'process', scenario, worker_target=ignore_sigterm, shutdown_timeout=0.3, kill_timeout=0.3,
    )
    assert exit_signal == signal.SIGKILL
    assert elapsed < 0.3 + 0.3 + 1.0


def spin_forever_on_request() -> None:
    worker = ClusterWorker()

    def spin(event: Any) -> None:
        if event.data['message'] == 'spin':
            while True:
                pass

    worker.on('primary_message', spin)


def test_blocked_loop_is_detected_by_heartbeat_and_replaced() -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        first = primary.workers[0]
        errors: list[Any] = []
        primary.after('worker_error', lambda event: errors.append(event.data['error']))
        replaced = asyncio.get_running_loop().create_future()
        primary.after('worker_ready', lambda event: replaced.done() or replaced.set_result(event.data['worker']))
        await primary.send('spin', to=first)
        replacement = await replaced
        return errors, first.exit_signal, replacement.id

    errors, exit_signal, replacement = run_cluster(
        'process', scenario, worker_target=spin_forever_on_request,
        heartbeat_interval=0.05, heartbeat_timeout=0.3, kill_timeout=0.3,
    )
    assert len(errors) == 1 and isinstance(errors[0], HeartbeatTimeout) and errors[0].worker_id == 1
    assert exit_signal == signal.SIGTERM
    assert replacement == 2


BUSY_SLICE = 0.02  # the busy worker's loop is blocked this long at a time, then yields
HEARTBEAT_INTERVAL = 0.1
# Fifty slices: a wide margin over the longest time the worker leaves a heartbeat unanswered,
# so a scheduler pause on a loaded 2-core machine is never taken for an unresponsive worker.
HEARTBEAT_TIMEOUT = 50 * BUSY_SLICE
OBSERVED_BEATS = 2 * round(HEARTBEAT_TIMEOUT / HEARTBEAT_INTERVAL)  # two timeouts' worth of answered beats


def busy_but_responsive() -> None:
    worker = ClusterWorker()

    async def work() -> None:
        while True:  # CPU-bound but yields to the loop
            deadline = time.monotonic() + BUSY_SLICE
            while time.monotonic() < deadline:
                pass
            await asyncio.sleep(0)

    worker.on('primary_message', lambda event: asyncio.get_running_loop().create_task(work()))  # runs inside the loop


def test_busy_but_responsive_worker_is_not_killed() -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        errors: list[Any] = []
        primary.after('worker_error', lambda event: errors.append(event.data['error']))
        await primary.send('work', to=primary.workers[0])
        beats = 0
        while beats < OBSERVED_BEATS:  # observed in answered beats (no public view of them yet)
            before = primary.workers[0].life.last_beat
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            if primary.workers[0].life.last_beat > before:
                beats += 1
        return errors, primary.workers[0].id

    errors, worker_id = run_cluster(
        'process', scenario, worker_target=busy_but_responsive, heartbeat_interval=HEARTBEAT_INTERVAL,
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
    )
    assert errors == [] and worker_id == 1


def http_worker() -> None:
    worker = ClusterWorker()
    loop = asyncio.get_event_loop()  # set as current, not yet running (R99)

    async def serve() -> None:
        sock = await worker.listen(('127.0.0.1', 0))

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b'\r\n\r\n')
            body = f'worker {ClusterWorker.worker_id}'.encode()
            writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' % (len(body), body))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, sock=sock)

        def stop(event: Any) -> None:
            # Stop accepting, finish what was accepted, then leave (graceful drain).
            event.prevent()
            server.close()

            async def leave() -> None:
                await server.wait_closed()
                # Connections accepted before close() still become tasks (asyncio accepts in
                # a task, then starts the handler in another): wait for all of them.
                others = asyncio.all_tasks() - {asyncio.current_task()}
                while others:
                    await asyncio.wait(others)
                    others = asyncio.all_tasks() - {asyncio.current_task()}
                worker.destroy()

            loop.create_task(leave())

        worker.on('primary_disconnect', stop)

    loop.create_task(serve())


async def _http_get(port: int) -> bytes:
    reader, writer = await asyncio.open_connection('127.0.0.1', port)
    try:
        writer.write(b'GET / HTTP/1.1\r\nHost: x\r\n\r\n')
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def test_rolling_reload_under_http_load_loses_no_request() -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        loop = asyncio.get_running_loop()
        listening: list[Any] = []
        primary.after('worker_listening', lambda event: listening.append(event.data['address']))
        primary.fork(2)
        await ready_waiter(primary, 2)
        while len(listening) < 2:
            await asyncio.sleep(0.01)
        port = listening[0][1]
        reloaded = loop.create_future()
        primary.after('reload_complete', lambda event: reloaded.set_result(event.data))
        stop = False
        outcomes: list[Any] = []

        async def client() -> None:
            while not stop:
                try:
                    outcomes.append((await _http_get(port)).split(b'\r\n\r\n', 1)[1])
                except OSError as error:
                    outcomes.append(error)

        clients = [loop.create_task(client()) for _ in range(4)]
        while len(outcomes) < 20:
            await asyncio.sleep(0.01)
        primary.reload()
        result = await reloaded
        after_reload = len(outcomes)
        while len(outcomes) < after_reload + 20:
            await asyncio.sleep(0.01)
        stop = True
        await asyncio.gather(*clients)
        return result, outcomes, [worker.id for worker in primary.workers]

    result, outcomes, pool = run_cluster('process', scenario, worker_target=http_worker)
    failures = [outcome for outcome in outcomes if not isinstance(outcome, bytes)]
    assert failures == []
    assert result == {'worker_count': 2, 'aborted': False}
    assert pool == [3, 4]
    served_by = {outcome for outcome in outcomes}
    assert {b'worker 3', b'worker 4'} & served_by  # the new workers served during the run


def test_reload_keeps_capacity_on_memory_transport() -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(3)
        await ready_waiter(primary, 3)
        sizes: list[int] = []
        primary.after('remove_worker', lambda event: sizes.append(len(primary.workers)))
        done = asyncio.get_running_loop().create_future()
        primary.after('reload_complete', lambda event: done.set_result(event.data))
        primary.reload()
        return await done, list(sizes), [worker.id for worker in primary.workers]

    result, sizes, pool = run_cluster('memory', scenario, worker_target=lambda: ClusterWorker())
    assert result == {'worker_count': 3, 'aborted': False}
    assert min(sizes) >= 3  # R132: capacity never drops below the starting pool size
    assert pool == [4, 5, 6]
