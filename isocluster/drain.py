"""What a leaving worker waits for before it ends: its servers' connections (issue 16).

A worker asked to leave (shutdown, reload, scale down, stop_worker) stops accepting on the
sockets `listen()` gave it, lets what it accepted finish, and ends within the primary's
`drain_timeout`. Only asyncio's own servers on a selector loop can be found from their
listening socket; any other server (uvloop, threads) is the application's to close in its
`primary_disconnect` handler, and a coroutine handler of that event is waited for too.
"""

from __future__ import annotations

import asyncio
from asyncio.base_events import Server
from typing import Any, Iterable

# Argument index of the Server in the accept callback asyncio registers for a listening
# socket: loop._accept_connection(protocol_factory, sock, sslcontext, server, ...).
_SERVER_ARGUMENT = 3


def servers_on(loop: asyncio.AbstractEventLoop, sockets: Iterable[Any]) -> list[Server]:
    """The asyncio servers accepting on `sockets` (those still open), found from the loop's
    reader registrations: the application never has to hand its server to the worker."""
    selector = getattr(loop, '_selector', None)
    found: list[Server] = []
    for sock in sockets:
        try:
            key = selector.get_key(sock.fileno())  # type: ignore[union-attr]
        except (AttributeError, KeyError, ValueError, OSError):
            continue  # not a selector loop, a closed socket, or nobody serves it
        reader = key.data[0] if isinstance(key.data, tuple) else None
        arguments = getattr(reader, '_args', None) or ()
        if len(arguments) > _SERVER_ARGUMENT and isinstance(arguments[_SERVER_ARGUMENT], Server):
            server = arguments[_SERVER_ARGUMENT]
            if server not in found:
                found.append(server)
    return found


def has_connections(server: Server) -> bool:
    """True while a closed server still has connections open (not yet lost)."""
    return getattr(server, '_waiters', None) is not None


async def connections_closed(server: Server) -> None:
    """Return once the closed `server` has no connection left. Python 3.12's wait_closed()
    does this; 3.11's returns at once, so wait on the same list of waiters it wakes."""
    waiters = getattr(server, '_waiters', None)
    if waiters is None:
        return
    waiter = asyncio.get_running_loop().create_future()
    waiters.append(waiter)
    await waiter
