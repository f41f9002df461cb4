"""A worker's stdio choices, checked once for every transport: which streams there are,
what `worker_silent` means, and each transport's word on which values it can honour."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from .base import WorkerSpec

STREAMS = ('stdin', 'stdout', 'stderr')
WORDS = ('inherit', 'pipe', 'devnull')


def check_streams(stdio: Any) -> None:
    """`worker_stdio` names known streams: TypeError for anything but a mapping (or None),
    ValueError for a stream that is not stdin, stdout or stderr."""
    if stdio is None:
        return
    if not isinstance(stdio, Mapping):
        raise TypeError(f'worker_stdio: expected a mapping of stdin/stdout/stderr, got {stdio!r}')
    unknown = set(stdio) - set(STREAMS)
    if unknown:
        raise ValueError(f'worker_stdio: unknown streams {sorted(unknown)}; use stdin, stdout, stderr')


def check_stdio(spec: WorkerSpec, accepts: Callable[[Any], bool], expected: str) -> None:
    """`check_streams`, then each value against what the transport can honour (`accepts`;
    `expected` says what it takes)."""
    check_streams(spec.stdio)
    for name, value in (spec.stdio or {}).items():
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
