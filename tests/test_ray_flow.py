"""Flow control of a Ray worker's sends (issue 14): the worker's outbox, pulled by the primary
from another thread, is accounted like a socket's queue, so backpressure and
`max_queued_bytes` hold on the worker's side too.

Skipped when `ray` is not installed; `make test-ray` runs it. Ray is started local-only
(127.0.0.1, no dashboard) for this module and shut down after it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from isocluster.transport import ray_local  # noqa: E402

ray = ray_local.ray_for_tests()

from isocluster import ClusterPrimary, ClusterWorker  # noqa: E402
from isocluster.transport.flow import HIGH_WATER  # noqa: E402
from isocluster.transport.ray import RayTransport  # noqa: E402

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
CAP = 4 * HIGH_WATER
PAYLOAD = 10_000
BURST = 1_000  # ~10 MB in one loop turn: well past HIGH_WATER and CAP
TIMEOUT = 60.0  # wall-clock seconds: a worker is a new actor process


@pytest.fixture(scope='module', autouse=True)
def ray_instance():
    if ray.is_initialized():  # pragma: no cover - another module left it running
        ray.shutdown()
    ray_local.start_local(paths=[TESTS, ROOT])  # 127.0.0.1 only
    yield
    ray.shutdown()


class BurstWorker(ClusterWorker):
    """On `burst`: BURST sends in one loop turn, never awaited while sending (the pulls the
    primary makes meanwhile reach this loop only after the turn). Then it awaits the sends
    still waiting and reports what it saw."""

    async def _event_primary_message_burst(self, event: Any) -> None:
        sent = [self.send({'type': 'bulk', 'n': i, 'payload': 'x' * PAYLOAD}) for i in range(BURST)]
        waiting = [i for i, future in enumerate(sent) if not future.done()]
        refused = [i for i, future in enumerate(sent) if future.done() and future.exception() is not None]
        errors = {type(sent[i].exception()).__name__ for i in refused}
        text = str(sent[refused[0]].exception()) if refused else ''
        order: list[int] = []
        for i in waiting:
            sent[i].add_done_callback(lambda _, i=i: order.append(i))
        await asyncio.gather(*(sent[i] for i in waiting))
        self.send({'type': 'report', 'waiting': waiting, 'refused': refused, 'errors': sorted(errors),
                   'text': text, 'resolved_order': order})


def burst_target() -> None:
    BurstWorker(max_queued_bytes=CAP)


def test_a_ray_worker_flooding_its_primary_waits_then_is_refused_past_its_cap():
    async def main() -> None:
        transport = RayTransport()
        primary = ClusterPrimary(worker_target=burst_target, transport=transport, restart='never')
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[Any] = loop.create_future()
        reported: asyncio.Future[Any] = loop.create_future()
        bulk: list[int] = []

        def on_message(event: Any) -> None:
            message = event.data['message']
            if message['type'] == 'bulk':
                bulk.append(message['n'])
            elif not reported.done():
                reported.set_result(message)

        primary.on('worker_ready', lambda e: ready.done() or ready.set_result(e.data['worker']))
        primary.on('worker_message', on_message)
        try:
            primary.fork(1)
            worker = await asyncio.wait_for(ready, TIMEOUT)
            primary.send({'type': 'burst'}, to=worker)
            report = await asyncio.wait_for(reported, TIMEOUT)
        finally:
            primary.destroy()
            await asyncio.wait_for(primary.wait_closed(), TIMEOUT)
            transport.close()

        accepted = BURST - len(report['refused'])
        # Backpressure: past HIGH_WATER the sends wait for the primary to pull.
        assert report['waiting'], 'every send resolved at once: the outbox is not accounted'
        assert report['waiting'][0] * PAYLOAD <= HIGH_WATER + PAYLOAD
        # The cap: the sends past it are refused, each with the error that says so.
        assert report['refused'] == list(range(accepted, BURST))
        assert accepted * PAYLOAD <= CAP + 2 * PAYLOAD
        assert report['errors'] == ['BackpressureError']
        assert 'max_queued_bytes' in report['text'] and 'worker 1' in report['text']
        # The waiting sends resolved in send order, and nothing accepted was lost or reordered.
        assert report['resolved_order'] == report['waiting']
        assert bulk == list(range(accepted))

    asyncio.run(main())
