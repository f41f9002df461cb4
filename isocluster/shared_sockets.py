"""Which shared listening sockets the primary keeps open, and for whom (issue 13, finding 4).

A socket is bound once per address and kept while a live worker *claims* it: a worker that
received it, or a worker started to replace one that did (a crash replacement or a reload
step's new worker inherits its predecessor's claims when it is forked, so it re-listens on
the still-open socket without a gap; a replacement delayed by backoff holds a reservation
until then). When the last claimant exits the socket is closed. The
number of distinct sockets is capped, so a worker cannot exhaust the primary's descriptors.

No I/O here beyond closing sockets: binding is the transport's, answering the worker the
primary's.
"""

from __future__ import annotations

from typing import Any, Callable

DEFAULT_MAX_SHARED_SOCKETS = 64
PRIMARY = 0  # the claimant id of a socket the application bound itself


def address_key(address: Any) -> Any:
    """The dictionary key of a LISTEN address as it arrives (a JSON list for a tuple), or None
    when it is not a shape any transport can bind: a (host, port) pair or a path string."""
    if isinstance(address, str):
        return address
    if isinstance(address, (list, tuple)) and len(address) == 2 and isinstance(address[0], str) \
            and type(address[1]) is int:
        return (address[0], address[1])
    return None


class SharedSockets:
    """The primary's shared listening sockets by address key, with their claimants."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sockets: dict[Any, Any] = {}
        self._claims: dict[Any, set[int]] = {}

    def get(self, key: Any) -> Any:
        return self.sockets.get(key)

    def full(self) -> bool:
        return len(self.sockets) >= self.limit

    def add(self, key: Any, sock: Any) -> None:
        self.sockets[key] = sock
        self._claims[key] = set()

    def pin(self, key: Any) -> None:
        """The application bound `key` itself (`primary.bind()`): it stays open until shutdown
        whether or not a worker holds it. Claimant 0 is the primary (worker ids start at 1)."""
        self._claims[key].add(PRIMARY)

    def claim(self, key: Any, worker_id: int) -> None:
        self._claims[key].add(worker_id)

    def inherit(self, predecessor: int, successor: int) -> None:
        """`successor` was forked to take `predecessor`'s place: it may re-listen on its sockets."""
        for claimants in self._claims.values():
            if predecessor in claimants:
                claimants.add(successor)

    # A reservation keeps an exited worker's claims for a replacement forked later (after a
    # backoff delay); it is the worker's id negated, so it never collides with a live worker.

    def reserve(self, worker_id: int) -> None:
        self.inherit(worker_id, -worker_id)

    def inherit_reserved(self, worker_id: int, successor: int) -> None:
        self.inherit(-worker_id, successor)

    def unreserve(self, worker_id: int) -> list[Any]:
        return self.release(-worker_id)

    def drop_reservations(self) -> list[Any]:
        """No delayed replacement will come (shutdown): close what only reservations held."""
        for claimants in self._claims.values():
            claimants.difference_update([claimant for claimant in claimants if claimant < 0])
        return self.close_unclaimed()

    def release(self, worker_id: int) -> list[Any]:
        """`worker_id` exited: close every socket nobody claims any more; returns their keys."""
        for claimants in self._claims.values():
            claimants.discard(worker_id)
        return self.close_unclaimed()

    def close_unclaimed(self) -> list[Any]:
        """Close the sockets no live worker claims (e.g. bound for a worker that died before it
        received it); returns their keys."""
        unclaimed = [key for key, claimants in self._claims.items() if not claimants]
        for key in unclaimed:
            self.close(key)
        return unclaimed

    def close(self, key: Any, close: Callable[[Any], None] | None = None) -> None:
        sock = self.sockets.pop(key, None)
        self._claims.pop(key, None)
        if sock is not None:
            (close or _close)(sock)

    def close_all(self, close: Callable[[Any], None] | None = None) -> None:
        """Close every shared socket, each with `close` (default: `sock.close()`)."""
        for key in list(self.sockets):
            self.close(key, close)


def _close(sock: Any) -> None:
    sock.close()
