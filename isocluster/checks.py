"""Validation of option values shared by the primary and the worker: errors name the option."""

from __future__ import annotations

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
