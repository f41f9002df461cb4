"""Restart policy values (SPEC §7.1): plain data, validated once, used by the primary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RESTART_MODES = ('always', 'on-failure', 'never')


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
        if isinstance(self.factor, bool) or not isinstance(self.factor, (int, float)) or self.factor < 1:
            raise ValueError(f'Backoff.factor: expected a number >= 1, got {self.factor!r}')
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, (int, float)) or not 0 <= self.jitter < 1:
            raise ValueError(f'Backoff.jitter: expected a number in [0, 1), got {self.jitter!r}')

    def delay(self, attempt: int, draw: float) -> float:
        """`attempt` counts from 1; `draw` is uniform in [0, 1)."""
        base = min(self.maximum, self.initial * self.factor ** (attempt - 1))
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
        return signal is not None or code != 0 or not ever_ready
