"""Whether a worker's message is observed: the primary builds its worker_message event (with
its stages) only when a publish could be seen by someone. Unseen, the publish would run no
code of anyone's, so it is skipped: the message is counted and dropped.

Decided per message, never cached: a subscription, an override or a routed method added at
any time (late binding, R7) is found by the next message.
"""

from __future__ import annotations

from typing import Any, Callable

_EVENT = 'worker_message'
_ACTION = '_event_worker_message'
_PREFIX = '_event_worker_message_'


def message_observed(primary: Any, message: Any, routing_action: Callable[..., Any]) -> bool:
    """False only when publishing worker_message for `message` would run nothing but the
    primary's own `routing_action` (the default action) and it would route to no method: no
    subscriber at any stage, no other default action (a subclass's or an instance's override, or
    another `complete` in the class's pubsub table), not declared once (a once event is kept for
    later subscribers), no callable `_event_worker_message_<type>`.
    The type rules are `routing.route`'s: a dict whose 'type' is an identifier."""
    if primary._ps_observed(_EVENT):  # a subscription at some stage (or destroyed: the publish raises)
        return True
    config = primary._ps_config.get(_EVENT)
    if config is None or config.complete != _ACTION or config.once:
        return True  # another default action, or a once event a later subscriber sees (R22)
    action = getattr(primary, _ACTION, None)
    if getattr(action, '__func__', None) is not routing_action:
        return True
    if type(message) is not dict:
        return False
    kind = message.get('type')
    if type(kind) is not str or not kind.isidentifier():
        return False
    return callable(getattr(primary, _PREFIX + kind, None))
