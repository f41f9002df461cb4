"""One max_concurrency scenario (R145) for every transport: tests/test_gate_transports.py runs
it on memory and processes, tests/test_ray_gate.py on Ray. The worker's targets are module
level, so Ray's actor processes import them by name."""

from __future__ import annotations

import asyncio
from typing import Any

from isocluster import ClusterPrimary, ClusterWorker
from isocluster.transport.base import current_link

LIMIT = 2  # max_concurrency of the scenario's workers
WORKERS = 2
STEP_SECONDS = 0.05  # an async message's handler: long enough that requests meet on the worker


class GatedWorker(ClusterWorker):
    """Notes, for each message it serves, how many handlers were running when it started and
    on which ticks of its own clock it started and ended."""

    def __init__(self) -> None:
        super().__init__(max_concurrency=LIMIT)
        self.running = 0
        self.clock = 0

    def _tick(self) -> int:
        self.clock += 1
        return self.clock

    def _event_primary_message_quick(self, event: Any) -> dict[str, Any]:
        self.running += 1
        record = {'value': event.data['message']['value'], 'worker': ClusterWorker.worker_id,
                  'running': self.running, 'start': self._tick()}
        self.running -= 1
        record['end'] = self._tick()
        return record

    async def _event_primary_message_step(self, event: Any) -> dict[str, Any]:
        self.running += 1
        record = {'value': event.data['message']['value'], 'worker': ClusterWorker.worker_id,
                  'running': self.running, 'start': self._tick()}
        try:
            await asyncio.sleep(event.data['message']['seconds'])
        finally:
            self.running -= 1
        record['end'] = self._tick()
        return record

    def _event_primary_message_reads(self, event: Any) -> Any:
        """How many reads this worker's end of the link has delivered so far."""
        link = current_link()
        return None if link is None else link.reads


def gated_worker() -> None:
    GatedWorker()


def tasks(count: int, first: int = 0) -> list[dict[str, Any]]:
    """Async and sync handlers in turn (a chunk mixes both)."""
    return [{'type': 'step', 'value': value, 'seconds': STEP_SECONDS} if value % 2 == 0
            else {'type': 'quick', 'value': value} for value in range(first, first + count)]


CHUNKSIZE = 3
MAPPED = 12
DIRECT = 4


async def scenario(primary: ClusterPrimary) -> dict[str, Any]:
    """A map of chunks, more requests in flight on each worker than it may serve (max_in_flight
    above LIMIT), and plain requests to the least busy worker at the same time."""
    direct = [primary.request(message) for message in tasks(DIRECT, first=100)]
    mapped = [reply async for reply in primary.map(tasks(MAPPED), chunksize=CHUNKSIZE, max_in_flight=LIMIT + 2)]
    return {'mapped': mapped, 'direct': list(await asyncio.gather(*direct)),
            'in_flight': sum(primary.in_flight(worker) for worker in primary.workers)}


def check(outcome: dict[str, Any]) -> None:
    """The same observable on every transport: nothing lost or doubled, at most LIMIT handlers
    running at once on a worker (and the limit reached: the gate had work to hold back), and
    each message of a chunk started only once the previous one had ended."""
    mapped, direct = outcome['mapped'], outcome['direct']
    assert [record['value'] for record in mapped] == list(range(MAPPED))
    assert [record['value'] for record in direct] == list(range(100, 100 + DIRECT))
    records = mapped + direct
    assert max(record['running'] for record in records) == LIMIT
    for start in range(0, MAPPED, CHUNKSIZE):
        chunk = mapped[start:start + CHUNKSIZE]
        assert len({record['worker'] for record in chunk}) == 1
        for previous, following in zip(chunk, chunk[1:]):
            assert previous['end'] < following['start'], chunk
    assert outcome['in_flight'] == 0


async def reads_scenario(primary: ClusterPrimary) -> list[Any]:
    """Three requests to one worker, each sent once the previous reply is in: three reads."""
    worker = primary.workers[0]
    return [await primary.request({'type': 'reads'}, to=worker) for _ in range(3)]


def check_reads(counts: list[Any]) -> None:
    assert all(type(count) is int for count in counts), counts
    assert counts[0] < counts[1] < counts[2], counts
