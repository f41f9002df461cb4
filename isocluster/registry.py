"""Which workers the primary has: the live ones by id, the ready pool in id order, the
round-robin history of each tag, and the requests in flight to each worker.

Bookkeeping only: it publishes nothing and never touches a link.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Any

from .inflight import CountingRequests

if TYPE_CHECKING:
    from .handle import WorkerHandle


class Registry:
    """The primary's workers. `live` holds every worker not yet dead; `pool` the ready ones
    that messages without a destination, round_robin() and least_busy() choose from."""

    def __init__(self) -> None:
        self.next_id = 1  # ids are never reused in one primary
        self.live: dict[int, WorkerHandle] = {}
        self.pool: dict[int, WorkerHandle] = {}
        self.pool_ids: list[int] = []  # ascending
        self.leaving: set[int] = set()  # in the pool, asked to leave: no new work goes to them
        self.round_robin_history: dict[Any, dict[int, int]] = {}  # tag -> worker id -> when last picked
        self.round_robin_counter = 0
        self.requests = CountingRequests()

    # -- live workers ------------------------------------------------------------------

    def new_id(self) -> int:
        worker_id, self.next_id = self.next_id, self.next_id + 1
        return worker_id

    def add_live(self, handle: 'WorkerHandle') -> None:
        self.live[handle.id] = handle

    def remove_live(self, handle: 'WorkerHandle') -> None:
        del self.live[handle.id]

    def owns(self, handle: 'WorkerHandle') -> bool:
        """`handle` is a live worker of this primary (not one of another primary, nor dead)."""
        return self.live.get(handle.id) is handle

    def started_since(self, first_id: int) -> 'list[WorkerHandle]':
        """The live workers started since the id `first_id` was next: what one fork made."""
        return [self.live[worker_id] for worker_id in range(first_id, self.next_id) if worker_id in self.live]

    def staying(self, leaving: 'WorkerHandle | None' = None) -> 'list[WorkerHandle]':
        """Live workers not retired (and not `leaving`), ascending id: the ones fork() adds to."""
        return [handle for _, handle in sorted(self.live.items())
                if not handle.life.retired and handle is not leaving]

    # -- the ready pool ----------------------------------------------------------------

    def ready(self) -> 'list[WorkerHandle]':
        pool = self.pool
        return [pool[worker_id] for worker_id in self.pool_ids]

    def pool_add(self, handle: 'WorkerHandle') -> None:
        if handle.id not in self.pool:
            self.pool[handle.id] = handle
            bisect.insort(self.pool_ids, handle.id)
            if handle.life.asked_to_leave:  # it became ready after it was asked to leave
                self.leaving.add(handle.id)

    def pool_remove(self, handle: 'WorkerHandle') -> None:
        self.leaving.discard(handle.id)
        if self.pool.pop(handle.id, None) is not None:
            self.pool_ids.remove(handle.id)
            for history in self.round_robin_history.values():
                history.pop(handle.id, None)

    def clear_pool(self) -> None:
        self.pool.clear()
        self.pool_ids.clear()
        self.leaving.clear()
        self.round_robin_history.clear()

    def leaving_add(self, handle: 'WorkerHandle') -> None:
        if handle.id in self.pool:
            self.leaving.add(handle.id)

    # -- choosing a worker -------------------------------------------------------------

    def choosable_ids(self) -> list[int]:
        """The pool's ids, ascending, without the workers asked to leave: the ones new work goes to."""
        if not self.leaving:
            return self.pool_ids
        leaving = self.leaving
        return [worker_id for worker_id in self.pool_ids if worker_id not in leaving]

    def choosable(self) -> 'list[WorkerHandle]':
        pool = self.pool
        return [pool[worker_id] for worker_id in self.choosable_ids()]

    def round_robin(self, tag: Any) -> 'WorkerHandle | None':
        """The ready worker the tag picked least recently (never picked first, in id order)."""
        ids = self.choosable_ids()
        if not ids:
            return None
        history = self.round_robin_history.setdefault(tag, {})
        chosen = None
        oldest = 0
        for worker_id in ids:
            picked = history.get(worker_id)
            if picked is None:
                chosen = worker_id
                break
            if chosen is None or picked < oldest:
                chosen, oldest = worker_id, picked
        return self.picked(tag, chosen)

    def picked(self, tag: Any, worker_id: int) -> 'WorkerHandle':
        """Record `worker_id` as the tag's latest pick (round_robin and least_busy share it)."""
        self.round_robin_counter += 1
        self.round_robin_history.setdefault(tag, {})[worker_id] = self.round_robin_counter
        return self.pool[worker_id]
