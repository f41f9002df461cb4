"""The process transport: each worker is a real child made with `os.fork()`, linked to the
primary by a `socket.socketpair()`, both ends driven by asyncio.

Primary side: one `_WorkerLink` per child reads its socket with `loop.add_reader` into a
preallocated buffer, feeds a `protocol.FrameDecoder` and reports frames, EOF and the exit
(found through a pidfd, so a reaped or reused pid is never waited for or signalled).

Worker side: `_ChildLink` is the worker's `PrimaryLink`. In target mode the forked child
builds it and runs the target on a fresh loop (`_run_child`); in script mode the child
execs the script through a bootstrap that writes ONLINE first (`bootstrap.py`), and the
script finds its link in the environment (`link_from_environment`). Either way the child
ends with `os._exit`: it never returns into the parent's code.
"""

from __future__ import annotations

import array
import asyncio
import collections
import inspect
import itertools
import logging
import os
import signal
import _signal  # the raw calls: `signal`'s wrappers turn every signal number into an enum (~0.3 ms a fork)
import socket
import sys
import threading
import traceback
import warnings
import weakref
from typing import Any

from .. import protocol
from ..errors import ProtocolError, TransportError
from . import base, bootstrap, procfs, systemd, watchdog
from .partial import DEFAULT_FRAME_TIMEOUT, PartialFrameDeadline, check_frame_timeout
from .flow import LinkFlow

output_logger = logging.getLogger('isocluster.worker')

_READ_SIZE = 256 * 1024  # the primary's read buffer, shared by all its links (reads are synchronous)
# A worker's read buffer starts small (cheap at start-up: a fresh buffer is page faults in a
# forked child) and grows to the full size the first time a read fills it.
_CHILD_FIRST_READ_SIZE = 8 * 1024
_CHILD_READ_SIZE = 256 * 1024
_ALL_SIGNALS = signal.valid_signals()
# Bodies up to this size are copied into the pending write buffer (one send for many small
# frames); larger ones are queued as they are and written with sendmsg.
_COPY_LIMIT = 64 * 1024
_IOV_MAX = 64
# Small frames are coalesced into chunks of about this size: a backlog is a queue of chunks,
# so appending never reallocates (copies) a buffer the socket is still draining.
_CHUNK_SIZE = 256 * 1024
# Seconds of the primary's handlers per loop pass while a worker's frames pile up: a flood
# read 256 KiB at a time into 1 ms handlers would hold the loop for seconds, and the
# shutdown, kill and heartbeat timers with it.
_DELIVERY_SLICE = 0.02
_ANCILLARY_SIZE = socket.CMSG_SPACE(16 * array.array('i').itemsize)
_SEND_FLAGS = getattr(socket, 'MSG_NOSIGNAL', 0)
_RECV_FLAGS = getattr(socket, 'MSG_CMSG_CLOEXEC', 0)
_PEER_GONE = (BrokenPipeError, ConnectionResetError)
_MAX_PARTIAL_LINE = 64 * 1024
_STREAMS = ('stdin', 'stdout', 'stderr')
_STDIO_WORDS = ('inherit', 'pipe', 'devnull')
_PR_SET_PDEATHSIG = 1

# Every transport of this process: a forked child must close the fds they hold for other
# workers, or a worker whose primary dies never sees EOF (a sibling keeps its link open).
_transports: 'weakref.WeakSet[ProcessTransport]' = weakref.WeakSet()
# This process's link when it is a worker: for exec-mode contexts other than the one that
# first asked, and so that a worker's own workers close it.
_worker_link: '_ChildLink | None' = None
_libc: Any = None
_prctl: Any = None


def _load_libc() -> Any:
    # Loaded in the parent: dlopen after fork could deadlock on a loader lock held by
    # another thread of the parent at the time of the fork.
    global _libc, _prctl
    if _libc is None and sys.platform.startswith('linux'):
        import ctypes  # only a primary needs it: an exec-mode worker never pays its import

        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _prctl = _libc.prctl  # resolved here too: the lookup costs a fork's child ~0.1 ms
        except (OSError, AttributeError):
            _libc = False
    return _libc


def _after_fork_in_child() -> None:
    # A process forked by a worker (multiprocessing, a daemon) is not that worker.
    global _worker_link
    _worker_link = None
    base._current_link.set(None)


os.register_at_fork(after_in_child=_after_fork_in_child)


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass


def _close_socket_in_child(sock: socket.socket) -> None:
    # detach() first: the copied socket object must not close the fd number again later,
    # when it may name a new file of the child.
    if sock.fileno() >= 0:
        try:
            os.close(sock.detach())
        except OSError:
            pass


class _Batch:
    """Writes held back and sent together: those made while a read callback delivers frames
    (sent when it returns), and those that follow a write sent at once in the same loop turn
    (sent at the end of the turn). One batch per transport: a broadcast costs one send per
    link per turn, not two."""

    __slots__ = ('active', 'corked')

    def __init__(self) -> None:
        self.active = False
        self.corked: list[_FrameWriter] = []

    def begin(self) -> bool:
        if self.active:
            return False
        self.active = True
        return True

    def end(self) -> None:
        self.active = False
        corked, self.corked = self.corked, []
        for writer in corked:
            writer._uncork()

    def hold_turn(self, loop: asyncio.AbstractEventLoop) -> None:
        """A write has just gone out at once (latency): hold every later one of this loop
        turn, on any link, until the turn ends (throughput)."""
        self.active = True
        loop.call_soon(self.end)


class _FrameWriter:
    """Non-blocking writes shared by both ends. The first frame of a loop turn goes out at
    once (latency); later frames of the same turn are coalesced, one send per link at the
    end of the turn (throughput)."""

    _sock: socket.socket
    _loop: asyncio.AbstractEventLoop
    _batch: _Batch

    def _init_writer(self) -> None:
        self._queue: collections.deque[Any] = collections.deque()  # bytes-like, or (bytes, fd)
        self.flow = LinkFlow(self._loop)
        self._corked = False
        self._writing = False
        self._write_broken = False

    def _write_frame(self, kind: str, payload: Any, fd: int | None = None) -> None:
        """Queue one frame (with `fd` passed alongside it), then send at once, or at the end
        of the read batch, or when the socket is writable."""
        header, body = protocol.frame_parts(kind, payload)
        queue = self._queue
        if not (queue or self._corked or self._writing or self._batch.active or fd is not None
                or len(body) > _COPY_LIMIT):
            self._send_now(header + body)  # the turn's first frame: straight out (latency)
            return
        if fd is not None:
            queue.append((header + body, fd))
        elif len(body) > _COPY_LIMIT:
            # Written as they are, with sendmsg: a large body is never copied. Unless it is
            # mutable (a custom codec's bytearray): the caller may change it, a broadcast
            # queues the same object on every link, and the queue appends to bytearrays.
            queue.append(header)
            queue.append(body if type(body) is bytes else bytes(body))
        elif queue and type(queue[-1]) is bytearray and len(queue[-1]) < _CHUNK_SIZE:
            tail = queue[-1]
            tail += header
            tail += body
        else:
            tail = bytearray(header)
            tail += body
            queue.append(tail)
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
            self._batch.hold_turn(self._loop)

    def _send_now(self, data: bytes) -> None:
        try:
            sent = self._sock.send(data, _SEND_FLAGS)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._write_failed(exc)
            raise TransportError(f'{self._describe()}: write failed ({exc})', worker_id=self._worker_id()) from exc
        if sent < len(data):
            self._queue.append(memoryview(data)[sent:])
            self.flow.queued(len(data) - sent)
            self._start_writing()
        else:
            self._batch.hold_turn(self._loop)

    def _flush(self) -> None:
        """Send what the socket takes; raises OSError other than EAGAIN."""
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


# ---------------------------------------------------------------------------------------
# Primary side


class _OutputReader:
    """Drains a captured stdout/stderr pipe of a worker into the `isocluster.worker` logger."""

    def __init__(self, transport: 'ProcessTransport', fd: int, worker_id: int, stream: str) -> None:
        self._transport = transport
        self.fd = fd
        self._extra = {'worker_id': worker_id, 'stream': stream}
        self._partial = b''
        os.set_blocking(fd, False)
        transport.loop.add_reader(fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b''
        if not data:
            if self._partial:
                self._log(self._partial)
            self.close()
            return
        if not output_logger.isEnabledFor(logging.DEBUG):
            self._partial = b''
            return
        lines = (self._partial + data).split(b'\n')
        self._partial = lines.pop()
        if len(self._partial) > _MAX_PARTIAL_LINE:
            lines.append(self._partial)
            self._partial = b''
        for line in lines:
            self._log(line)

    def _log(self, line: bytes) -> None:
        output_logger.debug('%s', line.decode('utf-8', 'replace').rstrip('\r'), extra=self._extra)

    def close(self) -> None:
        if self.fd < 0:
            return
        self._transport.loop.remove_reader(self.fd)
        self._transport._forget_fd(self.fd)
        os.close(self.fd)
        self.fd = -1


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
        self._batch = transport._batch
        self._decoder = protocol.FrameDecoder(transport.max_frame_size)
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
        if not self.is_open:
            raise TransportError(f'{self._describe()} is closed', worker_id=self.id)
        self._write_frame(kind, payload)

    def send_socket(self, sock: Any, payload: Any) -> None:
        if not self.is_open:
            raise TransportError(f'{self._describe()} is closed', worker_id=self.id)
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
        direct = self._decoder.gather_target()  # the rest of a large frame: read straight in
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
        batch = self._batch
        if not batch.begin():
            self._feed(count, direct is not None)
            return
        try:
            self._feed(count, direct is not None)
        finally:
            batch.end()

    def _feed(self, count: int, direct: bool = False) -> None:
        self._last_read_at = self._loop.time()
        try:
            frames = self._decoder.gathered(count) if direct else self._decoder.feed(self._view[:count])
        except ProtocolError:
            frames = []
        self._inbox.extend(frames)
        self._deliver()
        error = self._decoder.error
        self._partial_deadline.update(self._decoder.pending if error is None and self._reading else 0, bool(frames))
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
        deadline = loop.time() + _DELIVERY_SLICE
        delivered = 0
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


class ProcessTransport(base.RealLoopTransport):
    """Workers are real processes. `max_frame_size` bounds a frame from a worker (R120);
    a frame a worker began must be complete within `frame_timeout` seconds (None: no limit)."""

    def __init__(self, max_frame_size: int = protocol.DEFAULT_MAX_FRAME_SIZE,
                 loop: asyncio.AbstractEventLoop | None = None, *,
                 frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT) -> None:
        if not isinstance(max_frame_size, int) or isinstance(max_frame_size, bool) or max_frame_size < 1:
            raise ValueError(f'max_frame_size: expected a positive int, got {max_frame_size!r}')
        self.max_frame_size = max_frame_size
        self.frame_timeout = check_frame_timeout(frame_timeout)
        self._loop = loop
        self._owns_loop = False
        self._closed = False
        self._links: set[_WorkerLink] = set()
        self._batch = _Batch()
        self._prebuild_loops = True
        self._read_buffer = bytearray(_READ_SIZE)
        self._read_view = memoryview(self._read_buffer)
        self._fds: set[int] = set()  # pidfds and pipe read ends
        self._sockets: 'weakref.WeakSet[socket.socket]' = weakref.WeakSet()  # link ends, bound sockets
        _transports.add(self)
        _load_libc()

    def check_spec(self, spec: base.WorkerSpec) -> None:
        if spec.target is None and spec.script is None:
            raise ValueError(f'worker {spec.id}: give a worker_target or a worker_script')
        if spec.script is not None:
            if not os.path.isfile(spec.script):
                raise ValueError(f'worker_script: {spec.script!r} is not an existing file')
            try:
                protocol.get_codec(spec.codec.name)
            except (ValueError, TypeError):
                raise ValueError(
                    f'codec: a worker_script worker rebuilds its codec from its name, and '
                    f'{spec.codec.name!r} is not a built-in codec; use worker_target instead'
                ) from None
        for name, value in (spec.stdio or {}).items():
            if name not in _STREAMS:
                raise ValueError(f'worker_stdio: unknown stream {name!r}; use {_STREAMS}')
            if not (value in _STDIO_WORDS or value is None or _is_fd(value) or hasattr(value, 'fileno')):
                raise ValueError(
                    f'worker_stdio[{name!r}]: expected one of {_STDIO_WORDS}, an fd or a file object, got {value!r}'
                )

    def start_worker(self, spec: base.WorkerSpec, listener: base.LinkListener) -> base.WorkerLink:
        if self._closed:
            raise TransportError('the process transport is closed', worker_id=spec.id)
        if threading.active_count() > 1:
            warnings.warn(
                f'forking worker {spec.id} while {threading.active_count() - 1} other thread(s) '
                f'run: a lock one of them holds stays locked in the worker; use worker_script '
                f'(fork + exec) or start threads after forking',
                RuntimeWarning, stacklevel=3,
            )
        plan, pipes = self._stdio_plan(spec)
        try:
            parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as exc:
            self._close_pipes(pipes)
            raise TransportError(f'could not create the link of worker {spec.id}: {exc}', worker_id=spec.id) from exc
        self._sockets.add(parent_sock)
        parent_pid = os.getpid()
        own_link = _worker_link  # this process's link, when a worker starts workers of its own
        child_loop = self._child_loop() if spec.script is None else None
        watchdog_fd = watchdog.primary_fd()
        _flush_stdio()
        # Signals stay blocked across the fork until the child has detached the parent's
        # wakeup fd: a signal caught in between would wake the primary's loop as its own.
        mask = _signal.pthread_sigmask(signal.SIG_BLOCK, _ALL_SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            _signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            if child_loop is not None:
                child_loop.close()
            self._sockets.discard(parent_sock)
            parent_sock.close()
            child_sock.close()
            self._close_pipes(pipes)
            raise TransportError(f'could not fork worker {spec.id}: {exc}', worker_id=spec.id) from exc
        if pid == 0:
            _run_child(spec, child_sock, parent_pid, mask, plan, own_link, child_loop, self.max_frame_size,
                       watchdog_fd)  # never returns
        _signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if child_loop is not None:
            _disown_loop(child_loop)  # the child's now
        child_sock.close()
        _close_fds([write_end for _, write_end in pipes.values()])
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            os.kill(pid, signal.SIGKILL)  # not reaped yet, so the pid is still this child's
            os.waitpid(pid, 0)
            self._sockets.discard(parent_sock)
            parent_sock.close()
            self._close_pipes(pipes, write_ends=False)
            raise TransportError(f'could not watch worker {spec.id}: {exc}', worker_id=spec.id) from exc
        watchdog.register(pid, pidfd)
        self._fds.add(pidfd)
        link = _WorkerLink(self, spec, pid, parent_sock, pidfd, listener)
        self._links.add(link)
        for stream, (read_end, _) in pipes.items():
            link.outputs.append(_OutputReader(self, read_end, spec.id, stream))
        return link

    def _stdio_plan(self, spec: base.WorkerSpec) -> tuple[dict[int, Any], dict[str, tuple[int, int]]]:
        """What the child puts on fds 0-2 (an fd to dup2, 'devnull', or None to inherit),
        and the pipes created for captured streams."""
        choices: dict[str, Any] = {}
        if spec.silent:
            choices = {'stdin': 'devnull', 'stdout': 'pipe', 'stderr': 'pipe'}
        choices.update(spec.stdio or {})
        plan: dict[int, Any] = {}
        pipes: dict[str, tuple[int, int]] = {}
        for number, stream in enumerate(_STREAMS):
            choice = choices.get(stream, 'inherit')
            if choice in (None, 'inherit'):
                continue
            if choice == 'pipe' and stream == 'stdin':
                choice = 'devnull'  # nothing writes to a worker's stdin: it reads EOF
            if choice == 'pipe':
                read_end, write_end = os.pipe()
                self._fds.add(read_end)
                pipes[stream] = (read_end, write_end)
                plan[number] = write_end
            elif choice == 'devnull':
                plan[number] = 'devnull'
            elif _is_fd(choice):
                plan[number] = choice
            else:
                if hasattr(choice, 'flush'):
                    choice.flush()
                plan[number] = choice.fileno()
        return plan, pipes

    def _close_pipes(self, pipes: dict[str, tuple[int, int]], write_ends: bool = True) -> None:
        for read_end, write_end in pipes.values():
            self._fds.discard(read_end)
            _close_fds([read_end, write_end] if write_ends else [read_end])

    def _child_loop(self) -> asyncio.AbstractEventLoop | None:
        """The forked worker's event loop, built here before the fork: a loop built in the
        child costs ~0.4 ms of copy-on-write page faults, a third of a worker's start-up.
        The parent lets go of its copies of the loop's fds right after the fork (the epoll
        instance and its registrations live on in the child). Only for asyncio's selector
        loops, whose fds can be let go of that way; any other loop type (uvloop) is built by
        the child."""
        if not self._prebuild_loops:
            return None
        loop = asyncio.new_event_loop()
        if isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
            return loop
        loop.close()
        self._prebuild_loops = False
        return None

    def bind(self, address: Any, reuse_port: bool = False) -> socket.socket:
        sock = None if reuse_port else systemd.take_passed(address)  # socket activation
        if sock is None:
            sock = base.bind_listening(address, reuse_port)
        self._sockets.add(sock)
        return sock

    def close(self) -> None:
        """Release the links and, once it has stopped, the loop this transport created. Called
        from inside the running loop, it cannot close that loop: call it again after it stops."""
        if not self._closed:
            self._closed = True
            for link in list(self._links):
                link._abandon()
            self._links.clear()
            _close_fds(list(self._fds))
            self._fds.clear()
            _transports.discard(self)
        self._close_owned_loop()

    def _forget_fd(self, fd: int) -> None:
        self._fds.discard(fd)

    def _forget_socket(self, sock: socket.socket) -> None:
        self._sockets.discard(sock)

    def _abandon_in_child(self) -> None:
        """In a new child: close this transport's fds without touching its loop's selector
        (epoll registrations are shared with the parent: unregistering here unregisters there)."""
        for sock in list(self._sockets):
            _close_socket_in_child(sock)
        _close_fds(list(self._fds))
        # Forget them too: a worker that is itself a primary forks again, and by then these
        # fd numbers may name its own files.
        self._sockets = weakref.WeakSet()
        self._fds = set()
        self._links = set()
        self._closed = True
        loop, self._loop = self._loop, None
        if loop is not None:
            _disown_loop(loop)


def _disown_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Close this process's copies of a selector loop's fds (its epoll fd and self-pipe) with
    close(2) only: the loop belongs to another process of the fork, and unregistering here
    would unregister there (epoll registrations are shared)."""
    if isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
        try:
            loop._selector._selector.close()  # type: ignore[attr-defined]  # close(2) only
        except Exception:
            pass
        for name in ('_ssock', '_csock'):
            sock = getattr(loop, name, None)
            if isinstance(sock, socket.socket):
                _close_socket_in_child(sock)
        loop._closed = True  # type: ignore[attr-defined]  # its fds are gone: nothing left to close


def _is_fd(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


# ---------------------------------------------------------------------------------------
# Worker side


class _ChildLink(_FrameWriter, base.ThreadedPrimaryLink):
    """The worker's end. `exit_on_finish`: target mode ends the process when the worker
    ends; script mode returns from `run()`."""

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
        self._buffer = bytearray(_CHILD_FIRST_READ_SIZE)
        self._view = memoryview(self._buffer)
        self._fds: collections.deque[int] = collections.deque()
        self._own_listeners: list[socket.socket] = []  # listen(reuse_port=True): this worker's alone
        self._receiver: base.LinkReceiver | None = None
        self._backlog: collections.deque[protocol.Frame] = collections.deque()
        self._delivering = False
        self._reading = False
        self._eof = False
        self._closed = False
        self._finished = False
        self._kill_deadline: float | None = None
        self._kill_timer: threading.Timer | None = None
        self._init_writer()
        sock.setblocking(False)
        loop.set_exception_handler(_fatal_exception_handler)

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

    def _on_readable(self) -> None:
        direct = self._decoder.gather_target()  # the rest of a large frame: read straight in
        try:
            count, ancillary, _, _ = self._sock.recvmsg_into(
                [self._buffer if direct is None else direct], _ANCILLARY_SIZE, _RECV_FLAGS)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            count, ancillary = 0, []  # reset by a primary that died: same as EOF
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array('i')
                fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
                self._fds.extend(fds)
        if count == 0:
            self._stop_reading()
            self._eof = True
            self._refuse_new_connections()
            if self._receiver is not None:
                self._deliver_after_accepts()
            elif not self._backlog:
                self._deliver_eof()
            return
        data = None if direct is not None else self._view[:count]
        if direct is None and count == len(self._buffer) and count < _CHILD_READ_SIZE:  # a stream: read more at once
            self._buffer = bytearray(_CHILD_READ_SIZE)
            self._view = memoryview(self._buffer)
        batch = self._batch
        batch.begin()
        try:
            self._dispatch(data, count)
        finally:
            batch.end()

    def _dispatch(self, data: memoryview | None, count: int) -> None:
        # A ProtocolError here is fatal to the worker (R120): it reaches the loop's handler.
        frames = self._decoder.gathered(count) if data is None else self._decoder.feed(data)
        for kind, payload in frames:
            if kind == protocol.LISTENING:
                payload = dict(payload or {})
                if self._fds:
                    payload['socket'] = socket.socket(fileno=self._fds.popleft())
                    if payload.get('reuse_port'):
                        self._own_listeners.append(payload['socket'])
            elif kind == protocol.DISCONNECT:
                self._refuse_new_connections()
            receiver = self._receiver
            if receiver is None and kind == protocol.DISCONNECT:
                self.finish()  # R102: a worker that never built a ClusterWorker just ends
            elif receiver is not None and not self._backlog and kind != protocol.DISCONNECT:
                receiver.link_frame(kind, payload)
            else:
                self._backlog.append((kind, payload))
                if receiver is not None and kind == protocol.DISCONNECT:
                    self._deliver_after_accepts()
        if self._decoder.error is not None:
            raise self._decoder.error

    def _refuse_new_connections(self) -> None:
        """Leaving: a SO_REUSEPORT socket of this worker's own has an accept queue of its own,
        reset when the socket closes. New SYNs are dropped from now on (their clients retry and
        reach the other workers' sockets), so the accept pass before DISCONNECT is delivered
        empties that queue for good."""
        for sock in self._own_listeners:
            if sock.fileno() >= 0:
                base.refuse_new_connections(sock)
        self._own_listeners.clear()

    def _deliver_after_accepts(self) -> None:
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

    def _deliver_eof(self) -> None:
        if self._receiver is not None:
            self._receiver.link_closed()
        else:
            self.finish()

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self.loop.remove_reader(self._sock.fileno())

    # writing

    def write(self, kind: str, payload: Any) -> None:
        if not self.is_open:
            raise TransportError(f'{self._describe()} is closed', worker_id=self.worker_id)
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

    def _serve(self) -> None:
        loop = self.loop
        while not self._finished:
            loop.run_forever()
        self._wind_down()


def _die(error: BaseException, message: str | None = None) -> None:
    """R33: a traceback on stderr, then exit 1 at once, without closing anything gracefully."""
    try:
        if message:
            print(message, file=sys.stderr)
        traceback.print_exception(error, file=sys.stderr)
        _flush_stdio()
    finally:
        os._exit(1)


def _fatal_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    error = context.get('exception')
    # "exception was never retrieved" comes from a garbage-collected future: asyncio
    # reports it as usual, as on the primary (R34).
    if error is None or 'never retrieved' in context.get('message', ''):
        loop.default_exception_handler(context)
        return
    link = _worker_link
    if isinstance(error, asyncio.CancelledError) and link is not None and link._finished:
        # The worker is ending and cancels its tasks: Python 3.11's asyncio.start_server calls
        # task.exception() on a cancelled connection handler from a done-callback (3.12 checks
        # cancelled() first). That is the end the worker is already taking, not a new failure.
        return
    _die(error, context.get('message'))


def _target_done(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _die(task.exception())  # type: ignore[arg-type]



# The parent-death signal does not kill: the worker still sees EOF, publishes
# primary_disconnect and cleans up within its kill timer (R110, R111). The handler only starts
# a watchdog thread: a worker whose loop has not reached primary_disconnect (and so armed its
# kill timer) shortly after the primary died is blocked, and ends there (R118). Before the
# handler is installed the signal's default action, termination, applies.
# Both stages need the worker's GIL; watchdog.py is the last stage, which does not.
_PARENT_DEATH_SIGNAL = signal.SIGRTMIN + 1 if hasattr(signal, 'SIGRTMIN') else signal.SIGUSR2
PARENT_DEATH_WATCHDOG = 1.5  # seconds


def _parent_died(signum: int, frame: Any) -> None:
    link = _worker_link
    if link is None:
        os._exit(0)

    def check() -> None:
        if link._kill_deadline is None:
            os._exit(0)

    watchdog = threading.Timer(PARENT_DEATH_WATCHDOG, check)
    watchdog.daemon = True
    watchdog.start()


def _install_parent_death_handler() -> None:
    if threading.current_thread() is threading.main_thread():
        _signal.signal(_PARENT_DEATH_SIGNAL, _parent_died)


def _arm_parent_death_signal(parent_pid: int) -> None:
    if _prctl is not None:
        _install_parent_death_handler()
        _prctl(_PR_SET_PDEATHSIG, int(_PARENT_DEATH_SIGNAL), 0, 0, 0)
    # prctl(2): if the parent died before the prctl, the signal never comes.
    if os.getppid() != parent_pid:
        os._exit(1)


def _run_child(spec: base.WorkerSpec, sock: socket.socket, parent_pid: int, mask: Any,
               plan: dict[int, Any], parent_link: '_ChildLink | None', loop: asyncio.AbstractEventLoop | None,
               max_frame_size: int, watchdog_fd: int | None = None) -> None:
    """The forked child. Never returns: every path ends in os._exit."""
    code = 1
    try:
        _signal.set_wakeup_fd(-1)  # first: it is the parent's loop's self-pipe
        _signal.signal(signal.SIGINT, _signal.SIG_IGN)  # Ctrl-C reaches the primary only (R119)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            _signal.signal(sig, _signal.SIG_DFL)
        _signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for transport in list(_transports):
            transport._abandon_in_child()
        _transports.clear()
        if parent_link is not None:
            _close_socket_in_child(parent_link._sock)
        watchdog.become_worker(watchdog_fd)
        opened = []
        for number, target in plan.items():
            if target == 'devnull':
                target = os.open(os.devnull, os.O_RDWR)
                opened.append(target)
            os.dup2(target, number)
            _rebind_python_stream(number)
        _close_fds([fd for fd in {*plan.values(), *opened} if _is_fd(fd) and fd > 2])
        _arm_parent_death_signal(parent_pid)
        if spec.script is not None:
            _exec_script(spec, sock, max_frame_size)
        code = _run_target(spec, sock, loop, max_frame_size)
    except SystemExit as exc:
        code = base.exit_code_of(exc)
    except BaseException:
        try:
            traceback.print_exc()
        except BaseException:
            pass
        code = 1
    finally:
        _flush_stdio()
        os._exit(code)


def _rebind_python_stream(number: int) -> None:
    # sys.stdout may have been replaced in the parent (a test runner's capture, a wrapper):
    # redirected output must still reach the redirected fd.
    name = ('stdin', 'stdout', 'stderr')[number]
    stream = getattr(sys, name)
    try:
        if stream is not None and stream.fileno() == number:
            return
    except (AttributeError, OSError, ValueError):
        pass
    encoding = getattr(stream, 'encoding', None) or 'utf-8'
    setattr(sys, name, open(number, 'r' if number == 0 else 'w', encoding=encoding,
                            errors='backslashreplace' if number == 2 else 'strict',
                            buffering=1 if number == 2 else -1, closefd=False))


def _exec_script(spec: base.WorkerSpec, sock: socket.socket, max_frame_size: int) -> None:
    fd = sock.fileno()
    os.set_inheritable(fd, True)
    env = dict(os.environ)
    env[base.WORKER_ID_ENV] = str(spec.id)
    env[base.WORKER_FD_ENV] = str(fd)
    env[base.WORKER_CODEC_ENV] = spec.codec.name
    env[base.MAX_FRAME_ENV] = str(max_frame_size)
    report = watchdog.report_fd()
    if report is not None:
        os.set_inheritable(report, True)
        env[watchdog.WATCHDOG_FD_ENV] = str(report)
    try:
        os.execve(sys.executable, bootstrap.exec_argv(sys.executable, spec.script, spec.args), env)  # type: ignore[arg-type]
    except OSError as exc:
        print(f'isocluster: could not exec {sys.executable} {spec.script}: {exc}', file=sys.stderr)
        _flush_stdio()
        os._exit(127)


def _run_target(spec: base.WorkerSpec, sock: socket.socket, loop: asyncio.AbstractEventLoop | None,
                max_frame_size: int) -> int:
    if loop is None:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    global _worker_link
    link = _worker_link = _ChildLink(spec.id, spec.codec, sock, loop, exit_on_finish=True, max_frame_size=max_frame_size)
    base._current_link.set(link)
    link._start()
    result = spec.target()  # type: ignore[misc]
    if inspect.isawaitable(result):
        task = asyncio.ensure_future(result, loop=loop)
        task.add_done_callback(_target_done)
    link._serve()
    return 0


def worker_link() -> base.PrimaryLink | None:
    """This process's link when it is a real worker (fork or exec mode), whatever the context."""
    return _worker_link


def _new_script_loop() -> asyncio.AbstractEventLoop:
    if os.environ.get(base.LOOP_ENV) == 'uvloop':
        try:
            import uvloop
        except ImportError:
            warnings.warn(f'{base.LOOP_ENV}=uvloop but uvloop is not installed here: using asyncio',
                          RuntimeWarning, stacklevel=3)
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def link_from_environment() -> base.PrimaryLink:
    """Script mode: the link the primary passed through the environment (built once)."""
    global _worker_link
    if _worker_link is None:
        worker_id = int(os.environ[base.WORKER_ID_ENV])
        fd = int(os.environ[base.WORKER_FD_ENV])
        codec = protocol.get_codec(os.environ.get(base.WORKER_CODEC_ENV, 'json'))
        max_frame_size = int(os.environ.get(base.MAX_FRAME_ENV, protocol.DEFAULT_MAX_FRAME_SIZE))
        online_sent = os.environ.get(bootstrap.ONLINE_SENT_ENV) == '1'
        # Grandchildren (subprocesses of the script) are not workers.
        watchdog_fd = os.environ.get(watchdog.WATCHDOG_FD_ENV)
        for name in (base.WORKER_ID_ENV, base.WORKER_FD_ENV, base.WORKER_CODEC_ENV, base.MAX_FRAME_ENV,
                     bootstrap.ONLINE_SENT_ENV, watchdog.WATCHDOG_FD_ENV):
            os.environ.pop(name, None)
        if watchdog_fd is not None:
            os.set_inheritable(int(watchdog_fd), False)
            watchdog.become_worker(int(watchdog_fd))
        sock = socket.socket(fileno=fd)
        sock.set_inheritable(False)
        loop = _new_script_loop()
        asyncio.set_event_loop(loop)
        # PR_SET_PDEATHSIG was armed before exec and survives it; its handler does not.
        _install_parent_death_handler()
        _worker_link = _ChildLink(worker_id, codec, sock, loop, exit_on_finish=False, max_frame_size=max_frame_size)
        base._current_link.set(_worker_link)
        _worker_link._start(write_online=not online_sent)
    else:
        base._current_link.set(_worker_link)
    return _worker_link
