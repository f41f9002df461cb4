"""The direct publish of a routed message event (routed_publish.py) against the full publish:
every scenario runs through `deliver`, through a worker's one-call `receive` of the encoded
message (`routed_receiver`) and through `_publish`, and all must leave the same trace (SPEC
R1–R28, R76, R108), including when handlers subscribe, unsubscribe or fire once while it runs,
when methods are added or overridden later (R7) and after destroy."""

from __future__ import annotations

import asyncio
import pickle
from typing import Any, Callable

import pytest

from isocluster.errors import DecodeError, DestroyedError
from isocluster.pubsub import Publisher
from isocluster.routed_publish import routed_publisher, routed_receiver
from isocluster.routing import route


class Receiver(Publisher):
    _pubsub = {'primary_message': {}}

    def __init__(self) -> None:
        super().__init__()
        self._disconnected = False  # as a ClusterWorker's: routed_receiver drops frames once True
        self.trace: list[Any] = []
        self.events: list[Any] = []

    def _event_primary_message(self, event: Any) -> None:
        route(self, '_event_primary_message_', event)

    def _event_primary_message_task(self, event: Any) -> Any:
        self.events.append(event)
        self.trace.append(('task', event.data['message'].get('id'), event.stage, event.completed))
        return event.data['message'].get('id')


def make(kind: type[Receiver] = Receiver) -> tuple[Receiver, Callable[[dict[str, Any]], None]]:
    receiver = kind()
    return receiver, routed_publisher(receiver, 'primary_message', '_event_primary_message_',
                                      Receiver._event_primary_message)


def make_receiver(kind: type[Receiver] = Receiver) -> tuple[Receiver, Callable[[Any], None], Any]:
    """A receiver, its `receive(payload)` of pickled messages (a DecodeError for bad bytes) and
    its `receive_run(frames, link)`."""
    receiver = kind()
    receive, receive_run = routed_receiver(receiver, 'primary_message', '_event_primary_message_',
                                           Receiver._event_primary_message, pickle.loads,
                                           lambda error: DecodeError(f'undecodable: {error!r}'))
    return receiver, receive, receive_run


def received(receive: Callable[[Any], None], deliver: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """`deliver(data)` by way of `receive` for a plain message (a request takes `deliver`)."""
    return lambda data: receive(pickle.dumps(data['message'])) if data.keys() == {'message'} else deliver(data)


def both(scenario: Callable[[Receiver, Callable[[dict[str, Any]], None]], Any], kind: type[Receiver] = Receiver) -> Any:
    """The scenario's result, which must be the same whichever way it publishes."""
    direct_receiver, deliver = make(kind)
    receiving, receive, _ = make_receiver(kind)
    full_receiver, _ = make(kind)
    direct = scenario(direct_receiver, deliver)
    one_call = scenario(receiving, received(receive, routed_publisher(
        receiving, 'primary_message', '_event_primary_message_', Receiver._event_primary_message)))
    full = scenario(full_receiver, lambda data: full_receiver._publish('primary_message', data))
    assert direct == full
    assert one_call == full
    return direct


def msg(i: int, kind: Any = 'task') -> dict[str, Any]:
    return {'message': {'type': kind, 'id': i}}


def test_an_unobserved_message_routes_in_the_complete_stage_and_ends_in_after() -> None:
    def scenario(r: Receiver, deliver: Any) -> Any:
        deliver(msg(1))
        event = r.events[0]
        return r.trace, event.stage, event.completed, event.name, event.publisher is r

    assert both(scenario) == ([('task', 1, 'complete', True)], 'after', True, 'primary_message', True)


def test_messages_that_do_not_route_reach_nothing() -> None:
    def scenario(r: Receiver, deliver: Any) -> Any:
        r.not_callable = 5
        for message in ('text', None, 3, [1], {'id': 1}, {'type': 7}, {'type': 'a-b'}, {'type': 'missing'},
                        {'type': 'not_callable'}):
            deliver({'message': message})
        r.after('primary_message', lambda e: r.trace.append(('after', e.data['message'])))
        deliver({'message': {'type': 'a-b'}})
        return r.trace

    assert both(scenario) == [('after', {'type': 'a-b'})]


def test_r18_an_after_handler_subscribed_by_the_routed_method_runs_in_the_same_publish() -> None:
    class Subscribing(Receiver):
        def _event_primary_message_task(self, event: Any) -> None:
            self.trace.append('routed')
            self.once_after('primary_message', lambda e: self.trace.append(('after', e.stage)))

    def scenario(r: Receiver, deliver: Any) -> Any:
        deliver(msg(1))
        deliver(msg(2))
        return r.trace

    assert both(scenario, Subscribing) == ['routed', ('after', 'after'), 'routed', ('after', 'after')]


@pytest.mark.parametrize('call', ['prevent_after', 'stop_event', 'destroy'])
def test_r8_r11_the_routed_method_ends_the_publish_before_after(call: str) -> None:
    class Ending(Receiver):
        def _event_primary_message_task(self, event: Any) -> None:
            self.after('primary_message', lambda e: self.trace.append('after ran'))
            if call == 'prevent_after':
                event.prevent('after')
            elif call == 'stop_event':
                event.stop_event()
            else:
                self._close_pubsub()
            self.events.append(event)

    def scenario(r: Receiver, deliver: Any) -> Any:
        deliver(msg(1))
        event = r.events[0]
        return r.trace, event.stage, event.is_prevented('after'), event._ended_by_prevent, event.event_stopped

    trace, stage, prevented, ended, stopped = both(scenario, Ending)
    assert trace == [] and stage == 'complete'
    assert (prevented, ended, stopped) == (call == 'prevent_after', call == 'prevent_after', call == 'stop_event')


def test_observers_in_every_stage_see_the_publish_and_once_handlers_fire_once() -> None:
    def scenario(r: Receiver, deliver: Any) -> Any:
        deliver(msg(1))
        sub = r.before('primary_message', lambda e: r.trace.append(('before', e.stage)))
        r.once_on('primary_message', lambda e: r.trace.append(('once on', e.stage)))
        r.after('primary_message', lambda e: r.trace.append(('after', e.stage)))
        deliver(msg(2))
        deliver(msg(3))
        sub.unsubscribe()
        deliver(msg(4))
        r.off('primary_message')
        deliver(msg(5))
        r.on('primary_message', lambda e: e.prevent())  # prevents routing (R108)
        deliver(msg(6))
        return r.trace

    assert both(scenario) == [
        ('task', 1, 'complete', True),
        ('before', 'before'), ('once on', 'on'), ('task', 2, 'complete', True), ('after', 'after'),
        ('before', 'before'), ('task', 3, 'complete', True), ('after', 'after'),
        ('task', 4, 'complete', True), ('after', 'after'),
        ('task', 5, 'complete', True),
    ]


def test_a_handler_unsubscribing_itself_leaves_the_event_unobserved_again() -> None:
    def scenario(r: Receiver, deliver: Any) -> Any:
        def on(event: Any) -> None:
            r.trace.append('on')
            event.unsubscribe()

        r.on('primary_message', on)
        deliver(msg(1))
        observed = r._ps_observed('primary_message')
        deliver(msg(2))
        return r.trace, observed

    assert both(scenario) == (['on', ('task', 1, 'complete', True), ('task', 2, 'complete', True)], False)


def test_r7_methods_added_overridden_or_removed_later_are_found() -> None:
    def scenario(r: Receiver, deliver: Any) -> Any:
        class Later(Receiver):
            pass

        r.__class__ = Later
        deliver(msg(1, 'late'))  # nothing yet: not routed, and the miss must not be remembered
        Later._event_primary_message_late = lambda self, e: self.trace.append('class late')
        deliver(msg(2, 'late'))
        r._event_primary_message_late = lambda e: r.trace.append('instance late')
        deliver(msg(3, 'late'))
        del r._event_primary_message_late
        deliver(msg(4, 'late'))
        del Later._event_primary_message_late
        deliver(msg(5, 'late'))
        Later._event_primary_message_task = lambda self, e: self.trace.append('task overridden')
        deliver(msg(6))
        return r.trace

    assert both(scenario) == ['class late', 'instance late', 'class late', 'task overridden']


def test_r7_an_overridden_default_action_replaces_routing() -> None:
    def scenario(r: Receiver, deliver: Any) -> Any:
        class Later(Receiver):
            pass

        r.__class__ = Later
        deliver(msg(1))
        r._event_primary_message = lambda e: r.trace.append(('instance default', e.stage))
        deliver(msg(2))
        r._event_primary_message = None  # no callable: no default action (R7)
        deliver(msg(3))
        del r._event_primary_message
        Later._event_primary_message = lambda self, e: self.trace.append(('class default', e.stage))
        deliver(msg(4))
        del Later._event_primary_message
        deliver(msg(5))
        return r.trace

    assert both(scenario) == [('task', 1, 'complete', True), ('instance default', 'complete'),
                              ('class default', 'complete'), ('task', 5, 'complete', True)]


def test_a_declaration_without_routing_takes_the_full_publish() -> None:
    class Once(Receiver):
        _pubsub = {'primary_message': {'publish_once': True}}

    class Elsewhere(Receiver):
        _pubsub = {'primary_message': {'complete': '_elsewhere'}}

        def _elsewhere(self, event: Any) -> None:
            self.trace.append('elsewhere')

    class Unpreventable(Receiver):
        _pubsub = {'primary_message': {'preventable': False}}

        def _event_primary_message_task(self, event: Any) -> None:
            self.after('primary_message', lambda e: self.trace.append('after'))
            event.prevent('after')

    def scenario(r: Receiver, deliver: Any) -> Any:
        deliver(msg(1))
        deliver(msg(2))
        return r.trace

    assert both(scenario, Once) == [('task', 1, 'complete', True)]
    assert both(scenario, Elsewhere) == ['elsewhere', 'elsewhere']
    assert both(scenario, Unpreventable) == ['after', 'after', 'after']


def test_r50_a_destroyed_receiver_raises() -> None:
    def scenario(r: Receiver, deliver: Any) -> Any:
        r._close_pubsub()
        with pytest.raises(DestroyedError) as caught:
            deliver(msg(1))
        return str(caught.value).replace(repr(r), 'R'), r.trace

    assert both(scenario) == ('R was destroyed: cannot publish', [])


def test_r27_a_coroutine_routed_method_runs_as_a_task_after_the_publish() -> None:
    class Coroutine(Receiver):
        async def _event_primary_message_task(self, event: Any) -> None:
            self.trace.append(('task', event.data['message']['id']))

    def scenario(r: Receiver, deliver: Any) -> Any:
        async def main() -> list[Any]:
            deliver(msg(1))
            r.trace.append('published')
            await asyncio.gather(*r._ps_tasks)
            return r.trace
        return asyncio.run(main())

    assert both(scenario, Coroutine) == ['published', ('task', 1)]


def test_a_request_is_answered_with_the_routed_result() -> None:
    class Request:
        def __init__(self, trace: list[Any]) -> None:
            self.trace = trace

        def answer_with(self, result: Any) -> None:
            self.trace.append(('answer', result))

    def scenario(r: Receiver, deliver: Any) -> Any:
        deliver({'message': {'type': 'task', 'id': 7}, 'request': Request(r.trace)})
        deliver({'message': {'type': 'missing'}, 'request': Request(r.trace)})
        return r.trace

    assert both(scenario) == [('task', 7, 'complete', True), ('answer', 7)]


def test_observed_follows_subscribe_unsubscribe_off_and_destroy() -> None:
    r = Receiver()
    assert not r._ps_observed('x')
    sub = r.on('x', lambda e: None)
    internal = r._after('x', lambda e: None)
    assert r._ps_observed('x') and not r._ps_observed('y')
    sub.unsubscribe()
    assert r._ps_observed('x')  # the internal one remains
    internal.unsubscribe()
    assert not r._ps_observed('x')
    r.once_before('x', lambda e: None)
    r._publish('x')
    assert not r._ps_observed('x')  # the once handler is gone
    r.on(['x', 'y'], lambda e: None)
    r._on('y', lambda e: None)
    assert r.off() == 2
    assert not r._ps_observed('x') and r._ps_observed('y')
    r._close_pubsub()
    assert r._ps_observed('y') and r._ps_observed('x')  # destroyed: a publish raises


def test_route_names_are_remembered_up_to_a_bound_and_stay_right_past_it() -> None:
    from isocluster import routing

    names: dict[str, str] = {}
    for i in range(routing._ROUTE_NAMES_KEPT + 50):
        assert routing.route_name(names, 'p_', f't{i}') == f'p_t{i}'
    assert len(names) == routing._ROUTE_NAMES_KEPT  # a stream of made-up types cannot grow it
    assert routing.route_name(names, 'p_', 'a-b') == '' and routing.route_name(names, 'p_', 'ok') == 'p_ok'
    assert names['t0'] == 'p_t0'


def test_receive_drops_frames_once_the_worker_lost_its_primary_and_raises_for_bad_bytes() -> None:
    r, receive, _ = make_receiver()
    receive(pickle.dumps({'type': 'task', 'id': 1}))
    r._disconnected = True
    receive(pickle.dumps({'type': 'task', 'id': 2}))
    r._disconnected = False
    with pytest.raises(DecodeError, match='undecodable'):
        receive(b'not a pickle')
    receive(pickle.dumps({'type': 'task', 'id': 3}))
    assert [entry[1] for entry in r.trace] == [1, 3]


def test_receive_of_a_declaration_without_routing_takes_the_full_publish_and_its_checks() -> None:
    class Once(Receiver):
        _pubsub = {'primary_message': {'publish_once': True}}

    r, receive, _ = make_receiver(Once)
    receive(pickle.dumps({'type': 'task', 'id': 1}))
    r._disconnected = True
    receive(pickle.dumps({'type': 'task', 'id': 2}))
    r._disconnected = False
    with pytest.raises(DecodeError):
        receive(b'not a pickle')
    assert r.trace == [('task', 1, 'complete', True)]


class Link:
    """What a run reads of the link: the receiver its frames go to now."""

    def __init__(self, receiver: Any) -> None:
        self.receiver = receiver


def frames_of(*messages: Any) -> list[tuple[str, Any]]:
    return [('message', pickle.dumps(message)) for message in messages]


def run_both(frames: list[tuple[str, Any]], kind: type[Receiver] = Receiver,
             prepare: Callable[[Receiver, Link], None] = lambda r, link: None) -> Any:
    """A run of frames through `receive_run` in one call, and the same frames published one
    by one (each checked as the link checks it): the same trace and the same index left."""
    r, _, receive_run = make_receiver(kind)
    link = Link(r)
    prepare(r, link)
    left = iter(frames)
    direct = (receive_run(left, link), list(left), r.trace)
    full_receiver = kind()
    link = Link(full_receiver)
    prepare(full_receiver, link)
    left, stopped_at = iter(frames), None
    for kind_, payload in left:
        if kind_ != 'message' or link.receiver is not full_receiver:
            stopped_at = (kind_, payload)
            break
        if not full_receiver._disconnected:
            full_receiver._publish('primary_message', {'message': pickle.loads(payload)})
    full = (stopped_at, list(left), full_receiver.trace)
    assert direct == full
    return direct


def test_a_run_publishes_each_message_after_what_the_one_before_it_did() -> None:
    class Changing(Receiver):
        def _event_primary_message_task(self, event: Any) -> None:
            super()._event_primary_message_task(event)
            n = event.data['message']['id']
            if n == 1:  # R18: an after handler subscribed by the routed method, for this publish on
                self.after('primary_message', lambda e: self.trace.append(('after', e.data['message']['id'])))
            elif n == 2:  # R7: an override on the instance takes the next message
                self._event_primary_message_task = self.overridden

        def overridden(self, event: Any) -> None:
            self.trace.append(('override', event.data['message']['id']))
            if event.data['message']['id'] == 4:
                self.off('primary_message')  # unobserved again: the direct path from the next on

    stopped_at, left, trace = run_both(frames_of(*({'type': 'task', 'id': i} for i in range(1, 6))), Changing)
    assert stopped_at is None and left == []
    assert trace == [('task', 1, 'complete', True), ('after', 1), ('task', 2, 'complete', True), ('after', 2),
                     ('override', 3), ('after', 3), ('override', 4), ('override', 5)]


def test_a_run_stops_at_another_kind_of_frame_and_when_the_worker_stops_receiving() -> None:
    class Leaving(Receiver):
        link: Link

        def _event_primary_message_task(self, event: Any) -> None:
            super()._event_primary_message_task(event)
            if event.data['message']['id'] == 2:
                self.link.receiver = None  # destroyed: the link no longer delivers to it

    def keep(r: Any, link: Link) -> None:
        r.link = link

    mixed = frames_of({'type': 'task', 'id': 1}) + [('request', (1, b''))] + frames_of({'type': 'task', 'id': 2})
    assert run_both(mixed, Leaving, keep) == (mixed[1], mixed[2:], [('task', 1, 'complete', True)])
    stream = frames_of(*({'type': 'task', 'id': i} for i in range(1, 5)))
    assert run_both(stream, Leaving, keep) == (
        stream[2], stream[3:], [('task', 1, 'complete', True), ('task', 2, 'complete', True)])


def test_a_run_drops_frames_once_the_primary_is_lost_and_raises_for_bad_bytes_after_the_good_ones() -> None:
    class Losing(Receiver):
        def _event_primary_message_task(self, event: Any) -> None:
            super()._event_primary_message_task(event)
            self._disconnected = True

    assert run_both(frames_of(*({'type': 'task', 'id': i} for i in range(1, 4))), Losing) == (
        None, [], [('task', 1, 'complete', True)])
    r, _, receive_run = make_receiver()
    with pytest.raises(DecodeError):
        receive_run(iter(frames_of({'type': 'task', 'id': 1}) + [('message', b'bad')]), Link(r))
    assert r.trace == [('task', 1, 'complete', True)]


def test_the_routed_method_sees_every_slot_of_the_event_the_full_publish_builds() -> None:
    """The direct paths build their Event without its class call (object.__new__ and the slots):
    every slot must hold what `_publish`'s Event holds when the routed method runs, and after."""
    from isocluster.pubsub import Event

    class Recording(Receiver):
        def _event_primary_message_task(self, event: Any) -> None:
            self.trace.append({slot: ('the receiver' if getattr(event, slot) is self else getattr(event, slot))
                               for slot in Event.__slots__})

    def scenario(r: Receiver, deliver: Any) -> Any:
        deliver(msg(1))
        deliver({'message': {'type': 'task', 'id': 2}, 'request': None})
        return r.trace

    trace = both(scenario, Recording)
    assert trace[0]['_si'] == 2 and trace[0]['name'] == 'primary_message'
    _, _, trace = run_both(frames_of({'type': 'task', 'id': 1}, {'type': 'task', 'id': 2}), Recording)
    assert len(trace) == 2 and trace[0]['data'] == {'message': {'type': 'task', 'id': 1}}


def test_a_run_takes_message_payloads_alone_as_it_takes_message_frames() -> None:
    """A worker's link cuts a run's MESSAGE frames as bare payloads (FrameDecoder.bare_messages),
    mixed with (kind, payload) frames: the same publishes, and the same frame handed back."""
    _, _, receive_run = make_receiver()
    assert receive_run.takes_payloads is True
    framed = frames_of({'type': 'task', 'id': 1}) + [('message', pickle.dumps({'type': 'task', 'id': 2}))] \
        + frames_of({'type': 'task', 'id': 3}) + [('request', (1, b''))] + frames_of({'type': 'task', 'id': 4})
    bare = [framed[0][1], framed[1], framed[2][1], framed[3], framed[4][1]]
    expected = run_both(framed)
    r, _, receive_run = make_receiver()
    left = iter(bare)
    assert (receive_run(left, Link(r)), list(left), r.trace) == (expected[0], bare[4:], expected[2])
    assert expected[0] == ('request', (1, b'')) and expected[1] == framed[4:] and len(expected[2]) == 3
