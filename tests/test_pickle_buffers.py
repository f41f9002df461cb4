"""Large payloads with the pickle codec (issue 14): a bytes, bytearray or memoryview payload is
never copied into the pickle stream, travels each way on every transport, and arrives as it
was when send() was called."""

from __future__ import annotations

import asyncio
import tracemalloc
from typing import Any

import pytest

from isocluster import ClusterPrimary, ClusterWorker, protocol
from tests.cluster_helpers import TRANSPORTS, ready_waiter, run_cluster

SIZE = 1024 * 1024 + 3  # past every threshold, and not a multiple of a page or a chunk


def _payloads() -> dict[str, Any]:
    pattern = bytes(range(251)) * (SIZE // 251 + 1)
    return {
        'bytes': pattern[:SIZE],
        'bytearray': bytearray(pattern[1:SIZE + 1]),
        'memoryview': memoryview(pattern[2:SIZE + 2]),
        'nested': [{'deep': pattern[3:SIZE + 3]}],
    }


def _described(message: dict[str, Any]) -> dict[str, Any]:
    """What the receiver saw: each payload's type and content."""
    return {
        'bytes': (type(message['bytes']).__name__, bytes(message['bytes'])),
        'bytearray': (type(message['bytearray']).__name__, bytes(message['bytearray'])),
        'memoryview': (type(message['memoryview']).__name__, bytes(message['memoryview'])),
        'nested': bytes(message['nested'][0]['deep']),
        'small': message['small'],
    }


def _expected() -> dict[str, Any]:
    sent = _payloads()
    return {
        'bytes': ('bytes', sent['bytes']),
        'bytearray': ('bytearray', bytes(sent['bytearray'])),
        'memoryview': ('memoryview', bytes(sent['memoryview'])),
        'nested': sent['nested'][0]['deep'],
        'small': b'tiny',
    }


def test_a_large_bytes_payload_is_not_copied_into_the_pickle_stream() -> None:
    codec = protocol.get_codec('pickle')
    message = {'type': 'blob', 'data': bytes(16 * 1024 * 1024)}
    tracemalloc.start()
    try:
        encoded = codec.encode(message)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024  # before: the 16 MiB payload copied into the stream
    assert codec.decode(bytes(encoded)) == message


def test_large_buffers_cross_a_framed_stream_whole_and_in_pieces() -> None:
    """The bytes the process and Ray transports write (encode_frame) read back by a decoder."""
    codec = protocol.get_codec('pickle')
    message = {**_payloads(), 'small': b'tiny'}
    frame = protocol.encode_frame(protocol.MESSAGE, codec.encode(message))
    for message_buffers in (False, True):
        decoder = protocol.FrameDecoder()
        decoder.message_buffers = message_buffers
        frames = []
        for start in range(0, len(frame), 100_000):
            frames += decoder.feed(frame[start:start + 100_000])
        ((kind, body),) = frames
        assert kind == protocol.MESSAGE
        assert _described(codec.decode(body)) == _expected()


class EchoBlobs(ClusterWorker):
    def _event_primary_message_blobs(self, event: Any) -> None:
        received = event.data['message']
        self.send({'type': 'seen', 'seen': _described(received)})
        sent = {**_payloads(), 'small': b'tiny', 'type': 'blobs'}
        self.send(sent)
        sent['bytearray'][:4] = b'XXXX'  # after send(): what was sent must not change


def echo_blobs() -> None:
    EchoBlobs()


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_large_buffers_travel_each_way_as_they_were_sent(transport: str) -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        loop = asyncio.get_running_loop()
        seen, back = loop.create_future(), loop.create_future()

        def on_message(event: Any) -> None:
            message = event.data['message']
            if message['type'] == 'seen':
                seen.set_result(message['seen'])
            else:
                back.set_result(_described(message))

        primary.on('worker_message', on_message)
        sent = {**_payloads(), 'small': b'tiny', 'type': 'blobs'}
        primary.send(sent, to=primary.workers[0])
        sent['bytearray'][:4] = b'XXXX'  # after send(): what was sent must not change
        return await seen, await back

    seen, back = run_cluster(transport, scenario, worker_target=echo_blobs, codec='pickle')
    assert seen == _expected()  # primary -> worker
    assert back == _expected()  # worker -> primary
