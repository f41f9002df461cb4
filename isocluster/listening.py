"""Answering a worker's `listen()` (and the application's `primary.bind()`): bind the address
through the transport once, pass the socket to each asking worker, answer a failure on the
worker's link. Which sockets stay open, and for whom, is `SharedSockets`' decision."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import protocol
from .errors import ClusterError, ListenError, TransportError
from .shared_sockets import SharedSockets, address_key

if TYPE_CHECKING:
    from .handle import WorkerHandle
    from .transport.base import Transport


class Listening:
    """The primary's shared listening sockets, and the SO_REUSEPORT addresses handed out."""

    def __init__(self, transport: 'Transport', limit: int) -> None:
        self._transport = transport
        self.shared = SharedSockets(limit)
        self._reuse_port_addresses: dict[Any, Any] = {}  # asked address -> the one the first socket got

    def bind(self, address: Any) -> Any:
        """`primary.bind(address)`: the bound address; the socket stays until shutdown."""
        key = address_key(address)
        if key is None:
            raise ValueError(f'address: expected a (host, port) tuple or a Unix socket path, got {address!r}')
        shared = self.shared
        sock = shared.get(key)
        if sock is None:
            if shared.full():
                raise ListenError(f'the primary already shares {shared.limit} listening sockets '
                                  f'(max_shared_sockets={shared.limit}); raise max_shared_sockets')
            sock = self._transport.bind(key)
            shared.add(key, sock)
        shared.pin(key)  # bound by the application: kept until shutdown, worker or not
        return sock.getsockname()

    def close_all(self) -> None:
        # Shutting down: new clients are refused while the draining workers still accept the
        # ones queued, instead of waiting in the backlog to be reset at the last close.
        self.shared.close_all(self._transport.close_listening)

    def answer(self, handle: 'WorkerHandle', payload: Any) -> tuple[Any, str | None]:
        """Answer `handle`'s LISTEN: (the address it now listens on, None), (None, None) when
        it was answered with a failure or nobody is left to answer, or (None, why) for a frame
        the worker may not send."""
        if not isinstance(payload, dict) or 'id' not in payload or 'address' not in payload:
            return None, 'a malformed LISTEN frame'
        key = address_key(payload['address'])
        if key is None:
            return None, 'a LISTEN frame whose address is neither (host, port) nor a path'
        reuse_port = payload.get('reuse_port') is True
        shared = self.shared
        link = handle.life.link
        sock = None
        try:
            if reuse_port:  # the worker's own SO_REUSEPORT socket: it ends with its worker
                sock = self._bind_reuse_port(key)
            else:
                sock = shared.get(key)
                if sock is None:
                    if shared.full():
                        raise ListenError(
                            f'the primary already shares {shared.limit} listening sockets (max_shared_sockets='
                            f'{shared.limit}); reuse an address, or raise max_shared_sockets', worker_id=handle.id,
                        )
                    sock = self._transport.bind(key)
                    shared.add(key, sock)
            bound = sock.getsockname()
            link.send_socket(sock, {'id': payload['id'], 'address': bound, **({'reuse_port': True} if reuse_port else {})})
        except TransportError:  # the link is gone: nobody to answer
            shared.close_unclaimed()
            return None, None
        except (OSError, ValueError, TypeError, ClusterError) as error:
            # Any bind or descriptor failure (EADDRINUSE, EACCES, EMFILE, an unsupported transport)
            # is this worker's failed listen(), never the primary's.
            shared.close_unclaimed()
            try:
                link.write(protocol.LISTENING, {
                    'id': payload['id'], 'error': f'{type(error).__name__}: {error}',
                    'errno': getattr(error, 'errno', None), 'strerror': getattr(error, 'strerror', None),
                })
            except TransportError:
                pass
            return None, None
        finally:
            if reuse_port and sock is not None:
                sock.close()  # the worker's copy is the only one
        if not reuse_port:
            shared.claim(key, handle.id)
        return bound, None

    def _bind_reuse_port(self, key: Any) -> Any:
        # Each worker gets a SO_REUSEPORT socket of its own; port 0 is the port the first one got.
        sock = self._transport.bind(self._reuse_port_addresses.get(key, key), reuse_port=True)
        self._reuse_port_addresses[key] = sock.getsockname()
        return sock
