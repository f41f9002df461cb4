"""Validation of option values shared by the primary and the worker: errors name the option."""

from __future__ import annotations

import math
from typing import Any


def check_seconds(name: str, value: Any, *, allow_none: bool = False, allow_zero: bool = True) -> float | None:
    """Validate a duration option; raises TypeError/ValueError naming it."""
    if value is None:
        if allow_none:
            return None
        raise TypeError(f'{name}: expected a number of seconds, got None')
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f'{name}: expected a number of seconds, got {value!r}')
    if value != value or value < 0 or (value == 0 and not allow_zero) or value == float('inf'):
        raise ValueError(f'{name}: expected a finite number of seconds {">" if not allow_zero else ">="} 0, got {value!r}')
    return float(value)


# A pool larger than this is almost always a typo (fork(10**6) forks until the machine dies);
# each worker is a process with its own interpreter, so real pools are far below it.
MAX_WORKERS = 1024

# Below this, heartbeats turn into a busy loop that kills healthy workers (SPEC R130 leaves the
# floor open; 1e-9 s gave 933 heartbeat kills in 3 s).
MIN_HEARTBEAT_INTERVAL = 0.01


def check_bool(name: str, value: Any) -> bool:
    """Only True or False: `'no'` or `0` for a flag is a mistake, not a false value."""
    if type(value) is not bool:
        raise TypeError(f'{name}: expected True or False, got {value!r}')
    return value


def check_worker_count(name: str, value: Any, *, already: int = 0) -> int:
    """An int >= 0 (not bool) such that `already + value` stays within MAX_WORKERS."""
    if type(value) is not int or value < 0:
        raise ValueError(f'{name}: expected an int >= 0, got {value!r}')
    if already + value > MAX_WORKERS:
        live = f' with {already} live workers' if already else ''
        raise ValueError(
            f'{name}: {value} workers{live} is over the limit of {MAX_WORKERS} live workers per primary; '
            'use fewer workers (each one is a process)'
        )
    return value


def check_positive_int(name: str, value: Any) -> int:
    if type(value) is not int or value < 1:
        raise ValueError(f'{name}: expected an int >= 1, got {value!r}')
    return value


def check_finite(name: str, value: Any, *, minimum: float) -> float:
    """A finite real number >= minimum (ValueError otherwise, as Backoff always raised)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise ValueError(f'{name}: expected a number >= {minimum:g} (finite), got {value!r}')
    return float(value)
