"""A forked worker, from the fork to its end: signals and fds let go of, stdio redirected,
the parent-death signal armed, then the target run (or the script exec'd). Every path
ends in os._exit: the child never returns into the parent's code."""

from __future__ import annotations

import _signal
import asyncio
import os
import signal
import socket
import sys
from typing import Any

from .. import base, watchdog
from . import bootstrap
from ..runtime import flush_stdio, run_guarded
from ..stdio import is_fd
from . import registry
from .fork_safety import _close_fds, _close_socket_in_child
from .parent_death import arm_parent_death_signal
from .worker_end import ChildLink


def run_child(spec: base.WorkerSpec, sock: socket.socket, parent_pid: int, mask: Any,
              plan: dict[int, Any], parent_link: 'ChildLink | None', loop: asyncio.AbstractEventLoop | None,
              max_frame_size: int, watchdog_fd: int | None = None) -> None:
    """The forked child. Never returns."""
    code = 1
    try:
        code = run_guarded(lambda: _child_main(spec, sock, parent_pid, mask, plan, parent_link, loop,
                                               max_frame_size, watchdog_fd))
    finally:
        os._exit(code)


def _child_main(spec: base.WorkerSpec, sock: socket.socket, parent_pid: int, mask: Any,
                plan: dict[int, Any], parent_link: 'ChildLink | None', loop: asyncio.AbstractEventLoop | None,
                max_frame_size: int, watchdog_fd: int | None) -> int:
    _signal.set_wakeup_fd(-1)  # first: it is the parent's loop's self-pipe
    _signal.signal(signal.SIGINT, _signal.SIG_IGN)  # Ctrl-C reaches the primary only (R119)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        _signal.signal(sig, _signal.SIG_DFL)
    _signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    for transport in list(registry.transports):
        transport._abandon_in_child()
    registry.transports.clear()
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
    _close_fds([fd for fd in {*plan.values(), *opened} if is_fd(fd) and fd > 2])
    arm_parent_death_signal(parent_pid)
    if spec.script is not None:
        _exec_script(spec, sock, max_frame_size)
    return _run_target(spec, sock, loop, max_frame_size)


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
        flush_stdio()
        os._exit(127)


def _run_target(spec: base.WorkerSpec, sock: socket.socket, loop: asyncio.AbstractEventLoop | None,
                max_frame_size: int) -> int:
    if loop is None:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    link = registry.own_link = ChildLink(spec.id, spec.codec, sock, loop, exit_on_finish=True,
                                         max_frame_size=max_frame_size)
    base._current_link.set(link)
    link._start()
    return link.run_target(spec.target)  # type: ignore[arg-type]
