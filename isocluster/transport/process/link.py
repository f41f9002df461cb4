"""The primary's end of a process link: reads the worker's socket into the transport's shared
buffer, cuts frames, delivers them in time slices, and reaps the worker through its pidfd
(so a reaped or reused pid is never waited for or signalled)."""

from __future__ import annotations

import collections
import os
import signal
import socket
from typing import TYPE_CHECKING, Any

from ... import protocol
from ...errors import ProtocolError, TransportError
from ...out_of_band import reads_buffers
from .. import base, procfs
from ..partial import PartialFrameDeadline
from .large_read import read_split
from .output import _OutputReader
from .writer import _CHUNK_SIZE, _COPY_LIMIT, _HEADER_SIZE, _MESSAGE, _MESSAGE_CODE, _FrameWriter, _pack_header

if TYPE_CHECKING:
    from .spawn import ProcessTransport

# Seconds of the primary's handlers per loop pass while a worker's frames pile up: a flood
# read 256 KiB at a time into 1 ms handlers would hold the loop for seconds, and the
# shutdown, kill and heartbeat timers with it.
_DELIVERY_SLICE = 0.02
_PEER_GONE = (BrokenPipeError, ConnectionResetError)
_BATCH = 64  # frames delivered between two looks at the clock


class _WorkerLink(_FrameWriter, base.WorkerLink):
    def __init__(self, transport: 'ProcessTransport', spec: base.WorkerSpec, pid: int,
                 sock: socket.socket, pidfd: int, listener: base.LinkListener) -> None:
        self.id = spec.id
        self.pid = pid
        self._transport = transport
        self._loop = transport.loop
        self._sock = sock
        self._pidfd: int | None = pidfd
        self._listener = listener
        # `link_frames(link, inbox, count)`, when the listener has it (the primary does): the
        # next `count` frames taken off `inbox` in one call, as link_frame would take each.
        self._take_frames = getattr(listener, 'link_frames', None)
        self._batch = transport._batch
        self._decoder = protocol.FrameDecoder(transport.max_frame_size)
        self._decoder.message_buffers = reads_buffers(spec.codec)
        # A listener that takes frames in batches takes a MESSAGE frame as its payload alone
        # (no tuple a frame on a stream); any other is given (kind, payload) frames.
        self._decoder.bare_messages = self._take_frames is not None
        self._partial_deadline = PartialFrameDeadline(self._loop, transport.frame_timeout, self._partial_frame_expired)
        self._last_read_at = 0.0
        self._buffer = transport._read_buffer
        self._view = transport._read_view
        self._inbox: collections.deque[protocol.Frame] = collections.deque()
        self._reading = True
        self._paused = False  # reading waits for the inbox to be delivered
        self._closing = False
        self._eof = False
        self._closed_reported = False
        self._exit_status: tuple[int | None, base.Signals | None] | None = None
        self._exit_reported = False
        self.outputs: list[_OutputReader] = []
        self._init_writer()
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._on_readable)
        self._loop.add_reader(pidfd, self._on_pidfd)

    def __repr__(self) -> str:
        return f'<WorkerLink id={self.id} pid={self.pid} open={self.is_open}>'

    def _describe(self) -> str:
        return f'link to worker {self.id} (pid {self.pid})'

    # Only while unreaped: after waitpid the pid may already belong to another process.
    def resident_bytes(self) -> int | None:
        return procfs.resident_bytes(self.pid) if self._exit_status is None else None

    def cpu_seconds(self) -> float | None:
        return procfs.cpu_seconds(self.pid) if self._exit_status is None else None

    def _worker_id(self) -> int | None:
        return self.id

    @property
    def is_open(self) -> bool:
        return not (self._closing or self._eof or self._write_broken)

    # writing

    def write(self, kind: str, payload: Any) -> None:
        if kind == _MESSAGE and type(payload) is bytes and not self._closing:
            size = len(payload)
            tail = self._tail
            if tail is not None:
                # A stream's frames after the first of a turn: appended here to the chunk being
                # filled (what _write_frame's first branch does, without its call). A chunk to
                # append to means an open link: a broken or ended one has dropped its queue.
                if size <= _COPY_LIMIT:
                    tail += _pack_header(size + 1, _MESSAGE_CODE)
                    tail += payload
                    self.flow.pending += size + _HEADER_SIZE
                    if len(tail) >= _CHUNK_SIZE:
                        self._tail = None
                    return
            elif size <= _COPY_LIMIT and not (self._queue or self._corked or self._writing or self._eof
                                              or self._write_broken):
                batch = self._batch
                if not (batch.active or batch.sent):
                    # The turn's first frame (a round trip's request): straight out, as
                    # _write_frame sends it, without its call and frame_parts'.
                    if self._send_at_once(_pack_header(size + 1, _MESSAGE_CODE) + payload):
                        batch.sent = True
                    return
        if self._closing or self._eof or self._write_broken:  # not is_open: a call less per send
            raise self.closed_error()
        self._write_frame(kind, payload)

    def send_socket(self, sock: Any, payload: Any) -> None:
        if not self.is_open:
            raise self.closed_error()
        # The queue owns a duplicate: the primary may close its socket before this is sent.
        self._write_frame(protocol.LISTENING, payload, os.dup(sock.fileno()))

    def close(self) -> None:
        if self._closing or self._eof:
            return
        self._closing = True
        if not self._queue:
            self._flushed()

    def _flushed(self) -> None:
        if self._closing and not self._eof:
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _write_fault(self, exc: OSError) -> None:
        if not isinstance(exc, _PEER_GONE):
            self._fail(TransportError(f'{self._describe()}: write failed ({exc})', worker_id=self.id))

    def kill(self, signal: base.Signals) -> None:
        if self._pidfd is None:
            return
        try:
            _pidfd_send_signal(self._pidfd, signal)
        except ProcessLookupError:
            pass  # exited, not yet reaped

    # reading

    def _on_readable(self) -> None:
        decoder = self._decoder
        direct = decoder.gather_target()  # the rest of a large frame: read straight in
        if direct is None and decoder.split_next and self._read_split():
            return
        try:
            count = self._sock.recv_into(self._buffer if direct is None else direct)
        except (BlockingIOError, InterruptedError):
            return
        except ConnectionResetError:
            count = 0  # a worker that closes with unread data resets instead of EOF
        except OSError as exc:
            self._fail(TransportError(f'{self._describe()}: read failed ({exc})', worker_id=self.id))
            return
        if count == 0:
            self._on_eof()
            return
        # A round trip's read is one whole frame with nothing before it: straight to what it
        # means. The decoder stays idle, so no partial-frame deadline is armed or to update.
        frame = None if direct is not None or self._inbox else decoder.whole_frame(self._view[:count])
        batch = self._batch
        began = not batch.active
        if began:  # batch.begin() and end(), inline
            batch.active = True
            batch.sent = False
        try:
            if frame is not None:
                self._listener.link_frame(self, frame[0], frame[1])
            else:
                self._feed(count, direct is not None)
        finally:
            if began:
                batch.active = False
                if batch.corked:
                    batch.end()

    def _read_split(self) -> bool:
        """After a large frame with an out-of-band tail, the next one such is read so that its
        payload is the socket's own bytes (large_read). False: nothing read, read as usual."""
        try:
            frames = read_split(self._sock, self._decoder, self._buffer)  # the read buffer, to peek into
        except ProtocolError:
            frames = []  # the decoder keeps the fault: _feed reports it
        if frames is None:
            return False
        batch = self._batch
        began = batch.begin()
        try:
            self._feed(0, frames=frames)
        finally:
            if began:
                batch.end()
        return True

    def _feed(self, count: int, direct: bool = False, frames: list[protocol.Frame] | None = None) -> None:
        decoder = self._decoder
        if frames is None:
            try:
                frames = decoder.gathered(count) if direct else decoder.feed(self._view[:count])
            except ProtocolError:
                frames = []
        if decoder.pending:  # only a frame left unfinished needs to know when it was read
            self._last_read_at = self._loop.time()
        if len(frames) == 1 and not self._inbox:
            # A round trip's read: one frame, nothing queued before it. Straight to what it
            # means, without the inbox and the time slice (one frame cannot overrun a slice).
            frame = frames[0]
            if type(frame) is tuple:
                self._listener.link_frame(self, *frame)
            else:
                self._listener.link_frame(self, _MESSAGE, frame)
        else:
            self._inbox.extend(frames)
            self._deliver()
        error = decoder.error
        pending = decoder.pending if error is None and self._reading else 0
        deadline = self._partial_deadline
        if pending or deadline.armed:
            deadline.update(pending, bool(frames))
        if error is not None:
            # The good frames before the fault were delivered first (they are the worker's).
            self._fail(_named(error, self.id))

    def _partial_frame_expired(self) -> None:
        if not self._reading:
            return
        # The worker is judged, not the primary: when the primary read bytes of the frame only
        # after the deadline fell (its loop was blocked), the frame gets another frame_timeout.
        self._on_readable()
        deadline = self._partial_deadline
        if not self._reading or not self._decoder.pending or deadline.armed:
            return
        if self._last_read_at >= deadline.due:
            deadline.update(self._decoder.pending, True)
            return
        pending = self._decoder.pending
        self._decoder.discard()  # the primary holds no worker's half frame past its deadline
        self._fail(ProtocolError(
            f'worker {self.id} began a frame and did not finish it within frame_timeout='
            f'{self._transport.frame_timeout}s ({pending} bytes received); it is killed and replaced',
            worker_id=self.id,
        ))

    def _fail(self, error: BaseException) -> None:
        if not self._reading:
            return
        self._stop_reading()
        self._listener.link_error(self, error)

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._partial_deadline.cancel()
            self._loop.remove_reader(self._sock.fileno())

    def _pause_reading(self) -> None:
        if self._reading and not self._paused:
            self._paused = True
            self._loop.remove_reader(self._sock.fileno())

    def _resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            if self._reading:
                self._loop.add_reader(self._sock.fileno(), self._on_readable)

    def _drain_socket(self) -> None:
        """The worker is dead: read what it wrote before dying, without waiting."""
        while self._reading:
            direct = self._decoder.gather_target()
            try:
                count = self._sock.recv_into(self._buffer if direct is None else direct)
            except (BlockingIOError, InterruptedError):
                return  # a process the worker forked still holds its end
            except OSError:
                count = 0
            if count == 0:
                return
            self._feed(count, direct is not None)

    def _on_eof(self) -> None:
        if self._eof:
            return
        pending = self._decoder.pending
        if pending and self._reading and self._decoder.error is None:
            self._fail(ProtocolError(
                f'worker {self.id} broke the link protocol: its link ended in the middle of a frame '
                f'({pending} bytes of it received)', worker_id=self.id,
            ))
        self._stop_reading()
        self._eof = True
        self._stop_writing()
        self._discard_queue()
        self._transport._forget_socket(self._sock)
        self._sock.close()
        self._deliver()

    def _deliver(self) -> None:
        inbox = self._inbox
        listener = self._listener
        loop = self._loop
        # One frame (a round trip's read) needs no clock: the check below comes at 64 frames.
        deadline = loop.time() + _DELIVERY_SLICE if len(inbox) > 1 else 0.0
        delivered = 0
        take = self._take_frames
        while inbox and take is not None:
            # A listener that takes frames in batches: 64 at a time, the clock read between batches.
            if delivered and loop.time() > deadline:
                self._pause_reading()
                loop.call_soon(self._deliver)
                return
            delivered = 1
            try:
                take(self, inbox, _BATCH)
            except BaseException:
                if inbox:
                    self._loop.call_soon(self._deliver)
                raise
        while inbox:
            delivered += 1
            if not delivered & 63 and loop.time() > deadline:
                self._pause_reading()
                loop.call_soon(self._deliver)
                return
            kind, payload = inbox.popleft()
            try:
                listener.link_frame(self, kind, payload)
            except BaseException:
                if inbox:
                    self._loop.call_soon(self._deliver)
                raise
        if self._paused:
            self._resume_reading()
        if self._eof and not self._closed_reported:
            self._closed_reported = True
            try:
                listener.link_closed(self)
            finally:
                self._report_exit()

    # reaping

    def _on_pidfd(self) -> None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, None  # reaped by someone else: the status is lost
        if pid == 0:
            return
        self._close_pidfd()
        if status is None:
            self._exit_status = (None, None)
        else:
            code = os.waitstatus_to_exitcode(status)
            self._exit_status = (code, None) if code >= 0 else (None, base.signal_of(-code))
        if not self._eof:
            self._drain_socket()
            self._on_eof()
        else:
            self._report_exit()

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            self._transport._forget_fd(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def _report_exit(self) -> None:
        if self._closed_reported and self._exit_status is not None and not self._exit_reported:
            self._exit_reported = True
            self._transport._links.discard(self)
            self._listener.link_exit(self, *self._exit_status)

    def _abandon(self) -> None:
        """Transport closing: release everything now; a child still alive is killed and reaped."""
        if self._pidfd is not None:
            self.kill(base.SIGKILL)
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self._close_pidfd()
        if not self._eof:
            self._stop_reading()
            self._stop_writing()
            self._discard_queue()
            self._eof = True
            self._transport._forget_socket(self._sock)
            self._sock.close()
        for output in self.outputs:
            output.close()


def _named(error: ProtocolError, worker_id: int) -> ProtocolError:
    """The decoder's fault, said as the primary says a protocol violation: naming the worker."""
    named = ProtocolError(
        f'worker {worker_id} broke the link protocol: {error}; it is killed and replaced', worker_id=worker_id,
    )
    named.frame_kind = error.frame_kind
    return named


def _pidfd_send_signal(pidfd: int, sig: int) -> None:
    signal.pidfd_send_signal(pidfd, sig)

