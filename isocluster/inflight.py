"""How many requests each worker has in flight, as the primary sees it.

A request is in flight from the moment it is written until its reply, its failure, its
timeout or the loss of its worker ends it. The counts are kept beside the pending requests
themselves, so no path that ends a request can forget to end its count.
"""

from __future__ import annotations

from typing import Any, Callable

from .routing import PendingRequests


class CountingRequests(PendingRequests):
    """PendingRequests that also counts, per peer, the requests still awaiting an answer.

    A request's peer is read from its pending entry, just before whatever may end it runs; the
    count drops when that entry is gone afterwards (a refused reply leaves it pending).

    `on_end` callbacks run each time a count drops (a slot freed), so a dispatcher that was
    waiting for room can send again."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[Any, int] = {}  # peer -> requests in flight (absent: none); read only outside
        self.on_end: set[Callable[[], None]] = set()

    def in_flight(self, peer: Any) -> int:
        return self.counts.get(peer, 0)

    def open(self, loop: Any, peer: Any, timeout: float | None, describe: str) -> tuple[int, Any]:
        request_id, future = PendingRequests.open(self, loop, peer, timeout, describe)
        counts = self.counts
        counts[peer] = counts.get(peer, 0) + 1
        return request_id, future

    def settle(self, payload: Any, *args: Any, **kwargs: Any) -> str | None:
        pending = self._pending
        entry = pending.get(payload[0])
        why = PendingRequests.settle(self, payload, *args, **kwargs)
        if entry is not None and payload[0] not in pending:
            self._ended(entry[1])
        return why

    def cancel(self, request_id: int) -> None:
        entry = self._pending.get(request_id)
        super().cancel(request_id)
        if entry is not None and request_id not in self._pending:
            self._ended(entry[1])

    def _time_out(self, request_id: int, timeout: float, describe: str) -> None:
        entry = self._pending.get(request_id)
        super()._time_out(request_id, timeout, describe)
        if entry is not None and request_id not in self._pending:
            self._ended(entry[1])

    def lose(self, peer: Any, make_error: Callable[[], BaseException]) -> None:
        sent = [(request_id, entry[1]) for request_id, entry in self._pending.items() if peer is None or entry[1] is peer]
        super().lose(peer, make_error)
        for request_id, target in sent:
            if request_id not in self._pending:
                self._ended(target)

    def _ended(self, peer: Any) -> None:
        counts = self.counts
        left = counts[peer] - 1
        if left:
            counts[peer] = left
        else:
            del counts[peer]
        if self.on_end:
            for callback in list(self.on_end):
                callback()
