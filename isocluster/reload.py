"""Rolling reload (SPEC R132–R135): replace workers one at a time, each new worker ready
before its old one is asked to leave. One `stop_worker(replace=True)` is a single such step.

`RollingReload` holds the reload in progress and decides its steps; the primary gives it the
few actions it needs (as callables) and tells it when a worker became ready or exited.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from .states import LEAVING

if TYPE_CHECKING:
    from .handle import WorkerHandle


class Reload:
    """One rolling reload (or one `stop_worker(replace=True)` step, when not announced)."""

    __slots__ = ('olds', 'old', 'new', 'replaced', 'announced')

    def __init__(self, olds: 'list[WorkerHandle]', announced: bool) -> None:
        self.olds = olds  # still to replace, in order
        self.old: WorkerHandle | None = None  # being replaced by `new`
        self.new: WorkerHandle | None = None  # started, not yet ready
        self.replaced = 0
        self.announced = announced


class RollingReload:
    """The reload in progress, if any, and its steps."""

    def __init__(self, *, fork_one: Callable[[], 'WorkerHandle | None'], retire: Callable[['WorkerHandle'], None],
                 inherit: Callable[['WorkerHandle', 'WorkerHandle'], None], active: Callable[[], bool],
                 later: Callable[..., Any], reload_complete: Callable[[int, bool], None]) -> None:
        self._fork_one = fork_one  # publish fork for one worker: the handle started, or None
        self._retire = retire  # ask a worker to leave for good (not replaced)
        self._inherit = inherit  # the new worker may re-listen on the old one's shared sockets
        self._active = active
        self._later = later  # run a function on a later loop turn
        self._reload_complete = reload_complete
        self.current: Reload | None = None

    @property
    def announced(self) -> bool:
        """A reload event's reload runs (a second reload() is a no-op)."""
        return self.current is not None and self.current.announced

    def leaving(self) -> 'WorkerHandle | None':
        """The old worker of the running step, whose new worker takes its place."""
        current = self.current
        return current.old if current is not None and current.new is not None else None

    def is_new(self, handle: 'WorkerHandle') -> bool:
        return self.current is not None and handle is self.current.new

    def start(self, olds: 'list[WorkerHandle]') -> None:
        """The reload event's default action: replace `olds` (join a running stop_worker step)."""
        current = self.current
        if current is not None:
            current.announced = True
            current.olds.extend(handle for handle in olds if handle not in current.olds and handle is not current.old)
            return
        self.current = Reload(olds, announced=True)
        self.next_step()

    def replace_one(self, handle: 'WorkerHandle') -> None:
        """stop_worker(handle, replace=True): one step, or one more old worker for the running reload."""
        current = self.current
        if current is not None:
            if handle not in current.olds and handle is not current.old:
                current.olds.append(handle)
        else:
            self.current = Reload([handle], announced=False)
            self.next_step()

    def next_step(self) -> None:
        current = self.current
        if current is None or current.old is not None or current.new is not None or not self._active():
            return
        while current.olds and (current.olds[0].state in LEAVING or current.olds[0].life.retired):
            current.olds.pop(0)  # gone, or leaving anyway: nothing to replace
        if not current.olds:
            self.current = None
            if current.announced:
                self._later(self._reload_complete, current.replaced, False)
            return
        current.old = current.olds.pop(0)
        new = self._fork_one()
        if self.current is current and new is not None:
            current.new = new
            new.life.slot_restarts = current.old.life.slot_restarts  # a reload is no restart
            self._inherit(current.old, new)  # it re-listens on the open sockets
        elif self.current is current:
            self.abandon()

    def abandon(self) -> None:
        current, self.current = self.current, None
        if current is not None and current.announced:
            self._later(self._reload_complete, current.replaced, True)

    def worker_ready(self, handle: 'WorkerHandle') -> None:
        current = self.current
        if current is None or handle is not current.new or handle.life.retired:
            return
        current.new = None
        old = current.old
        if old is None or old.state == 'dead':
            current.old = None
            current.replaced += 1
            self._later(self.next_step)
        else:
            self._retire(old)

    def worker_exited(self, handle: 'WorkerHandle') -> None:
        current = self.current
        if current is not None and handle is current.old:
            current.old = None
            if current.new is None:  # the step was retiring it: the step is done
                current.replaced += 1
                self.next_step()
            # else it left early; the step completes when its new worker is ready

    def replaced_by(self, handle: 'WorkerHandle', successor: 'WorkerHandle | None') -> None:
        """The step's new worker `handle` died and `successor` (None: nothing) replaces it."""
        if self.current is not None and handle is self.current.new:
            self.current.new = successor
