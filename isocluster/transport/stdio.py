"""A worker's stdio choices, checked once for every transport: which streams there are,
what `worker_silent` means, and each transport's word on which values it can honour."""

from __future__ import annotations

from typing import Any, Callable

from .base import WorkerSpec

STREAMS = ('stdin', 'stdout', 'stderr')
WORDS = ('inherit', 'pipe', 'devnull')


def check_stdio(spec: WorkerSpec, accepts: Callable[[Any], bool], expected: str) -> None:
    """Raise ValueError for an unknown stream, or a value `accepts` refuses (`expected` says
    what the transport takes)."""
    for name, value in (spec.stdio or {}).items():
        if name not in STREAMS:
            raise ValueError(f'worker_stdio: unknown stream {name!r}; use {STREAMS}')
        if not accepts(value):
            raise ValueError(f'worker_stdio[{name!r}]: {expected}, got {value!r}')


def stdio_choices(spec: WorkerSpec) -> dict[str, Any]:
    """What each stream of the worker gets: `worker_silent` captures output and closes stdin,
    explicit `worker_stdio` entries win; a stream not named is inherited."""
    choices: dict[str, Any] = {}
    if spec.silent:
        choices = {'stdin': 'devnull', 'stdout': 'pipe', 'stderr': 'pipe'}
    choices.update(spec.stdio or {})
    return choices


def is_fd(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
