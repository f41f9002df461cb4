"""The figures `primary.stats()` and `handle.stats()` report (issue 16)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .handle import WorkerHandle
    from .registry import Registry
    from .supervision import Supervisor


def primary_counters() -> dict[str, int]:
    """The counters `primary.stats()` starts with, all 0."""
    return dict.fromkeys(('forked', 'exited', 'restarts', 'killed_by_timeout', 'messages_in', 'messages_out'), 0)


def primary_figures(stats: dict[str, int], supervisor: 'Supervisor', registry: 'Registry', now: float) -> dict[str, Any]:
    """`primary.stats()`: the counters, the restart window, and every live worker's figures."""
    live = registry.live
    return {
        **stats,
        'restarts_in_window': supervisor.restarts_in_window(now),
        'live': len(live),
        'ready': len(registry.pool_ids),
        'late_replies': registry.requests.late_replies,
        'workers': {worker_id: handle.stats() for worker_id, handle in sorted(live.items())},
    }


def worker_figures(handle: 'WorkerHandle', now: float, in_flight: int) -> dict[str, Any]:
    """One worker's figures; resident memory and CPU time come from the transport (None where
    it cannot tell, e.g. the memory transport unless set, Ray, or a dead worker)."""
    life = handle.life
    link = life.link
    alive = life.state != 'dead' and link is not None
    end = life.exited_at if life.exited_at is not None else now
    return {
        'id': handle.id,
        'pid': handle.pid,
        'state': life.state,
        'uptime': end - life.started_at,
        'resident_bytes': link.resident_bytes() if alive else None,
        'cpu_seconds': link.cpu_seconds() if alive else None,
        'messages_in': life.messages_in,
        'messages_out': life.messages_out,
        'in_flight': in_flight,
        'restarts': life.slot_restarts,
    }
