"""A worker's frames enter the primary at one boundary (issue 13, findings 1, 2, 3, 5).

On the memory transport a worker's link carries raw bytes through `sim.inject_bytes`, as if
the worker wrote them: whatever they are, the offending worker gets worker_error with a
ProtocolError naming it, is killed and replaced, the other workers are untouched and the
primary lives on.
"""

from __future__ import annotations

import asyncio
import gc
import json
import struct
import time
from typing import Any

import pytest

from isocluster import ClusterPrimary, ClusterWorker, DecodeError, ProtocolError, RequestTimeout, protocol
from isocluster.transport.memory import MemoryTransport
from isocluster.transport.process import ProcessTransport

from memory_helpers import Recorder, close
from tests.cluster_helpers import kill_and_reap, ready_waiter

WAIT = 20.0

SLOW = 5.0  # virtual seconds a 'slow' request takes to answer


class Answering(ClusterWorker):
    async def _event_primary_message_slow(self, event: Any) -> Any:
        await asyncio.sleep(SLOW)
        return {'honest': ClusterWorker.worker_id}


def answering() -> None:
    Answering()


def frame(kind: str, body: bytes) -> bytes:
    return struct.pack('>IB', len(body) + 1, protocol.KINDS.index(kind)) + body


def reply(request_id: int, ok: bool, body: bytes) -> bytes:
    return frame(protocol.REPLY, struct.pack('>QB', request_id, ok) + body)


DEEP = b'[' * 100_000 + b']' * 100_000


@pytest.fixture(autouse=True)
def _no_garbage_left() -> None:
    # Decoding DEEP recurses to the interpreter's limit; a garbage collection that happens
    # there would run the finalizers of earlier tests' garbage (unclosed loops warn) with no
    # stack left, and pytest reports that as this test's unraisable exception.
    gc.collect()


def two_workers(**transport: Any) -> tuple[MemoryTransport, ClusterPrimary, Recorder]:
    sim = MemoryTransport(seed=3, **transport)
    primary = ClusterPrimary(worker_target=answering, transport=sim, restart_backoff=None)
    recorder = Recorder(primary)
    primary.fork(2)
    sim.run_until(lambda: len(primary.workers) == 2, timeout=10)
    return sim, primary, recorder


def assert_violation(sim: MemoryTransport, primary: ClusterPrimary, recorder: Recorder, offender: int,
                     honest: 'asyncio.Future[Any]', honest_id: int, *, names: str | None = None) -> ProtocolError:
    sim.run_until(lambda: honest.done() and len(primary.workers) == 2 and offender not in primary.worker_by_id,
                  timeout=SLOW * 4)
    errors = recorder.of('worker_error')
    assert [data['worker'].id for data in errors] == [offender]
    error = errors[0]['error']
    # A user message the codec cannot decode is a DecodeError (SPEC §4.14); every other
    # violation a ProtocolError.
    assert isinstance(error, (ProtocolError, DecodeError)) and error.worker_id == offender
    assert f'worker {offender}' in str(error)
    if names is not None:
        assert names in str(error)
    assert honest.result() == {'honest': honest_id}
    assert honest_id in primary.worker_by_id and not primary.closed
    assert [data['worker'].id for data in recorder.of('worker_exit')] == [offender]
    return error


def test_a_reply_settles_only_a_request_sent_to_its_sender() -> None:
    """Finding 1: worker 2 forges a reply to the request sent to worker 1 (ids are sequential)."""
    sim, primary, recorder = two_workers()
    honest = primary.request({'type': 'slow'}, to=1)  # request id 1
    sim.inject_bytes(2, reply(1, True, b'"forged"'))
    error = assert_violation(sim, primary, recorder, 2, honest, 1, names='REPLY')
    assert 'sent to another worker' in str(error) and error.frame_kind == protocol.REPLY
    close(sim, primary)


def test_a_chunk_reply_settles_only_a_request_sent_to_its_sender() -> None:
    """A REPLY_BATCH (a map chunk's answer) passes the same boundary as a REPLY."""
    sim, primary, recorder = two_workers()
    honest = primary.request({'type': 'slow'}, to=1)  # request id 1
    sim.inject_bytes(2, frame(protocol.REPLY_BATCH, struct.pack('>Q', 1) + b'[["forged"], []]'))
    error = assert_violation(sim, primary, recorder, 2, honest, 1, names='REPLY')
    assert 'sent to another worker' in str(error) and error.frame_kind == protocol.REPLY_BATCH
    close(sim, primary)


def test_a_reply_to_a_request_never_sent_is_a_protocol_violation() -> None:
    sim, primary, recorder = two_workers()
    honest = primary.request({'type': 'slow'}, to=1)
    sim.inject_bytes(2, reply(77, True, b'1'))
    assert 'never sent' in str(assert_violation(sim, primary, recorder, 2, honest, 1))
    close(sim, primary)


def test_a_late_reply_to_a_timed_out_request_is_dropped_and_counted() -> None:
    sim, primary, recorder = two_workers()
    late = primary.request({'type': 'slow'}, to=1, timeout=SLOW / 5)
    sim.run_until(late.done, timeout=SLOW)
    assert isinstance(late.exception(), RequestTimeout)
    assert primary.stats()['late_replies'] == 0
    sim.run_until(lambda: primary.stats()['late_replies'] == 1, timeout=SLOW * 2)
    cancelled = primary.request({'type': 'slow'}, to=2)
    sim.advance(SLOW / 5)
    cancelled.cancel()
    sim.run_until(lambda: primary.stats()['late_replies'] == 2, timeout=SLOW * 2)
    assert recorder.count('worker_error') == 0 and len(primary.workers) == 2
    close(sim, primary)


HOSTILE_FRAMES = {
    'failure reply that is a JSON array': lambda own: reply(own, False, b'[]'),
    'failure reply nested 100,000 deep': lambda own: reply(own, False, DEEP),
    'failure reply with a non-string message': lambda own: reply(own, False, b'{"type":"X","message":{}}'),
    'LISTEN whose address is an object': lambda own: frame(protocol.LISTEN, b'{"id":1,"address":{}}'),
    'LISTEN whose address holds a list': lambda own: frame(protocol.LISTEN, b'{"id":1,"address":[[1],2]}'),
    'LISTEN that is a JSON array': lambda own: frame(protocol.LISTEN, b'[]'),
    'READY nested 100,000 deep': lambda own: frame(protocol.READY, DEEP),
    'EXITING carrying a string': lambda own: frame(protocol.EXITING, b'"bye"'),
    'HEARTBEAT, which only the primary sends': lambda own: frame(protocol.HEARTBEAT, b''),
    'a second ONLINE': lambda own: frame(protocol.ONLINE, b''),
    'kind code just past the table': lambda own: struct.pack('>IB', 1, len(protocol.KINDS)),
    'kind code 255': lambda own: struct.pack('>IB', 1, 255),
    'truncated REPLY header': lambda own: frame(protocol.REPLY, b'\x00\x01'),
    'frame over the size limit': lambda own: struct.pack('>I', protocol.DEFAULT_MAX_FRAME_SIZE + 1),
    'empty frame': lambda own: struct.pack('>I', 0),
    'REQUEST that is not JSON': lambda own: frame(protocol.REQUEST, struct.pack('>Q', 1) + b'\xff\xfe'),
}


@pytest.mark.parametrize('name', sorted(HOSTILE_FRAMES))
def test_a_hostile_frame_faults_only_its_worker(name: str) -> None:
    """Findings 2 and 3: wrong shapes, deep nesting and unknown kinds, read with a partial
    frame already buffered (the case that jammed the decoder), are the sender's violation."""
    sim, primary, recorder = two_workers()
    honest = primary.request({'type': 'slow'}, to=1)
    own = primary.request({'type': 'slow'}, to=2)  # request id 2: worker 2's own
    hostile = HOSTILE_FRAMES[name](2)
    sim.inject_bytes(2, hostile[:3])  # a partial frame first
    sim.inject_bytes(2, hostile[3:])
    assert_violation(sim, primary, recorder, 2, honest, 1)
    assert own.done()
    close(sim, primary)


def test_good_frames_before_a_hostile_one_in_the_same_read_are_delivered() -> None:
    sim, primary, recorder = two_workers()
    honest = primary.request({'type': 'slow'}, to=1)
    good = frame(protocol.MESSAGE, b'{"n":1}') + frame(protocol.MESSAGE, b'{"n":2}')
    sim.inject_bytes(2, good + frame(protocol.LISTEN, DEEP) + frame(protocol.MESSAGE, b'{"n":3}'))
    assert_violation(sim, primary, recorder, 2, honest, 1, names='LISTEN')
    assert [data['message'] for data in recorder.of('worker_message')] == [{'n': 1}, {'n': 2}]
    close(sim, primary)


def test_a_partial_frame_not_finished_within_frame_timeout_faults_the_worker() -> None:
    """Finding 5: 60 bytes of a 1000-byte frame, then silence."""
    sim, primary, recorder = two_workers(frame_timeout=2.0)
    honest = primary.request({'type': 'slow'}, to=1)
    started = sim.loop.time()
    sim.inject_bytes(2, struct.pack('>IB', 1000, 0) + b'x' * 60)
    error = assert_violation(sim, primary, recorder, 2, honest, 1, names='frame_timeout=2.0s')
    faulted_at = recorder.times('worker_error')[0] - started
    assert 2.0 <= faulted_at < 2.0 + 1.0  # the deadline, plus the link's latency
    assert error.frame_kind is None
    close(sim, primary)


def test_a_stream_of_complete_frames_never_meets_the_frame_deadline() -> None:
    sim, primary, recorder = two_workers(frame_timeout=2.0)
    message = frame(protocol.MESSAGE, b'{"n":0}')
    sim.inject_bytes(2, message[:4])
    for _ in range(10):  # each write completes the frame begun by the previous one
        sim.inject_bytes(2, message[4:] + message[:4])
        sim.advance(1.5)
    sim.inject_bytes(2, message[4:])
    sim.run_until(lambda: recorder.count('worker_message') == 11, timeout=10)
    assert recorder.count('worker_error') == 0
    close(sim, primary)


def test_a_link_that_ends_in_the_middle_of_a_frame_is_a_protocol_violation() -> None:
    sim, primary, recorder = two_workers()
    honest = primary.request({'type': 'slow'}, to=1)
    sim.inject_bytes(2, struct.pack('>IB', 1000, 0) + b'x' * 60)
    sim.advance(0.5)
    sim.crash(2, code=0)
    assert 'middle of a frame' in str(assert_violation(sim, primary, recorder, 2, honest, 1))
    close(sim, primary)


def test_a_user_handler_error_is_still_fatal() -> None:
    """SPEC R34: only the worker's bytes are the worker's fault; an exception escaping the
    primary's own worker_message handler still stops the cluster."""
    sim, primary, recorder = two_workers()

    def broken(event: Any) -> None:
        raise KeyError('a bug in the application')

    primary.on('worker_message', broken)
    sim.inject_bytes(2, frame(protocol.MESSAGE, json.dumps({'n': 1}).encode()))
    with pytest.raises(KeyError, match='a bug in the application'):
        sim.run_until(lambda: False, timeout=5)
    assert recorder.count('worker_error') == 0


# -- the decoder itself ------------------------------------------------------------------------

@pytest.mark.parametrize('split', [0, 3, 7])
def test_the_frame_decoder_turns_any_failure_into_a_protocol_error_and_is_never_jammed(split: int) -> None:
    """Finding 3: a control frame nested 100,000 deep raised RecursionError out of feed(),
    leaving its buffer exported, so every later feed raised BufferError."""
    decoder = protocol.FrameDecoder()
    hostile = frame(protocol.LISTEN, DEEP)
    good = frame(protocol.MESSAGE, b'{"n":1}')
    frames = decoder.feed(good + hostile[:split]) if split else []
    with pytest.raises(ProtocolError, match='LISTEN') as raised:
        if not split:
            frames = decoder.feed(good)
        decoder.feed(hostile[split:])
    assert frames == [(protocol.MESSAGE, b'{"n":1}')]
    assert raised.value.frame_kind == protocol.LISTEN and decoder.error is raised.value
    with pytest.raises(ProtocolError) as again:  # the stream stays ended, with the same fault
        decoder.feed(good)
    assert again.value is raised.value and decoder.pending == 0


@pytest.mark.parametrize('transport', [MemoryTransport, ProcessTransport])
@pytest.mark.parametrize('value, error', [(-1, ValueError), (0, ValueError), (float('nan'), ValueError), ('5', TypeError)])
def test_frame_timeout_rejects_bad_values_naming_the_option(transport: Any, value: Any, error: type) -> None:
    with pytest.raises(error, match='frame_timeout'):
        transport(frame_timeout=value)


def test_an_undecodable_reply_fails_the_request_and_faults_its_sender() -> None:
    sim, primary, recorder = two_workers()
    honest = primary.request({'type': 'slow'}, to=1)
    own = primary.request({'type': 'slow'}, to=2)  # request id 2
    sim.inject_bytes(2, reply(2, True, b'\xff'))
    error = assert_violation(sim, primary, recorder, 2, honest, 1, names='could not be decoded')
    assert isinstance(own.exception(), DecodeError) and error.frame_kind == protocol.REPLY
    close(sim, primary)


# -- the frame deadline judges the worker, not a primary that was behind ----------------------

BIG = 4 * 1024 * 1024  # many reads' worth, more than a socket buffer holds


class BigSender(ClusterWorker):
    def _event_primary_message_big(self, event: Any) -> None:
        self.send({'big': 'z' * BIG})


def big_sender() -> None:
    BigSender()


def test_a_frame_whose_bytes_wait_while_the_primary_is_blocked_is_not_faulted() -> None:
    """The primary's loop is blocked for twice frame_timeout in the middle of a large frame
    from an honest worker: when it resumes, the deadline finds the worker's bytes waiting
    and grants the frame more time instead of faulting the worker."""
    frame_timeout = 1.0
    pids: set[int] = set()

    async def main() -> tuple[int, list[BaseException]]:
        loop = asyncio.get_running_loop()
        primary = ClusterPrimary(worker_target=big_sender, transport=ProcessTransport(frame_timeout=frame_timeout),
                                 restart='never')
        got = loop.create_future()
        errors: list[BaseException] = []
        primary.after('worker_fork', lambda event: pids.add(event.data['worker'].pid))
        primary.on('worker_message', lambda event: got.set_result(len(event.data['message']['big'])))

        def faulted(event: Any) -> None:
            errors.append(event.data['error'])
            if not got.done():
                got.set_result(None)

        primary.on('worker_error', faulted)
        try:
            primary.fork(1)
            await asyncio.wait_for(ready_waiter(primary, 1), WAIT)
            link = primary.workers[0].life.link

            def block_once_a_frame_is_partial() -> None:
                if link._decoder.pending:
                    time.sleep(2 * frame_timeout)  # the scenario: a handler that blocks the loop
                elif not got.done():
                    loop.call_soon(block_once_a_frame_is_partial)

            await primary.send({'type': 'big'}, to=primary.workers[0])
            loop.call_soon(block_once_a_frame_is_partial)
            return await asyncio.wait_for(got, WAIT), errors
        finally:
            primary.destroy()
            await asyncio.wait_for(primary.wait_closed(), WAIT)

    try:
        size, errors = asyncio.run(main())
    finally:
        kill_and_reap(pids)
    assert size == BIG and errors == []
