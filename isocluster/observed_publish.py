"""The publish of a worker's message (`worker_message`, SPEC §1, R76), with its default
action, type routing, run inline.

`_publish` calls the late-bound complete function (a bound method made per message) which
calls `routing.route` (another call), and dispatches even a stage of one subscription through
a loop. On a stream the primary is the receiver and pays that per message. `deliver` walks the
same stages, in the same order, with the same checks; it differs only where nobody's code can
tell: while the complete function is the library's routing (not overridden on the class or
the instance, R7) the routed method is looked up and called here, and a stage of one plain
subscription calls it without the loop. Anything else takes the full `_publish`.
"""

from __future__ import annotations

from inspect import isawaitable
from typing import Any, Callable

from .observers import message_observed
from .pubsub import Publisher, new_event
from .routing import _PLAIN, routed_method



def observed_publisher(publisher: Publisher, name: str, prefix: str,
                       default_action: Callable[..., Any]) -> Callable[[Any, Any], None]:
    """`deliver(worker, message)`, the same as `publisher._publish(name, {'worker': worker,
    'message': message})` where `default_action`, the class's complete function of `name`, is
    `routing.route(publisher, prefix, event)`."""
    config = publisher._ps_config.get(name)
    publish = publisher._publish
    if config is None or config.once or config.complete is None:
        # a declaration the direct path does not know (each is observed: message_observed)
        return lambda worker, message: publish(name, {'worker': worker, 'message': message})
    heard = publisher._ps_heard
    if getattr(type(publisher), '_publish', None) is not Publisher._publish:
        subscribed_ever = publisher._ps_subs  # a name stays in it after its last unsubscribe

        def watched(worker: Any, message: Any) -> None:  # a class that watches its publishes: as before
            if name in subscribed_ever or message_observed(publisher, message, default_action):
                publish(name, {'worker': worker, 'message': message})
        return watched
    complete = config.complete
    mask = config.preventable
    all_subs = publisher._ps_subs
    dispatch = publisher._ps_dispatch
    spawn = publisher._spawn
    own = publisher.__dict__
    names: dict[str, str] = {}  # type -> routed method name

    def deliver(worker: Any, message: Any) -> None:
        if publisher._ps_closed or complete in own or getattr(type(publisher), complete, None) is not default_action:
            # destroyed (it raises), or another default action: the full publish
            publish(name, {'worker': worker, 'message': message})
            return
        event = new_event(publisher, name, {'worker': worker, 'message': message}, mask)
        subs = None
        if name in heard:  # else nobody subscribed in any stage: straight to the routed method
            subs = all_subs.get(name)
            if subs is not None:
                if subs[0]:
                    if dispatch(event, subs, 0):
                        return
                    if event._prevented & 0b10:
                        event._ended_by_prevent = True
                        return
                    event._si = 1
                    if subs[1] and dispatch(event, subs, 1):
                        return
                else:
                    records = subs[1]
                    if records:
                        event._si = 1
                        record = records[0]
                        handler = record.handler
                        if len(records) == 1 and record.active and not record.once and handler.__class__ is not str:
                            # `_ps_dispatch` of a stage of one subscription, without its loop
                            event._sub = record
                            result = handler(event)
                            if result is not None and isawaitable(result):
                                spawn(result)
                            if event.dispatch_stopped:
                                event.dispatch_stopped = False
                            elif subs[1] is not records:  # subscribed meanwhile: the tail runs now (R18)
                                tail = tuple(r for r in subs[1] if r.seq > record.seq)
                                if tail:
                                    dispatch(event, subs, 1, tail)
                            event._sub = None
                            if event.event_stopped or publisher._ps_closed:
                                return
                        elif dispatch(event, subs, 1):
                            return
                if event._prevented & 0b100:
                    event._ended_by_prevent = True
                    return
        event._si = 2
        method = routed_method(publisher, names, prefix, message)  # looked up now: late binding (R7)
        if method is not None:
            result = method(event)
            if result is not None and type(result) not in _PLAIN and isawaitable(result):
                spawn(result)
        # what `_publish` does once the complete function ran (R8, R11, R18)
        if event.event_stopped or publisher._ps_closed:
            return
        if event._prevented & 0b1000:
            event._ended_by_prevent = True
            return
        event._si = 3
        if subs is None:  # the routed method may have subscribed to after (R18)
            subs = all_subs.get(name)
        if subs is not None and subs[2]:
            dispatch(event, subs, 2)

    return deliver
