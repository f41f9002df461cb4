"""The systemd side of a primary (issue 16), standard library only.

`notify()` is sd_notify(3): one datagram to the Unix socket named by NOTIFY_SOCKET (a path, or
'@name' for the abstract namespace); nothing is sent when it is unset. `watchdog_interval()` is
half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises. `passed_sockets()` is
sd_listen_fds(3): the listening sockets systemd passed as fds 3, 4, ... when LISTEN_PID is this
process; the transport's `bind()` uses one of them instead of binding when its address matches.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Mapping

LISTEN_FDS_START = 3

# The descriptors systemd passed are process-wide, like the fds themselves: taken once (the
# variables are then removed, so that no worker or exec'd script takes them too).
_passed: list[socket.socket] | None = None


def notify(state: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send `state` (e.g. 'READY=1') to systemd; False when NOTIFY_SOCKET is unset or the
    datagram could not be sent (systemd gone: the service goes on)."""
    address = environ.get('NOTIFY_SOCKET')
    if not address:
        return False
    if address[0] == '@':
        address = '\0' + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError:
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of WATCHDOG_USEC, when it is meant for this
    process (WATCHDOG_PID unset or ours); else None."""
    usec, pid = environ.get('WATCHDOG_USEC'), environ.get('WATCHDOG_PID')
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


def passed_sockets(environ: Any = os.environ) -> list[socket.socket]:
    """The sockets systemd passed to this process (socket activation), not yet taken."""
    global _passed
    if _passed is None:
        _passed = []
        count, pid = environ.get('LISTEN_FDS'), environ.get('LISTEN_PID')
        if count and pid == str(os.getpid()):
            for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)):
                os.set_inheritable(fd, False)
                _passed.append(socket.socket(fileno=fd))
        for name in ('LISTEN_FDS', 'LISTEN_PID', 'LISTEN_FDNAMES'):
            environ.pop(name, None)
    return _passed


def _same_address(bound: Any, address: Any) -> bool:
    if isinstance(address, str):
        return bound == address
    return isinstance(bound, tuple) and tuple(bound[:2]) == tuple(address)


def take_passed(address: Any) -> socket.socket | None:
    """The passed socket listening on `address` (removed from those not yet taken), or None."""
    sockets = passed_sockets()
    for sock in sockets:
        try:
            bound = sock.getsockname()
        except OSError:
            continue
        if _same_address(bound, address):
            sockets.remove(sock)
            return sock
    return None
