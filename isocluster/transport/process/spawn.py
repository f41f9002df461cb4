"""The process transport: forks a worker (with its socketpair, its stdio and its loop built
before the fork), execs a script worker through the bootstrap, and owns the fds it made."""

from __future__ import annotations

import asyncio
import _signal  # the raw calls: `signal`'s wrappers turn every signal number into an enum (~0.3 ms a fork)
import os
import signal
import socket
import threading
import warnings
import weakref
from typing import Any

from ... import protocol
from ...errors import TransportError
from .. import base, systemd, watchdog
from ..partial import DEFAULT_FRAME_TIMEOUT, check_frame_timeout
from ..runtime import flush_stdio
from ..sockets import bind_listening
from ..stdio import STREAMS, WORDS, check_stdio, is_fd, stdio_choices
from . import registry
from .child import run_child
from .fork_safety import _close_fds, _close_socket_in_child, _disown_loop
from .link import _WorkerLink
from .output import _OutputReader
from .parent_death import load_libc
from .writer import _Batch

_READ_SIZE = 256 * 1024  # the primary's read buffer, shared by all its links (reads are synchronous)
_ALL_SIGNALS = signal.valid_signals()


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
        registry.transports.add(self)
        load_libc()

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
        check_stdio(spec, lambda value: value in WORDS or value is None or is_fd(value) or hasattr(value, 'fileno'),
                    f'expected one of {WORDS}, an fd or a file object')

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
        own_link = registry.own_link  # this process's link, when a worker starts workers of its own
        child_loop = self._child_loop() if spec.script is None else None
        watchdog_fd = watchdog.primary_fd()
        flush_stdio()
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
            run_child(spec, child_sock, parent_pid, mask, plan, own_link, child_loop, self.max_frame_size,
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
        choices = stdio_choices(spec)
        plan: dict[int, Any] = {}
        pipes: dict[str, tuple[int, int]] = {}
        for number, stream in enumerate(STREAMS):
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
            elif is_fd(choice):
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
            sock = bind_listening(address, reuse_port)
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
            registry.transports.discard(self)
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
