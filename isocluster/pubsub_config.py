"""What a publisher's `_pubsub` declaration means for each of its events (R24): read once
per class, so a publish only looks its event's config up."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_STAGES = ('before', 'on', 'complete', 'after')
_STAGE_INDEX = {name: i for i, name in enumerate(_STAGES)}
_SLOT_INDEX = {'before': 0, 'on': 1, 'after': 2}  # subscribable stages -> slot in a subscription list
_ALL_STAGES = 0b1111
_CONFIG_KEYS = frozenset({'complete', 'complete_once', 'publish_once', 'public_publish', 'preventable'})



class _Config:
    """One event's effective declaration (R24); `preventable` is a bit mask over stage indexes."""

    __slots__ = ('complete', 'complete_once', 'publish_once', 'once', 'public_publish', 'preventable')

    def __init__(self, owner: type, name: Any, spec: Any) -> None:
        where = f'{owner.__qualname__}._pubsub[{name!r}]'
        if not isinstance(name, str) or not isinstance(spec, Mapping):
            raise TypeError(f'{where}: expected a str event name mapped to a config mapping')
        if unknown := set(spec) - _CONFIG_KEYS:
            raise ValueError(f'{where}: unknown keys {sorted(map(str, unknown))}')
        self.complete: str | None = spec.get('complete', '_event_' + name)
        if self.complete is not None and not isinstance(self.complete, str):
            raise TypeError(f'{where}: complete must be a method name or None')
        self.complete_once = bool(spec.get('complete_once', False))
        self.publish_once = bool(spec.get('publish_once', False))
        if self.complete_once and self.publish_once:
            raise ValueError(f'{where}: complete_once and publish_once are mutually exclusive')
        self.once = self.complete_once or self.publish_once
        self.public_publish = bool(spec.get('public_publish', False))
        preventable = spec.get('preventable', True)
        if isinstance(preventable, bool):
            self.preventable = _ALL_STAGES if preventable else 0
        elif isinstance(preventable, (set, frozenset, list, tuple)):
            if bad := [s for s in preventable if s not in _STAGE_INDEX]:
                raise ValueError(f'{where}: unknown stages {bad} in preventable')
            self.preventable = sum(1 << i for s, i in _STAGE_INDEX.items() if s in preventable)
        else:
            raise TypeError(f'{where}: preventable must be a bool or a set of stage names')


def _build_table(cls: type) -> dict[str, _Config]:
    table: dict[str, _Config] = {}
    for klass in reversed(cls.__mro__):
        declared = klass.__dict__.get('_pubsub')
        if declared is None:
            continue
        if not isinstance(declared, Mapping):
            raise TypeError(f'{klass.__qualname__}._pubsub must be a mapping')
        for name, spec in declared.items():
            table[name] = _Config(klass, name, spec)
    return table


def _stage_index(stage: str) -> int:
    i = _STAGE_INDEX.get(stage) if isinstance(stage, str) else None
    if i is None:
        raise ValueError(f'unknown stage {stage!r}; expected one of {_STAGES}')
    return i
