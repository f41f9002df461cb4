"""What one subscribe call registers (R13, R15): the argument shapes it accepts, its records
and the `Subscription` that removes them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pubsub import Event, Publisher

Handler = Callable[['Event'], Any] | str


class _Record:
    """One (event, stage, handler) registration; `seq` orders registrations of a publisher."""

    __slots__ = ('name', 'slot', 'handler', 'once', 'internal', 'active', 'seq')

    def __init__(self, name: str, slot: int, handler: Handler, once: bool, internal: bool, seq: int) -> None:
        self.name, self.slot, self.handler = name, slot, handler
        self.once, self.internal, self.seq = once, internal, seq
        self.active = True


class Subscription:
    """What one subscribe call registered (R15)."""

    __slots__ = ('_publisher', '_records')

    def __init__(self, publisher: Publisher, records: tuple[_Record, ...]) -> None:
        self._publisher = publisher
        self._records = records

    @property
    def subscribed(self) -> bool:
        return any(record.active for record in self._records)

    def unsubscribe(self) -> None:
        """Remove every registration of this call; idempotent, never raises."""
        for record in self._records:
            if record.active:  # _close_pubsub deactivates all, so this is a no-op afterwards
                self._publisher._ps_unlink(record)


def _pairs(target: Any, handler: Any) -> list[tuple[str, Handler]]:
    """Expand the R13 argument shapes into (name, handler) pairs, validating everything first."""
    if isinstance(target, Mapping):
        if handler is not None:
            raise TypeError('a handler cannot be given together with a mapping')
        items = list(target.items())
    else:
        if handler is None:
            raise TypeError('a handler is required')
        if isinstance(target, str):
            names: Any = (target,)
        elif isinstance(target, (list, tuple)):
            names = target
        else:
            raise TypeError(f'event names must be str, not {type(target).__name__}')
        items = [(name, handler) for name in names]
    pairs: list[tuple[str, Handler]] = []
    for name, handlers in items:
        if not isinstance(name, str):
            raise TypeError(f'event names must be str, not {type(name).__name__}')
        for h in handlers if isinstance(handlers, (list, tuple)) else (handlers,):
            if isinstance(h, str):
                h = str(h)  # dispatch tests `__class__ is str`
            elif not callable(h):
                raise TypeError(f'a handler must be callable or a method name, not {type(h).__name__}')
            pairs.append((name, h))
    return pairs
