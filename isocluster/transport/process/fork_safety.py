"""Letting go of the parent's fds in a forked child: closed with close(2) only, never through
the objects that own them, which would unregister epoll registrations shared with the
parent, or close a number that by then names a new file of the child."""

from __future__ import annotations

import asyncio
import os
import socket

def _close_socket_in_child(sock: socket.socket) -> None:
    # detach() first: the copied socket object must not close the fd number again later,
    # when it may name a new file of the child.
    if sock.fileno() >= 0:
        try:
            os.close(sock.detach())
        except OSError:
            pass



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


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
