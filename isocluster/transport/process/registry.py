"""What this process holds across its process transports: every transport it has (a forked
child must close the fds they hold for other workers, or a worker whose primary dies never
sees EOF: a sibling keeps its link open) and, when it is a worker, its own link (for
exec-mode contexts other than the one that first asked, and so that a worker's own
workers close it)."""

from __future__ import annotations

import os
import weakref
from typing import TYPE_CHECKING, Any

from .. import base

if TYPE_CHECKING:
    from .spawn import ProcessTransport

transports: 'weakref.WeakSet[ProcessTransport]' = weakref.WeakSet()
own_link: Any = None  # the worker end (`worker_end.ChildLink`) when this process is a worker


def worker_link() -> base.PrimaryLink | None:
    """This process's link when it is a real worker (fork or exec mode), whatever the context."""
    return own_link


def _after_fork_in_child() -> None:
    # A process forked by a worker (multiprocessing, a daemon) is not that worker.
    global own_link
    own_link = None
    base._current_link.set(None)


os.register_at_fork(after_in_child=_after_fork_in_child)
base.add_link_finder(worker_link)
