"""Behaviours that once broke with the whole suite still passing (issue 13, finding 11): each
test here fails when its rule is broken."""

from __future__ import annotations

import asyncio
import json
import select
import struct
from typing import Any

import pytest

from isocluster import ClusterPrimary, ClusterWorker, ProtocolError, RemoteError, protocol
from isocluster.transport.memory import MemoryTransport
from isocluster.transport.process import ProcessTransport

from memory_helpers import Recorder, close
from tests.cluster_helpers import kill_and_reap, ready_waiter, run_cluster

WAIT = 20.0


# -- a routed handler that returns None replies None ------------------------------------------

class NoneWorker(ClusterWorker):
    def _event_primary_message_nothing(self, event: Any) -> None:
        return None

    async def _event_primary_message_ask(self, event: Any) -> Any:
        return {'primary_said': await self.request({'type': 'nothing'}, timeout=5)}


def none_worker() -> None:
    NoneWorker()


class NonePrimary(ClusterPrimary):
    def _event_worker_message_nothing(self, event: Any) -> None:
        return None


def test_a_routed_handler_returning_none_replies_none_both_ways() -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        worker = primary.workers[0]
        return await primary.request({'type': 'nothing'}, to=worker), await primary.request({'type': 'ask'}, to=worker)

    assert run_cluster('memory', scenario, NonePrimary, worker_target=none_worker) == (None, {'primary_said': None})


# -- an error reply within 9 bytes of the frame limit arrives as RemoteError ----------------------

LIMIT = 400
EMPTY_DESCRIPTION = len(json.dumps({'type': 'ValueError', 'message': '', 'traceback': ''}).encode())
# A description that fits the limit with its kind byte, but not with the 9 bytes of request id
# and ok flag a REPLY frame also carries.
NEAR_LIMIT_MESSAGE = 'm' * (LIMIT - 1 - protocol.REPLY_OVERHEAD // 2 - EMPTY_DESCRIPTION)


class RaisingWorker(ClusterWorker):
    def _event_primary_message_fail(self, event: Any) -> None:
        raise ValueError(NEAR_LIMIT_MESSAGE)


def raising_worker() -> None:
    RaisingWorker()


def test_an_error_reply_near_the_frame_limit_arrives_as_remote_error() -> None:
    size = EMPTY_DESCRIPTION + len(NEAR_LIMIT_MESSAGE)
    assert size + 1 <= LIMIT < size + 1 + protocol.REPLY_OVERHEAD  # the window the test is about

    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        with pytest.raises(RemoteError) as raised:
            await primary.request({'type': 'fail'}, to=primary.workers[0])
        return raised.value, primary.workers[0].state

    error, state = run_cluster('memory', scenario, worker_target=raising_worker, max_frame_size=LIMIT)
    assert error.remote_type == 'ValueError' and NEAR_LIMIT_MESSAGE.startswith(error.remote_message)
    assert error.remote_message and state == 'ready'


# -- kind code len(KINDS) is a ProtocolError -------------------------------------------------------

def test_the_first_kind_code_past_the_table_is_an_unknown_kind() -> None:
    decoder = protocol.FrameDecoder()
    with pytest.raises(ProtocolError, match=f'unknown frame kind code {len(protocol.KINDS)}$'):
        decoder.feed(struct.pack('>IB', 1, len(protocol.KINDS)))


# -- frames written before exit arrive before worker_exit, whatever the backlog -----------------

COUNT = 40
LAST_SIZE = 100_000


class Flood(ClusterWorker):
    def _event_primary_message_flood(self, event: Any) -> None:
        for n in range(COUNT):
            self.send({'n': n, 'pad': 'x' * 200})
        self.send({'n': 'last', 'pad': 'y' * LAST_SIZE})
        self.destroy()


def flood() -> None:
    Flood()


def test_frames_written_before_exit_arrive_before_worker_exit_when_the_backlog_exceeds_a_read() -> None:
    """The primary reads nothing until the worker has exited, through a read buffer of 4 KiB:
    about 110 KB wait in the socket when the exit is seen."""
    pids: set[int] = set()

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        transport = ProcessTransport()
        transport._read_buffer = bytearray(4096)
        transport._read_view = memoryview(transport._read_buffer)
        primary = ClusterPrimary(worker_target=flood, transport=transport, restart='never')
        seen: list[Any] = []
        exited = loop.create_future()
        primary.after('worker_fork', lambda event: pids.add(event.data['worker'].pid))
        primary.on('worker_message', lambda event: seen.append(event.data['message']['n']))
        primary.on('worker_exit', lambda event: seen.append('exit'))
        primary.after('worker_exit', lambda event: exited.done() or exited.set_result(None))
        try:
            primary.fork(1)
            await asyncio.wait_for(ready_waiter(primary, 1), WAIT)
            worker = primary.workers[0]

            def flood_then_wait_for_the_exit() -> None:
                primary.send({'type': 'flood'}, to=worker)
                readable, _, _ = select.select([worker.life.link._pidfd], [], [], WAIT)  # blocks the loop
                assert readable, 'the worker did not exit'

            loop.call_soon(flood_then_wait_for_the_exit)
            await asyncio.wait_for(exited, WAIT)
            return seen
        finally:
            primary.destroy()
            await asyncio.wait_for(primary.wait_closed(), WAIT)

    try:
        seen = asyncio.run(main())
    finally:
        kill_and_reap(pids)
    assert seen == [*range(COUNT), 'last', 'exit']


# -- a broadcast never reaches a worker that is online but not ready ------------------------------

class LateReady(ClusterWorker):
    """Worker 2 stays online and receiving, but not ready, until told to finish initializing."""

    async def _initialize(self) -> None:
        super()._initialize()
        if ClusterWorker.worker_id == 2:
            self._go = asyncio.get_running_loop().create_future()
            await self._go

    def _event_primary_message(self, event: Any) -> None:
        message = event.data['message']
        if message.get('type') == 'finish_initializing':
            self._go.set_result(None)
        else:
            self.send({'got': message['type'], 'by': ClusterWorker.worker_id})


def late_ready() -> None:
    LateReady()


def test_a_broadcast_never_reaches_a_worker_that_is_online_but_not_ready() -> None:
    sim = MemoryTransport(seed=5)
    primary = ClusterPrimary(worker_target=late_ready, transport=sim)
    recorder = Recorder(primary)
    primary.fork(2)
    sim.run_until(lambda: len(primary.workers) == 1 and recorder.count('worker_online') == 2, timeout=10)
    sim.advance(1.0)  # a thousand link latencies: worker 2 would be ready by now if it were going to be
    late = [data['worker'] for data in recorder.of('worker_online') if data['worker'].id == 2][0]
    assert late.state == 'online'
    primary.send({'type': 'first'})
    sim.run_until(lambda: recorder.count('worker_message') == 1, timeout=10)
    sim.advance(1.0)  # time for an echo from worker 2, were the broadcast to reach it
    primary.send({'type': 'finish_initializing'}, to=late)
    sim.run_until(lambda: len(primary.workers) == 2, timeout=10)
    primary.send({'type': 'second'})
    sim.run_until(lambda: recorder.count('worker_message') == 3, timeout=10)
    sim.advance(1.0)
    got = sorted((data['message']['by'], data['message']['got']) for data in recorder.of('worker_message'))
    assert got == [(1, 'first'), (1, 'second'), (2, 'second')]
    close(sim, primary)
