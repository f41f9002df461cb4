"""Write batching for both ends of a process link: the first write since the last read goes
out at once, later ones are coalesced into one send per link per turn; large bodies go out
with sendmsg without a copy; a passed fd travels with its own send."""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import socket
from typing import Any, NoReturn

from ... import protocol
from ...errors import TransportError
from ...out_of_band import OutOfBand
from ..flow import LinkFlow

# Bodies up to this size are copied into the pending write buffer (one send for many small
# frames); larger ones are queued as they are and written with sendmsg.
_COPY_LIMIT = 64 * 1024
_IOV_MAX = 64
# Small frames are coalesced into chunks of about this size: a backlog is a queue of chunks,
# so appending never reallocates (copies) a buffer the socket is still draining.
_CHUNK_SIZE = 256 * 1024
_SEND_FLAGS = getattr(socket, 'MSG_NOSIGNAL', 0)
# While a large body is being written the socket may hold this much (the kernel doubles it,
# within net.core.wmem_max): a 1 MB message then goes to the kernel in one sendmsg and is read
# in one or two recv_into, instead of ~5 of each, with a wake-up of both loops per socket
# buffer (~200 KiB by default on AF_UNIX). Put back once the queue has drained, so a flood of
# small frames is held, and pushed back on, as before.
_LARGE_SNDBUF = 4 * 1024 * 1024
_MESSAGE = protocol.MESSAGE
# A MESSAGE frame's header, packed here for a stream's appends (what message_header returns).
_pack_header = protocol._HEADER.pack
_MESSAGE_CODE = protocol._MESSAGE_CODE
_HEADER_SIZE = protocol.HEADER_SIZE


class _Batch:
    """Writes held back and sent together: those made while a read callback delivers frames
    (sent when it returns), and those that follow a write sent at once since the last read
    (sent at the end of their turn). One batch per transport: a broadcast costs one send per
    link per turn, not two."""

    __slots__ = ('active', 'corked', 'sent')

    def __init__(self) -> None:
        self.active = False
        self.corked: list[_FrameWriter] = []
        # A write went out at once since the last read batch began: the next one is held
        # until the end of its turn. Marked without a callback: a call_soon per write sent at
        # once cost every round trip a callback and an extra loop pass (an epoll_wait). Only a
        # read clears the mark, so a sender that reads nothing (a stream) sends one batch per
        # turn, not a lone first frame and then the rest; the cost of a mark left over is that
        # next write waiting for the end of its own turn.
        self.sent = False

    def begin(self) -> bool:
        if self.active:
            return False
        self.active = True
        self.sent = False
        return True

    def end(self) -> None:
        self.active = False
        corked, self.corked = self.corked, []
        for writer in corked:
            writer._uncork()

    def hold(self, loop: asyncio.AbstractEventLoop) -> None:
        """A second write since the mark: hold every write, on any link, until the end of
        this loop turn (throughput: one send per link per turn)."""
        self.active = True
        loop.call_soon(self.end)


class _FrameWriter:
    """Non-blocking writes shared by both ends. The first frame since the last read goes out
    at once (a round trip's latency); later frames are coalesced, one send per link at the
    end of their turn (throughput)."""

    _sock: socket.socket
    _loop: asyncio.AbstractEventLoop
    _batch: _Batch

    def _init_writer(self) -> None:
        self._queue: collections.deque[Any] = collections.deque()  # bytes-like, or (bytes, fd)
        self.flow = LinkFlow(self._loop)
        self._corked = False
        self._writing = False
        self._write_broken = False
        # The queue's last item while a small frame may be appended to it: a bytearray under
        # _CHUNK_SIZE (so the queue is held: corked or writing). Set wherever the queue changes,
        # so a stream's append asks one question, not five.
        self._tail: bytearray | None = None
        self._sndbuf = 0  # the socket's own send buffer size, while a large body has raised it

    def _write_frame(self, kind: str, payload: Any, fd: int | None = None) -> None:
        """Queue one frame (with `fd` passed alongside it), then send at once, or at the end
        of the read batch, or when the socket is writable."""
        tail = self._tail
        if tail is not None and kind == _MESSAGE and type(payload) is bytes:
            # A stream's frames after the first of a turn: appended to the chunk being filled,
            # without building a header object or a (header, body) pair per message.
            size = len(payload)
            if size <= _COPY_LIMIT:
                tail += _pack_header(size + 1, _MESSAGE_CODE)
                tail += payload
                self.flow.pending += size + _HEADER_SIZE  # LinkFlow.queued, a call less per message
                if len(tail) >= _CHUNK_SIZE:
                    self._tail = None
                return
        queue = self._queue
        header, body = protocol.frame_parts(kind, payload)
        batch = self._batch
        if not (queue or self._corked or self._writing or batch.active or fd is not None
                or len(body) > _COPY_LIMIT):
            if not batch.sent:  # the turn's first frame: straight out (latency)
                if self._send_at_once(header + body):
                    batch.sent = True
                return
            batch.hold(self._loop)
        self._tail = None
        if fd is not None:
            queue.append((header + body, fd))
        elif type(body) is OutOfBand:
            if not self._sndbuf:
                self._raise_sndbuf()
            queue.append(header)
            queue.extend(body.parts)  # gathered by sendmsg: the payload is never joined
        elif len(body) > _COPY_LIMIT:
            if not self._sndbuf:
                self._raise_sndbuf()
            # Written as they are, with sendmsg: a large body is never copied. Unless it is
            # mutable (a custom codec's bytearray): the caller may change it, a broadcast
            # queues the same object on every link, and the queue appends to bytearrays.
            queue.append(header)
            queue.append(body if type(body) is bytes else bytes(body))
        else:
            if queue and type(queue[-1]) is bytearray and len(queue[-1]) < _CHUNK_SIZE:
                tail = queue[-1]
                tail += header
                tail += body
            else:
                tail = bytearray(header)
                tail += body
                queue.append(tail)
            if len(tail) < _CHUNK_SIZE:
                self._tail = tail
        self.flow.queued(len(header) + len(body))
        if self._corked or self._writing:
            return
        if self._batch.active:
            self._corked = True
            self._batch.corked.append(self)
            return
        try:
            self._flush()
        except OSError as exc:
            self._write_failed(exc)
            raise TransportError(f'{self._describe()}: write failed ({exc})', worker_id=self._worker_id()) from exc
        if self._queue:
            self._start_writing()
        else:
            if self._sndbuf:
                self._restore_sndbuf()
            self._batch.sent = True  # gone out at once: a later write of this turn is held

    def _raise_sndbuf(self) -> None:
        sock = self._sock
        try:
            size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            if size < _LARGE_SNDBUF:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _LARGE_SNDBUF)
                self._sndbuf = size
        except OSError:  # not a socket that has one (a test's pipe): written as it is
            pass

    def _restore_sndbuf(self) -> None:
        size, self._sndbuf = self._sndbuf, 0
        try:
            # Linux reports twice what was set (its bookkeeping overhead): set half of it back.
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max(size // 2, 1))
        except OSError:
            pass

    def _send_at_once(self, data: bytes) -> bool:
        """Send `data` now, with nothing queued before it; what the socket does not take is
        queued and written on writability. True when it all went out."""
        try:
            sent = self._sock.send(data, _SEND_FLAGS)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._send_failed(exc)
        if sent < len(data):
            self._queue_rest(data, sent)
            return False
        return True

    def _queue_rest(self, data: bytes, sent: int) -> None:
        """What a send at once left of `data`: queued, written on writability."""
        self._queue.append(memoryview(data)[sent:])
        self.flow.queued(len(data) - sent)
        self._start_writing()

    def _send_failed(self, exc: OSError) -> NoReturn:
        self._write_failed(exc)
        raise TransportError(f'{self._describe()}: write failed ({exc})', worker_id=self._worker_id()) from exc

    def _flush(self) -> None:
        """Send what the socket takes; raises OSError other than EAGAIN."""
        try:
            self._send_queue()
        finally:
            queue = self._queue  # its last chunk may be gone: appends go to what is left
            tail = queue[-1] if queue else None
            self._tail = tail if type(tail) is bytearray and len(tail) < _CHUNK_SIZE else None

    def _send_queue(self) -> None:
        queue = self._queue
        sock = self._sock
        try:
            while queue:
                item = queue[0]
                if type(item) is tuple:
                    data, fd = item
                    sent = socket.send_fds(sock, [data], [fd], _SEND_FLAGS)
                    os.close(fd)
                    queue[0] = memoryview(data)[sent:]
                    self.flow.flushed(sent)
                    if sent < len(data):
                        return
                    queue.popleft()
                    continue
                if len(queue) == 1:
                    sent = sock.send(item, _SEND_FLAGS)
                else:
                    buffers = list(itertools.islice(queue, _IOV_MAX))
                    for i, buffer in enumerate(buffers):
                        if type(buffer) is tuple:  # its fd goes with a send of its own
                            del buffers[i:]
                            break
                    sent = sock.sendmsg(buffers, (), _SEND_FLAGS)
                self.flow.flushed(sent)
                while sent:
                    item = queue[0]
                    size = len(item)
                    if sent < size:
                        if type(item) is bytearray:
                            del item[:sent]  # cheap: bytearray drops its head in place
                        else:
                            queue[0] = memoryview(item)[sent:]
                        return  # the socket is full
                    queue.popleft()
                    sent -= size
        except (BlockingIOError, InterruptedError):
            return

    def _uncork(self) -> None:
        self._corked = False
        if self._queue and not self._writing and not self._write_broken:
            self._on_writable()

    def _on_writable(self) -> None:
        try:
            self._flush()
        except OSError as exc:
            self._write_failed(exc)
            self._write_fault(exc)
            return
        if self._queue:
            self._start_writing()
        else:
            if self._sndbuf:
                self._restore_sndbuf()
            self._stop_writing()
            self._flushed()

    def _start_writing(self) -> None:
        if not self._writing:
            self._writing = True
            self._loop.add_writer(self._sock.fileno(), self._on_writable)

    def _stop_writing(self) -> None:
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._sock.fileno())

    def _discard_queue(self) -> None:
        for item in self._queue:
            if isinstance(item, tuple):
                os.close(item[1])
        self._queue.clear()
        self._tail = None
        self.flow.discarded()

    def _write_failed(self, exc: OSError) -> None:
        self._write_broken = True
        self._stop_writing()
        self._discard_queue()

    # hooks
    def _describe(self) -> str:
        raise NotImplementedError

    def _worker_id(self) -> int | None:
        return None

    def _write_fault(self, exc: OSError) -> None:
        """An unexpected background write failure (not only the peer being gone)."""

    def _flushed(self) -> None:
        """The queue has just been flushed."""

