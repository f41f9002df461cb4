"""How many requests each worker has in flight, as the primary sees it.

A request is in flight from the moment it is written until its reply, its failure, its
timeout or the loss of its worker ends it. The counts are kept beside the pending requests
themselves, so no path that ends a request can forget to end its count.
"""

from __future__ import annotations

from typing import Any, Callable

from .routing import PendingRequests

_NO_PEER: Any = object()


class CountingRequests(PendingRequests):
    """PendingRequests that also counts, per peer, the requests still awaiting an answer.

    `on_end` callbacks run each time a count drops (a slot freed), so a dispatcher that was
    waiting for room can send again."""

    def __init__(self) -> None:
        super().__init__()
        self._peer_of: dict[int, Any] = {}
        self.counts: dict[Any, int] = {}  # peer -> requests in flight (absent: none); read only outside
        self.on_end: set[Callable[[], None]] = set()

    def in_flight(self, peer: Any) -> int:
        return self.counts.get(peer, 0)

    def open(self, loop: Any, peer: Any, timeout: float | None, describe: str) -> tuple[int, Any]:
        request_id, future = super().open(loop, peer, timeout, describe)
        self._peer_of[request_id] = peer
        self.counts[peer] = self.counts.get(peer, 0) + 1
        return request_id, future

    def cancel(self, request_id: int) -> None:
        super().cancel(request_id)
        self._end_if_gone(request_id)

    def _time_out(self, request_id: int, timeout: float, describe: str) -> None:
        super()._time_out(request_id, timeout, describe)
        self._end_if_gone(request_id)

    def settle(self, payload: Any, *args: Any, **kwargs: Any) -> str | None:
        why = super().settle(payload, *args, **kwargs)
        self._end_if_gone(payload[0])
        return why

    def lose(self, peer: Any, make_error: Callable[[], BaseException]) -> None:
        super().lose(peer, make_error)
        for request_id in [request_id for request_id in self._peer_of if request_id not in self._pending]:
            self._end_if_gone(request_id)

    def _end_if_gone(self, request_id: int) -> None:
        if request_id in self._pending:
            return  # still awaited (e.g. a reply from the wrong peer was refused)
        peer = self._peer_of.pop(request_id, _NO_PEER)
        if peer is _NO_PEER:
            return
        left = self.counts[peer] - 1
        if left:
            self.counts[peer] = left
        else:
            del self.counts[peer]
        if self.on_end:
            for callback in list(self.on_end):
                callback()
