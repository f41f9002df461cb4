"""What each signal to the primary's process does while `run()` drives it (gunicorn's
arbiter): SIGTERM shuts down; SIGINT shuts down, a second SIGINT kills every worker at once;
SIGHUP reloads; SIGTTIN / SIGTTOU add / retire one worker. The transport installs them so that
they only wake the loop; the actions run on it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Coroutine

from .transport.base import SIGTERM, Signals

if TYPE_CHECKING:
    from .transport.base import Transport

logger = logging.getLogger('isocluster')


def run(transport: 'Transport', wait_closed: Callable[[], Coroutine[Any, Any, None]],
        actions: dict[Signals, Callable[[], None]], close_transport: bool) -> None:
    """`run()`: the signal actions installed, the transport's loop runs until the primary is closed."""
    loop = transport.loop
    if loop.is_running():
        raise RuntimeError('run(): the primary\'s loop is already running; use await primary.wait_closed()')
    restore = transport.install_signal_handlers(actions)
    try:
        loop.run_until_complete(wait_closed())
    finally:
        restore()
        if close_transport:
            transport.close()  # now that the loop has stopped, it can be closed too


def scale_by(step: int, staying: int, scale: Callable[[int], object]) -> None:
    """SIGTTIN / SIGTTOU: one worker more or less than the `staying` ones (never below one, as
    gunicorn). A reload step's leaving worker is not counted: its new one takes its place."""
    if staying + step < 1:
        logger.warning('SIGTTOU: the last worker is not retired; SIGTERM shuts the cluster down',
                       extra={'reason': 'scale_by_signal'})
        return
    scale(staying + step)


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
