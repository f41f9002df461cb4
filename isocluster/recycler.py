"""Recycling healthy workers (issue 16), as a mixin of ClusterPrimary: it gathers each ready
worker's facts, asks `recycling.decide`, publishes `worker_recycle` [worker, reason, value, limit],
whose default action is one reload step (`stop_worker(worker, replace=True)`): the new worker
is ready before the old one drains, and no restart is counted.

Time comes from the loop; resident memory from the transport (`WorkerLink.resident_bytes()`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .recycling import RecyclePolicy, decide

if TYPE_CHECKING:
    from .handle import WorkerHandle


class Recycler:
    _recycling: RecyclePolicy
    _memory_timer: asyncio.TimerHandle | None = None

    def _recycle_start(self, handle: 'WorkerHandle') -> None:
        """At worker_ready: draw the worker's limits and arm its age and memory checks."""
        policy = self._recycling
        if not policy.enabled:
            return
        limits = policy.limits(self._transport.random(), self._transport.random())
        handle._recycle_limits = limits
        handle._ready_at = self._pubsub_loop().time()
        if limits.requests is not None and handle._messages_out >= limits.requests:  # sent to before it was ready
            self._call_soon(self._recycle_check, handle)
        if limits.age is not None:
            handle._timers['recycle_age'] = self._call_later(limits.age, self._recycle_age_reached, handle)
        if limits.memory is not None and self._memory_timer is None:
            self._memory_timer = self._call_later(policy.memory_check_interval, self._recycle_memory_tick)

    def _handled(self, handle: 'WorkerHandle', count: int = 1) -> None:
        """`count` more messages written to `handle`."""
        handle._messages_out += count
        if handle._recycle_limits is not None:
            self._recycle_counted(handle, count)

    def _recycle_counted(self, handle: 'WorkerHandle', count: int) -> None:
        # On the next loop turn, so that worker_recycle's handlers never run inside send().
        limit, now = handle._recycle_limits.requests, handle._messages_out
        if limit is not None and now - count < limit <= now:
            self._call_soon(self._recycle_check, handle)

    def _recycle_check(self, handle: 'WorkerHandle', resident: int | None = None) -> None:
        limits = handle._recycle_limits
        if limits is None or handle._recycle_reason is not None or self._state != 'active':
            return
        if handle.state != 'ready' or handle._retired:
            return
        decision = decide(limits, handled=handle._messages_out, age=self._pubsub_loop().time() - handle._ready_at,
                          resident=resident)
        if decision is not None:
            handle._recycle_reason = decision.reason
            self._publish('worker_recycle', {'worker': handle, 'reason': decision.reason, 'value': decision.value,
                                             'limit': decision.limit})

    def _recycle_age_reached(self, handle: 'WorkerHandle') -> None:
        handle._timers.pop('recycle_age', None)
        self._recycle_check(handle)

    def _recycle_memory_tick(self) -> None:
        self._memory_timer = None
        if self._state != 'active':
            return
        for handle in list(self._pool.values()):
            if handle._recycle_limits is not None and handle._link is not None:
                self._recycle_check(handle, handle._link.resident_bytes())
        self._memory_timer = self._call_later(self._recycling.memory_check_interval, self._recycle_memory_tick)

    def _recycle_stop(self) -> None:
        if self._memory_timer is not None:
            self._memory_timer.cancel()
            self._memory_timer = None

    def _event_worker_recycle(self, event: Any) -> None:
        handle = event.data['worker']
        if self._state == 'active' and self._live.get(handle.id) is handle and not handle._retired:
            self.stop_worker(handle, replace=True)
