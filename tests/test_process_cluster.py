"""Issue 3's real-process checks with the whole core: crash/replace cycles leave no zombie,
garbage on a link is a worker_error and a replacement, and a shared port served by four
workers answers a thousand concurrent requests."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path
from typing import Any

from isocluster import ClusterPrimary, ClusterWorker, ProtocolError
from isocluster.transport import base
from tests.cluster_helpers import ready_waiter, run_cluster
from tests.test_supervision_process import _http_get, http_worker

CYCLES = 200
# One cycle is a SIGKILL-free exit, a fork and a ready frame: ~10 ms on an idle machine. The
# bound gives each cycle half a second (50x), so a loaded CI machine does not fail the test.
CYCLE_BOUND = 0.5


class Mortal(ClusterWorker):
    def _event_primary_message_die(self, event: Any) -> None:
        raise SystemExit(1)

    def _event_primary_message_garbage(self, event: Any) -> None:
        base.current_link()._sock.send(b'\xff\xff\xff\xff not a frame')


def mortal() -> None:
    Mortal()


def _zombie_children() -> list[int]:
    me = str(os.getpid())
    zombies = []
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            fields = stat.read_text().rsplit(')', 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] == 'Z':
            zombies.append(int(stat.parent.name))
    return zombies


def test_200_crash_and_replace_cycles_leave_no_zombie() -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        loop = asyncio.get_running_loop()
        primary.fork(1)
        await ready_waiter(primary, 1)
        for _ in range(CYCLES):
            replaced = loop.create_future()
            primary.once_after('worker_ready', lambda event: replaced.set_result(event.data['worker']))
            primary.send({'type': 'die'}, to=primary.workers[0])
            await replaced
        return primary.stats(), _zombie_children()

    stats, zombies = run_cluster('process', scenario, worker_target=mortal, restart_intensity=None,
                                  wall_timeout=CYCLES * CYCLE_BOUND)
    assert stats['exited'] == CYCLES and stats['restarts'] == CYCLES and stats['live'] == 1
    assert zombies == []


def test_garbage_on_a_link_is_a_worker_error_and_the_worker_is_replaced() -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        loop = asyncio.get_running_loop()
        primary.fork(2)
        await ready_waiter(primary, 2)
        errors: list[Any] = []
        primary.after('worker_error', lambda event: errors.append((event.data['worker'].id, event.data['error'])))
        replaced = loop.create_future()
        primary.once_after('worker_ready', lambda event: replaced.set_result(event.data['worker'].id))
        primary.send({'type': 'garbage'}, to=1)
        replacement = await replaced
        healthy = await primary.send('still here', to=2)  # the other worker is unaffected
        return errors, replacement, [worker.id for worker in primary.workers], healthy

    errors, replacement, pool, healthy = run_cluster('process', scenario, worker_target=mortal)
    assert len(errors) == 1 and errors[0][0] == 1 and isinstance(errors[0][1], ProtocolError)
    assert replacement == 3 and pool == [2, 3] and healthy is None


def test_a_port_shared_by_four_workers_answers_a_thousand_concurrent_requests() -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        listening: list[Any] = []
        primary.after('worker_listening', lambda event: listening.append(event.data['address']))
        primary.fork(4)
        await ready_waiter(primary, 4)
        while len(listening) < 4:
            await asyncio.sleep(0.01)  # listen() completes after READY; no event to await per worker
        port = listening[0][1]

        async def one() -> Any:
            try:
                return (await _http_get(port)).split(b'\r\n\r\n', 1)[1]
            except OSError as error:
                return error

        return await asyncio.gather(*(one() for _ in range(1000)))

    answers = run_cluster('process', scenario, worker_target=http_worker)
    failures = [answer for answer in answers if not isinstance(answer, bytes)]
    assert failures == []
    served = Counter(answers)
    assert len(served) >= 2, served  # the kernel spread the connections over several workers
