"""When a healthy worker is recycled (issue 16): after handling `max_requests` messages, after
living `max_age` seconds, or above `max_memory` resident bytes. Pure decisions, no I/O and no
clock: the caller gives a worker's facts, the time and random draws; `recycler.py` acts.

Jitter spreads the limits per worker, as gunicorn's `max_requests_jitter`, so that workers
started together are not all replaced at the same moment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

REASONS = ('max_requests', 'max_age', 'max_memory')


def _check_limit(name: str, value: Any, kind: type, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    ok = not isinstance(value, bool) and isinstance(value, (int, float) if kind is float else int)
    if not ok or not math.isfinite(value) or value < 0 or (allow_none and value == 0):
        what = 'an int' if kind is int else 'a finite number'
        bound = '> 0 or None' if allow_none else '>= 0'
        raise ValueError(f'{name}: expected {what} {bound}, got {value!r}')


@dataclass(frozen=True)
class RecyclePolicy:
    """The recycling options of a primary; all None: workers are never recycled."""

    max_requests: int | None = None
    max_requests_jitter: int = 0
    max_age: float | None = None
    max_age_jitter: float = 0.0
    max_memory: int | None = None
    memory_check_interval: float = 1.0

    def __post_init__(self) -> None:
        _check_limit('max_requests', self.max_requests, int)
        _check_limit('max_requests_jitter', self.max_requests_jitter, int, allow_none=False)
        _check_limit('max_age', self.max_age, float)
        _check_limit('max_age_jitter', self.max_age_jitter, float, allow_none=False)
        _check_limit('max_memory', self.max_memory, int)
        _check_limit('memory_check_interval', self.memory_check_interval, float)
        if self.memory_check_interval is None:
            raise ValueError('memory_check_interval: expected a finite number > 0, got None')

    @property
    def enabled(self) -> bool:
        return self.max_requests is not None or self.max_age is not None or self.max_memory is not None

    def limits(self, requests_draw: float, age_draw: float) -> 'Limits':
        """One worker's limits; each draw is uniform in [0, 1). The request limit is
        `max_requests + k` with k uniform in 0..max_requests_jitter; the age limit is
        `max_age + d` with d uniform in [0, max_age_jitter)."""
        requests = None
        if self.max_requests is not None:
            requests = self.max_requests + min(self.max_requests_jitter, int(requests_draw * (self.max_requests_jitter + 1)))
        age = None if self.max_age is None else self.max_age + age_draw * self.max_age_jitter
        return Limits(requests, age, self.max_memory)


@dataclass(frozen=True)
class Limits:
    """The limits drawn for one worker."""

    requests: int | None
    age: float | None
    memory: int | None


@dataclass(frozen=True)
class Recycle:
    """Why a worker is recycled: the limit it reached and its value then."""

    reason: str
    value: float
    limit: float


def decide(limits: Limits, *, handled: int, age: float, resident: int | None) -> Recycle | None:
    """Whether a worker with these facts is recycled now, and why; `age` is seconds since it
    became ready, `resident` its resident bytes (None: unknown, never recycled for memory)."""
    if limits.requests is not None and handled >= limits.requests:
        return Recycle('max_requests', handled, limits.requests)
    if limits.age is not None and age >= limits.age:
        return Recycle('max_age', age, limits.age)
    if limits.memory is not None and resident is not None and resident > limits.memory:
        return Recycle('max_memory', resident, limits.memory)
    return None
