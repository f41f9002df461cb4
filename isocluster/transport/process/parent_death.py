"""What a worker does when its primary dies.

The parent-death signal does not kill: the worker still sees EOF, publishes
primary_disconnect and cleans up within its kill timer (R110, R111). The handler only starts
a watchdog thread: a worker whose loop has not reached primary_disconnect (and so armed its
kill timer) shortly after the primary died is blocked, and ends there (R118). Before the
handler is installed the signal's default action, termination, applies.
Both stages need the worker's GIL; watchdog.py is the last stage, which does not.
"""

from __future__ import annotations

import _signal
import os
import signal
import sys
import threading
from typing import Any

from ..runtime import PARENT_DEATH_WATCHDOG
from . import registry

_PARENT_DEATH_SIGNAL = signal.SIGRTMIN + 1 if hasattr(signal, 'SIGRTMIN') else signal.SIGUSR2
_PR_SET_PDEATHSIG = 1
_libc: Any = None
_prctl: Any = None


def load_libc() -> Any:
    # Loaded in the parent: dlopen after fork could deadlock on a loader lock held by
    # another thread of the parent at the time of the fork.
    global _libc, _prctl
    if _libc is None and sys.platform.startswith('linux'):
        import ctypes  # only a primary needs it: an exec-mode worker never pays its import

        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _prctl = _libc.prctl  # resolved here too: the lookup costs a fork's child ~0.1 ms
        except (OSError, AttributeError):
            _libc = False
    return _libc


def _parent_died(signum: int, frame: Any) -> None:
    link = registry.own_link
    if link is None:
        os._exit(0)

    def check() -> None:
        if not link.kill_timer_armed():
            os._exit(0)

    watchdog = threading.Timer(PARENT_DEATH_WATCHDOG, check)
    watchdog.daemon = True
    watchdog.start()


def install_parent_death_handler() -> None:
    if threading.current_thread() is threading.main_thread():
        _signal.signal(_PARENT_DEATH_SIGNAL, _parent_died)


def arm_parent_death_signal(parent_pid: int) -> None:
    if _prctl is not None:
        install_parent_death_handler()
        _prctl(_PR_SET_PDEATHSIG, int(_PARENT_DEATH_SIGNAL), 0, 0, 0)
    # prctl(2): if the parent died before the prctl, the signal never comes.
    if os.getppid() != parent_pid:
        os._exit(1)
