"""What each signal to the primary's process does while `run()` drives it (gunicorn's
arbiter): SIGTERM shuts down; SIGINT shuts down, a second SIGINT kills every worker at once;
SIGHUP reloads; SIGTTIN / SIGTTOU add / retire one worker. The transport installs them so that
they only wake the loop; the actions run on it."""

from __future__ import annotations

from typing import Callable

from .transport.base import SIGTERM, Signals


def signal_actions(*, shut_down: Callable[[], None], kill_all: Callable[[], None], reload: Callable[[], object],
                   scale_by: Callable[[int], None], guarded: Callable[..., None]) -> dict[Signals, Callable[[], None]]:
    """The handlers to install; `shut_down` is a no-op once the primary is destroyed, and
    `guarded` runs an action so that its exception is the primary's fatal error."""
    interrupts = 0

    def interrupted() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:
            kill_all()
        else:
            shut_down()

    return {
        SIGTERM: lambda: guarded(shut_down),
        Signals.SIGINT: lambda: guarded(interrupted),
        Signals.SIGHUP: lambda: guarded(reload),
        Signals.SIGTTIN: lambda: guarded(scale_by, 1),
        Signals.SIGTTOU: lambda: guarded(scale_by, -1),
    }
