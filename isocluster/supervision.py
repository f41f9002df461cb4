"""Supervision (SPEC §7): the restart policy values, and the primary's replacement,
rolling-reload and heartbeat logic, as a mixin of ClusterPrimary.

Like the rest of the core it only uses the transport's loop for time.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Self

from . import protocol
from .checks import check_bool, check_finite, check_seconds, check_worker_count
from .errors import HeartbeatTimeout, NoWorkersError, TransportError

if TYPE_CHECKING:
    from .handle import WorkerHandle
    from .transport.base import Signals

logger = logging.getLogger('isocluster')

RESTART_MODES = ('always', 'on-failure', 'never')


def _warn_inactive(method: str, worker_count: int, state: str) -> None:
    # SPEC R92 makes it a no-op; silently ignoring it hid bugs (a fork racing a shutdown).
    logger.warning(
        '%s(worker_count=%s) ignored: the primary is %s and starts no more workers',
        method, worker_count, state.replace('_', ' '), extra={'reason': f'{method}_when_{state}'},
    )


@dataclass(frozen=True)
class Backoff:
    """Delay before the k-th consecutive replacement beyond the restart budget:
    `min(maximum, initial * factor ** (k - 1))`, times a factor drawn from
    `[1 - jitter, 1 + jitter]`."""

    initial: float = 0.1
    factor: float = 2.0
    maximum: float = 30.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        check_seconds('Backoff.initial', self.initial)
        check_seconds('Backoff.maximum', self.maximum)
        check_finite('Backoff.factor', self.factor, minimum=1)
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, (int, float)) or not 0 <= self.jitter < 1:
            raise ValueError(f'Backoff.jitter: expected a number in [0, 1), got {self.jitter!r}')

    def delay(self, attempt: int, draw: float) -> float:
        """`attempt` counts from 1; `draw` is uniform in [0, 1)."""
        try:
            grown = self.initial * self.factor ** (attempt - 1)
        except OverflowError:  # a long crash loop: factor ** k leaves the float range
            grown = self.maximum
        base = min(self.maximum, grown)
        return base * (1 - self.jitter + 2 * self.jitter * draw)


@dataclass(frozen=True)
class RestartPolicy:
    """When an exited worker is replaced, and how fast (SPEC R126–R129)."""

    restart: str = 'always'
    intensity: int | None = 10
    period: float = 60.0
    backoff: Backoff | None = Backoff()

    def __post_init__(self) -> None:
        if self.restart not in RESTART_MODES:
            raise ValueError(f'restart: expected one of {RESTART_MODES}, got {self.restart!r}')
        if self.intensity is not None and (
            isinstance(self.intensity, bool) or not isinstance(self.intensity, int) or self.intensity < 0
        ):
            raise ValueError(f'restart_intensity: expected an int >= 0 or None, got {self.intensity!r}')
        check_seconds('restart_period', self.period, allow_zero=False)
        if self.backoff is not None and not isinstance(self.backoff, Backoff):
            raise TypeError(f'restart_backoff: expected a Backoff or None, got {self.backoff!r}')

    def wants_restart(self, code: int | None, signal: Any, ever_ready: bool) -> bool:
        if self.restart == 'always':
            return True
        if self.restart == 'never':
            return False
        return is_failure(code, signal, ever_ready)


def is_failure(code: int | None, signal: Any, ever_ready: bool) -> bool:
    """A crash, a non-zero exit, or an exit before the worker was ever ready (R126)."""
    return signal is not None or code != 0 or not ever_ready


# Failed starts in a row, before any worker was ever ready, that stop the cluster. One could be
# bad luck (a port still in use, a primary-side worker_error); three mean the workers' code or
# environment is broken and every replacement would fail the same way.
BOOT_FAILURE_LIMIT = 3


def halts_at_boot(boot_failures: int) -> bool:
    """`boot_failures`: failed starts so far while no worker of the primary was ever ready.
    gunicorn halts on a worker's boot error for the same reason: stop, instead of forking a
    storm of failing workers until the restart limit."""
    return boot_failures >= BOOT_FAILURE_LIMIT


def is_drained(live: int, pending_restarts: int) -> bool:
    """After an exit the policy did not replace: no worker is live and none is about to be
    started. (An exit of a retired worker, from scale(0) or stop_worker, is never asked: an
    empty pool the user made on purpose is not an end.)"""
    return live == 0 and pending_restarts == 0


def describe_exit(handle: 'WorkerHandle') -> str:
    """How one worker ended, for an error message: its worker_error if any, else its exit."""
    if handle._error is not None:
        how = f'{type(handle._error).__name__}: {handle._error}'
    elif handle.exit_signal is not None:
        how = f'killed by {handle.exit_signal.name}'
    else:
        how = f'exit code {handle.exit_code}'
    when = '' if handle._ever_ready else ' before it became ready'
    return f'worker {handle.id} ended{when} ({how})'


def no_workers_error(reason: str, last: 'WorkerHandle | None', policy: 'RestartPolicy') -> 'NoWorkersError | None':
    """The error run()/wait_closed() raise for an end with no worker left, naming `last` (the
    last unreplaced failure, else the last exit); None for a clean end (`last` None: every
    worker that was not replaced exited successfully and the policy asked for no more)."""
    if last is None:
        return None
    failure = describe_exit(last)
    if reason == 'boot_failure':
        advice = (f"{BOOT_FAILURE_LIMIT} workers failed to start and none ever became ready, so every "
                  "replacement would fail the same way; fix the "
                  "worker's start-up (its traceback is on the worker's stderr) and start the cluster again")
    elif reason == 'restart_limit':
        advice = (f'the restart limit was reached (more than {policy.intensity} restarts within '
                  f'{policy.period}s) and the last workers exited; fix the crash, raise restart_intensity, '
                  'or prevent no_workers and call scale() to keep the primary up')
    else:
        advice = f"restart={policy.restart!r} replaces none of the workers that exited; use restart='always' to keep them running"
    return NoWorkersError(f'the cluster stopped with no worker left: {failure}; {advice}',
                          worker_id=last.id if last is not None else None, reason=reason)


class _Reload:
    """One rolling reload (or one `stop_worker(replace=True)` step, when not announced)."""

    __slots__ = ('olds', 'old', 'new', 'replaced', 'announced')

    def __init__(self, olds: list[WorkerHandle], announced: bool) -> None:
        self.olds = olds
        self.old: WorkerHandle | None = None
        self.new: WorkerHandle | None = None
        self.replaced = 0
        self.announced = announced


class Supervision:
    """Replacement decisions, rolling reload, retirement, scaling and heartbeats for
    ClusterPrimary (which provides the state these methods use)."""

    def reload(self) -> Self:
        """Rolling restart: replace the ready workers one at a time, each new one ready
        before its old one leaves (R132). A no-op unless active and not already reloading."""
        if self._state == 'active' and (self._reload is None or not self._reload.announced):
            self._publish('reload', {'worker_count': len(self._pool_ids)})
        return self

    def stop_worker(self, worker: 'WorkerHandle | int', replace: bool = False) -> Self:
        """Retire one live worker (never replaced), or with `replace=True` swap it for a new
        one as a reload step (R135)."""
        check_bool('replace', replace)
        handle = self._live_handle(worker, 'stop_worker')
        if not replace:
            handle._retired = True
            self._disconnect_worker(handle)
        elif self._state == 'active':
            if self._reload is not None:
                if handle not in self._reload.olds and handle is not self._reload.old:
                    self._reload.olds.append(handle)
            else:
                self._reload = _Reload([handle], announced=False)
                self._reload_next_step()
        return self

    def scale(self, worker_count: int) -> Self:
        """Fork or retire workers to reach `worker_count` live ones; re-enables replacement
        after `restart_limit` (R136)."""
        check_worker_count('worker_count', worker_count)
        if self._state != 'active':
            _warn_inactive('scale', worker_count, self._state)
            return self
        self._restart_times.clear()
        self._replacement_stopped = False
        self._backoff_attempt = 0
        self._unreplaced_failure = None
        reload = self._reload
        # A reload step's old worker is leaving: its new worker takes its place.
        leaving = reload.old if reload is not None and reload.new is not None else None
        staying = [
            handle for worker_id, handle in sorted(self._live.items()) if not handle._retired and handle is not leaving
        ]
        if worker_count > len(staying):
            self._publish('fork', {'worker_count': worker_count - len(staying)})
        else:
            surplus = staying[worker_count:]
            if leaving is not None and reload.new in surplus:
                surplus.append(leaving)  # its replacement is retired: nothing takes its place
            for handle in reversed(surplus):
                handle._retired = True
                self._disconnect_worker(handle)
        return self

    # -- supervision: replacement ----------------------------------------------------

    def _supervise_exit(self, handle: WorkerHandle, code: int | None, signal: Signals | None) -> None:
        reload = self._reload
        if reload is not None and handle is reload.old and reload.new is not None:
            return  # the step's new worker replaces it (R133)
        supervised = self._state == 'active' and not handle._retired  # retired: an empty pool on purpose
        if supervised and is_failure(code, signal, handle._ever_ready):
            self._unreplaced_failure = handle  # until a replacement is made
        wants = supervised and not self._replacement_stopped and self._policy.wants_restart(code, signal, handle._ever_ready)
        if wants and not handle._ever_ready and not self._any_ever_ready:
            self._boot_failures += 1
            if halts_at_boot(self._boot_failures) and self._publish_no_workers('boot_failure', handle):
                return
        replaced = self._decide_replacement(handle, code, signal)
        if replaced:
            self._unreplaced_failure = None
        if not replaced and reload is not None and self._reload is reload and handle is reload.new:
            self._abandon_reload()  # the step's new worker died and nothing replaces it (R133)
        if not replaced and supervised and self._state == 'active' and is_drained(len(self._live), len(self._pending_restarts)):
            self._publish_no_workers('restart_limit' if self._replacement_stopped else 'no_restart', handle)

    def _publish_no_workers(self, reason: str, handle: 'WorkerHandle') -> bool:
        """Publish no_workers; True unless it was prevented (then supervision goes on)."""
        self._no_workers_ran = False
        last = self._unreplaced_failure if reason == 'no_restart' else self._unreplaced_failure or handle
        error = no_workers_error(reason, last, self._policy)
        self._publish('no_workers', {'reason': reason, 'error': error})
        return self._no_workers_ran

    def _event_no_workers(self, event: Any) -> None:
        self._no_workers_ran = True
        error = event.data['error']
        if self._state != 'active':
            return
        if error is not None:
            self._end_error = error
            logger.error('%s', error, extra={'reason': 'no_workers', 'end': event.data['reason'],
                                             'worker_id': error.worker_id})
        else:
            logger.info('every worker has exited and none is replaced (restart=%r); shutting down',
                        self._policy.restart, extra={'reason': 'no_workers', 'end': event.data['reason']})
        self.shut_down()

    def _staying_count(self) -> int:
        """Live workers that are not leaving: what fork() adds to."""
        return sum(1 for handle in self._live.values() if not handle._retired)

    def _decide_replacement(self, handle: WorkerHandle, code: int | None, signal: Signals | None) -> bool:
        """Replace `handle` now, later (backoff), or not at all; True when replaced now."""
        reload = self._reload
        if self._state != 'active' or handle._retired or self._replacement_stopped:
            return False
        if not self._policy.wants_restart(code, signal, handle._ever_ready):
            return False
        now = self._pubsub_loop().time()
        window = self._restart_times
        while window and now - window[0] >= self._policy.period:
            window.popleft()
        intensity = self._policy.intensity
        if intensity is None or len(window) < intensity:
            window.append(now)
            self._backoff_attempt = 0
            self._replace(handle)
            return True
        self._restart_limit_ran = False
        self._publish('restart_limit', {'worker_count': len(self._live)})
        if reload is not None:
            self._abandon_reload()
        if self._restart_limit_ran or self._state != 'active':
            return False
        self._backoff_attempt += 1
        backoff = self._policy.backoff
        delay = backoff.delay(self._backoff_attempt, self._transport.random()) if backoff is not None else 0.0
        self._shared.reserve(handle.id)  # its sockets stay open for the delayed replacement
        timer: asyncio.TimerHandle = self._call_later(
            delay, self._delayed_replacement, lambda: timer, handle.id, handle._slot_restarts)
        self._pending_restarts.add(timer)
        return False

    def _replace(self, handle: WorkerHandle) -> None:
        self._stats['restarts'] += 1
        self._last_forked = []
        self._publish('fork', {'worker_count': 1})
        if self._last_forked:
            self._last_forked[0]._slot_restarts = handle._slot_restarts + 1
            self._shared.inherit(handle.id, self._last_forked[0].id)
        reload = self._reload
        if reload is not None and handle is reload.new:
            reload.new = self._last_forked[0] if self._last_forked else None

    def _delayed_replacement(self, timer_of: Callable[[], asyncio.TimerHandle], predecessor: int, restarts: int = 0) -> None:
        self._pending_restarts.discard(timer_of())
        if self._state == 'active':
            self._stats['restarts'] += 1
            self._last_forked = []
            self._publish('fork', {'worker_count': 1})
            if self._last_forked:
                self._last_forked[0]._slot_restarts = restarts + 1
                self._shared.inherit_reserved(predecessor, self._last_forked[0].id)
        self._shared.unreserve(predecessor)

    def _event_restart_limit(self, event: Any) -> None:
        self._restart_limit_ran = True
        self._replacement_stopped = True
        logger.error(
            'restart limit reached: more than %s restarts within %ss; automatic replacement stopped '
            '(call scale() to resume)', self._policy.intensity, self._policy.period,
            extra={'reason': 'restart_limit', 'live': len(self._live)},
        )

    # -- supervision: reload ---------------------------------------------------------

    def _event_reload(self, event: Any) -> None:
        if self._state != 'active' or (self._reload is not None and self._reload.announced):
            return
        olds = self.workers
        if self._reload is not None:  # a stop_worker(replace=True) step is running: join it
            self._reload.announced = True
            self._tell('RELOADING=1')
            self._reload.olds.extend(handle for handle in olds if handle not in self._reload.olds and handle is not self._reload.old)
            return
        self._reload = _Reload(olds, announced=True)
        self._tell('RELOADING=1')
        self._reload_next_step()

    def _reload_next_step(self) -> None:
        reload = self._reload
        if reload is None or reload.old is not None or reload.new is not None:
            return
        if self._state != 'active':
            return
        while reload.olds and (reload.olds[0].state in ('disconnected', 'dead') or reload.olds[0]._retired):
            reload.olds.pop(0)  # gone, or leaving anyway: nothing to replace
        if not reload.olds:
            self._reload = None
            if reload.announced:
                self._call_soon(self._publish_reload_complete, reload.replaced, False)
            return
        reload.old = reload.olds.pop(0)
        self._last_forked = []  # stays empty if the fork is prevented
        self._publish('fork', {'worker_count': 1})
        if self._reload is reload and self._last_forked:
            reload.new = self._last_forked[0]
            reload.new._slot_restarts = reload.old._slot_restarts
            self._shared.inherit(reload.old.id, reload.new.id)  # it re-listens on the open sockets
        elif self._reload is reload:
            self._abandon_reload()

    def _abandon_reload(self) -> None:
        reload, self._reload = self._reload, None
        if reload is not None and reload.announced:
            self._call_soon(self._publish_reload_complete, reload.replaced, True)

    def _publish_reload_complete(self, count: int, aborted: bool) -> None:
        if self._state != 'destroyed':
            self._tell('READY=1', when_active=True)
            self._publish('reload_complete', {'worker_count': count, 'aborted': aborted})

    # -- supervision: heartbeats -----------------------------------------------------

    def _start_heartbeat(self, handle: WorkerHandle) -> None:
        handle._heartbeating = True
        handle._last_beat = self._pubsub_loop().time()
        if self._heartbeat_timer is None:
            self._heartbeat_timer = self._call_later(self._heartbeat_interval, self._heartbeat_tick)

    def _stop_heartbeat(self, handle: WorkerHandle) -> None:
        handle._heartbeating = False

    def _heartbeat_tick(self) -> None:
        self._heartbeat_timer = None
        if self._state != 'active':
            return
        now = self._pubsub_loop().time()
        beating = [handle for handle in self._live.values() if handle._heartbeating]
        for handle in beating:
            age = now - handle._last_beat
            if age > self._heartbeat_timeout:
                self._stats['killed_by_timeout'] += 1
                self._worker_fault(handle, HeartbeatTimeout(
                    f'worker {handle.id} has not answered heartbeats for {age:.3f}s '
                    f'(heartbeat_timeout={self._heartbeat_timeout}s): its event loop is blocked; '
                    'it is killed and replaced', worker_id=handle.id,
                ))
                continue
            try:
                handle._link.write(protocol.HEARTBEAT, None)
            except TransportError:
                pass
        if any(handle._heartbeating for handle in self._live.values()):
            self._heartbeat_timer = self._call_later(self._heartbeat_interval, self._heartbeat_tick)
