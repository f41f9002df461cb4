"""Recycling healthy workers (issue 16): gathers each ready worker's facts, asks
`recycling.decide`, and publishes `worker_recycle` [worker, reason, value, limit], whose default
action (the primary's) is one reload step (`stop_worker(worker, replace=True)`): the new worker
is ready before the old one drains, and no restart is counted.

Time comes from the loop; resident memory from the transport (`WorkerLink.resident_bytes()`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable

from .recycling import RecyclePolicy, decide

if TYPE_CHECKING:
    from .handle import WorkerHandle
    from .registry import Registry
    from .states import PrimaryState


class Recycler:
    """Each ready worker's recycling limits and checks, and the memory check timer."""

    def __init__(self, policy: RecyclePolicy, *, random: Callable[[], float], now: Callable[[], float],
                 call_soon: Callable[..., Any], call_later: Callable[..., asyncio.TimerHandle],
                 publish: Callable[[str, dict[str, Any]], Any], state: 'PrimaryState', registry: 'Registry') -> None:
        self.policy = policy
        self._random = random
        self._now = now
        self._call_soon = call_soon
        self._call_later = call_later
        self._publish = publish
        self._state = state
        self._registry = registry
        self._memory_timer: asyncio.TimerHandle | None = None

    def start(self, handle: 'WorkerHandle') -> None:
        """At worker_ready: draw the worker's limits and arm its age and memory checks."""
        policy = self.policy
        if not policy.enabled:
            return
        life = handle.life
        limits = policy.limits(self._random(), self._random())
        life.recycle_limits = limits
        life.ready_at = self._now()
        if limits.requests is not None and life.messages_out >= limits.requests:  # sent to before it was ready
            self._call_soon(self.check, handle)
        if limits.age is not None:
            life.timers['recycle_age'] = self._call_later(limits.age, self._age_reached, handle)
        if limits.memory is not None and self._memory_timer is None:
            self._memory_timer = self._call_later(policy.memory_check_interval, self._memory_tick)

    def handled(self, handle: 'WorkerHandle', count: int = 1) -> None:
        """`count` more messages written to `handle`."""
        life = handle.life
        life.messages_out += count
        if life.recycle_limits is not None:
            # On the next loop turn, so that worker_recycle's handlers never run inside send().
            limit, now = life.recycle_limits.requests, life.messages_out
            if limit is not None and now - count < limit <= now:
                self._call_soon(self.check, handle)

    def check(self, handle: 'WorkerHandle', resident: int | None = None) -> None:
        life = handle.life
        limits = life.recycle_limits
        if limits is None or life.recycle_reason is not None or not self._state.active:
            return
        if life.state != 'ready' or life.retired:
            return
        decision = decide(limits, handled=life.messages_out, age=self._now() - life.ready_at, resident=resident)
        if decision is not None:
            life.recycle_reason = decision.reason
            self._publish('worker_recycle', {'worker': handle, 'reason': decision.reason, 'value': decision.value,
                                             'limit': decision.limit})

    def _age_reached(self, handle: 'WorkerHandle') -> None:
        handle.life.timers.pop('recycle_age', None)
        self.check(handle)

    def _memory_tick(self) -> None:
        self._memory_timer = None
        if not self._state.active:
            return
        for handle in list(self._registry.pool.values()):
            link = handle.life.link
            if handle.life.recycle_limits is not None and link is not None:
                self.check(handle, link.resident_bytes())
        self._memory_timer = self._call_later(self.policy.memory_check_interval, self._memory_tick)

    def stop(self) -> None:
        if self._memory_timer is not None:
            self._memory_timer.cancel()
            self._memory_timer = None
