"""The worker's end of a process link: the shared worker runtime (`runtime.WorkerEnd`) over
the socket, with the listening sockets the primary passes alongside LISTENING frames."""

from __future__ import annotations

import array
import asyncio
import collections
import os
import socket
from typing import Any

from ... import protocol
from ...errors import TransportError
from ...out_of_band import reads_buffers
from .. import sockets, watchdog
from ..runtime import WorkerEnd
from .fork_safety import _close_fds
from .large_read import read_split
from .writer import _CHUNK_SIZE, _COPY_LIMIT, _HEADER_SIZE, _MESSAGE_CODE, _SEND_FLAGS, _Batch, _FrameWriter, _pack_header

# A worker's read buffer starts small (cheap at start-up: a fresh buffer is page faults in a
# forked child) and grows to the full size the first time a read fills it.
_CHILD_FIRST_READ_SIZE = 8 * 1024
_CHILD_READ_SIZE = 256 * 1024
_ANCILLARY_SIZE = socket.CMSG_SPACE(16 * array.array('i').itemsize)
_RECV_FLAGS = getattr(socket, 'MSG_CMSG_CLOEXEC', 0)
_MESSAGE = protocol.MESSAGE
_AT_ONCE = frozenset({protocol.MESSAGE, protocol.REPLY})
_AT_ONCE_LIMIT = 64 * 1024  # larger bodies take the writer's sendmsg path (no copy)


class ChildLink(_FrameWriter, WorkerEnd):
    """The worker's end. `exit_on_finish`: target mode ends the process when the worker
    ends; script mode returns from `run()`."""

    defers_disconnect = True

    def __init__(self, worker_id: int, codec: protocol.Codec, sock: socket.socket,
                 loop: asyncio.AbstractEventLoop, exit_on_finish: bool, max_frame_size: int) -> None:
        self.worker_id = worker_id
        self.codec = codec
        self.max_frame_size = max_frame_size  # the transport's, so a worker's send rejects what the primary would
        self.loop = self._loop = loop
        self._sock = sock
        self._exit_on_finish = exit_on_finish
        self._batch = _Batch()
        self._decoder = protocol.FrameDecoder(max_frame_size)
        self._decoder.message_buffers = reads_buffers(codec)
        self._buffer = bytearray(_CHILD_FIRST_READ_SIZE)
        self._view = memoryview(self._buffer)
        self._grow_at = _CHILD_FIRST_READ_SIZE  # a read this size fills the first buffer: grow it
        self._read_into = [self._buffer]  # recvmsg_into's buffers, not a list built per read
        self._fds: collections.deque[int] = collections.deque()
        # The receiver frames go to now, and its link_messages (a run of MESSAGE frames in one
        # call, which stops once the receiver is another): kept by attach and detach.
        self.receiver: Any = None
        self._message_run: Any = None
        self._own_listeners: list[socket.socket] = []  # listen(reuse_port=True): this worker's alone
        self._reading = False
        self._closed = False
        self._first_write = False  # in a read pass of one frame that has written nothing yet
        self.reads = 0
        self._init_end()
        self._init_writer()
        sock.setblocking(False)

    def _describe(self) -> str:
        return f'link of worker {self.worker_id} to its primary'

    def _worker_id(self) -> int | None:
        return self.worker_id

    def _start(self, write_online: bool = True) -> None:
        """Write ONLINE (unless the script bootstrap did) and start reading. Called once the
        link is the current one, so the reader's callbacks run in a context where
        `current_link()` is this link."""
        if write_online:
            self.write(protocol.ONLINE, None)
        self._reading = True
        self.loop.add_reader(self._sock.fileno(), self._on_readable)

    @property
    def is_open(self) -> bool:
        return not (self._closed or self._eof or self._write_broken)

    # receiving

    def attach(self, receiver: Any) -> None:
        self.receiver = receiver
        run = self._message_run = getattr(receiver, 'link_messages', None)
        # A run's MESSAGE frames as their payloads alone (a tuple less a message), for a
        # receiver whose link_messages says it takes them (routed_publish.routed_receiver's).
        self._decoder.bare_messages = getattr(run, 'takes_payloads', False) is True
        super().attach(receiver)

    def detach(self, receiver: Any) -> None:
        if self.receiver is receiver:
            self.receiver = None
            self._message_run = None
            self._decoder.bare_messages = False
        super().detach(receiver)

    def _on_readable(self) -> None:
        decoder = self._decoder
        direct = decoder.gather_target()  # the rest of a large frame: read straight in
        if direct is None and decoder.split_next:
            # After a large frame with an out-of-band tail: the next such frame's payload is
            # read as the socket's own bytes (large_read). A frame with fds is read below.
            frames = read_split(self._sock, decoder, self._buffer)
            if frames is not None:
                self.reads += 1
                batch = self._batch
                batch.begin()
                try:
                    self._dispatch(None, 0, frames)
                finally:
                    self._first_write = False
                    batch.end()
                return
        try:
            # recvmsg_into, not recv_into (~0.5 us less a read): the primary may pass an fd
            # with any LISTENING frame (send_socket), and a read without room for it loses it.
            count, ancillary, _, _ = self._sock.recvmsg_into(
                self._read_into if direct is None else [direct], _ANCILLARY_SIZE, _RECV_FLAGS)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            count, ancillary = 0, []  # reset by a primary that died: same as EOF
        if ancillary:
            self._keep_fds(ancillary)
        if count == 0:
            self._stop_reading()
            self._refuse_new_connections()
            self._end_of_input()
            return
        self.reads += 1
        if direct is not None:
            data = None
        else:
            data = self._view[:count]
            if count == self._grow_at:  # a stream: read more at once
                self._buffer = bytearray(_CHILD_READ_SIZE)
                self._view = memoryview(self._buffer)
                self._read_into = [self._buffer]
                self._grow_at = -1
            # A round trip's read: one whole MESSAGE frame, nothing before it, a receiver to
            # take it. Straight to it, without the frame list and the loop of _dispatch.
            frame = decoder.whole_frame(data)
            if frame is not None:
                sink = self._message_sink
                if frame[0] == _MESSAGE and sink is not None and not self._backlog:
                    batch = self._batch
                    if not batch.active:  # batch.begin() and end(), inline
                        batch.active = True
                        batch.sent = False
                    self._first_write = True  # its first answer goes out at once
                    try:
                        sink(frame[1])
                    finally:
                        self._first_write = False
                        batch.active = False
                        if batch.corked:
                            batch.end()
                    return
                data, frames = None, [frame]
            else:
                frames = None
        batch = self._batch
        batch.begin()
        try:
            if data is None and direct is None:
                self._dispatch(None, 0, frames)
            else:
                self._dispatch(data, count)
        finally:
            self._first_write = False
            batch.end()

    def _keep_fds(self, ancillary: list[tuple[int, int, bytes]]) -> None:
        """The descriptors passed alongside a read (SCM_RIGHTS), for the LISTENING frames."""
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array('i')
                fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
                self._fds.extend(fds)

    def _dispatch(self, data: memoryview | None, count: int, frames: list[Any] | None = None) -> None:
        # A ProtocolError here is fatal to the worker (R120): it reaches the loop's handler.
        decoder = self._decoder
        bare = decoder.bare_messages  # this read's run may hold MESSAGE payloads alone
        if frames is None:
            frames = decoder.gathered(count) if data is None else decoder.feed(data)
        # A read of one frame (a request, a ping) has nothing to coalesce its answer with: the
        # answer goes out at once. Many frames (a pipeline, a stream): their answers go together.
        self._first_write = len(frames) == 1
        many = len(frames) > 1
        left = iter(frames)
        frame = next(left, None)
        while frame is not None:
            if type(frame) is tuple:
                kind, payload = frame
            else:  # a MESSAGE frame as its payload alone (FrameDecoder.bare_messages)
                kind, payload = _MESSAGE, frame
            if kind == _MESSAGE:
                # _accept() without its layer: to the receiver when it is attached and nothing
                # waits before this frame.
                sink = self._message_sink
                if sink is not None and not self._backlog:
                    sink(payload)
                    run = self._message_run
                    # (not to a receiver that took over in this read and takes no bare payload)
                    if run is not None and many and (not bare or decoder.bare_messages):
                        # A stream's read: the MESSAGE frames after this one in one call, for as
                        # long as they go to that receiver; the first frame it does not take
                        # (another kind, or after a handler destroyed it) comes back here.
                        frame = run(left, self)
                    else:
                        frame = next(left, None)
                    continue
            elif kind == protocol.LISTENING:
                payload = dict(payload or {})
                if self._fds:
                    payload['socket'] = socket.socket(fileno=self._fds.popleft())
                    if payload.get('reuse_port'):
                        self._own_listeners.append(payload['socket'])
            elif kind == protocol.DISCONNECT:
                self._refuse_new_connections()
            self._accept(kind, payload)
            frame = next(left, None)
        if decoder.error is not None:
            raise decoder.error

    def _refuse_new_connections(self) -> None:
        """Leaving: a SO_REUSEPORT socket of this worker's own has an accept queue of its own,
        reset when the socket closes. New SYNs are dropped from now on (their clients retry and
        reach the other workers' sockets), so the accept pass before DISCONNECT is delivered
        empties that queue for good."""
        for sock in self._own_listeners:
            if sock.fileno() >= 0:
                sockets.refuse_new_connections(sock)
        self._own_listeners.clear()

    def _deliver_later(self) -> None:
        """DISCONNECT and EOF typically make the worker close its servers. Closing a server in
        this callback drops any connection its accept callback took earlier in this same loop
        pass: asyncio builds that transport in a task one pass later, Server._attach() then
        asserts and the error is swallowed (CPython gh-109564), so the connection is never
        served and is reset when the worker exits. Deliver one pass later from the timer phase
        (after that pass's accept callbacks), then after their tasks (call_soon): by then
        every connection accepted so far is attached, and accept callbacks not yet run are
        cancelled by the close."""
        if not self._delivering:
            self._delivering = True
            self.loop.call_later(0, self.loop.call_soon, self._deliver_backlog)

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self.loop.remove_reader(self._sock.fileno())

    # writing

    def write(self, kind: str, payload: Any) -> None:
        if self._closed or self._eof or self._write_broken:  # not is_open: one call less a write
            raise TransportError(f'{self._describe()} is closed', worker_id=self.worker_id)
        if kind == _MESSAGE and (self._corked or self._writing) and type(payload) is bytes:
            # A stream's frames after the first of a turn: appended here to the chunk being
            # filled (what _write_frame's first branch does, without its call), as the
            # primary's link does.
            queue = self._queue
            if queue:
                tail = queue[-1]
                size = len(payload)
                if type(tail) is bytearray and len(tail) < _CHUNK_SIZE and size <= _COPY_LIMIT:
                    tail += _pack_header(size + 1, _MESSAGE_CODE)
                    tail += payload
                    self.flow.pending += size + _HEADER_SIZE
                    return
        if self._first_write and kind in _AT_ONCE and not (self._queue or self._corked or self._writing):
            # The first answer to a read of one frame (a reply, an echo) goes out at once, as
            # the writer sends the first frame of a turn, without being held to the end of the
            # read and flushed from there; later writes of the pass are held and coalesced.
            self._first_write = False
            if kind == _MESSAGE:  # an echo: its header packed here, not by frame_parts
                if type(payload) is bytes and len(payload) <= _AT_ONCE_LIMIT:
                    self._send_at_once(_pack_header(len(payload) + 1, _MESSAGE_CODE) + payload)
                    return
            else:
                header, body = protocol.frame_parts(kind, payload)
                if type(body) is bytes and len(body) <= _AT_ONCE_LIMIT:
                    self._send_at_once(header + body)
                    return
        self._write_frame(kind, payload)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        sock = self._sock
        self._stop_reading()
        self._stop_writing()
        try:
            if self._queue and not self._write_broken:
                sock.setblocking(True)  # the final flush may block: the kill timer bounds it
                for item in self._queue:
                    sock.sendall(item[0] if isinstance(item, tuple) else item, _SEND_FLAGS)
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._discard_queue()
        sock.close()
        _close_fds(list(self._fds))
        self._fds.clear()

    # ending

    def arm_kill_timer(self, seconds: float) -> None:
        before = self._kill_deadline
        super().arm_kill_timer(seconds)
        if self._kill_deadline != before:
            # The timer above is a thread: it needs the GIL. The watchdog does not.
            watchdog.report_deadline(self._kill_deadline)  # type: ignore[arg-type]

    def _end_now(self, code: int) -> None:
        os._exit(code)  # no flush: a blocked main thread may hold the stdout lock

    def run(self) -> None:
        if self.loop.is_running():
            raise RuntimeError('the worker loop is already running')
        self._serve()
        if not self._exit_on_finish:
            self.loop.close()
