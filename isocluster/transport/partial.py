"""The deadline of a partly received frame: a worker that begins a frame must finish it.

Without it a worker could send 60 MiB of a 64 MiB frame and go silent, and the primary
would hold that buffer for as long as the worker lives.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from ..checks import check_seconds

DEFAULT_FRAME_TIMEOUT = 10.0


def check_frame_timeout(frame_timeout: Any) -> float | None:
    return check_seconds('frame_timeout', frame_timeout, allow_none=True, allow_zero=False)


class PartialFrameDeadline:
    """Calls `expired()` once a frame has stayed incomplete for `timeout` seconds. The clock
    restarts whenever a frame is completed, so a steady stream of frames never expires; the
    caller of `update` after an expiry may grant the frame another `timeout`."""

    __slots__ = ('_loop', '_timeout', '_expired', '_timer', 'due')

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float | None, expired: Callable[[], None]) -> None:
        self._loop = loop
        self._timeout = timeout
        self._expired = expired
        self._timer: asyncio.TimerHandle | None = None
        self.due = 0.0  # when the current (or last) deadline falls

    def update(self, pending: int, completed: bool) -> None:
        """After a read: `pending` bytes of an unfinished frame, `completed` whether the read
        finished at least one frame."""
        if not pending or self._timeout is None:
            self.cancel()
        elif self._timer is None or completed:
            self.cancel()
            self.due = self._loop.time() + self._timeout
            self._timer = self._loop.call_at(self.due, self._fire)

    @property
    def armed(self) -> bool:
        return self._timer is not None

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        self._expired()
