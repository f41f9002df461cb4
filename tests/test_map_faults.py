"""`primary.map()` under faults, as a demanding user meets them (issue 15): the defects found
by using the map on real processes, each kept as a test (R142, R143)."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

from isocluster import ClusterPrimary, ClusterWorker, MapError, WorkerLost
from tests.cluster_helpers import TRANSPORTS, ready_waiter, run_cluster

TASK_SECONDS = 0.05


class FaultyWorker(ClusterWorker):
    async def _event_primary_message_wait(self, event: Any) -> int:
        await asyncio.sleep(event.data['message']['seconds'])
        return event.data['message']['value']

    def _event_primary_message_poison(self, event: Any) -> None:
        """Kills whichever worker runs it, every time: SIGKILL on processes, an exit on the
        memory transport (a simulated worker has no process to signal)."""
        if event.data['message']['sigkill']:
            os.kill(os.getpid(), signal.SIGKILL)
        raise SystemExit(9)


def faulty_worker() -> None:
    FaultyWorker()


def tasks(count: int, poison: int, transport: str) -> list[dict[str, Any]]:
    return [{'type': 'poison', 'sigkill': transport == 'process'} if value == poison else {'type': 'wait', 'seconds': TASK_SECONDS, 'value': value}
            for value in range(count)]


async def started(primary: ClusterPrimary, count: int) -> None:
    primary.fork(count)
    await ready_waiter(primary, count)


@pytest.mark.parametrize('transport', TRANSPORTS)
@pytest.mark.parametrize('chunksize', [1, 2])
def test_a_message_that_kills_every_worker_is_the_one_the_map_names(transport: str, chunksize: int) -> None:
    """Message 3 kills each worker it reaches. Messages sent beside it die with it the first
    time; re-sent, they must not die with it again and again until their own retries run out,
    or the map blames an innocent message (it named message 1, or 2 of the chunk 2..3)."""
    poison = 3

    async def scenario(primary: ClusterPrimary) -> Any:
        await started(primary, 2)
        replies: list[Any] = []
        with pytest.raises(MapError) as error:
            async for reply in primary.map(tasks(10, poison, transport), chunksize=chunksize, max_in_flight=2, retries=2):
                replies.append(reply)
        return replies, error.value

    replies, error = run_cluster(transport, scenario, worker_target=faulty_worker)
    assert error.index == poison and f'message {poison} ' in str(error)
    assert isinstance(error.__cause__, WorkerLost)
    assert replies == list(range(len(replies))) and len(replies) <= poison


def test_map_ordered_must_be_a_bool() -> None:
    """`ordered='no'` (a string from a config file) ran the map in order, silently."""
    async def scenario(primary: ClusterPrimary) -> Any:
        for value in ('no', 0, None):
            with pytest.raises(TypeError, match='ordered'):
                primary.map([], ordered=value)

    run_cluster('memory', scenario, worker_target=faulty_worker)


# Recycling (max_requests) retires workers mid-map: each retired worker answers the map's
# requests it has before its DISCONNECT (R147). Before, the replies were lost: retries=0 failed
# the map, retries>0 ran those handlers twice.
@pytest.mark.parametrize('transport', TRANSPORTS)
def test_recycling_a_worker_loses_no_message_of_a_map(transport: str) -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        await started(primary, 2)
        messages = [{'type': 'wait', 'seconds': TASK_SECONDS, 'value': value} for value in range(20)]
        return [reply async for reply in primary.map(messages)]

    assert run_cluster(transport, scenario, worker_target=faulty_worker, max_requests=5) == list(range(20))
