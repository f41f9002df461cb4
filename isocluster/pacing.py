"""How many unwritten bytes a link may hold before a send is refused (`max_queued_bytes`).

Backpressure alone asks senders to wait; a sender that never awaits send()'s futures would
still queue without bound. The cap turns that into an explicit, per-send refusal.
"""

from __future__ import annotations

from typing import Any

from .errors import BackpressureError

DEFAULT_MAX_QUEUED_BYTES = 128 * 1024 * 1024  # twice the default frame limit


def check_max_queued_bytes(value: Any) -> float:
    """The cap as a number to compare with (None: no cap). Raises TypeError or ValueError."""
    if value is None:
        return float('inf')
    if type(value) is not int:
        raise TypeError(f'max_queued_bytes: expected an int number of bytes or None, got {value!r}')
    if value <= 0:
        raise ValueError(f'max_queued_bytes: expected a positive number of bytes or None (no cap), got {value}')
    return value


def admits(pending: int, size: int, cap: float) -> bool:
    """A frame of `size` bytes fits a link holding `pending`. One on an empty link always
    does, so a cap below the frame limit never makes a message unsendable."""
    return not pending or pending + size <= cap


def over_cap(link_name: str, worker_id: int | None, pending: int, cap: float) -> BackpressureError:
    return BackpressureError(
        f'{link_name} already holds {pending} bytes not yet written (max_queued_bytes={int(cap)}): '
        'this message was not sent; await the futures send() returns to pace the sender, '
        'or raise max_queued_bytes',
        worker_id=worker_id,
    )
