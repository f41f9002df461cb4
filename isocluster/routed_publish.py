"""The publish of a message event whose default action is type routing (`primary_message`,
R108), without the publish's machinery while nothing but that default action can see it.

A publish runs before, on, complete and after (R1). While nobody is subscribed to the event
in any stage and its complete function is the library's routing (not overridden on the class
or the instance, R7), the before and on stages have nothing to run: the publish is the Event,
the routed method (R76) and then the after stage, which the routed method may have subscribed
to meanwhile (R18). That is what `deliver` does in one call; anything else takes the full
`_publish`, so every rule of SPEC §1 holds either way. `routed_receiver` is the same for a
worker's MESSAGE frames: decoded and published in one call each, or a read's run of them in
one call, each message still its own publish, checked after what the one before it ran.
"""

from __future__ import annotations

from inspect import isawaitable
from typing import Any, Callable, Iterable

from .out_of_band import decode_parts
from .protocol import MESSAGE
from .pubsub import Event, Publisher, new_event
from .routing import _PLAIN, routed_method



def routed_publisher(publisher: Publisher, name: str, prefix: str,
                     default_action: Callable[..., Any]) -> Callable[[dict[str, Any]], None]:
    """`deliver(data)`, the same as `publisher._publish(name, data)` where `data` holds the
    'message' (and the 'request' of a message sent with request()) and `default_action`, the
    class's complete function of `name`, calls `routing.route(publisher, prefix, event)`."""
    config = publisher._ps_config.get(name)
    publish = publisher._publish
    if config is None or config.once or config.complete is None:
        return lambda data: publish(name, data)  # a declaration the direct path does not know
    complete = config.complete
    mask = config.preventable
    heard = publisher._ps_heard
    spawn = publisher._spawn
    names: dict[str, str] = {}  # type -> routed method name

    def deliver(data: dict[str, Any]) -> None:
        if (publisher._ps_closed or name in heard or complete in publisher.__dict__
                or getattr(type(publisher), complete, None) is not default_action):
            publish(name, data)  # observed, destroyed, or another default action: the full publish
            return
        event = new_event(publisher, name, data, mask, 2)  # complete: before and on had nothing to run
        method = routed_method(publisher, names, prefix, data['message'])
        if method is not None:
            result = method(event)
            request = data.get('request')
            if request is not None:
                request.answer_with(result)
            elif result is not None and type(result) not in _PLAIN and isawaitable(result):
                spawn(result)
        after_complete(publisher, event, name)

    return deliver


def routed_receiver(worker: Any, name: str, prefix: str, default_action: Callable[..., Any],
                    decode: Callable[[Any], Any], decode_failed: Callable[[Exception], Exception]
                    ) -> tuple[Callable[[Any], None], Callable[[Iterable[Any], Any], Any]]:
    """A ClusterWorker's `link_message(payload)` and `link_messages(frames, link)`.

    `link_message` is one call per MESSAGE frame: the payload decoded, then what
    `deliver({'message': message})` does (R108), the after stage's check inline. A worker that
    lost its primary drops the frame, as ever; `decode_failed(error)` is the DecodeError to
    raise for a payload the codec refuses. `link_messages` is the same for a run of frames in
    one call (a stream's read): it takes the MESSAGE frames of the iterator `frames` (each a
    `(kind, payload)` tuple or, cut from a run, a MESSAGE payload alone: protocol.FrameDecoder's
    `bare_messages`) until one of another kind, or until `link.receiver` is no longer this
    worker (a handler destroyed it), and returns that frame, which it did not take (None: it
    took them all). Every message is still its own publish, checked as `deliver` checks it,
    after whatever the one before it ran (subscriptions, overrides, destroy: R7, R18, R50). The
    codec's decode is called as `out_of_band.decode_parts` splits it (pickle: `pickle.loads`)."""
    deliver = routed_publisher(worker, name, prefix, default_action)
    config = worker._ps_config.get(name)
    if config is None or config.once or config.complete is None:
        def receive_any(payload: Any) -> None:
            if not worker._disconnected:
                try:
                    message = decode(payload)
                except Exception as error:
                    raise decode_failed(error) from error
                deliver({'message': message})

        def receive_any_run(frames: Iterable[Any], link: Any) -> Any:
            for frame in frames:
                if type(frame) is tuple:
                    kind, payload = frame
                    if kind != MESSAGE:
                        return frame
                else:
                    payload = frame
                if link.receiver is not worker:
                    return frame
                receive_any(payload)
            return None

        receive_any_run.takes_payloads = True  # type: ignore[attr-defined]
        return receive_any, receive_any_run
    complete = config.complete
    mask = config.preventable
    heard = worker._ps_heard
    spawn = worker._spawn
    publish = worker._publish
    names: dict[str, str] = {}  # type -> routed method name
    first, rest = decode_parts(decode)

    def decode_rest(payload: Any, error: Exception) -> Any:
        """`decode(payload)` once `first(payload)` raised `error`."""
        if rest is not None:
            try:
                return rest(payload, error)
            except Exception as failure:
                error = failure
        raise decode_failed(error) from error

    def receive_run(frames: Iterable[Any], link: Any) -> Any:
        # A for loop: a while loop indexing the list took ~9 % more instructions a message.
        for payload in frames:
            if type(payload) is tuple:  # a frame as (kind, payload); else a MESSAGE payload alone
                frame = payload
                kind, payload = frame
                if kind != MESSAGE:
                    return frame
                if link is not None and link.receiver is not worker:
                    return frame
            elif link is not None and link.receiver is not worker:
                return payload
            if worker._disconnected:
                continue
            try:
                message = first(payload)  # the codec's C decode itself, in the common case
            except Exception as error:
                message = decode_rest(payload, error)
            data = {'message': message}
            if (worker._ps_closed or name in heard or complete in worker.__dict__
                    or getattr(type(worker), complete, None) is not default_action):
                publish(name, data)  # observed, destroyed, or another default action: the full publish
                continue
            event = new_event(worker, name, data, mask, 2)  # complete: before and on had nothing to run
            method = routed_method(worker, names, prefix, message)
            if method is not None:
                result = method(event)
                if result is not None and type(result) not in _PLAIN and isawaitable(result):
                    spawn(result)
            after_complete(worker, event, name)
        return None

    def receive(payload: Any) -> None:
        receive_run((payload,), None)  # a payload is never a tuple: bytes, bytearray, SplitBody

    receive_run.takes_payloads = True  # type: ignore[attr-defined]  # see bare_messages
    return receive, receive_run


def after_complete(publisher: Publisher, event: Event, name: str) -> None:
    """What `_publish` does once the complete function ran (R8, R11, R18): nothing more when the
    event was stopped, its after stage prevented or the publisher destroyed; else the after
    stage, with the subscriptions made meanwhile (a routed method may have subscribed)."""
    if event.event_stopped or publisher._ps_closed:
        return
    if event._prevented & 0b1000:
        event._ended_by_prevent = True
        return
    event._si = 3
    subs = publisher._ps_subs.get(name)
    if subs is not None and subs[2]:
        publisher._ps_dispatch(event, subs, 2)
