"""Shared listening sockets, as every transport binds and retires them: one bind per address
(a stale Unix socket file of an earlier run removed, a live one never), and a way to stop
new connections while those already queued are still accepted."""

from __future__ import annotations

import os
import sys
from typing import Any


def _nobody_listens_on(path: str) -> bool:
    """True only when connecting to the Unix socket at `path` is refused: nobody serves on it.
    Whoever asks (a worker's listen()) must never make the primary unlink a live server's
    socket; any other outcome (accepted, backlog full, no permission) leaves the file alone
    and the bind then fails with EADDRINUSE."""
    import errno
    import socket

    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.setblocking(False)
        return probe.connect_ex(path) == errno.ECONNREFUSED
    finally:
        probe.close()


def bind_listening(address: Any, reuse_port: bool = False) -> Any:
    """A listening socket for a `(host, port)` tuple or a Unix socket path (the one way both
    transports bind shared addresses); `reuse_port`: with SO_REUSEPORT, one of several sockets on
    the address among which the kernel balances connections. Raises OSError, or ValueError for
    a malformed address."""
    import socket
    import stat

    if isinstance(address, str) and reuse_port:
        raise ValueError(f'reuse_port: only for a (host, port) address, not the Unix socket {address!r}')
    if isinstance(address, str):
        try:
            if stat.S_ISSOCK(os.stat(address).st_mode) and _nobody_listens_on(address):
                os.unlink(address)  # a stale socket file of an earlier run (or of ours, closed)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(address)
        except BaseException:
            sock.close()
            raise
        try:
            sock.listen(128)
        except BaseException:
            sock.close()
            os.unlink(address)  # the file this call just created
            raise
        return sock
    if isinstance(address, tuple) and len(address) == 2 and isinstance(address[0], str) and type(address[1]) is int:
        family = socket.AF_INET6 if ':' in address[0] else socket.AF_INET
        return socket.create_server(address, family=family, backlog=128, reuse_port=reuse_port)
    raise ValueError(f'address: expected a (host, port) tuple or a Unix socket path, got {address!r}')


_SO_ATTACH_FILTER = 26  # Linux, every architecture


def refuse_new_connections(sock: Any) -> None:
    """Make a listening socket drop new connection attempts while the connections already in
    its accept queue stay there to be accepted (Linux: a socket filter that drops every packet,
    applied before the listener sees a SYN). Closing a listening socket resets the queued
    connections whose clients have already sent their request; with this first, a client
    that comes later retries its SYN and is refused once the socket is closed. Elsewhere a no-op."""
    if not sys.platform.startswith('linux'):
        return
    import ctypes
    import socket

    class Instruction(ctypes.Structure):
        _fields_ = [('code', ctypes.c_uint16), ('jt', ctypes.c_uint8), ('jf', ctypes.c_uint8), ('k', ctypes.c_uint32)]

    class Program(ctypes.Structure):
        _fields_ = [('len', ctypes.c_ushort), ('filter', ctypes.POINTER(Instruction))]

    drop_all = (Instruction * 1)(Instruction(0x06, 0, 0, 0))  # BPF_RET | BPF_K 0: keep no byte
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, bytes(Program(1, drop_all)))
    except OSError:
        pass  # no socket filters here: closing is all that can be done
