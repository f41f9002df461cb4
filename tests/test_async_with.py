"""`async with ClusterPrimary(...) as primary:` shuts the cluster down on exit and waits for it
(issue 16), on both transports."""

from __future__ import annotations

import asyncio

import pytest

from cluster_helpers import ready_waiter
from isocluster import ClusterPrimary, ClusterWorker
from isocluster.transport.memory import MemoryTransport
from isocluster.transport.process import ProcessTransport


class Greeter(ClusterWorker):
    def _event_primary_message_greet(self, event):
        return f'hello from worker {ClusterWorker.worker_id}'


built: list[ClusterPrimary] = []


async def use_cluster(transport, fail: bool = False):
    exits = []
    async with ClusterPrimary(worker_target=Greeter, transport=transport) as primary:
        built.append(primary)
        primary.after('worker_exit', lambda event: exits.append(
            (event.data['code'], event.data['signal'], event.data['worker'].exited_after_disconnect)))
        ready = ready_waiter(primary, 2)
        primary.fork(worker_count=2)
        await ready
        answer = await primary.request({'type': 'greet'}, to=primary.round_robin())
        if fail:
            raise LookupError('the body failed')
    return primary, answer, exits


def on_memory(fail: bool = False):
    sim = MemoryTransport(seed=5)
    task = sim.loop.create_task(use_cluster(sim, fail))
    sim.run_until(task.done)
    return task.result()


@pytest.mark.parametrize('run', [on_memory, lambda: asyncio.run(use_cluster(ProcessTransport()))],
                         ids=['memory', 'process'])
def test_leaving_async_with_shuts_the_cluster_down_and_waits_for_every_worker(run):
    primary, answer, exits = run()
    assert answer == 'hello from worker 1'
    assert primary.closed and primary.stats()['live'] == 0
    assert exits == [(0, None, True), (0, None, True)]  # both asked to leave, both gone before the block ended


def test_an_error_in_the_block_still_shuts_down_and_propagates():
    sim = MemoryTransport(seed=5)
    task = sim.loop.create_task(use_cluster(sim, fail=True))
    sim.run_until(task.done)
    with pytest.raises(LookupError, match='the body failed'):
        task.result()
    assert built[-1].closed and built[-1].stats()['live'] == 0
    assert sim.loop.time() < 1.0  # no timeout was waited for: the workers left when asked
