"""The publish walks only the stages that have subscribers (pubsub.Publisher._publish) and
routing.route keeps method names per type: both must behave exactly as the full walk and a
per-message lookup (SPEC §1 R7, R8, R11, R18; R76)."""

from __future__ import annotations

import pytest

from isocluster.pubsub import Publisher
from isocluster import routing
from isocluster.routing import _PREFIXES_KEPT, route


class Walked(Publisher):
    _pubsub = {'x': {}, 'msg': {}}

    def __init__(self) -> None:
        super().__init__()
        self.trace: list[str] = []
        self.kept = []
        self.in_complete = None

    def _event_x(self, event):
        self.kept.append(event)
        self.trace.append('complete')
        if self.in_complete is not None:
            self.in_complete(event)

    def _event_msg(self, event):
        route(self, '_on_', event)

    def rec(self, label, then=None):
        def handler(event):
            self.trace.append(label)
            if then is not None:
                then(event)
        return handler


def test_a_stage_with_no_subscriber_yet_runs_one_added_by_an_earlier_stage():
    p = Walked()
    # before adds to on (empty when the publish started); on adds to after (empty too)
    p.before('x', p.rec('before', lambda e: p.on('x', p.rec('on', lambda e: p.after('x', p.rec('after'))))))
    p._publish('x')
    assert p.trace == ['before', 'on', 'complete', 'after']


def test_prevent_marks_of_a_stage_are_seen_when_the_stages_between_have_no_subscriber():
    p = Walked()
    p.before('x', p.rec('before', lambda e: e.prevent('after')))
    p.in_complete = lambda e: p.after('x', p.rec('after'))
    p._publish('x')
    assert p.trace == ['before', 'complete']
    assert p.kept[-1].stage == 'complete' and p.kept[-1].is_prevented('after')

    q = Walked()
    q.on('x', q.rec('on', lambda e: e.prevent()))
    q._publish('x')
    assert q.trace == ['on']


def test_prevent_after_from_the_complete_function_without_any_subscription():
    p = Walked()
    p.in_complete = lambda e: (p.after('x', p.rec('after')), e.prevent('after'))
    p._publish('x')
    assert p.trace == ['complete']
    assert p.kept[-1].stage == 'complete'
    p.trace.clear()
    p.in_complete = None
    p._publish('x')  # the after handler it subscribed runs in the next publish
    assert p.trace == ['complete', 'after']
    assert p.kept[-1].stage == 'after'


def test_a_publish_nobody_observes_ends_in_the_after_stage():
    p = Walked()
    p._publish('x')
    assert p.kept[-1].stage == 'after' and p.kept[-1].completed


def test_stop_event_in_a_stage_followed_by_empty_stages_ends_the_publish():
    p = Walked()
    p.before('x', p.rec('before', lambda e: (e.stop_event(), p.after('x', p.rec('after')))))
    p._publish('x')
    assert p.trace == ['before']


def test_a_handler_that_removes_and_adds_in_its_own_stage():
    # the stage's tuple is replaced twice (removal, addition): the removed one is skipped, the
    # added one runs in the same pass
    p = Walked()
    later = p.on('x', p.rec('removed'))
    p.on('x', p.rec('first', lambda e: (later.unsubscribe(), p.on('x', p.rec('added')))))
    # subscribed first, runs first: reorder by re-subscribing 'removed' after 'first'
    later.unsubscribe()
    later = p.on('x', p.rec('removed'))
    p._publish('x')
    assert p.trace == ['first', 'added', 'complete']


def test_a_handler_that_removes_itself_only_does_not_rerun_the_stage():
    p = Walked()
    p.on('x', p.rec('a', lambda e: e.unsubscribe()))
    p.on('x', p.rec('b'))
    p._publish('x')
    assert p.trace == ['a', 'b', 'complete']


# -- route: method names per type, methods looked up per message (R7, R76) ------------------

def _send(p, message):
    p._publish('msg', {'message': message})


def test_route_finds_a_method_added_after_a_miss_on_the_instance_and_on_the_class():
    class Late(Walked):
        pass

    p = Late()
    seen = []
    _send(p, {'type': 'ping'})  # a miss: no _on_ping yet
    p._on_ping = lambda e: seen.append(('instance', e.data['message']['n']))
    _send(p, {'type': 'ping', 'n': 1})
    del p._on_ping
    _send(p, {'type': 'ping', 'n': 2})  # removed again: a miss
    Late._on_ping = lambda self, e: seen.append(('class', e.data['message']['n']))
    _send(p, {'type': 'ping', 'n': 3})
    assert seen == [('instance', 1), ('class', 3)]


def test_route_never_calls_a_type_that_is_no_identifier_even_when_such_an_attribute_exists():
    p = Walked()
    seen = []
    setattr(p, '_on_a-b', lambda e: seen.append('called'))
    for _ in range(2):  # the second time from the kept name
        _send(p, {'type': 'a-b'})
    assert seen == []


def test_route_with_more_prefixes_than_it_keeps():
    p = Walked()
    seen = []
    for i in range(_PREFIXES_KEPT + 3):
        setattr(p, f'p{i}_go', lambda e, i=i: seen.append(i))
    event = type('E', (), {})()
    event.data = {'message': {'type': 'go'}}
    for _ in range(2):
        for i in range(_PREFIXES_KEPT + 3):
            route(p, f'p{i}_', event)
    assert seen == list(range(_PREFIXES_KEPT + 3)) * 2
    assert len(routing._ROUTE_NAMES) <= _PREFIXES_KEPT  # made-up prefixes cannot grow it


@pytest.mark.parametrize('message', [None, 'text', {'no': 'type'}, {'type': 3}])
def test_route_ignores_what_is_no_typed_dict(message):
    p = Walked()
    _send(p, message)  # no error, nothing called


def test_the_event_of_a_publish_has_every_slot_of_event_init_until_its_stages_change_it():
    from isocluster.pubsub import Event

    p = Walked()
    seen = []
    p.before('x', lambda e: seen.append({slot: getattr(e, slot) for slot in Event.__slots__}))
    p._publish('x', {'k': 1})
    reference = Event(p, 'x', {'k': 1}, 0b1111)
    expected = {slot: getattr(reference, slot) for slot in Event.__slots__}
    (got,) = seen
    assert got.pop('_sub').handler is not None and expected.pop('_sub') is None  # the running subscription (R12)
    assert got == expected
    p.trace.clear()
    p._publish('x')  # no data: an empty dict
    assert p.kept[-1].data == {}
