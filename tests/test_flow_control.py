"""Flow control (issue 14): sends made while a link is congested wait in one FIFO per link,
with no task per send, resolve in send order, and lose or reorder nothing; past
`max_queued_bytes` a send is refused with BackpressureError and nothing of it is written."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from isocluster import BackpressureError, ClusterPrimary, ClusterWorker, SendError
from tests.cluster_helpers import TRANSPORTS, ready_waiter, run_cluster

FLOOD = 100_000
PAYLOAD = 'x' * 40  # ~100-byte messages, as the stream: 10 MB, ten times HIGH_WATER
TASK_MARGIN = 3  # tasks a flood may add: none per send; a few for the library's own timers


def item(i: int) -> dict[str, Any]:
    return {'type': 'item', 'id': i, 'payload': PAYLOAD}


def watch_resolution(futures: list['asyncio.Future[None]']) -> tuple[list[int], int]:
    """The send indexes, appended as their futures resolve; and how many were waiting."""
    order: list[int] = []
    waiting = 0
    for index, future in enumerate(futures):
        if not future.done():
            waiting += 1
            future.add_done_callback(lambda _, index=index: order.append(index))
    return order, waiting


class InOrder:
    """Counts `item` messages and notes the first one out of order."""

    def __init__(self) -> None:
        self.count = 0
        self.first_wrong: int | None = None

    def take(self, message: Any) -> None:
        if message['id'] != self.count and self.first_wrong is None:
            self.first_wrong = self.count
        self.count += 1


# -- the gate: how a test makes a consumer stop reading ------------------------------------
# memory: the link is held by the simulation; process: the consumer's loop blocks reading a
# pipe the test opened before forking, until the producer writes a byte to it.

GATE: dict[str, Any] = {}


def open_gate_pipe() -> None:
    GATE['read'], GATE['write'] = os.pipe()


def close_gate_pipe() -> None:
    for name in ('read', 'write'):
        fd = GATE.pop(name, None)
        if fd is not None:
            os.close(fd)


def gated_receiver(received: InOrder, report: 'asyncio.Future[Any]', gated: bool = True) -> Any:
    """The primary's worker_message handler in a worker-floods-primary test: the first item
    blocks its loop on the gate (when `gated`), every item is counted, the report settles."""
    def on_message(event: Any) -> None:
        message = event.data['message']
        if message['type'] == 'report':
            report.set_result(message)
            return
        if received.count == 0 and gated:
            os.read(GATE['read'], 1)  # the primary stops reading until the worker flooded
        received.take(message)
    return on_message


def traced_growth(send: Any, count: int) -> int:
    """How many bytes traced memory grew by while `send(item(i))` ran `count` times, unawaited."""
    import tracemalloc

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(count):
            send(item(i))  # fire and forget
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


class GatedConsumer(ClusterWorker):
    """Primary to worker: blocks on the gate at the first item, then checks the order."""

    def __init__(self) -> None:
        super().__init__()
        self.received = InOrder()

    def _event_primary_message_item(self, event: Any) -> None:
        if self.received.count == 0 and 'read' in GATE:
            os.read(GATE['read'], 1)
        self.received.take(event.data['message'])

    def _event_primary_message_report(self, event: Any) -> None:
        self.send({'type': 'report', 'count': self.received.count, 'first_wrong': self.received.first_wrong})


class Flooder(ClusterWorker):
    """Worker to primary: floods unawaited, reports its tasks and its futures' order."""

    def _event_primary_message_flood(self, event: Any) -> None:
        tasks_before = len(asyncio.all_tasks())
        futures = [self.send(item(i)) for i in range(event.data['message']['count'])]
        tasks_during = len(asyncio.all_tasks())
        order, waiting = watch_resolution(futures)
        if 'flooded' in GATE:
            GATE['flooded'].set_result(None)  # memory: the test releases the held link
        else:
            os.write(GATE['write'], b'x')  # process: the primary's loop may read again
        report = {'type': 'report', 'tasks_before': tasks_before, 'tasks_during': tasks_during, 'waiting': waiting}
        asyncio.gather(*futures).add_done_callback(lambda _: self.send({
            **report, 'in_order': order == sorted(order) and len(order) == waiting,
        }))


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_a_primary_flooding_a_stalled_worker_keeps_no_task_per_send(transport: str) -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        worker = primary.workers[0]
        report = asyncio.get_running_loop().create_future()
        primary.on('worker_message', lambda event: report.set_result(event.data['message']))
        if transport == 'memory':
            primary.transport.hold(worker, 'to_worker')
        tasks_before = len(asyncio.all_tasks())
        futures = [primary.send(item(i), to=worker) for i in range(FLOOD)]
        tasks_during = len(asyncio.all_tasks())
        order, waiting = watch_resolution(futures)
        if transport == 'memory':
            primary.transport.release(worker, 'to_worker')
        else:
            os.write(GATE['write'], b'x')
        await asyncio.gather(*futures)
        primary.send({'type': 'report'}, to=worker)
        return tasks_before, tasks_during, waiting, order, await report

    if transport == 'process':
        open_gate_pipe()
    try:
        tasks_before, tasks_during, waiting, order, report = run_cluster(
            transport, scenario, worker_target=GatedConsumer)
    finally:
        close_gate_pipe()
    assert waiting > FLOOD // 2  # the link was congested for most of the flood
    assert tasks_during <= tasks_before + TASK_MARGIN
    assert order == sorted(order) and len(order) == waiting  # resolved, in send order
    assert report == {'type': 'report', 'count': FLOOD, 'first_wrong': None}


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_a_worker_flooding_a_stalled_primary_keeps_no_task_per_send(transport: str) -> None:
    received = InOrder()

    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        worker = primary.workers[0]
        report = asyncio.get_running_loop().create_future()
        primary.on('worker_message', gated_receiver(received, report, gated=transport == 'process'))
        if transport == 'memory':
            GATE['flooded'] = asyncio.get_running_loop().create_future()
            primary.transport.hold(worker, 'to_primary')
        primary.send({'type': 'flood', 'count': FLOOD}, to=worker)
        if transport == 'memory':
            await GATE['flooded']
            primary.transport.release(worker, 'to_primary')
        return await report

    if transport == 'process':
        open_gate_pipe()
    try:
        report = run_cluster(transport, scenario, worker_target=Flooder)
    finally:
        close_gate_pipe()
        GATE.pop('flooded', None)
    assert report['waiting'] > FLOOD // 2
    assert report['tasks_during'] <= report['tasks_before'] + TASK_MARGIN
    assert report['in_order'] is True
    assert (received.count, received.first_wrong) == (FLOOD, None)


# -- the cap -------------------------------------------------------------------------------

CAP = 20_000


def fill_until_refused(send: Any) -> tuple[int, 'asyncio.Future[None]']:
    """Send items until one is refused; how many went, and the refused future."""
    for i in range(10 * CAP):
        future = send(item(i))
        if future.done() and future.exception() is not None:
            return i, future
    raise AssertionError('no send was refused')


def test_past_the_cap_a_send_is_refused_whole_and_the_rest_is_delivered() -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        worker = primary.workers[0]
        report = asyncio.get_running_loop().create_future()
        primary.on('worker_message', lambda event: report.set_result(event.data['message']))
        primary.transport.hold(worker, 'to_worker')
        accepted, refused = fill_until_refused(lambda message: primary.send(message, to=worker))
        pending = primary.transport.links[worker.id].pending_writes()
        primary.transport.release(worker, 'to_worker')
        primary.send({'type': 'report'}, to=worker)
        return accepted, refused.exception(), pending, await report

    accepted, error, pending, report = run_cluster(
        'memory', scenario, worker_target=GatedConsumer, max_queued_bytes=CAP)
    assert isinstance(error, BackpressureError) and isinstance(error, SendError)
    assert error.worker_id == 1
    assert 'worker 1' in str(error) and f'max_queued_bytes={CAP}' in str(error)
    assert 'await' in str(error)  # says what to do
    assert CAP - 200 < pending <= CAP  # it filled up to the cap, and no further
    assert report == {'type': 'report', 'count': accepted, 'first_wrong': None}  # nothing partial or lost


class CappedFlooder(ClusterWorker):
    def __init__(self) -> None:
        super().__init__(max_queued_bytes=CAP)

    def _event_primary_message_fill(self, event: Any) -> None:
        accepted, refused = fill_until_refused(self.send)
        error = refused.exception()
        # Told in memory (this link is full): the simulated worker shares the test's process.
        GATE['flooded'].set_result({'accepted': accepted, 'error': type(error).__name__,
                                    'text': str(error), 'worker_id': error.worker_id})
        self.accepted = accepted

    def _event_primary_message_report(self, event: Any) -> None:
        self.send({'type': 'last', 'id': self.accepted})


def test_past_the_cap_a_workers_send_is_refused_naming_the_primary_link() -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        worker = primary.workers[0]
        messages: list[Any] = []
        drained = asyncio.get_running_loop().create_future()
        last = asyncio.get_running_loop().create_future()

        def on_message(event: Any) -> None:
            messages.append(event.data['message'])
            if messages[-1]['type'] == 'last':
                last.set_result(None)
            elif len(messages) == report['accepted']:
                drained.set_result(None)

        primary.on('worker_message', on_message)
        GATE['flooded'] = asyncio.get_running_loop().create_future()
        primary.transport.hold(worker, 'to_primary')
        primary.send({'type': 'fill'}, to=worker)
        report = await GATE['flooded']
        primary.transport.release(worker, 'to_primary')
        await drained  # the worker's link is empty again: its next send goes
        primary.send({'type': 'report'}, to=worker)
        await last
        return report, [message['id'] for message in messages]

    try:
        report, ids = run_cluster('memory', scenario, worker_target=CappedFlooder)
    finally:
        GATE.pop('flooded', None)
    assert report['error'] == 'BackpressureError' and report['worker_id'] == 1
    assert 'worker 1 to the primary' in report['text'] and f'max_queued_bytes={CAP}' in report['text']
    assert ids == list(range(report['accepted'] + 1))  # all it accepted, then the last one


def test_a_broadcast_refused_by_one_full_link_still_reaches_the_others() -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(2)
        await ready_waiter(primary, 2)
        full, other = primary.workers
        primary.transport.hold(full, 'to_worker')
        fill_until_refused(lambda message: primary.send(message, to=full))
        reply = asyncio.get_running_loop().create_future()
        primary.on('worker_message', lambda event: reply.set_result((event.data['worker'], event.data['message'])))
        broadcast = primary.send({'type': 'report', 'padding': PAYLOAD * 4})  # larger than the room left
        return broadcast.exception(), [await reply], full, other

    error, other_messages, full, other = run_cluster(
        'memory', scenario, worker_target=GatedConsumer, max_queued_bytes=CAP)
    assert type(error) is SendError
    assert [destination for destination, _ in error.failures] == [full]
    assert isinstance(error.failures[0][1], BackpressureError)
    assert other_messages == [(other, {'type': 'report', 'count': 0, 'first_wrong': None})]


@pytest.mark.parametrize('value, error', [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError), ('1', TypeError)])
def test_max_queued_bytes_is_validated(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match='max_queued_bytes: expected'):
        ClusterPrimary(worker_target=GatedConsumer, max_queued_bytes=value, initialize=False)
    with pytest.raises(error, match='max_queued_bytes: expected'):
        ClusterWorker(max_queued_bytes=value, initialize=False)


# -- a slow primary stays responsive -------------------------------------------------------

SLOW_HANDLER = 0.0005  # seconds per message: slow work, so 64 frames outlast the delivery slice
BURST = 3000  # ~300 KB: more than one 256 KiB read of the primary


class Burster(ClusterWorker):
    def _event_primary_message_burst(self, event: Any) -> None:
        for i in range(BURST):
            self.send(item(i))


def test_a_primary_with_slow_handlers_gives_its_loop_turns_during_a_flood() -> None:
    import time

    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        loop = asyncio.get_running_loop()
        received = InOrder()
        done = loop.create_future()
        between_turns: list[int] = []  # frames delivered since the previous loop turn

        def on_message(event: Any) -> None:
            time.sleep(SLOW_HANDLER)
            received.take(event.data['message'])
            if received.count == BURST:
                done.set_result(None)

        def turn(last: int) -> None:
            between_turns.append(received.count - last)
            if not done.done():
                loop.call_soon(turn, received.count)

        primary.on('worker_message', on_message)
        primary.send({'type': 'burst'}, to=primary.workers[0])
        turn(0)
        await done
        return max(between_turns), received

    most, received = run_cluster('process', scenario, worker_target=Burster)
    assert (received.count, received.first_wrong) == (BURST, None)
    assert most <= 128  # a slice of frames at a time, not a whole read (~2,600 frames)


# -- memory per pending send ---------------------------------------------------------------


def test_the_futures_of_unawaited_sends_to_a_stalled_worker_cost_no_memory() -> None:
    """A congested link keeps the bytes of each pending send and nothing else: the futures its
    callers dropped are freed (before: ~150 bytes of future per ~100-byte send). A dropped
    future with a done callback, or one awaited later, still resolves."""
    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        worker = primary.workers[0]
        report = asyncio.get_running_loop().create_future()
        primary.on('worker_message', lambda event: report.set_result(event.data['message']))
        called: list[str] = []
        grown = traced_growth(lambda message: primary.send(message, to=worker), FLOOD - 2)
        queued = primary.transport.links[worker.id].pending_writes()
        primary.send(item(FLOOD - 2), to=worker).add_done_callback(lambda _: called.append('callback'))
        kept = primary.send(item(FLOOD - 1), to=worker)
        os.write(GATE['write'], b'x')
        await kept
        primary.send({'type': 'report'}, to=worker)
        return grown, queued, called, await report

    open_gate_pipe()
    try:
        grown, queued, called, report = run_cluster('process', scenario, worker_target=GatedConsumer)
    finally:
        close_gate_pipe()
    assert queued > 5 * 1024 * 1024  # most of the flood waited in the primary's queue
    assert grown < 1.4 * queued  # the queued bytes, with a margin for the queue's chunks
    assert called == ['callback']
    assert report == {'type': 'report', 'count': FLOOD, 'first_wrong': None}


class MeasuredFlooder(ClusterWorker):
    """Worker to primary: floods unawaited while tracemalloc watches, then reports."""

    def _event_primary_message_flood(self, event: Any) -> None:
        grown = traced_growth(self.send, FLOOD)
        queued = self._link.flow.pending
        os.write(GATE['write'], b'x')  # the primary's loop may read again
        self.send({'type': 'report', 'grown': grown, 'queued': queued})


def test_the_futures_of_unawaited_sends_to_a_stalled_primary_cost_no_memory() -> None:
    received = InOrder()

    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        report = asyncio.get_running_loop().create_future()
        primary.on('worker_message', gated_receiver(received, report))
        primary.send({'type': 'flood'}, to=primary.workers[0])
        return await report

    open_gate_pipe()
    try:
        report = run_cluster('process', scenario, worker_target=MeasuredFlooder)
    finally:
        close_gate_pipe()
    assert report['queued'] > 5 * 1024 * 1024
    assert report['grown'] < 1.4 * report['queued']  # before: ~2.5 (a future per send)
    assert (received.count, received.first_wrong) == (FLOOD, None)
