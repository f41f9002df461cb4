"""observed_publish.deliver (the primary's worker_message publish with its routing inline) must
behave exactly as `_publish` followed by the default action `routing.route` (SPEC §1 R1–R18,
R76): each scenario runs both ways on fresh publishers and the traces must be equal, and the
direct path must have been taken where it applies."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import pytest

from isocluster import ClusterPrimary
from isocluster.observed_publish import observed_publisher
from isocluster.pubsub import Event, Publisher
from isocluster.routing import route
from isocluster.subscriptions import _Record
from isocluster.transport.memory import MemoryTransport
from tests.test_stream_fast_paths import close, frames_of, ready_primary


class Host(Publisher):
    _pubsub = {'msg': {}}

    def __init__(self) -> None:
        super().__init__()
        self.trace: list[Any] = []
        self.spawned: list[Any] = []
        self.routed_hook: Callable[[Any], Any] | None = None

    def _event_msg(self, event: Any) -> None:
        route(self, '_on_', event)

    def _on_t(self, event: Any) -> Any:
        self.trace.append(('routed', event.stage, event.data['message'].get('n'), event._sub))
        if self.routed_hook is not None:
            return self.routed_hook(event)
        return None

    def _spawn(self, awaitable: Any) -> Any:
        self.spawned.append(awaitable)
        if asyncio.iscoroutine(awaitable):
            awaitable.close()
        return None

    def rec(self, label: str, then: Callable[[Any], Any] | None = None) -> Callable[[Any], Any]:
        def handler(event: Any) -> Any:
            self.trace.append((label, event.stage, event.data['message'].get('n') if type(event.data['message']) is dict else None))
            return then(event) if then is not None else None
        return handler

    def named_handler(self, event: Any) -> None:
        self.trace.append(('named', event.stage))


def msg(n: int = 0, kind: Any = 't') -> dict[str, Any]:
    return {'message': {'type': kind, 'n': n}}


async def _coroutine() -> None:
    return None


# Each scenario: (set up subscriptions on p, then publish some messages with `pub`).
def only_on(p: Host, pub: Any) -> None:
    p.on('msg', p.rec('on'))
    pub(msg(1)), pub(msg(2, 'other')), pub({'message': 'not a dict'}), pub(msg(3, 'not-an-identifier'))


def subscribed_meanwhile_in_on(p: Host, pub: Any) -> None:
    p.on('msg', p.rec('on', lambda e: p.on('msg', p.rec('added'))))
    pub(msg(1))


def unsubscribed_meanwhile_in_on(p: Host, pub: Any) -> None:
    p.on('msg', p.rec('on', lambda e: e.unsubscribe()))
    pub(msg(1)), pub(msg(2))


def dispatch_stopped(p: Host, pub: Any) -> None:
    p.on('msg', p.rec('first', lambda e: e.stop_dispatch()))
    p.on('msg', p.rec('second'))
    p.after('msg', p.rec('after'))
    pub(msg(1))


def dispatch_stopped_one(p: Host, pub: Any) -> None:
    p.on('msg', p.rec('on', lambda e: (e.stop_dispatch(), p.on('msg', p.rec('added')))))
    p.after('msg', p.rec('after'))
    p.after('msg', p.rec('after2'))  # runs: stopping one stage's dispatch does not stop the next's
    pub(msg(1)), pub(msg(2))


def event_stopped(p: Host, pub: Any) -> None:
    p.on('msg', p.rec('on', lambda e: (e.stop_dispatch(), e.stop_event())))
    p.after('msg', p.rec('after'))
    pub(msg(1))


def prevented(p: Host, pub: Any) -> None:
    p.on('msg', p.rec('on', lambda e: e.prevent(e.data['message']['stage'])))
    p.after('msg', p.rec('after'))
    for stage in ('complete', 'after'):
        pub({'message': {'type': 't', 'n': stage, 'stage': stage}})


def before_on_after(p: Host, pub: Any) -> None:
    p.before('msg', p.rec('before', lambda e: e.data['message']['n'] == 2 and e.prevent('on')))
    p.on('msg', p.rec('on'))
    p.after('msg', p.rec('after'))
    pub(msg(1)), pub(msg(2))


def before_subscribes_on(p: Host, pub: Any) -> None:
    p.before('msg', p.rec('before', lambda e: p.on('msg', p.rec('on'))))
    pub(msg(1))


def once_and_named(p: Host, pub: Any) -> None:
    p.once_on('msg', p.rec('once'))
    pub(msg(1))
    p.on('msg', 'named_handler')  # R14: looked up by name
    pub(msg(2))
    p.on('msg', 'no_such_method')
    pub(msg(3))


def routed_subscribes_after(p: Host, pub: Any) -> None:
    p.on('msg', p.rec('on'))
    p.routed_hook = lambda e: p.after('msg', p.rec('after'))
    pub(msg(1))


def routed_stops_or_prevents(p: Host, pub: Any) -> None:
    p.on('msg', p.rec('on'))
    p.after('msg', p.rec('after'))
    p.routed_hook = lambda e: e.stop_event() if e.data['message']['n'] == 1 else e.prevent('after')
    pub(msg(1)), pub(msg(2))


def awaitables_spawned(p: Host, pub: Any) -> None:
    p.on('msg', p.rec('on', lambda e: _coroutine()))
    p.routed_hook = lambda e: _coroutine()
    pub(msg(1))
    p.trace.append(('spawned', len(p.spawned)))


def every_slot_of_the_event(p: Host, pub: Any) -> None:
    def plain(value: Any) -> Any:  # objects of this run, told apart from those of the other run
        if value is p:
            return 'the publisher'
        return (value.name, value.slot, value.seq) if isinstance(value, _Record) else value

    def snapshot(label: str) -> Callable[[Any], None]:
        return lambda e: p.trace.append((label, {slot: plain(getattr(e, slot)) for slot in Event.__slots__}))
    p.on('msg', snapshot('on'))
    p.routed_hook = snapshot('routed')
    p.after('msg', snapshot('after'))
    pub(msg(1))


def destroyed_in_on(p: Host, pub: Any) -> None:
    p.on('msg', p.rec('on', lambda e: p._close_pubsub()))
    p.after('msg', p.rec('after'))
    pub(msg(1))
    with pytest.raises(Exception, match='destroyed'):
        pub(msg(2))


def late_routed_method(p: Host, pub: Any) -> None:
    p.on('msg', p.rec('on'))
    pub(msg(1, 'late'))
    p._on_late = lambda event: p.trace.append(('late on the instance', event.stage))
    pub(msg(2, 'late'))


def default_action_overridden(p: Host, pub: Any) -> None:
    p.on('msg', p.rec('on'))
    p._event_msg = lambda event: p.trace.append(('instance default action', event.stage))
    pub(msg(1))
    del p._event_msg
    pub(msg(2))


def routed_alone(p: Host, pub: Any) -> None:
    # nobody subscribed: the routed method alone, then nothing for what routes nowhere
    pub(msg(1)), pub(msg(2, 'other')), pub({'message': 'not a dict'}), pub(msg(3, 'not-an-identifier'))
    pub({'message': {'type': 5}}), pub({'message': {'n': 4}})
    p.trace.append('end')


def routed_alone_subscribes_after(p: Host, pub: Any) -> None:
    p.routed_hook = lambda e: p.after('msg', p.rec('after'))
    pub(msg(1))


def routed_alone_prevents_after(p: Host, pub: Any) -> None:
    p.routed_hook = lambda e: (p.after('msg', p.rec('after')), e.prevent('after'), setattr(p, 'routed_hook', None))
    pub(msg(1)), pub(msg(2))


def routed_alone_stops(p: Host, pub: Any) -> None:
    p.routed_hook = lambda e: (p.after('msg', p.rec('after')), e.stop_event(), setattr(p, 'routed_hook', None))
    pub(msg(1)), pub(msg(2))


def routed_alone_awaitable(p: Host, pub: Any) -> None:
    p.routed_hook = lambda e: _coroutine()
    pub(msg(1))
    p.trace.append(('spawned', len(p.spawned)))


def routed_alone_every_slot(p: Host, pub: Any) -> None:
    def plain(value: Any) -> Any:
        return 'the publisher' if value is p else value
    p.routed_hook = lambda e: p.trace.append({slot: plain(getattr(e, slot)) for slot in Event.__slots__})
    pub(msg(1))


def unsubscribed_then_alone(p: Host, pub: Any) -> None:
    subscription = p.on('msg', p.rec('on'))
    pub(msg(1))
    subscription.unsubscribe()
    pub(msg(2)), pub(msg(3, 'other'))
    p.trace.append('end')


def late_routed_method_alone(p: Host, pub: Any) -> None:
    pub(msg(1, 'late'))
    p._on_late = lambda event: p.trace.append(('late on the instance', event.stage))
    pub(msg(2, 'late'))
    del p._on_late
    Host._on_later = lambda self, event: self.trace.append(('late on the class', event.stage))
    try:
        pub(msg(3, 'later'))
    finally:
        del Host._on_later


def default_action_overridden_alone(p: Host, pub: Any) -> None:
    p._event_msg = lambda event: p.trace.append(('instance default action', event.stage))
    pub(msg(1, 'other'))
    del p._event_msg
    pub(msg(2))


def destroyed_alone(p: Host, pub: Any) -> None:
    p._close_pubsub()
    with pytest.raises(Exception, match='destroyed'):
        pub(msg(1))
    p.trace.append('raised')


SCENARIOS = [only_on, subscribed_meanwhile_in_on, unsubscribed_meanwhile_in_on, dispatch_stopped,
             dispatch_stopped_one, event_stopped, prevented, before_on_after, before_subscribes_on,
             once_and_named, routed_subscribes_after, routed_stops_or_prevents, awaitables_spawned, every_slot_of_the_event,
             destroyed_in_on, late_routed_method, default_action_overridden,
             routed_alone, routed_alone_subscribes_after, routed_alone_prevents_after, routed_alone_stops,
             routed_alone_awaitable, routed_alone_every_slot, unsubscribed_then_alone, late_routed_method_alone,
             default_action_overridden_alone, destroyed_alone]


def run(scenario: Any, direct: bool) -> tuple[list[Any], int]:
    p = Host()
    fallbacks = []
    full = p._publish

    def counted(name: str, data: Any = None) -> Any:
        fallbacks.append(name)
        return full(name, data)

    p._publish = counted  # type: ignore[method-assign]
    deliver = observed_publisher(p, 'msg', '_on_', Host._event_msg)
    if direct:
        scenario(p, lambda data: deliver(data.get('worker'), data['message']))
    else:
        scenario(p, lambda data: full('msg', {'worker': data.get('worker'), 'message': data['message']}))
    return p.trace, len(fallbacks)


@pytest.mark.parametrize('scenario', SCENARIOS, ids=lambda s: s.__name__)
def test_the_direct_path_runs_what_the_full_publish_runs(scenario: Any) -> None:
    expected, _ = run(scenario, direct=False)
    got, fallbacks = run(scenario, direct=True)
    assert expected  # the scenario observes something
    assert got == expected
    if scenario not in (destroyed_in_on, default_action_overridden, default_action_overridden_alone, destroyed_alone):
        assert fallbacks == 0  # the direct path itself was compared, not the full publish


def test_the_traces_are_those_of_the_rules() -> None:
    """The reference itself, for the rules the direct path specializes (R11, R18)."""
    trace, _ = run(subscribed_meanwhile_in_on, direct=True)
    assert trace == [('on', 'on', 1), ('added', 'on', 1), ('routed', 'complete', 1, None)]
    trace, _ = run(dispatch_stopped_one, direct=True)
    assert [t[0] for t in trace] == ['on', 'routed', 'after', 'after2', 'on', 'routed', 'after', 'after2']  # stopped before 'added'
    trace, fallbacks = run(default_action_overridden, direct=True)
    assert trace == [('on', 'on', 1), ('instance default action', 'complete'), ('on', 'on', 2), ('routed', 'complete', 2, None)]
    assert fallbacks == 1


def test_the_primary_takes_the_direct_path_with_its_own_default_action() -> None:
    primary = ClusterPrimary(transport=MemoryTransport(seed=1), initialize=False)
    assert primary._deliver_message.__name__ == 'deliver'

    class Other(ClusterPrimary):
        _pubsub = {'worker_message': {'publish_once': True}}

    other = Other(transport=MemoryTransport(seed=1), initialize=False)
    assert other._deliver_message.__name__ == '<lambda>'  # a declaration it does not know: the full publish

    class Watching(ClusterPrimary):
        def _publish(self, name: str, data: Any = None) -> Any:
            return super()._publish(name, data)

    watching = Watching(transport=MemoryTransport(seed=1), initialize=False)
    assert watching._deliver_message.__name__ == 'watched'  # it sees every publish, as before


def test_a_primary_that_watches_its_publishes_sees_the_observed_messages_only() -> None:
    published: list[Any] = []

    class Watching(ClusterPrimary):
        def _publish(self, name: str, data: Any = None) -> Any:
            if name == 'worker_message':
                published.append(data['message']['n'])
            return super()._publish(name, data)

        def _event_worker_message_routed(self, event: Any) -> None:
            published.append('routed')

    sim, primary, handle = ready_primary(Watching)
    inbox = frames_of({'type': 'unrouted', 'n': 0}, {'type': 'routed', 'n': 1})
    primary.link_frames(handle.life.link, inbox, 64)
    subscription = primary.on('worker_message', lambda event: published.append('on'))
    primary.link_frames(handle.life.link, frames_of({'type': 'unrouted', 'n': 2}), 64)
    subscription.unsubscribe()
    primary.link_frames(handle.life.link, frames_of({'type': 'unrouted', 'n': 3}), 64)
    # nobody could observe message 0: not published; once subscribed, published from then on
    assert published == [1, 'routed', 2, 'on', 3]
    close(sim, primary)
