"""The primary's options: every constructor argument is validated here, once, into one
`PrimaryOptions` value (errors name the option and say what to give instead)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

from . import protocol
from .checks import MIN_HEARTBEAT_INTERVAL, check_bool, check_positive_int, check_seconds
from .pacing import check_max_queued_bytes
from .recycling import RecyclePolicy
from .supervision import Backoff, RestartPolicy
from .transport.base import Transport, WorkerSpec
from .transport.stdio import check_streams

DEFAULT_DRAIN_TIMEOUT = 5.0  # drain_timeout=None: this, or half of shutdown_timeout when that is shorter


@dataclass(frozen=True)
class PrimaryOptions:
    worker_target: Callable[[], Any] | None
    worker_script: str | None
    worker_args: tuple[str, ...] | None
    worker_silent: bool
    worker_stdio: dict[str, Any] | None
    codec: protocol.Codec
    policy: RestartPolicy
    ready_timeout: float | None
    shutdown_timeout: float
    kill_timeout: float
    heartbeat_interval: float | None
    heartbeat_timeout: float | None
    drain_timeout: float
    max_shared_sockets: int
    max_queued_bytes: float
    recycling: RecyclePolicy

    def spec(self, worker_id: int) -> WorkerSpec:
        """What the transport needs to start worker `worker_id`. Neither a target nor a script:
        the current script, with the current arguments (as Node does)."""
        script, args = self.worker_script, self.worker_args
        if self.worker_target is None and script is None:
            script = sys.argv[0]
        if script is not None and args is None:
            args = tuple(sys.argv[1:])
        return WorkerSpec(
            id=worker_id, codec=self.codec, target=self.worker_target, script=script,
            args=args or (), silent=self.worker_silent, stdio=self.worker_stdio,
        )


def primary_options(
    *, worker_target: Any, worker_script: Any, worker_args: Any, worker_silent: Any, worker_stdio: Any,
    transport: Any, codec: Any, restart: Any, restart_intensity: Any, restart_period: Any, restart_backoff: Any,
    restart_policy: Any, ready_timeout: Any, shutdown_timeout: Any, kill_timeout: Any, heartbeat_interval: Any,
    heartbeat_timeout: Any, drain_timeout: Any, max_shared_sockets: Any, max_queued_bytes: Any,
    max_requests: Any = None, max_requests_jitter: Any = 0, max_age: Any = None, max_age_jitter: Any = 0.0,
    max_memory: Any = None, memory_check_interval: Any = 1.0,
) -> PrimaryOptions:
    recycling = RecyclePolicy(max_requests, max_requests_jitter, max_age, max_age_jitter, max_memory,
                              memory_check_interval)
    queue_cap = check_max_queued_bytes(max_queued_bytes)
    if worker_target is not None and worker_script is not None:
        raise ValueError('worker_target and worker_script: give one of them, not both')
    if worker_target is not None and not callable(worker_target):
        raise TypeError(f'worker_target: expected a callable, got {worker_target!r}')
    if worker_script is not None and not isinstance(worker_script, str):
        raise TypeError(f'worker_script: expected a path string, got {worker_script!r}')
    if worker_args is not None:
        if worker_target is not None:
            raise ValueError('worker_args: only for script workers; a worker_target takes no arguments')
        if isinstance(worker_args, str):
            raise TypeError(f'worker_args: expected a list of strings, got {worker_args!r}')
        worker_args = tuple(worker_args)  # once: it may be a one-shot iterator
        if not all(isinstance(arg, str) for arg in worker_args):
            raise TypeError(f'worker_args: expected a list of strings, got {worker_args!r}')
    check_streams(worker_stdio)  # the same check every transport's check_spec makes
    if transport is not None and not isinstance(transport, Transport):
        raise TypeError(f'transport: expected a Transport, got {transport!r}')
    codec = protocol.get_codec(codec)
    ready_timeout = check_seconds('ready_timeout', ready_timeout, allow_none=True, allow_zero=False)
    shutdown_timeout = check_seconds('shutdown_timeout', shutdown_timeout)
    kill_timeout = check_seconds('kill_timeout', kill_timeout)
    interval, timeout = _heartbeats(heartbeat_interval, heartbeat_timeout)
    policy = _policy(restart, restart_intensity, restart_period, restart_backoff, restart_policy)
    return PrimaryOptions(
        worker_target=worker_target, worker_script=worker_script, worker_args=worker_args,
        worker_silent=check_bool('worker_silent', worker_silent),
        worker_stdio=dict(worker_stdio) if worker_stdio is not None else None,
        codec=codec, policy=policy, ready_timeout=ready_timeout, shutdown_timeout=shutdown_timeout,
        kill_timeout=kill_timeout, heartbeat_interval=interval, heartbeat_timeout=timeout,
        drain_timeout=check_drain_timeout(drain_timeout, shutdown_timeout),
        max_shared_sockets=check_positive_int('max_shared_sockets', max_shared_sockets),
        max_queued_bytes=queue_cap, recycling=recycling,
    )


def _heartbeats(heartbeat_interval: Any, heartbeat_timeout: Any) -> tuple[float | None, float | None]:
    """One given: the other follows (timeout = 3 intervals)."""
    interval = check_seconds('heartbeat_interval', heartbeat_interval, allow_none=True, allow_zero=False)
    timeout = check_seconds('heartbeat_timeout', heartbeat_timeout, allow_none=True, allow_zero=False)
    if interval is not None and timeout is None:
        timeout = 3 * interval
    elif timeout is not None and interval is None:
        interval = timeout / 3
    if interval is not None and timeout is not None and timeout <= interval:
        raise ValueError(
            f'heartbeat_timeout ({timeout}) must be greater than heartbeat_interval ({interval})'
        )
    if interval is not None and interval < MIN_HEARTBEAT_INTERVAL:
        name = 'heartbeat_interval' if heartbeat_interval is not None else 'heartbeat_timeout'
        raise ValueError(
            f'{name}: heartbeats every {interval}s are below the minimum interval of '
            f'{MIN_HEARTBEAT_INTERVAL}s (heartbeat_timeout must be at least {3 * MIN_HEARTBEAT_INTERVAL}s)'
        )
    return interval, timeout


def _policy(restart: Any, intensity: Any, period: Any, backoff: Any, restart_policy: Any) -> RestartPolicy:
    if restart_policy is None:
        return RestartPolicy(restart, intensity, period, backoff)
    if not isinstance(restart_policy, RestartPolicy):
        raise TypeError(f'restart_policy: expected a RestartPolicy, got {restart_policy!r}')
    if (restart, intensity, period, backoff) != ('always', 10, 60.0, Backoff()):
        raise ValueError('restart_policy: give either restart_policy or the restart_* options, not both')
    return restart_policy


def check_drain_timeout(drain_timeout: Any, shutdown_timeout: float) -> float:
    """The time a leaving worker gets to finish its connections. SIGTERM comes shutdown_timeout
    after DISCONNECT, so the drain must end before it, with time left for the worker's cleanup."""
    if drain_timeout is None:
        return min(DEFAULT_DRAIN_TIMEOUT, shutdown_timeout / 2)
    seconds = check_seconds('drain_timeout', drain_timeout)
    if seconds and seconds >= shutdown_timeout:
        raise ValueError(
            f'drain_timeout ({seconds}) must be less than shutdown_timeout ({shutdown_timeout}): SIGTERM comes '
            'shutdown_timeout after a worker is asked to leave; raise shutdown_timeout too'
        )
    return seconds
