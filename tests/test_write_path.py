"""The process transport's write and read fast paths (issue 7): small frames coalesced into
one buffer, large bodies queued uncopied and written with sendmsg, frames cut straight out of
each read. Whatever the mix of sizes, every message arrives whole and in order, both ways."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from isocluster import ClusterPrimary, ClusterWorker, protocol
from isocluster.transport import process
from tests.cluster_helpers import ready_waiter, run_cluster

# Around the copy limit, empty, tiny and far larger than one read (256 KiB) or one write.
SIZES = [0, 1, 100, process._COPY_LIMIT - 8, process._COPY_LIMIT + 1, 3, 1024 * 1024, 7, 300 * 1024, 50]


def _payload(index: int, size: int) -> str:
    return chr(ord('a') + index % 26) * size


class Echo(ClusterWorker):
    def _event_primary_message_blob(self, event: Any) -> None:
        self.send(event.data['message'])


def echo() -> None:
    Echo()


def test_mixed_sizes_arrive_whole_and_in_order_both_ways() -> None:
    messages = [{'type': 'blob', 'i': i, 'data': _payload(i, size)}
                for round_ in range(3) for i, size in enumerate(SIZES, start=round_ * len(SIZES))]

    async def scenario(primary: ClusterPrimary) -> list[Any]:
        primary.fork(1)
        await ready_waiter(primary, 1)
        worker = primary.workers[0]
        received: list[Any] = []
        done = asyncio.get_running_loop().create_future()

        def on_message(event: Any) -> None:
            received.append(event.data['message'])
            if len(received) == len(messages) and not done.done():
                done.set_result(None)

        primary.on('worker_message', on_message)
        # All queued in one loop turn: they coalesce, and the large ones go uncopied.
        sends = [primary.send(message, to=worker) for message in messages]
        await asyncio.gather(*sends)
        await asyncio.wait_for(done, 30)
        return received

    received = run_cluster('process', scenario, worker_target=echo)
    assert [m['i'] for m in received] == [m['i'] for m in messages]
    assert received == messages


def test_the_decoder_keeps_only_the_partial_frame_of_a_read() -> None:
    frames = b''.join(protocol.encode_frame('message', bytes([i]) * i) for i in range(1, 40))
    decoder = protocol.FrameDecoder()
    cut = len(frames) - 10  # ends inside the last frame
    first = decoder.feed(memoryview(frames)[:cut])
    assert [len(body) for _, body in first] == list(range(1, 39))
    assert decoder.pending == len(protocol.encode_frame('message', b'x' * 39)) - 10
    rest = decoder.feed(frames[cut:])
    assert rest == [('message', bytes([39]) * 39)]
    assert decoder.pending == 0
    # The frames are copies: reusing the read buffer afterwards cannot change them.
    buffer = bytearray(frames)
    out = protocol.FrameDecoder().feed(memoryview(buffer))
    buffer[:] = b'\0' * len(buffer)
    assert out[5] == ('message', bytes([6]) * 6)


def test_a_frame_split_into_header_and_body_is_the_encoded_frame() -> None:
    for kind, payload in [('message', b'abc'), ('request', (7, b'xy')), ('reply', (9, True, b'z')),
                          ('reply', (9, False, b'')), ('online', None), ('listen', {'id': 1})]:
        header, body = protocol.frame_parts(kind, payload)
        assert header + body == protocol.encode_frame(kind, payload)
        assert protocol.FrameDecoder().feed(header + body) == [(kind, payload if kind != 'listen' else {'id': 1})]


class BytearrayCodec:
    """A custom codec whose encode returns a bytearray (the Codec protocol says bytes)."""

    name = 'bytearray-json'

    def __init__(self) -> None:
        self._json = protocol.get_codec('json')

    def encode(self, message: Any) -> bytearray:
        return bytearray(self._json.encode(message))

    def decode(self, data: bytes) -> Any:
        return self._json.decode(data)


class Collector(ClusterWorker):
    def _event_primary_message_blob(self, event: Any) -> None:
        self.send({'type': 'got', 'i': event.data['message']['i'], 'size': len(event.data['message']['data'])})


def collector() -> None:
    Collector()


def test_a_large_mutable_body_broadcast_then_followed_by_small_frames_reaches_each_worker_intact() -> None:
    """A body over the copy limit is queued uncopied, but not a bytearray a codec returned:
    a broadcast queues the same object on every link, and later small frames are appended to
    a queued bytearray. Every worker must get exactly what was sent to it."""
    big = 'x' * (process._COPY_LIMIT * 2)

    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(2)
        await ready_waiter(primary, 2)
        first, second = primary.workers
        got: dict[int, list[Any]] = {first.id: [], second.id: []}
        done = asyncio.get_running_loop().create_future()

        def on_message(event: Any) -> None:
            got[event.data['worker'].id].append((event.data['message']['i'], event.data['message']['size']))
            if sum(map(len, got.values())) == 4 and not done.done():
                done.set_result(None)

        primary.on('worker_message', on_message)
        primary.send({'type': 'blob', 'i': 0, 'data': 'a'}, to=first)  # goes out at once
        primary.send({'type': 'blob', 'i': 1, 'data': big})  # to both, held to the turn's end
        primary.send({'type': 'blob', 'i': 2, 'data': 'b'}, to=second)  # small: coalesced
        primary.send({'type': 'blob', 'i': 3, 'data': 'c'}, to=first)
        await asyncio.wait_for(done, 30)
        return got[first.id], got[second.id]

    to_first, to_second = run_cluster('process', scenario, worker_target=collector, codec=BytearrayCodec())
    assert to_first == [(0, 1), (1, len(big)), (3, 1)]
    assert to_second == [(1, len(big)), (2, 1)]


def test_a_read_of_one_whole_frame_decodes_as_the_general_path_does() -> None:
    cases = [('message', b''), ('message', b'abc'), ('request', (7, b'')), ('request', (2**40, b'xy')),
             ('reply', (9, True, b'z')), ('reply', (9, False, b'')), ('request_batch', (3, b'[1]')),
             ('online', None), ('listen', {'id': 1, 'address': 'p'})]
    for kind, payload in cases:
        frame = protocol.encode_frame(kind, payload)
        general = protocol.FrameDecoder().feed(frame + protocol.encode_frame('online', None))[:1]
        for data in (frame, bytearray(frame), memoryview(frame)):
            assert protocol.FrameDecoder().feed(data) == general == [(kind, payload)], (kind, payload)
    # Too short for its kind, over the limit, unknown: judged as before, not read as a frame.
    for bad in (b'\x00\x00\x00\x05' + bytes([protocol.KINDS.index('request')]) + b'1234',
                b'\x00\x00\x00\x09' + bytes([protocol.KINDS.index('reply')]) + b'12345678',
                b'\x00\x00\x00\x02\xff\x00'):
        decoder = protocol.FrameDecoder()
        with pytest.raises(protocol.ProtocolError):
            decoder.feed(bad)
    with pytest.raises(protocol.ProtocolError):
        protocol.FrameDecoder(max_frame_size=3).feed(protocol.encode_frame('message', b'abcd'))
