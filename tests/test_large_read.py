"""After a large pickle frame with an out-of-band tail, a link peeks at the next frame's head
and, when it is another such frame, reads its payload as the socket's own `bytes`
(transport/process/large_read.py, issue 14). White-box over a socketpair: each outcome of the
peek decodes to what the usual read gives; then, over a real link, the faults of a peer that
stops in the middle of such a frame are still found and named as before."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pytest

from isocluster import ClusterPrimary, ClusterWorker, ProtocolError, protocol
from isocluster.out_of_band import SplitBody
from isocluster.transport.process import ProcessTransport
from isocluster.transport.process.large_read import read_split
from tests.cluster_helpers import kill_and_reap, ready_waiter
from tests.test_hostile_worker import RawWriter

CODEC = protocol.get_codec('pickle')
SIZE = 100_003  # out of band (>= 64 KiB) and within a socketpair's default buffer
MESSAGE = {'type': 'blob', 'data': bytes(range(251)) * (SIZE // 251) + b'end'}


def _frame(message: Any) -> bytes:
    return protocol.encode_frame(protocol.MESSAGE, CODEC.encode(message))


@pytest.fixture
def pair() -> Any:
    writer, reader = socket.socketpair()
    reader.setblocking(False)
    yield writer, reader
    writer.close()
    reader.close()


def _decoder() -> protocol.FrameDecoder:
    decoder = protocol.FrameDecoder()
    decoder.message_buffers = True
    return decoder


def test_a_frame_queued_whole_is_read_with_its_payload_as_the_sockets_own_bytes(pair: Any) -> None:
    writer, reader = pair
    writer.sendall(_frame(MESSAGE) + _frame({'type': 'small'}))
    decoder = _decoder()
    ((kind, body),) = read_split(reader, decoder, bytearray(2048))  # a peek no larger than its buffer
    assert kind == protocol.MESSAGE and type(body) is SplitBody and type(body.tail) is bytes
    decoded = CODEC.decode(body)
    assert decoded == MESSAGE and decoded['data'] is body.tail  # that read's bytes, not a copy
    looks = decoder.split_next
    assert looks > 1 and decoder.pending == 0
    # Exactly the frame was read: the next one is read as usual (a small frame: not read by the
    # look), and the link looks once less before reading.
    assert read_split(reader, decoder, bytearray(8192)) is None and decoder.split_next == looks - 1
    assert [CODEC.decode(body) for _, body in decoder.feed(reader.recv(65536))] == [{'type': 'small'}]
    # A large frame after a small one is still read as the payload's own bytes.
    writer.sendall(_frame(MESSAGE))
    ((_, body),) = read_split(reader, decoder, bytearray(8192))
    assert type(body.tail) is bytes and CODEC.decode(body) == MESSAGE and decoder.split_next == looks


@pytest.mark.parametrize('kind', ['bytes', 'bytearray', 'memoryview'])
def test_a_frame_still_arriving_is_gathered_in_place_and_decodes_the_same(pair: Any, kind: str) -> None:
    writer, reader = pair
    payload = {'bytes': MESSAGE['data'], 'bytearray': bytearray(MESSAGE['data']),
               'memoryview': memoryview(MESSAGE['data'])}[kind]
    frame = _frame({'type': 'blob', 'data': payload})
    writer.sendall(frame[:40_000])  # the head, and part of the payload
    decoder = _decoder()
    assert read_split(reader, decoder, bytearray(8192)) == []
    # Not all queued: the bytes before the payload were read, and the part of the payload
    # already queued was read in place by the same call, not left for another loop pass.
    assert decoder.pending == 40_000
    with pytest.raises(BlockingIOError):
        reader.recv(1)
    writer.sendall(frame[40_000:])
    frames: list[protocol.Frame] = []
    while not frames:
        target = decoder.gather_target()
        assert target is not None
        frames = decoder.gathered(reader.recv_into(target))
    ((_, body),) = frames
    assert type(body) is SplitBody
    decoded = CODEC.decode(body)
    assert type(decoded['data']) is type(payload) and bytes(decoded['data']) == MESSAGE['data']
    assert CODEC.decode(bytes(frame[5:])) == decoded  # the usual read of the same frame


def test_any_other_frame_is_left_whole_for_the_usual_read(pair: Any) -> None:
    writer, reader = pair
    plain = protocol.encode_frame(protocol.MESSAGE, b'x' * SIZE)  # large, not out of band
    small = _frame({'type': 'small'})
    request = protocol.encode_frame(protocol.REQUEST, (7, CODEC.encode(MESSAGE)))
    for data in (plain, small, request):
        writer.sendall(data)
        decoder = _decoder()
        decoder.split_next = 1
        assert read_split(reader, decoder, bytearray(8192)) is None and decoder.split_next == 0
        received = b''
        while len(received) < len(data):
            received += reader.recv(1 << 20)
        assert received == data  # nothing was read by the peek


def test_an_empty_or_ended_socket_is_left_for_the_usual_read(pair: Any) -> None:
    writer, reader = pair
    decoder = _decoder()
    assert read_split(reader, decoder, bytearray(8192)) is None  # EAGAIN
    writer.close()
    assert read_split(reader, decoder, bytearray(8192)) is None  # EOF
    assert reader.recv(1) == b''


# -- over a real link: a worker that stops in the middle of such a frame ----------------------

FRAME_TIMEOUT = 0.5
WAIT = 20.0
# Larger than the primary's read buffer: read in pieces, so its tail is split off.
LARGE = {'type': 'blob', 'data': bytes(range(251)) * 4200}


class Blobs(RawWriter):
    def _event_primary_message_blob(self, event: Any) -> None:
        self.send(LARGE)  # a large frame with a tail: the primary peeks at the next one


def blobs() -> None:
    Blobs()


TRUNCATED = _frame(LARGE)[:50_000]
HUGE = struct.pack('>IB', protocol.DEFAULT_MAX_FRAME_SIZE + 1, 0) + _frame(LARGE)[5:200]


@pytest.mark.parametrize('data, then, says', [
    (TRUNCATED, 'stay', 'did not finish it within frame_timeout'),
    (TRUNCATED, 'exit', 'ended in the middle of a frame'),
    (HUGE, 'stay', 'exceeds the maximum frame size'),
], ids=['stops-mid-body', 'exits-mid-body', 'huge-size'])
def test_a_peer_that_breaks_off_such_a_frame_is_faulted_as_before(data: bytes, then: str, says: str) -> None:
    pids: set[int] = set()

    async def main() -> tuple[Any, list[BaseException]]:
        loop = asyncio.get_running_loop()
        primary = ClusterPrimary(worker_target=blobs, codec='pickle', restart_intensity=None, restart_backoff=None,
                                 transport=ProcessTransport(frame_timeout=FRAME_TIMEOUT))
        got: asyncio.Future[Any] = loop.create_future()
        faulted: asyncio.Future[None] = loop.create_future()
        errors: list[BaseException] = []
        primary.after('worker_fork', lambda event: pids.add(event.data['worker'].pid))
        primary.on('worker_message', lambda event: got.set_result(event.data['message']))

        def on_error(event: Any) -> None:
            errors.append(event.data['error'])
            if not faulted.done():
                faulted.set_result(None)

        primary.on('worker_error', on_error)
        try:
            primary.fork(1)
            await asyncio.wait_for(ready_waiter(primary, 1), WAIT)
            worker = primary.workers[0]
            await primary.send({'type': 'blob'}, to=worker)
            message = await asyncio.wait_for(got, WAIT)
            assert worker.life.link._decoder.split_next  # the next frame is peeked at
            await primary.send({'type': 'raw', 'data': data.hex(), 'then': then}, to=worker)
            await asyncio.wait_for(faulted, WAIT)
            return message, errors
        finally:
            primary.destroy()
            await asyncio.wait_for(primary.wait_closed(), WAIT)

    try:
        message, errors = asyncio.run(main())
    finally:
        kill_and_reap(pids)
    assert message == LARGE
    assert len(errors) == 1 and isinstance(errors[0], ProtocolError), errors
    assert 'worker 1' in str(errors[0]) and says in str(errors[0]), errors[0]


# -- the worker's end: large frames read by the look, then a socket passed with its fd --------


SPLIT_READS: list[int] = []  # in the worker: what each read by the look returned (frames)


def _counted_read_split(sock: Any, decoder: Any, scratch: Any) -> Any:
    frames = read_split(sock, decoder, scratch)
    if frames is not None:
        SPLIT_READS.append(len(frames))
    return frames


class Receiver(ClusterWorker):
    def _event_primary_message_blob(self, event: Any) -> None:
        data = event.data['message']['data']
        self.send({'type': 'got', 'ok': data == LARGE['data'], 'kind': type(data).__name__,
                   'split_reads': list(SPLIT_READS)})

    def _event_primary_message_ping(self, event: Any) -> None:
        self.send({'type': 'pong'})

    async def _event_primary_message_listen(self, event: Any) -> None:
        sock = await self.listen(('127.0.0.1', 0))
        port = sock.getsockname()[1]
        sock.close()
        self.send({'type': 'listened', 'port': port})


def receiver() -> None:
    Receiver()


def test_a_worker_reads_large_messages_by_the_look_and_still_gets_passed_sockets(monkeypatch: Any) -> None:
    from isocluster.transport.process import worker_end

    monkeypatch.setattr(worker_end, 'read_split', _counted_read_split)  # the forked worker inherits it
    pids: set[int] = set()

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        primary = ClusterPrimary(worker_target=receiver, codec='pickle', restart='never')
        answers: asyncio.Queue[Any] = asyncio.Queue()
        primary.after('worker_fork', lambda event: pids.add(event.data['worker'].pid))
        primary.on('worker_message', lambda event: answers.put_nowait(event.data['message']))
        try:
            primary.fork(1)
            await asyncio.wait_for(ready_waiter(primary, 1), WAIT)
            worker = primary.workers[0]
            got = []
            for step in ('blob', 'blob', 'ping', 'blob', 'listen'):
                message = {'type': step, 'data': LARGE['data']} if step == 'blob' else {'type': step}
                await primary.send(message, to=worker)
                got.append(await asyncio.wait_for(answers.get(), WAIT))
            return got
        finally:
            primary.destroy()
            await asyncio.wait_for(primary.wait_closed(), WAIT)
            del loop

    try:
        first, second, pong, third, listened = asyncio.run(main())
    finally:
        kill_and_reap(pids)
    assert [answer['type'] for answer in (first, second, pong, third)] == ['got', 'got', 'pong', 'got']
    assert all(answer['ok'] and answer['kind'] == 'bytes' for answer in (first, second, third))
    # The first large frame was read as usual; the second, and the third after a small one,
    # by the look (a look that reads a frame: a list, [] while its payload is still arriving).
    assert first['split_reads'] == [] and len(second['split_reads']) == 1
    assert len(third['split_reads']) == 2
    assert listened['type'] == 'listened' and listened['port'] > 0
