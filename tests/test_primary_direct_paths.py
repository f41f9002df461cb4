"""The primary's direct paths (issue 14): a worker's message builds its worker_message event
only when something can observe it, and that is decided per message (late binding, R7); a
REPLY is settled from the link's read, with the state table, the shape checks, timeouts and
cancellation as before; a read of one frame never overtakes frames still waiting for delivery;
a write sent at once schedules nothing on the loop."""

from __future__ import annotations

import asyncio
import os
import select
import socket
from typing import Any

import pytest

from isocluster import ClusterPrimary, ClusterWorker, ProtocolError, RequestTimeout, protocol
from isocluster.transport.process import ProcessTransport
from isocluster.transport.process import link as process_link
from isocluster.transport.process.writer import _Batch, _FrameWriter
from tests.cluster_helpers import TRANSPORTS, drive, kill_and_reap, ready_waiter, run_cluster

WAIT = 10.0


class NoteWorker(ClusterWorker):
    """Sends the notes asked for, then answers: the reply arrives after the notes."""

    def _event_primary_message_notes(self, event: Any) -> int:
        for n in event.data['message']['numbers']:
            self.send({'type': 'note', 'n': n})
        return len(event.data['message']['numbers'])

    def _event_primary_message_never(self, event: Any) -> Any:
        return asyncio.get_running_loop().create_future()


def note_worker() -> None:
    NoteWorker()


class LatePrimary(ClusterPrimary):
    """A primary class the test gives a routed method only after messages arrived unobserved."""


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_an_observer_added_at_any_time_sees_the_next_message(transport: str) -> None:
    seen: list[Any] = []

    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        (worker,) = primary.workers

        async def notes(*numbers: int) -> None:
            await primary.request({'type': 'notes', 'numbers': list(numbers)}, to=worker)

        await notes(0)  # nobody observes it: counted, not published
        LatePrimary._event_worker_message_note = lambda self, event: seen.append(('routed', event.data['message']['n']))
        await notes(1)
        del LatePrimary._event_worker_message_note
        await notes(2)  # unobserved again
        subscription = primary.after('worker_message', lambda event: seen.append(('after', event.data['message']['n'])))
        await notes(3)
        subscription.unsubscribe()
        primary._event_worker_message = lambda event: seen.append(('instance', event.data['message']['n']))
        await notes(4)
        del primary._event_worker_message
        await notes(5)
        return primary.stats()['messages_in']

    try:
        messages_in = run_cluster(transport, scenario, primary_class=LatePrimary, worker_target=note_worker)
    finally:
        LatePrimary.__dict__.get('_event_worker_message_note') and delattr(LatePrimary, '_event_worker_message_note')
    assert seen == [('routed', 1), ('after', 3), ('instance', 4)]
    assert messages_in == 6  # the six notes, observed or not, all counted


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_replies_settled_from_the_read_still_time_out_and_drop_late_answers(transport: str) -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        (worker,) = primary.workers
        with pytest.raises(RequestTimeout):
            await primary.request({'type': 'never'}, to=worker, timeout=0.05)
        cancelled = primary.request({'type': 'notes', 'numbers': []}, to=worker)
        cancelled.cancel()
        answered = await primary.request({'type': 'notes', 'numbers': [1, 2]}, to=worker)
        return answered, primary.in_flight(worker), cancelled.cancelled(), worker.state

    answered, in_flight, cancelled, state = run_cluster(transport, scenario, worker_target=note_worker)
    assert (answered, cancelled, state) == (2, True, 'ready')
    assert in_flight == 0  # the timeout ended one; the cancelled one ended with its (late) reply


def test_a_reply_before_online_or_malformed_is_the_workers_violation() -> None:
    from isocluster.transport.memory import MemoryTransport

    for payload, state_needed, why in (((1, True, b'1'), 'forked', 'before ONLINE'),
                                       ((1, 'yes', b'1'), 'ready', 'malformed REPLY')):
        sim = MemoryTransport(seed=1)
        primary = ClusterPrimary(transport=sim, worker_target=lambda: NoteWorker())
        errors: list[BaseException] = []
        primary.on('worker_error', lambda event: errors.append(event.data['error']))
        if state_needed == 'forked':
            sim.slow_boot(5.0)
        primary.fork(1)
        sim.run_until(lambda: any(h.state == state_needed for h in primary._live.values()), timeout=60)
        (handle,) = primary._live.values()
        primary.link_frame(handle.life.link, protocol.REPLY, payload)
        assert len(errors) == 1 and isinstance(errors[0], ProtocolError) and why in str(errors[0])
        primary.destroy()
        sim.run_until(lambda: primary.closed, timeout=600)


# -- a one-frame read never overtakes the inbox ------------------------------------------------

FRAME_MESSAGES = 3 * 70 + 1  # three reads of 70 frames, then a read of exactly one


class SameSizeFlood(ClusterWorker):
    def _event_primary_message_flood(self, event: Any) -> None:
        # Exactly these frames, all of one size, written out before the worker ends (no EXITING
        # after them): a blocking write on a duplicate of the link's socket, then _exit.
        codec = protocol.get_codec('json')
        frames = b''.join(protocol.message_header(len(body)) + body for body in (
            protocol.encode_message(codec, {'n': f'{n:06d}'}, protocol.DEFAULT_MAX_FRAME_SIZE)
            for n in range(FRAME_MESSAGES)))
        sock = socket.socket(fileno=os.dup(self._link._sock.fileno()))
        sock.setblocking(True)
        sock.sendall(frames)
        os._exit(0)


def same_size_flood() -> None:
    SameSizeFlood()


def test_a_read_of_one_frame_waits_behind_frames_whose_delivery_was_paused(monkeypatch: Any) -> None:
    """Delivery pauses after every 64 frames (a zero time slice); the socket holds reads of 70
    frames and a last read of one. The one frame must come last, not straight through."""
    monkeypatch.setattr(process_link, '_DELIVERY_SLICE', 0.0)
    frame_size = len(protocol.encode_message(protocol.get_codec('json'), {'n': '000000'}, protocol.DEFAULT_MAX_FRAME_SIZE)) + protocol.HEADER_SIZE
    pids: set[int] = set()

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        transport = ProcessTransport()
        transport._read_buffer = bytearray(70 * frame_size)
        transport._read_view = memoryview(transport._read_buffer)
        primary = ClusterPrimary(worker_target=same_size_flood, transport=transport, restart='never')
        seen: list[Any] = []
        exited = loop.create_future()
        primary.after('worker_fork', lambda event: pids.add(event.data['worker'].pid))
        primary.on('worker_message', lambda event: seen.append(int(event.data['message']['n'])))
        primary.after('worker_exit', lambda event: exited.done() or exited.set_result(None))

        async def scenario() -> None:
            primary.fork(1)
            await ready_waiter(primary, 1)
            worker = primary.workers[0]

            def flood_then_wait_for_the_exit() -> None:
                primary.send({'type': 'flood'}, to=worker)
                readable, _, _ = select.select([worker.life.link._pidfd], [], [], WAIT)  # blocks the loop
                assert readable, 'the worker did not exit'

            loop.call_soon(flood_then_wait_for_the_exit)
            await exited

        await drive(primary, scenario(), WAIT)
        return seen

    try:
        seen = asyncio.run(main())
    finally:
        kill_and_reap(pids)
    assert seen == list(range(FRAME_MESSAGES))


# -- a write sent at once schedules nothing ----------------------------------------------------

class _Pair(_FrameWriter):
    def __init__(self, loop: asyncio.AbstractEventLoop, sock: Any, batch: _Batch) -> None:
        self._loop, self._sock, self._batch = loop, sock, batch
        self._init_writer()

    def _describe(self) -> str:
        return 'test link'


def test_a_write_sent_at_once_schedules_no_callback_and_later_ones_wait_for_a_turn_end_until_a_read() -> None:
    async def main() -> Any:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        scheduled: list[Any] = []
        real_call_soon = loop.call_soon
        loop.call_soon = lambda callback, *args, **kwargs: (  # type: ignore[method-assign]
            scheduled.append(callback), real_call_soon(callback, *args, **kwargs))[1]
        try:
            writer = _Pair(loop, ours, _Batch())
            writer._write_frame(protocol.MESSAGE, b'"first"')
            after_first = (len(scheduled), len(theirs.recv(1000, socket.MSG_DONTWAIT)))
            writer._write_frame(protocol.MESSAGE, b'"second"')
            writer._write_frame(protocol.MESSAGE, b'"third"')
            held = len(scheduled)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            rest = theirs.recv(1000, socket.MSG_DONTWAIT)
            # A later turn with no read since: a stream's writes go out as one batch at the
            # end of the turn, not a lone first frame at once and then the rest.
            writer._write_frame(protocol.MESSAGE, b'"fourth"')
            with pytest.raises(BlockingIOError):
                theirs.recv(1000, socket.MSG_DONTWAIT)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            fourth = theirs.recv(1000, socket.MSG_DONTWAIT)
            writer._batch.begin()  # a read batch (what a link's read does) clears the mark
            writer._batch.end()
            writer._write_frame(protocol.MESSAGE, b'"fifth"')
            fifth = theirs.recv(1000, socket.MSG_DONTWAIT)
        finally:
            del loop.call_soon
            ours.close()
            theirs.close()
        return after_first, held, rest, fourth, fifth

    (scheduled_after_first, first_bytes), held, rest, fourth, fifth = asyncio.run(main())
    assert fourth == protocol.message_header(len(b'"fourth"')) + b'"fourth"'
    assert fifth == protocol.message_header(len(b'"fifth"')) + b'"fifth"'  # at once again
    assert scheduled_after_first == 0  # no callback per write sent at once (and no loop pass)
    assert first_bytes == protocol.HEADER_SIZE + len(b'"first"')
    assert held == 1  # the later writes of the turn wait for one end-of-turn callback
    assert rest == protocol.message_header(len(b'"second"')) + b'"second"' + protocol.message_header(len(b'"third"')) + b'"third"'


class OncePrimary(ClusterPrimary):
    """worker_message declared publish_once: its first publish is kept for later subscribers (R22)."""

    _pubsub = {**ClusterPrimary._pubsub, 'worker_message': {'publish_once': True}}


def test_a_once_worker_message_unobserved_when_published_still_reaches_a_later_subscriber() -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        (worker,) = primary.workers
        await primary.request({'type': 'notes', 'numbers': [7]}, to=worker)  # nobody subscribed yet
        late: list[Any] = []
        primary.on('worker_message', lambda event: late.append(event.data['message']))
        return late

    assert run_cluster('memory', scenario, primary_class=OncePrimary, worker_target=note_worker) == [
        {'type': 'note', 'n': 7}]
