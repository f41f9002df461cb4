"""Publish/subscribe with the stages before, on, complete and after (SPEC §1, §2)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from inspect import isawaitable, iscoroutine
from typing import Any, ClassVar, Self

from .errors import DestroyedError
from .pubsub_config import _ALL_STAGES, _SLOT_INDEX, _STAGES, _Config, _build_table, _stage_index
from .subscriptions import Handler, Subscription, _pairs, _Record

__all__ = ['Event', 'Publisher', 'Subscription']

class Event:
    """The one object passed to every handler and to the complete function of a publish (R4)."""

    __slots__ = ('name', 'data', 'publisher', 'dispatch_stopped', 'event_stopped',
                 '_si', '_mask', '_prevented', '_sub', '_ended_by_prevent')

    def __init__(self, publisher: Publisher, name: str, data: Any, mask: int) -> None:
        self.name = name
        self.data = data
        self.publisher = publisher
        self.dispatch_stopped = False
        self.event_stopped = False
        self._si = 0
        self._mask = mask
        self._prevented = 0
        self._sub: _Record | None = None
        self._ended_by_prevent = False

    @property
    def stage(self) -> str:
        return _STAGES[self._si]

    @property
    def completed(self) -> bool:
        return self._si >= 2

    def prevent(self, stage: str = 'complete') -> None:
        """Mark `stage`: the publish ends when it reaches it (R8, R9)."""
        i = _stage_index(stage)
        # A stage that already started cannot be skipped any more, so marking it is meaningless.
        if i > self._si:
            self._prevented |= (1 << i) & self._mask

    def is_prevented(self, stage: str = 'complete') -> bool:
        return bool(self._prevented >> _stage_index(stage) & 1)

    def stop_dispatch(self) -> None:
        self.dispatch_stopped = True

    def stop_event(self) -> None:
        self.event_stopped = True

    def reply(self, value: Any = None) -> None:
        """Answer the request this event carries (a message sent with `request()`)."""
        request = self.data.get('request') if type(self.data) is dict else None
        if request is None:
            raise TypeError(f'event {self.name!r} carries no request: only messages sent with request() can be replied to')
        request.reply(value)

    def unsubscribe(self) -> None:
        """Remove the subscription of the handler now running (R12)."""
        record = self._sub
        if record is not None and record.active:
            self.publisher._ps_unlink(record)

    def __repr__(self) -> str:
        return f'<Event {self.name!r} stage={self.stage!r}>'


_new_object = object.__new__


def new_event(publisher: 'Publisher', name: str, data: Any, mask: int, stage: int = 0) -> Event:
    """`Event(publisher, name, data, mask)` at stage index `stage`, without the call of a class
    (~15 ns less a publish, which the hot paths pay once per message): the same slots and values
    as `__init__` (tests/test_publish_walk.py compares every slot)."""
    event = _new_object(Event)
    event.name = name
    event.data = data
    event.publisher = publisher
    event.dispatch_stopped = False
    event.event_stopped = False
    event._si = stage
    event._mask = mask
    event._prevented = 0
    event._sub = None
    event._ended_by_prevent = False
    return event


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _subscriber(slot: int, once: bool, internal: bool, doc: str) -> Callable[..., Subscription]:
    def subscribe(self: Publisher, name_or_mapping: Any, handler: Any = None) -> Subscription:
        return self._ps_subscribe(slot, once, internal, name_or_mapping, handler)
    subscribe.__doc__ = doc
    return subscribe


class Publisher:
    """Base of every object that publishes events. Subclasses call `super().__init__()` early."""

    _pubsub: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    _ps_table: ClassVar[dict[str, _Config]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._ps_table = _build_table(cls)

    def __init__(self) -> None:
        self._ps_config = type(self)._ps_table  # instance attribute: the fastest lookup on the hot path
        self._ps_subs: dict[str, list[tuple[_Record, ...]]] = {}
        # The names with at least one subscription in some stage: a publisher may hand an event
        # nobody observes straight to its default action (`_ps_observed`).
        self._ps_heard: set[str] = set()
        self._ps_done: dict[str, Event] = {}  # once events already marked (R20, R21) -> stored event
        self._ps_tasks: set[asyncio.Task[Any]] = set()
        self._ps_seq = 0
        self._ps_closed = False
        try:
            self._ps_loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._ps_loop = None

    # -- publishing -------------------------------------------------------------------------

    def publish(self, name: str, data: Any = None) -> Self:
        """Publish, unless `name` is declared without `public_publish` (R26)."""
        if self._ps_closed:
            raise self._ps_destroyed('publish')
        config = self._ps_config.get(name)
        if config is not None and not config.public_publish:
            return self
        return self._publish(name, data)

    def _publish(self, name: str, data: Any = None) -> Self:
        """Run every stage of one publish synchronously (R1–R11, R18, R20, R21)."""
        if self._ps_closed:
            raise self._ps_destroyed('publish')
        config = self._ps_config.get(name)
        if config is None:
            mask, complete = _ALL_STAGES, None
        elif config.once:
            return self._ps_publish_general(name, data, config)
        else:
            mask, complete = config.preventable, config.complete
        event = new_event(self, name, {} if data is None else data, mask)
        # Only the stages with subscribers are walked. A stage's prevent mark can only have been
        # set by code of this publish that already ran, so a mark is checked once something ran.
        subs = self._ps_subs.get(name)
        if subs is not None:
            if subs[0]:
                if self._ps_dispatch(event, subs, 0):
                    return self
                if event._prevented & 0b10:
                    event._ended_by_prevent = True
                    return self
                event._si = 1
                if subs[1]:
                    if self._ps_dispatch(event, subs, 1):
                        return self
                if event._prevented & 0b100:
                    event._ended_by_prevent = True
                    return self
            elif subs[1]:
                event._si = 1
                if self._ps_dispatch(event, subs, 1):
                    return self
                if event._prevented & 0b100:
                    event._ended_by_prevent = True
                    return self
        event._si = 2
        if complete is not None:
            function = getattr(self, complete, None)  # late binding (R7)
            if callable(function):
                result = function(event)
                if result is not None and isawaitable(result):
                    self._spawn(result)
                if event.event_stopped or self._ps_closed:
                    return self
                if subs is None:  # the complete function may have subscribed to after (R18)
                    subs = self._ps_subs.get(name)
        if event._prevented & 0b1000:
            event._ended_by_prevent = True
            return self
        event._si = 3
        if subs is not None and subs[2]:
            self._ps_dispatch(event, subs, 2)
        return self

    def _ps_publish_general(self, name: str, data: Any, config: _Config) -> Self:
        """`_publish` of a once event (R20, R21): every stage, with the once marks."""
        if name in self._ps_done:
            return self
        event = Event(self, name, {} if data is None else data, config.preventable)
        if config.publish_once:
            self._ps_done[name] = event
        subs = self._ps_subs.get(name)
        if subs is not None and subs[0]:
            self._ps_dispatch(event, subs, 0)
            if event.event_stopped or self._ps_closed:
                return self
        if event._prevented & 0b10:
            event._ended_by_prevent = True
            return self
        event._si = 1
        if subs is None:  # a handler or nested publish may have subscribed meanwhile (R18)
            subs = self._ps_subs.get(name)
        if subs is not None and subs[1]:
            self._ps_dispatch(event, subs, 1)
            if event.event_stopped or self._ps_closed:
                return self
        if event._prevented & 0b100:
            event._ended_by_prevent = True
            return self
        event._si = 2
        if config.complete_once:
            if name in self._ps_done:  # a nested publish completed it already (R20)
                return self
            self._ps_done[name] = event
        if config.complete is not None:
            complete = getattr(self, config.complete, None)  # late binding (R7)
            if callable(complete):
                result = complete(event)
                if result is not None and isawaitable(result):
                    self._spawn(result)
                if event.event_stopped or self._ps_closed:
                    return self
        if event._prevented & 0b1000:
            event._ended_by_prevent = True
            return self
        event._si = 3
        if subs is None:
            subs = self._ps_subs.get(name)
        if subs is not None and subs[2]:
            self._ps_dispatch(event, subs, 2)
        return self

    def _ps_observed(self, name: str) -> bool:
        """Whether a publish of `name` would run anything but its complete function: a
        subscription in some stage, or a destroyed publisher (the publish raises). O(1): kept
        by subscribe, unsubscribe and off. A hot path may inline it."""
        return self._ps_closed or name in self._ps_heard

    def _ps_dispatch(self, event: Event, subs: list[tuple[_Record, ...]], slot: int,
                     records: tuple[_Record, ...] | None = None) -> bool:
        """Run the handlers of one stage; True when the publish ends here (R11, destroyed).
        `records`: the part of the stage still to run (a caller ran the others), in seq order."""
        if records is None:
            records = subs[slot]
        while True:
            for record in records:
                if not record.active:
                    continue
                handler = record.handler
                if handler.__class__ is str:
                    handler = getattr(self, handler, None)  # R14
                    if not callable(handler):
                        continue
                if record.once:
                    self._ps_unlink(record)  # before the call, so raising or re-publishing cannot repeat it (R17)
                event._sub = record
                result = handler(event)
                if result is not None and isawaitable(result):
                    self._spawn(result)
                if event.dispatch_stopped:
                    event.dispatch_stopped = False
                    event._sub = None
                    return event.event_stopped or self._ps_closed
            # Registrations are copy-on-write tuples in seq order, so anything added to this stage
            # while it ran is exactly the tail with a higher seq (R18); the same tuple: no change.
            current = subs[slot]
            if current is records:
                break
            last = records[-1].seq
            if not current or current[-1].seq <= last:
                break
            records = tuple(r for r in current if r.seq > last)
        event._sub = None
        return event.event_stopped or self._ps_closed

    # -- subscribing ------------------------------------------------------------------------

    before = _subscriber(0, False, False, 'Subscribe to the before stage (R13).')
    on = _subscriber(1, False, False, 'Subscribe to the on stage (R13).')
    after = _subscriber(2, False, False, 'Subscribe to the after stage (R13).')
    once_before = _subscriber(0, True, False, 'Subscribe to the before stage for one call (R17).')
    once_on = _subscriber(1, True, False, 'Subscribe to the on stage for one call (R17).')
    once_after = _subscriber(2, True, False, 'Subscribe to the after stage for one call (R17).')
    _before = _subscriber(0, False, True, 'Library-internal before(): off() does not remove it (R19).')
    _on = _subscriber(1, False, True, 'Library-internal on(): off() does not remove it (R19).')
    _after = _subscriber(2, False, True, 'Library-internal after(): off() does not remove it (R19).')
    _once_before = _subscriber(0, True, True, 'Library-internal once_before().')
    _once_on = _subscriber(1, True, True, 'Library-internal once_on().')
    _once_after = _subscriber(2, True, True, 'Library-internal once_after().')

    def _ps_subscribe(self, slot: int, once: bool, internal: bool, target: Any, handler: Any) -> Subscription:
        if self._ps_closed:
            raise self._ps_destroyed('subscribe')
        records: list[_Record] = []
        for name, h in _pairs(target, handler):
            stored = self._ps_done.get(name)
            if stored is not None:  # late subscriber of a marked once event (R22)
                if not stored._ended_by_prevent:
                    self._ps_call_late(stored, h)
                continue
            self._ps_seq += 1
            record = _Record(name, slot, h, once, internal, self._ps_seq)
            subs = self._ps_subs.get(name)
            if subs is None:
                subs = self._ps_subs[name] = [(), (), ()]
            subs[slot] += (record,)
            self._ps_heard.add(name)
            records.append(record)
        return Subscription(self, tuple(records))

    def _ps_call_late(self, event: Event, handler: Handler) -> None:
        if isinstance(handler, str):
            handler = getattr(self, handler, None)
            if not callable(handler):
                return
        running, event._sub = event._sub, None  # the stored publish may still be running
        try:
            result = handler(event)
        finally:
            event._sub = running
        if result is not None and isawaitable(result):
            self._spawn(result)

    def _ps_unlink(self, record: _Record) -> None:
        record.active = False
        subs = self._ps_subs.get(record.name)
        if subs is not None:
            subs[record.slot] = tuple(r for r in subs[record.slot] if r is not record)
            self._ps_forget_if_unheard(record.name, subs)

    def _ps_forget_if_unheard(self, name: str, subs: list[tuple[_Record, ...]]) -> None:
        # The lists stay (a publish running now holds them and must see later subscriptions, R18).
        if not (subs[0] or subs[1] or subs[2]):
            self._ps_heard.discard(name)

    def off(self, name: str | None = None, handler: Handler | None = None, *, stage: str | None = None) -> int:
        """Remove the public subscriptions matching every given criterion; return how many (R19)."""
        if self._ps_closed:
            raise self._ps_destroyed('unsubscribe')
        if stage is None:
            slots: tuple[int, ...] = (0, 1, 2)
        elif stage in _SLOT_INDEX:
            slots = (_SLOT_INDEX[stage],)
        else:
            raise ValueError(f'cannot unsubscribe from stage {stage!r}; expected before, on or after')
        names = list(self._ps_subs) if name is None else [name]
        removed = 0
        for n in names:
            subs = self._ps_subs.get(n)
            if subs is None:
                continue
            for slot in slots:
                keep = []
                for record in subs[slot]:
                    # identity, or equality: bound methods are new objects on every access
                    if not record.internal and (
                        handler is None or record.handler is handler or record.handler == handler
                    ):
                        record.active = False
                        removed += 1
                    else:
                        keep.append(record)
                if len(keep) != len(subs[slot]):
                    subs[slot] = tuple(keep)
            self._ps_forget_if_unheard(n, subs)
        return removed

    # -- tasks, loop and closing ------------------------------------------------------------

    def _pubsub_loop(self) -> asyncio.AbstractEventLoop:
        """The loop coroutine handlers run on; subclasses override it (R53)."""
        if self._ps_loop is None:
            self._ps_loop = asyncio.get_event_loop_policy().get_event_loop()
        return self._ps_loop

    def _spawn(self, awaitable: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run `awaitable` as a task on the publisher's loop, never inline (R27, R28)."""
        coro = awaitable if iscoroutine(awaitable) else _await(awaitable)
        try:
            task = self._pubsub_loop().create_task(coro)
        except BaseException:
            coro.close()  # no "never awaited" warning on top of the real error
            raise
        self._ps_tasks.add(task)
        task.add_done_callback(self._ps_task_done)
        return task

    def _ps_task_done(self, task: asyncio.Task[Any]) -> None:
        self._ps_tasks.discard(task)
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                self._task_failed(exc)

    def _task_failed(self, exc: BaseException) -> None:
        """An exception escaped a handler task (§2). Default: raise it into the loop's handling."""
        raise exc

    def _close_pubsub(self) -> None:
        """Remove every subscription; later publish/subscribe/off raise DestroyedError (R50)."""
        self._ps_closed = True
        for subs in self._ps_subs.values():
            for records in subs:
                for record in records:
                    record.active = False  # a publish still running skips them (R48)
            subs[:] = ((), (), ())
        self._ps_subs.clear()

    @property
    def _pubsub_closed(self) -> bool:
        return self._ps_closed

    def _ps_destroyed(self, action: str) -> DestroyedError:
        try:
            who = repr(self)
        except Exception:
            who = object.__repr__(self)
        return DestroyedError(f'{who} was destroyed: cannot {action}')


Publisher._ps_table = _build_table(Publisher)
