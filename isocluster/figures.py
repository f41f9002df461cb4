"""Per-worker figures for `primary.stats()['workers']` and `handle.stats()` (issue 16)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .handle import WorkerHandle


def worker_figures(handle: 'WorkerHandle') -> dict[str, Any]:
    """One worker's figures; resident memory and CPU time come from the transport (None where
    it cannot tell, e.g. the memory transport unless set, Ray, or a dead worker)."""
    primary = handle._primary
    now = primary._pubsub_loop().time()
    link = handle._link
    alive = handle.state != 'dead' and link is not None
    end = handle._exited_at if handle._exited_at is not None else now
    return {
        'id': handle.id,
        'pid': handle.pid,
        'state': handle.state,
        'uptime': end - handle._started_at,
        'resident_bytes': link.resident_bytes() if alive else None,
        'cpu_seconds': link.cpu_seconds() if alive else None,
        'messages_in': handle._messages_in,
        'messages_out': handle._messages_out,
        'in_flight': primary._requests.in_flight(handle),
        'restarts': handle._slot_restarts,
    }
