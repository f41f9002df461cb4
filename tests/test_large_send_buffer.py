"""A large body raises the link's send buffer while it is written (fewer sends, reads and loop
wake-ups per large message) and puts it back once the queue has drained, so small frames
are pushed back on as before; the frame arrives intact across partial writes."""

from __future__ import annotations

import asyncio
import socket

import pytest

from isocluster import protocol
from isocluster.out_of_band import OutOfBand
from isocluster.transport.process import writer as writer_module

pytestmark = pytest.mark.skipif(not hasattr(socket, 'AF_UNIX'), reason='process transport: AF_UNIX')


def _wmem_max() -> int:
    try:
        with open('/proc/sys/net/core/wmem_max') as f:
            return int(f.read())
    except OSError:
        return 0


class _Writer(writer_module._FrameWriter):
    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self._loop = loop
        self._sock = sock
        self._batch = writer_module._Batch()
        self._init_writer()

    def _describe(self) -> str:
        return 'test link'


def _sndbuf(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)


def _bodies(size: int) -> list[object]:
    data = bytes(range(256)) * (size // 256)
    head = b'\x80\x05head'
    return [data, OutOfBand([head, memoryview(data)], len(head) + len(data))]


@pytest.mark.skipif(_wmem_max() < 4 * 212992, reason='net.core.wmem_max does not allow a larger send buffer')
@pytest.mark.parametrize('body_index', [0, 1], ids=['bytes', 'out-of-band parts'])
def test_a_large_body_is_written_with_a_raised_send_buffer_then_the_buffer_is_put_back(body_index: int) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sender.setblocking(False)
            receiver.setblocking(False)
            default = _sndbuf(sender)
            writer = _Writer(loop, sender)
            # Larger than the raised buffer too: written in several sends as the reader drains.
            body = _bodies(12 * 1024 * 1024)[body_index]
            expected = bytes(body) if isinstance(body, OutOfBand) else body
            writer._write_frame(protocol.MESSAGE, body)
            # The first send took far more than the default buffer holds: it was raised.
            assert writer._queue, 'the frame is larger than any send buffer: some of it waits'
            assert _sndbuf(sender) > 2 * default
            assert writer.flow.pending < len(expected) + protocol.HEADER_SIZE - 2 * default
            writer._write_frame(protocol.MESSAGE, b'small after')  # queued behind it, in order

            decoder = protocol.FrameDecoder()
            frames: list[protocol.Frame] = []
            largest_seen = 0
            while len(frames) < 2:
                largest_seen = max(largest_seen, _sndbuf(sender))
                await asyncio.sleep(0)
                try:
                    chunk = receiver.recv(64 * 1024)  # a slow reader: many partial writes
                except BlockingIOError:
                    continue
                assert chunk, 'the sender closed early'
                frames += decoder.feed(chunk)
            while writer._queue:  # the writer's last callback may still be due
                await asyncio.sleep(0)
            assert frames == [(protocol.MESSAGE, expected), (protocol.MESSAGE, b'small after')]
            assert largest_seen > 2 * default
            # Drained: back to what the socket had, so a flood of small frames is held as before.
            assert _sndbuf(sender) == default
        finally:
            sender.close()
            receiver.close()

    asyncio.run(scenario())


def test_small_frames_leave_the_send_buffer_as_it_is() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sender.setblocking(False)
            default = _sndbuf(sender)
            writer = _Writer(loop, sender)
            for i in range(100):
                writer._write_frame(protocol.MESSAGE, b'x' * 1000)
                assert _sndbuf(sender) == default
            await asyncio.sleep(0)
            assert _sndbuf(sender) == default
        finally:
            sender.close()
            receiver.close()

    asyncio.run(scenario())
