"""Supervision (SPEC §7): the restart policy values, and the `Supervisor` that decides, for
each exit, whether the worker is replaced now, later (backoff) or not at all, and when the
cluster has ended. Given the time and a random draw it returns decisions; it publishes nothing,
starts nothing and needs no event loop (the primary carries its decisions out).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .checks import check_finite, check_seconds
from .errors import NoWorkersError

if TYPE_CHECKING:
    from .handle import WorkerHandle

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
    if handle.life.error is not None:
        how = f'{type(handle.life.error).__name__}: {handle.life.error}'
    elif handle.exit_signal is not None:
        how = f'killed by {handle.exit_signal.name}'
    else:
        how = f'exit code {handle.exit_code}'
    when = '' if handle.life.ever_ready else ' before it became ready'
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


class Supervisor:
    """The replacement decisions of one primary, with the state they need: the restart window
    (intensity within period), the backoff attempt, whether replacement stopped at the restart
    limit, the failed starts before any worker was ready, and the last failure not replaced."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.restart_times: deque[float] = deque()
        self.stopped = False  # the restart limit was reached: no automatic replacement
        self.backoff_attempt = 0
        self.any_ever_ready = False
        self.boot_failures = 0
        self.unreplaced_failure: WorkerHandle | None = None

    def wants_restart(self, code: int | None, signal: Any, ever_ready: bool, retired: bool, active: bool) -> bool:
        """The policy replaces this exit (budget aside): the primary is active, the worker was
        not retired on purpose, replacement has not stopped."""
        return active and not retired and not self.stopped and self.policy.wants_restart(code, signal, ever_ready)

    def exited(self, handle: 'WorkerHandle', code: int | None, signal: Any, active: bool) -> bool:
        """Note a supervised exit (the primary active, the worker not retired); True when it is
        the boot failure that halts the cluster (publish no_workers with reason 'boot_failure')."""
        life = handle.life
        supervised = active and not life.retired
        if supervised and is_failure(code, signal, life.ever_ready):
            self.unreplaced_failure = handle  # until a replacement is made
        if not (supervised and not self.stopped and self.policy.wants_restart(code, signal, life.ever_ready)):
            return False
        if life.ever_ready or self.any_ever_ready:
            return False
        self.boot_failures += 1
        return halts_at_boot(self.boot_failures)

    def admit_restart(self, now: float) -> bool:
        """True: within the restart budget, replace now (the restart is counted). False: over
        the budget (publish restart_limit)."""
        window = self.restart_times
        while window and now - window[0] >= self.policy.period:
            window.popleft()
        intensity = self.policy.intensity
        if intensity is None or len(window) < intensity:
            window.append(now)
            self.backoff_attempt = 0
            return True
        return False

    def backoff_delay(self, draw: float) -> float:
        """The delay before the next replacement beyond the budget (restart_limit prevented);
        `draw` is uniform in [0, 1)."""
        self.backoff_attempt += 1
        backoff = self.policy.backoff
        return backoff.delay(self.backoff_attempt, draw) if backoff is not None else 0.0

    def replaced(self) -> None:
        self.unreplaced_failure = None

    def stop(self) -> None:
        """restart_limit's default action: no more automatic replacement until resume()."""
        self.stopped = True

    def resume(self) -> None:
        """scale(): a fresh budget, and replacement on again."""
        self.restart_times.clear()
        self.stopped = False
        self.backoff_attempt = 0
        self.unreplaced_failure = None

    def ready(self) -> None:
        self.any_ever_ready = True

    def end_reason(self) -> str:
        """Why an exit the policy did not replace ends the cluster (when none is left)."""
        return 'restart_limit' if self.stopped else 'no_restart'

    def end_error(self, reason: str, handle: 'WorkerHandle') -> 'NoWorkersError | None':
        last = self.unreplaced_failure if reason == 'no_restart' else self.unreplaced_failure or handle
        return no_workers_error(reason, last, self.policy)

    def restarts_in_window(self, now: float) -> int:
        return sum(1 for when in self.restart_times if now - when < self.policy.period)
