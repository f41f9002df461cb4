"""The last stage of "a worker never outlives its primary" (SPEC R118) that needs nothing from
the worker's interpreter.

A worker learns that its primary died from EOF on its link and from its parent-death signal;
both are handled by Python code in the worker (primary_disconnect, the kill timer thread,
the parent-death watchdog thread). A worker stuck in a C call that holds the GIL runs none
of them. So each primary process has one watchdog process: a grandchild of the primary
(double-forked, so it is nobody's child to reap and test harnesses that count a primary's
children do not see it), idle in `poll()` on

  - a pidfd of the primary: readable when the primary has ended, however it ended;
  - a datagram socket on which the primary registers each worker it forks (the worker's pid
    and a pidfd, passed with SCM_RIGHTS, so a reused pid is never signalled) and each worker
    reports its kill-timer deadline when it arms it.

Once the primary has ended, the watchdog SIGKILLs every registered worker still alive at
its kill-timer deadline (plus a margin, for the worker's own timer to exit with code 0
first) or, for a worker that never armed one (its loop never reached primary_disconnect),
`ORPHAN_GRACE` seconds after the primary's end; then it exits. While the primary lives it
never signals anything.
"""

from __future__ import annotations

import atexit
import os
import select
import signal
import socket
import struct
import sys
import time
from typing import Any

# The same grace as the worker's own parent-death watchdog thread (process/parent_death.py): when both
# act, the worker ends either way (nobody is left to read its exit status), and the 2 s of
# R118 keep a margin for a loaded machine.
ORPHAN_GRACE = 1.5
DEADLINE_MARGIN = 0.3
WATCHDOG_FD_ENV = 'ISOCLUSTER_WATCHDOG_FD'

_REGISTER = struct.Struct('=cq')  # b'W', pid (the pidfd travels as SCM_RIGHTS)
_DEADLINE = struct.Struct('=cqd')  # b'D', pid, CLOCK_MONOTONIC deadline (system-wide clock)
_SEND_FLAGS = socket.MSG_DONTWAIT | getattr(socket, 'MSG_NOSIGNAL', 0)

# This process as a primary: its watchdog's socket, for the pid that started it (a forked
# child is not that primary and starts its own when it forks workers).
_primary_socket: socket.socket | None = None
_primary_owner: int | None = None
# This process as a worker: its primary's watchdog socket (inherited).
_report_socket: socket.socket | None = None


def available() -> bool:
    return sys.platform.startswith('linux') and hasattr(os, 'pidfd_open') and hasattr(signal, 'pidfd_send_signal')


def primary_fd() -> int | None:
    """The fd of this primary's watchdog socket, starting the watchdog on first use; None
    where the platform has no pidfds or the watchdog could not be started."""
    global _primary_socket, _primary_owner
    if _primary_owner != os.getpid():
        _primary_socket, _primary_owner = None, os.getpid()  # a forked child's copy is the parent's
    if _primary_socket is None and available():
        try:
            _primary_socket = _start()
        except OSError:
            _primary_socket = None
    return _primary_socket.fileno() if _primary_socket is not None else None


def _close_at_exit() -> None:
    # The watchdog learns of the primary's end from its pidfd, not from this socket: closing
    # it as the interpreter ends only spares a ResourceWarning for a socket held on purpose.
    if _primary_socket is not None and _primary_owner == os.getpid():
        _primary_socket.close()


atexit.register(_close_at_exit)


def register(pid: int, pidfd: int) -> None:
    """Tell the watchdog about a worker just forked. A watchdog that is gone (killed by hand)
    is replaced for the workers forked from now on."""
    global _primary_socket
    for _ in range(2):
        if primary_fd() is None:
            return
        try:
            socket.send_fds(_primary_socket, [_REGISTER.pack(b'W', pid)], [pidfd], _SEND_FLAGS)  # type: ignore[arg-type]
            return
        except (ConnectionRefusedError, BrokenPipeError):
            _primary_socket.close()  # type: ignore[union-attr]
            _primary_socket = None
        except OSError:
            return


def become_worker(fd: int | None) -> None:
    """In a new worker: `fd` is its primary's watchdog socket (inherited), or None."""
    global _report_socket, _primary_socket, _primary_owner
    inherited = _primary_socket  # the parent's socket object: this fd, or another to close
    _primary_socket, _primary_owner = None, None
    if inherited is not None and inherited.fileno() == fd:
        _report_socket = inherited
    else:
        if inherited is not None:
            inherited.close()
        _report_socket = socket.socket(fileno=fd) if fd is not None else None


def report_fd() -> int | None:
    """This worker's watchdog socket fd (to pass on through exec), or None."""
    return _report_socket.fileno() if _report_socket is not None else None


def report_deadline(deadline: float) -> None:
    """A worker armed its kill timer for `deadline` (time.monotonic())."""
    if _report_socket is None:
        return
    try:
        _report_socket.send(_DEADLINE.pack(b'D', os.getpid(), deadline), _SEND_FLAGS)
    except OSError:
        pass  # no watchdog (or it is gone): the worker's own stages still apply


def _start() -> socket.socket:
    """Fork the watchdog (through an intermediate child that exits at once) and return the
    primary's end of its socket."""
    own, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        me = os.pidfd_open(os.getpid())
    except OSError:
        own.close()
        theirs.close()
        raise
    try:
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            middle = os.fork()
            if middle == 0:
                try:
                    if os.fork() == 0:
                        _serve_in_child(theirs.fileno(), me, mask)
                finally:
                    os._exit(0)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.waitpid(middle, 0)
    except BaseException:
        own.close()
        raise
    finally:
        theirs.close()
        os.close(me)
    return own


def _serve_in_child(sock_fd: int, primary_pidfd: int, mask: Any) -> None:
    code = 1
    try:
        signal.set_wakeup_fd(-1)  # the primary's loop's self-pipe
        # Out of the primary's process group and terminal: group signals (Ctrl-C, Ctrl-Z, a
        # supervisor's killpg) are for the primary, and a check that a command left no
        # process of its group behind must not find this one (it ends on its own).
        os.setsid()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the primary only
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        # Hold nothing of the primary's: no link end, no listening socket, no output pipe
        # (a reader of the primary's stdout would wait for this process too).
        devnull = os.open(os.devnull, os.O_RDWR)
        for number in (0, 1, 2):
            os.dup2(devnull, number)
        keep = sorted({2, sock_fd, primary_pidfd})
        for low, high in zip(keep, keep[1:] + [max(os.sysconf('SC_OPEN_MAX'), keep[-1] + 1)]):
            if high > low + 1:
                os.closerange(low + 1, high)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # the primary's, from before the fork
        _serve(socket.socket(fileno=sock_fd), primary_pidfd)
        code = 0
    finally:
        os._exit(code)


def _serve(sock: socket.socket, primary_pidfd: int) -> None:
    sock.setblocking(False)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(primary_pidfd, select.POLLIN)
    workers: dict[int, int] = {}  # pidfd -> pid
    pidfds: dict[int, int] = {}  # pid -> pidfd
    deadlines: dict[int, float] = {}
    killed: set[int] = set()
    orphaned_at: float | None = None
    while True:
        timeout_ms = None
        if orphaned_at is not None:
            if not workers:
                return
            now = time.monotonic()
            pending = []
            for pidfd, pid in workers.items():
                if pidfd in killed:
                    continue
                limit = deadlines[pid] + DEADLINE_MARGIN if pid in deadlines else orphaned_at + ORPHAN_GRACE
                if now >= limit:
                    killed.add(pidfd)
                    try:
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    except OSError:
                        pass
                else:
                    pending.append(limit)
            if pending:
                timeout_ms = max(1, int((min(pending) - now) * 1000) + 1)
        for fd, _ in poller.poll(timeout_ms):
            if fd == sock.fileno():
                _receive(sock, poller, workers, pidfds, deadlines)
            elif fd == primary_pidfd:
                poller.unregister(fd)
                orphaned_at = time.monotonic()
            elif fd in workers:  # the worker ended
                poller.unregister(fd)
                pid = workers.pop(fd)
                pidfds.pop(pid, None)
                deadlines.pop(pid, None)
                killed.discard(fd)
                os.close(fd)


def _receive(sock: socket.socket, poller: Any, workers: dict[int, int], pidfds: dict[int, int],
             deadlines: dict[int, float]) -> None:
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(sock, 64, 4)
        except (BlockingIOError, InterruptedError):
            return
        if data[:1] == b'W' and len(data) == _REGISTER.size and len(fds) == 1:
            _, pid = _REGISTER.unpack(data)
            old = pidfds.pop(pid, None)  # a pid reused after its worker ended unnoticed
            if old is not None:
                poller.unregister(old)
                workers.pop(old, None)
                os.close(old)
            deadlines.pop(pid, None)  # reported by an earlier worker of the same pid
            workers[fds[0]] = pid
            pidfds[pid] = fds[0]
            poller.register(fds[0], select.POLLIN)
            continue
        if data[:1] == b'D' and len(data) == _DEADLINE.size:
            _, pid, deadline = _DEADLINE.unpack(data)
            deadlines[pid] = deadline
        for fd in fds:
            os.close(fd)
