"""Unit tests for isocluster.pubsub: one or more tests per rule R1–R28 of SPEC §1 (and R31, R48, R50)."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from isocluster.errors import ClusterError, DestroyedError
from isocluster.pubsub import Event, Publisher, Subscription


class Emitter(Publisher):
    """A subclass with its own public API over the protected publishing and closing (R26, R50).

    That is how a real subclass uses them: ClusterPrimary publishes its declared, non-public
    events from its own methods and closes its pubsub in destroy().
    """

    def emit(self, name: str, data=None):
        return self._publish(name, data)

    def internal(self):
        """The library-internal subscribe methods (R19), as a subclass subscribes for its bookkeeping."""
        return {'before': self._before, 'on': self._on, 'after': self._after,
                'once_before': self._once_before, 'once_on': self._once_on, 'once_after': self._once_after}

    def destroy(self):
        self._close_pubsub()
        return self

    @property
    def destroyed(self) -> bool:
        return self._pubsub_closed


class Traced(Emitter):
    """Declares a few events whose complete functions record into `trace`."""

    _pubsub = {
        'x': {},
        'y': {},
        'outer': {},
        'inner': {},
        'copen': {'complete_once': True},
        'popen': {'publish_once': True},
        'public': {'public_publish': True},
        'nonprev': {'preventable': False},
        'onlyafter': {'preventable': {'after'}},
        'nocomplete': {'complete': None},
        'custom': {'complete': '_my_default'},
        'missing': {'complete': '_not_there'},
        'notcallable': {'complete': '_a_value'},
    }
    _a_value = 42

    def __init__(self) -> None:
        super().__init__()
        self.trace: list[str] = []

    def rec(self, entry: str):
        """A handler that appends `entry` to the trace."""
        return lambda event: self.trace.append(entry)

    def _event_x(self, event: Event) -> None:
        self.trace.append('complete x')

    def _event_y(self, event: Event) -> None:
        self.trace.append('complete y')

    def _event_outer(self, event: Event) -> None:
        self.trace.append('complete outer')

    def _event_inner(self, event: Event) -> None:
        self.trace.append('complete inner')

    def _event_copen(self, event: Event) -> None:
        self.trace.append('complete copen')

    def _event_popen(self, event: Event) -> None:
        self.trace.append('complete popen')

    def _event_public(self, event: Event) -> None:
        self.trace.append('complete public')

    def _event_nonprev(self, event: Event) -> None:
        self.trace.append('complete nonprev')

    def _event_onlyafter(self, event: Event) -> None:
        self.trace.append('complete onlyafter')

    def _event_nocomplete(self, event: Event) -> None:
        self.trace.append('must not run')

    def _my_default(self, event: Event) -> None:
        self.trace.append('complete custom')


def every_subscribe_method(p: Emitter) -> list:
    """(name, method) for the public subscribe methods, then the internal ones named with a leading '_'."""
    public = ('before', 'on', 'after', 'once_before', 'once_on', 'once_after')
    return [(name, getattr(p, name)) for name in public] + [('_' + name, m) for name, m in p.internal().items()]


def subscribe_all(p: Traced, name: str) -> None:
    p.before(name, p.rec(f'before {name}'))
    p.on(name, p.rec(f'on {name}'))
    p.after(name, p.rec(f'after {name}'))


# -- R1, R2: stages and order -----------------------------------------------------------------

def test_r1_stages_run_in_order_before_on_complete_after():
    p = Traced()
    p.after('x', p.rec('after x'))
    p.on('x', p.rec('on x'))
    p.before('x', p.rec('before x'))
    p.emit('x')
    assert p.trace == ['before x', 'on x', 'complete x', 'after x']


def test_r1_complete_stage_cannot_be_subscribed():
    p = Traced()
    assert not hasattr(p, 'complete')
    with pytest.raises(ValueError):
        p.off(stage='complete')


def test_r2_handlers_run_in_subscription_order_within_a_stage():
    p = Traced()
    for i in range(5):
        p.on('x', p.rec(f'on {i}'))
    p.emit('x')
    assert p.trace == ['on 0', 'on 1', 'on 2', 'on 3', 'on 4', 'complete x']


def test_r2_complete_function_runs_with_no_subscribers():
    p = Traced()
    p.emit('x')
    assert p.trace == ['complete x']


# -- R3, R4, R5: handler call, the Event object, data -----------------------------------------

def test_r3_handler_called_with_event_and_return_value_ignored():
    p = Traced()
    received = []
    p.on('x', lambda event: received.append(event) or 'ignored value')
    assert p.emit('x') is p
    assert len(received) == 1 and isinstance(received[0], Event)


def test_r4_one_event_object_shared_by_all_handlers_and_complete_function():
    class P(Traced):
        def _event_x(self, event):
            seen.append(event)

    seen: list[Event] = []
    p = P()
    p.before('x', seen.append)
    p.on('x', seen.append)
    p.after('x', seen.append)
    p.emit('x')
    assert len(seen) == 4 and all(e is seen[0] for e in seen)
    p.emit('x')
    assert seen[4] is not seen[0]


def test_r4_event_attributes_track_the_stage():
    class P(Traced):
        def _event_x(self, event):
            states.append(('complete', event.stage, event.completed))

    states: list[tuple] = []
    p = P()
    p.before('x', lambda e: states.append(('before', e.stage, e.completed)))
    p.on('x', lambda e: states.append(('on', e.stage, e.completed)))
    p.after('x', lambda e: states.append(('after', e.stage, e.completed)))
    p.on('x', lambda e: states.append((e.name, e.publisher, e.dispatch_stopped, e.event_stopped)))
    p.emit('x')
    assert states == [
        ('before', 'before', False),
        ('on', 'on', False),
        ('x', p, False, False),
        ('complete', 'complete', True),
        ('after', 'after', True),
    ]


def test_r5_data_is_the_given_object_not_a_copy():
    p = Traced()
    data = {'a': 1}
    seen = []
    p.on('x', lambda e: seen.append(e.data))
    p.emit('x', data)
    assert seen[0] is data


def test_r5_none_data_becomes_a_new_empty_dict_per_publish():
    p = Traced()
    seen = []
    p.on('x', lambda e: seen.append(e.data))
    p.emit('x')
    p.emit('x', None)
    assert seen == [{}, {}] and seen[0] is not seen[1]


# -- R6: synchronous, nested publishes inline ----------------------------------------------------

def test_r6_publish_is_synchronous_and_returns_the_publisher():
    p = Traced()
    subscribe_all(p, 'x')
    assert p.emit('x') is p
    assert p.trace == ['before x', 'on x', 'complete x', 'after x']
    assert p.publish('public') is p


def test_r6_nested_publish_runs_inline():
    p = Traced()
    p.on('outer', p.rec('on outer'))
    p.on('outer', lambda e: p.emit('inner'))
    p.on('inner', p.rec('on inner'))
    p.after('inner', p.rec('after inner'))
    p.after('outer', p.rec('after outer'))
    p.emit('outer')
    assert p.trace == ['on outer', 'on inner', 'complete inner', 'after inner', 'complete outer', 'after outer']


def test_r6_publish_from_complete_function_runs_inline():
    class P(Traced):
        def _event_outer(self, event):
            self.trace.append('complete outer')
            self._publish('inner')

    p = P()
    p.after('inner', p.rec('after inner'))
    p.after('outer', p.rec('after outer'))
    p.emit('outer')
    assert p.trace == ['complete outer', 'complete inner', 'after inner', 'after outer']


# -- R7: late-bound complete functions -----------------------------------------------------------

def test_r7_complete_function_bound_late_by_name_subclass_override_wins():
    class Sub(Traced):
        def _event_x(self, event):
            self.trace.append('override x')

    p = Sub()
    p.emit('x')
    assert p.trace == ['override x']


def test_r7_complete_function_looked_up_at_each_publish():
    class P(Traced):
        _pubsub = {'x': {'complete': 'finish'}}

        def finish(self, event):
            self.trace.append('class finish')

    p = P()
    p.emit('x')
    p.finish = lambda event: p.trace.append('instance finish')  # type: ignore[method-assign]
    p.emit('x')
    assert p.trace == ['class finish', 'instance finish']


def test_r7_custom_complete_name():
    p = Traced()
    p.emit('custom')
    assert p.trace == ['complete custom']


def test_r7_unresolvable_or_non_callable_or_none_complete_means_no_default_action():
    p = Traced()
    subscribe_all(p, 'missing')
    subscribe_all(p, 'notcallable')
    subscribe_all(p, 'nocomplete')
    p.emit('missing').emit('notcallable').emit('nocomplete')
    assert p.trace == [
        'before missing', 'on missing', 'after missing',
        'before notcallable', 'on notcallable', 'after notcallable',
        'before nocomplete', 'on nocomplete', 'after nocomplete',
    ]


# -- R8: prevent ---------------------------------------------------------------------------------

@pytest.mark.parametrize('stage', ['before', 'on'])
def test_r8_prevent_skips_complete_and_after(stage):
    p = Traced()
    subscribe_all(p, 'x')
    getattr(p, stage)('x', lambda e: e.prevent())
    p.emit('x')
    assert p.trace == ['before x', 'on x']


def test_r8_prevent_on_from_before_skips_on_complete_after():
    p = Traced()
    subscribe_all(p, 'x')
    p.before('x', lambda e: e.prevent('on'))
    p.before('x', p.rec('before x 2'))
    p.emit('x')
    assert p.trace == ['before x', 'before x 2']


@pytest.mark.parametrize('where', ['before', 'on', 'complete'])
def test_r8_prevent_after_runs_complete_skips_after(where):
    class P(Traced):
        def _event_x(self, event):
            self.trace.append('complete x')
            if where == 'complete':
                event.prevent('after')

    p = P()
    subscribe_all(p, 'x')
    if where != 'complete':
        getattr(p, where)('x', lambda e: e.prevent('after'))
    p.emit('x')
    assert p.trace == ['before x', 'on x', 'complete x']


@pytest.mark.parametrize('where,stage', [
    ('before', 'before'), ('on', 'before'), ('on', 'on'), ('after', 'complete'),
    ('after', 'after'), ('after', 'on'), ('complete', 'complete'),
])
def test_r8_prevent_of_current_or_earlier_stage_has_no_effect(where, stage):
    class P(Traced):
        def _event_x(self, event):
            self.trace.append('complete x')
            if where == 'complete':
                event.prevent(stage)

    p = P()
    if where != 'complete':
        getattr(p, where)('x', lambda e: e.prevent(stage))
    subscribe_all(p, 'x')
    p.emit('x')
    assert p.trace == ['before x', 'on x', 'complete x', 'after x']


def test_r8_prevent_checked_at_stage_start_so_same_stage_handlers_still_run():
    p = Traced()
    p.on('x', lambda e: e.prevent())
    p.on('x', p.rec('on x 2'))
    p.after('x', p.rec('after x'))
    p.emit('x')
    assert p.trace == ['on x 2']


# -- R9: preventable, unknown stages, is_prevented -----------------------------------------------

def test_r9_prevent_is_noop_for_non_preventable_event():
    p = Traced()
    subscribe_all(p, 'nonprev')
    p.before('nonprev', lambda e: (e.prevent('on'), e.prevent(), e.prevent('after')))
    p.emit('nonprev')
    assert p.trace == ['before nonprev', 'on nonprev', 'complete nonprev', 'after nonprev']


def test_r9_preventable_set_limits_which_stages_can_be_prevented():
    p = Traced()
    subscribe_all(p, 'onlyafter')
    flags = []

    def handler(e):
        e.prevent()
        e.prevent('on')
        flags.append((e.is_prevented(), e.is_prevented('on')))

    p.before('onlyafter', handler)
    p.emit('onlyafter')
    assert flags == [(False, False)]
    assert p.trace == ['before onlyafter', 'on onlyafter', 'complete onlyafter', 'after onlyafter']
    p.trace.clear()
    p.on('onlyafter', lambda e: e.prevent('after'))
    p.emit('onlyafter')
    assert p.trace == ['before onlyafter', 'on onlyafter', 'complete onlyafter']


def test_r9_unknown_stage_name_raises_value_error():
    p = Traced()
    errors = []

    def handler(e):
        for call in (e.prevent, e.is_prevented):
            try:
                call('bogus')
            except ValueError as exc:
                errors.append(exc)

    p.on('x', handler)
    p.on('nonprev', handler)  # validated even where prevent is a no-op
    p.emit('x').emit('nonprev')
    assert len(errors) == 4


def test_r9_is_prevented_reports_the_mark():
    p = Traced()
    seen = []

    def handler(e):
        seen.append(e.is_prevented())
        e.prevent()
        seen.append((e.is_prevented(), e.is_prevented('complete'), e.is_prevented('after')))

    p.on('x', handler)
    p.emit('x')
    assert seen == [False, (True, True, False)]


def test_r9_undeclared_events_are_preventable():
    p = Traced()
    p.on('free', lambda e: e.prevent())
    p.after('free', p.rec('after free'))
    p.emit('free')
    assert p.trace == []


# -- R10, R11: stop_dispatch and stop_event ------------------------------------------------------

def test_r10_stop_dispatch_skips_rest_of_stage_only():
    p = Traced()
    p.on('x', p.rec('on 1'))
    p.on('x', lambda e: e.stop_dispatch())
    p.on('x', p.rec('on 3'))
    p.after('x', p.rec('after 1'))
    p.after('x', p.rec('after 2'))
    p.emit('x')
    assert p.trace == ['on 1', 'complete x', 'after 1', 'after 2']


def test_r10_stop_dispatch_sets_flag_during_stage():
    p = Traced()
    flags = []

    def handler(e):
        e.stop_dispatch()
        flags.append(e.dispatch_stopped)

    p.before('x', handler)
    p.on('x', lambda e: flags.append(e.dispatch_stopped))
    p.emit('x')
    assert flags == [True, False]


def test_r10_stop_dispatch_also_skips_handlers_added_during_the_stage():
    p = Traced()

    def handler(e):
        p.on('x', p.rec('added'))
        e.stop_dispatch()

    p.once_on('x', handler)
    p.emit('x')
    assert p.trace == ['complete x']


@pytest.mark.parametrize('stage', ['before', 'on'])
def test_r11_stop_event_finishes_stage_then_ends_publish(stage):
    p = Traced()
    subscribe_all(p, 'x')
    getattr(p, stage)('x', lambda e: e.stop_event())
    getattr(p, stage)('x', p.rec(f'{stage} x 2'))
    flags = []
    getattr(p, stage)('x', lambda e: flags.append(e.event_stopped))
    p.emit('x')
    prefix = ['before x', 'before x 2'] if stage == 'before' else ['before x', 'on x', 'on x 2']
    assert p.trace == prefix
    assert flags == [True]


def test_r11_stop_event_from_complete_skips_after():
    class P(Traced):
        def _event_x(self, event):
            self.trace.append('complete x')
            event.stop_event()

    p = P()
    subscribe_all(p, 'x')
    p.emit('x')
    assert p.trace == ['before x', 'on x', 'complete x']


# -- R12: event.unsubscribe ----------------------------------------------------------------------

def test_r12_event_unsubscribe_removes_running_handler_subscription():
    p = Traced()
    sub = p.on('x', lambda e: (p.trace.append('on x'), e.unsubscribe()))
    other = p.on('x', p.rec('other'))
    p.emit('x').emit('x')
    assert p.trace == ['on x', 'other', 'complete x', 'other', 'complete x']
    assert not sub.subscribed and other.subscribed


def test_r12_event_unsubscribe_in_complete_stage_does_nothing():
    class P(Traced):
        def _event_x(self, event):
            event.unsubscribe()

    p = P()
    sub_on = p.on('x', p.rec('on x'))
    sub_after = p.after('x', p.rec('after x'))
    p.emit('x').emit('x')
    assert p.trace == ['on x', 'after x', 'on x', 'after x']
    assert sub_on.subscribed and sub_after.subscribed


def test_r12_event_unsubscribe_removes_only_that_pair_of_a_multi_subscription():
    p = Traced()
    sub = p.on(['x', 'y'], [lambda e: e.unsubscribe(), p.rec('keep')])
    p.emit('x').emit('x')
    assert p.trace == ['keep', 'complete x', 'keep', 'complete x']
    assert sub.subscribed
    assert p.off('x') == 1 and p.off('y') == 2


# -- R13: subscription argument shapes -----------------------------------------------------------

def test_r13_name_and_function():
    p = Traced()
    p.on('x', p.rec('fn'))
    p.emit('x')
    assert p.trace == ['fn', 'complete x']


def test_r13_name_and_method_name():
    class P(Traced):
        def handle(self, event):
            self.trace.append(f'handle {event.name}')

    p = P()
    p.on('x', 'handle')
    p.emit('x')
    assert p.trace == ['handle x', 'complete x']


def test_r13_name_and_handler_list():
    p = Traced()
    p.on('x', [p.rec('a'), p.rec('b')])
    p.emit('x')
    assert p.trace == ['a', 'b', 'complete x']


def test_r13_names_and_handlers_every_pair_names_outer():
    p = Traced()
    seen = []
    sub = p.on(['x', 'y'], [lambda e: seen.append(('a', e.name)), lambda e: seen.append(('b', e.name))])
    p.on(('outer',), lambda e: seen.append(('c', e.name)))
    p.emit('y').emit('x').emit('outer')
    assert seen == [('a', 'y'), ('b', 'y'), ('a', 'x'), ('b', 'x'), ('c', 'outer')]
    sub.unsubscribe()
    p.emit('y').emit('x').emit('outer')
    assert seen[5:] == [('c', 'outer')]
    assert p.off(stage='on') == 1  # the call's four pairs were all on-stage and all its own


def test_r13_names_list_and_single_handler():
    p = Traced()
    p.on(['x', 'y'], p.rec('h'))
    p.emit('x').emit('y')
    assert p.trace == ['h', 'complete x', 'h', 'complete y']


def test_r13_mapping_in_mapping_order():
    p = Traced()
    sub = p.after({'y': p.rec('after y'), 'x': [p.rec('after x 1'), p.rec('after x 2')]})
    p.emit('x').emit('y')
    assert p.trace == ['complete x', 'after x 1', 'after x 2', 'complete y', 'after y']
    sub.unsubscribe()
    assert p.off() == 0


@pytest.mark.parametrize('args', [
    (1, lambda e: None),
    ([('x',)], lambda e: None),
    (['x', 2], lambda e: None),
    ({1: lambda e: None},),
    (b'x', lambda e: None),
    ({'x': lambda e: None}, lambda e: None),
    ('x',),
    ('x', 5),
    ('x', [lambda e: None, None]),
])
def test_r13_bad_names_or_handlers_raise_type_error_and_register_nothing(args):
    p = Traced()
    for method in (p.on, p.before, p.after, p.once_on, p.internal()['on'], p.internal()['once_after']):
        with pytest.raises(TypeError):
            method(*args)
    assert p.off() == 0
    p.emit('x')
    assert p.trace == ['complete x']


def test_r13_every_subscribe_method_targets_its_stage():
    p = Traced()
    for stage, method in every_subscribe_method(p):
        method('x', p.rec(stage))
    p.emit('x').emit('x')
    assert p.trace == [
        'before', 'once_before', '_before', '_once_before', 'on', 'once_on', '_on', '_once_on',
        'complete x', 'after', 'once_after', '_after', '_once_after',
        'before', '_before', 'on', '_on', 'complete x', 'after', '_after',
    ]


# -- R14: string handlers resolved at every call -------------------------------------------------

def test_r14_method_name_resolved_at_every_call():
    p = Traced()
    p.on('x', 'dyn')
    p.emit('x')  # not resolvable: skipped
    p.dyn = p.rec('dyn 1')  # type: ignore[attr-defined]
    p.emit('x')
    p.dyn = p.rec('dyn 2')  # type: ignore[attr-defined]
    p.emit('x')
    p.dyn = 'not callable'  # type: ignore[attr-defined]
    p.emit('x')
    assert p.trace == ['complete x', 'dyn 1', 'complete x', 'dyn 2', 'complete x', 'complete x']


def test_r14_method_name_uses_subclass_override():
    class Base(Traced):
        def handle(self, event):
            self.trace.append('base')

    class Sub(Base):
        def handle(self, event):
            self.trace.append('sub')

    p = Sub()
    p.on('x', 'handle')
    p.emit('x')
    assert p.trace == ['sub', 'complete x']


def test_r14_unresolved_once_string_handler_stays_until_it_resolves():
    p = Traced()
    sub = p.once_on('x', 'later')
    p.emit('x')
    assert sub.subscribed
    p.later = p.rec('later')  # type: ignore[attr-defined]
    p.emit('x').emit('x')
    assert p.trace == ['complete x', 'later', 'complete x', 'complete x']
    assert not sub.subscribed


# -- R15: Subscription ---------------------------------------------------------------------------

def test_r15_one_subscription_per_call_unsubscribe_removes_all_it_created():
    p = Traced()
    sub = p.on(['x', 'y'], [p.rec('a'), p.rec('b')])
    keep = p.on('x', p.rec('keep'))
    assert isinstance(sub, Subscription) and sub.subscribed
    sub.unsubscribe()
    assert not sub.subscribed and keep.subscribed
    p.emit('x').emit('y')
    assert p.trace == ['keep', 'complete x', 'complete y']


def test_r15_unsubscribe_is_idempotent_and_never_raises():
    p = Traced()
    sub = p.on('x', p.rec('a'))
    sub.unsubscribe()
    sub.unsubscribe()
    p.off()
    sub.unsubscribe()
    p.destroy()
    sub.unsubscribe()
    assert not sub.subscribed


def test_r15_subscribed_true_while_any_pair_registered():
    p = Traced()
    sub = p.on(['x', 'y'], p.rec('a'))
    assert p.off('x') == 1
    assert sub.subscribed
    assert p.off('y') == 1
    assert not sub.subscribed


def test_r15_empty_subscription_is_not_subscribed():
    p = Traced()
    sub = p.on([], p.rec('a'))
    assert not sub.subscribed
    sub.unsubscribe()


# -- R16: duplicates -----------------------------------------------------------------------------

def test_r16_same_handler_subscribed_twice_runs_twice():
    p = Traced()
    h = p.rec('h')
    s1 = p.on('x', h)
    p.on('x', h)
    p.emit('x')
    s1.unsubscribe()
    p.emit('x')
    assert p.trace == ['h', 'h', 'complete x', 'h', 'complete x']


# -- R17: once ----------------------------------------------------------------------------------

def test_r17_once_handler_runs_once():
    p = Traced()
    sub = p.once_on('x', p.rec('once'))
    p.emit('x').emit('x')
    assert p.trace == ['once', 'complete x', 'complete x']
    assert not sub.subscribed


def test_r17_once_handler_removed_before_call():
    p = Traced()
    seen = []
    sub = p.once_before('x', lambda e: seen.append(sub.subscribed))
    p.emit('x')
    assert seen == [False]


def test_r17_once_handler_that_raises_does_not_run_again():
    p = Traced()
    calls = []

    def boom(e):
        calls.append(1)
        raise RuntimeError('boom')

    p.once_on('x', boom)
    with pytest.raises(RuntimeError):
        p.emit('x')
    p.emit('x')
    assert calls == [1]
    assert p.trace == ['complete x']


def test_r17_once_handler_that_republishes_runs_once():
    p = Traced()
    calls = []

    def again(e):
        calls.append(e)
        p.emit('x')

    p.once_on('x', again)
    p.emit('x')
    assert len(calls) == 1
    assert p.trace == ['complete x', 'complete x']


# -- R18: changes during a publish --------------------------------------------------------------

def test_r18_handler_added_to_current_stage_runs_in_same_pass_after_existing():
    p = Traced()

    def adder(e):
        p.on('x', p.rec('added'))

    p.once_on('x', adder)
    p.on('x', p.rec('existing'))
    p.emit('x')
    assert p.trace == ['existing', 'added', 'complete x']


def test_r18_handlers_added_repeatedly_during_stage_all_run():
    p = Traced()
    count = [0]

    def chain(e):
        count[0] += 1
        p.trace.append(f'chain {count[0]}')
        if count[0] < 3:
            p.once_on('x', chain)

    p.once_on('x', chain)
    p.emit('x')
    assert p.trace == ['chain 1', 'chain 2', 'chain 3', 'complete x']


def test_r18_handler_added_to_later_stage_runs_in_this_publish():
    p = Traced()
    p.before('x', lambda e: p.after('x', p.rec('after added')) if not p.trace else None)
    p.before('x', lambda e: p.on('x', p.rec('on added')) if not p.trace else None)
    p.emit('x')
    assert p.trace == ['on added', 'complete x', 'after added']


def test_r18_handler_added_by_complete_function_to_after_runs():
    class P(Traced):
        def _event_y(self, event):
            self.after('y', self.rec('after added'))

    p = P()
    p.emit('y')
    assert p.trace == ['after added']


def test_r18_handler_removed_before_its_turn_is_skipped():
    p = Traced()
    later = []
    p.on('x', lambda e: later[0].unsubscribe())
    later.append(p.on('x', p.rec('removed')))
    p.before('x', lambda e: after_sub.unsubscribe())
    after_sub = p.after('x', p.rec('after removed'))
    p.emit('x')
    assert p.trace == ['complete x']


def test_r18_removing_handler_that_already_ran_does_not_affect_this_publish():
    p = Traced()
    first = p.on('x', p.rec('first'))
    p.on('x', lambda e: first.unsubscribe())
    p.on('x', p.rec('third'))
    p.emit('x')
    p.emit('x')
    assert p.trace == ['first', 'third', 'complete x', 'third', 'complete x']


def test_r18_off_during_stage_skips_remaining():
    p = Traced()
    p.on('x', lambda e: p.off('x', stage='on'))
    p.on('x', p.rec('skipped'))
    p.after('x', p.rec('after'))
    p.emit('x')
    assert p.trace == ['complete x', 'after']


# -- R19: off -----------------------------------------------------------------------------------

def test_r19_off_without_criteria_removes_all_public_subscriptions():
    p = Traced()
    subscribe_all(p, 'x')
    subscribe_all(p, 'y')
    internal = p.internal()['on']('x', p.rec('internal'))
    assert p.off() == 6
    p.emit('x').emit('y')
    assert p.trace == ['internal', 'complete x', 'complete y']
    assert internal.subscribed


def test_r19_off_by_name_stage_and_handler():
    p = Traced()
    h = p.rec('h')
    p.on('x', h)
    p.after('x', h)
    p.on('y', h)
    p.on('x', p.rec('other'))
    assert p.off('x', h, stage='on') == 1
    p.emit('x').emit('y')
    assert p.trace == ['other', 'complete x', 'h', 'h', 'complete y']
    assert p.off(handler=h) == 2
    assert p.off(stage='on') == 1
    assert p.off() == 0


def test_r19_off_matches_method_name():
    class P(Traced):
        def handle(self, event):
            self.trace.append('handle')

    p = P()
    p.on('x', 'handle')
    p.on('x', 'other')
    assert p.off(handler='handle') == 1
    p.emit('x')
    assert p.trace == ['complete x']


def test_r19_off_matches_equal_bound_method():
    class P(Traced):
        def handle(self, event):
            self.trace.append('handle')

    p = P()
    p.on('x', p.handle)
    assert p.off('x', p.handle) == 1
    p.emit('x')
    assert p.trace == ['complete x']


def test_r19_off_never_removes_internal_subscriptions():
    p = Traced()
    h = p.rec('internal')
    for method in (p.internal()[stage] for stage in ('before', 'on', 'after', 'once_on')):
        method('x', h)
    assert p.off('x', h) == 0
    assert p.off() == 0
    p.emit('x')
    assert p.trace == ['internal', 'internal', 'internal', 'complete x', 'internal']


def test_r19_off_returns_zero_for_unknown_and_rejects_unknown_stage():
    p = Traced()
    assert p.off('nothing') == 0
    with pytest.raises(ValueError):
        p.off(stage='bogus')


# -- R20: complete_once --------------------------------------------------------------------------

def test_r20_complete_once_later_publishes_ignored_entirely():
    p = Traced()
    subscribe_all(p, 'copen')
    p.emit('copen').emit('copen')
    assert p.trace == ['before copen', 'on copen', 'complete copen', 'after copen']


def test_r20_complete_once_marked_just_before_complete_function():
    class P(Traced):
        def _event_copen(self, event):
            self.trace.append('complete copen')
            self._publish('copen')  # already marked: ignored

    p = P()
    p.before('copen', p.rec('before copen'))
    p.emit('copen')
    assert p.trace == ['before copen', 'complete copen']


def test_r20_prevented_or_stopped_publish_does_not_mark():
    p = Traced()
    sub = p.once_on('copen', lambda e: e.prevent())
    p.emit('copen')
    assert p.trace == []
    p.once_before('copen', lambda e: e.stop_event())
    p.emit('copen')
    assert p.trace == []
    p.emit('copen')
    assert p.trace == ['complete copen']
    assert not sub.subscribed


def test_r20_nested_publish_marking_ends_outer_at_its_complete_stage():
    p = Traced()
    p.once_on('copen', lambda e: p.emit('copen'))
    p.on('copen', p.rec('on copen'))
    p.after('copen', p.rec('after copen'))
    p.emit('copen')
    # inner: on, complete, after; outer: its remaining 'on' handler, then ends
    assert p.trace == ['on copen', 'complete copen', 'after copen', 'on copen']


def test_r20_exception_after_mark_keeps_mark():
    class P(Traced):
        def _event_copen(self, event):
            raise RuntimeError('in complete')

    p = P()
    with pytest.raises(RuntimeError):
        p.emit('copen')
    p.on('copen', p.rec('on copen'))  # late subscriber is called at once (R22)
    p.emit('copen')
    assert p.trace == ['on copen']


# -- R21: publish_once --------------------------------------------------------------------------

def test_r21_publish_once_marked_at_start_even_if_prevented():
    p = Traced()
    p.once_before('popen', lambda e: e.prevent('on'))
    p.emit('popen')
    subscribe_all(p, 'popen')  # prevented: late subscribers not called (R22)
    p.emit('popen')
    assert p.trace == []


def test_r21_publish_once_nested_republish_ignored():
    p = Traced()
    p.on('popen', lambda e: p.emit('popen'))
    p.on('popen', p.rec('on popen'))
    p.emit('popen')
    assert p.trace == ['on popen', 'complete popen']


def test_r21_publish_once_marked_even_when_first_raised():
    p = Traced()

    def boom(e):
        raise RuntimeError('boom')

    p.once_on('popen', boom)
    with pytest.raises(RuntimeError):
        p.emit('popen')
    p.emit('popen')
    assert p.trace == []


def test_r21_both_once_flags_raise_value_error_at_class_definition():
    with pytest.raises(ValueError):
        class Bad(Publisher):
            _pubsub = {'e': {'complete_once': True, 'publish_once': True}}


# -- R22: late subscribers of marked once events -------------------------------------------------

@pytest.mark.parametrize('method', ['before', 'on', 'after', 'once_before', 'once_on', 'once_after',
                                    '_on', '_once_after'])
@pytest.mark.parametrize('name', ['copen', 'popen'])
def test_r22_late_subscriber_called_at_once_with_stored_event(method, name):
    p = Traced()
    first = []
    p.on(name, first.append)
    p.emit(name, {'k': 1})
    late = []
    sub = getattr(p, method)(name, late.append)
    assert late == first and late[0] is first[0]
    assert late[0].data == {'k': 1}
    assert not sub.subscribed
    p.off()
    assert p.off() == 0


def test_r22_late_subscriber_string_handler_and_multiple_pairs():
    class P(Traced):
        def handle(self, event):
            self.trace.append(f'late {event.name}')

    p = P()
    p.emit('copen').emit('popen')
    sub = p.on(['copen', 'x', 'popen'], 'handle')
    assert p.trace == ['complete copen', 'complete popen', 'late copen', 'late popen']
    assert sub.subscribed  # the 'x' pair is registered normally
    p.emit('x')
    assert p.trace[-2:] == ['late x', 'complete x']


def test_r22_late_subscriber_not_called_when_stored_publish_ended_by_prevent():
    p = Traced()
    p.once_on('copen', lambda e: e.prevent('after'))
    p.emit('copen')  # complete ran (marked), after prevented
    late = []
    sub = p.after('copen', late.append)
    assert late == [] and not sub.subscribed
    assert p.trace == ['complete copen']


def test_r22_late_subscriber_called_when_stored_publish_was_stopped():
    p = Traced()
    p.once_before('popen', lambda e: e.stop_event())
    p.emit('popen')
    late = []
    p.on('popen', late.append)
    assert len(late) == 1


def test_r22_event_not_marked_registers_normally():
    p = Traced()
    sub = p.on('copen', p.rec('on copen'))
    assert sub.subscribed
    p.emit('copen')
    assert p.trace == ['on copen', 'complete copen']


# -- R23: library once events (declared in lifecycle/primary); shown with an equivalent table ------

def test_r23_handler_attached_after_publish_once_completion_runs_immediately():
    class P(Emitter):
        _pubsub = {'shut_down': {'complete_once': True}, 'shut_down_complete': {'publish_once': True}}

        def _event_shut_down(self, event):
            self._publish('shut_down_complete')

    p = P()
    p.emit('shut_down')
    seen = []
    p.on('shut_down_complete', lambda e: seen.append(e.name))
    p.once_after('shut_down', lambda e: seen.append(e.name))
    assert seen == ['shut_down_complete', 'shut_down']


# -- R24: declarations ---------------------------------------------------------------------------

def test_r24_table_merges_mro_nearer_class_replaces_entry():
    class A(Emitter):
        _pubsub = {'a': {'public_publish': True}, 'shared': {'complete': '_from_a'}}

        def _from_a(self, event):
            seen.append('a')

        def _from_b(self, event):
            seen.append('b')

    class Mixin:
        _pubsub = {'m': {'public_publish': True, 'complete': '_from_a'}}

    class B(Mixin, A):
        _pubsub = {'shared': {'complete': '_from_b'}}

    seen: list[str] = []
    b = B()
    b.publish('a').emit('shared').publish('m')
    assert seen == ['b', 'a']  # 'a' has no _event_a; shared uses B's entry; mixin entry merged
    A().emit('shared')
    assert seen == ['b', 'a', 'a']


def test_r24_subclass_declaration_does_not_change_base():
    class A(Emitter):
        _pubsub = {'e': {'complete_once': True}}

    class B(A):
        _pubsub = {'e': {}}

    a, b = A(), B()
    a.emit('e').emit('e')
    b.emit('e').emit('e')
    seen = []
    a.on('e', seen.append)  # marked: called at once
    b.on('e', seen.append)  # never marked: registered
    assert len(seen) == 1 and seen[0].publisher is a
    assert A._pubsub == {'e': {'complete_once': True}}


def test_r24_inherited_table_without_own_declaration():
    class A(Emitter):
        _pubsub = {'e': {'publish_once': True}}

    class B(A):
        pass

    b = B()
    seen = []
    b.on('e', seen.append)
    b.emit('e').emit('e')
    assert len(seen) == 1


def test_r24_default_complete_name_is_event_prefix():
    class A(Emitter):
        _pubsub = {'thing': {}}

        def _event_thing(self, event):
            seen.append(event.name)

    seen = []
    A().emit('thing')
    assert seen == ['thing']


@pytest.mark.parametrize('pubsub,error', [
    ({'e': {'preventable': {'bogus'}}}, ValueError),
    ({'e': {'unknown_key': 1}}, ValueError),
    ({'e': {'complete': 5}}, TypeError),
    ({'e': {'preventable': 'on'}}, TypeError),
    ({'e': None}, TypeError),
    ({5: {}}, TypeError),
    (['e'], TypeError),
])
def test_r24_invalid_declarations_rejected_at_class_definition(pubsub, error):
    with pytest.raises(error):
        type('Bad', (Publisher,), {'_pubsub': pubsub})


# -- R25: undeclared names -----------------------------------------------------------------------

def test_r25_undeclared_names_have_no_complete_function_and_publish_publicly():
    class P(Traced):
        def _event_free(self, event):
            self.trace.append('must not run')

    p = P()
    subscribe_all(p, 'free')
    p.publish('free').emit('free')
    assert p.trace == ['before free', 'on free', 'after free'] * 2


def test_r25_undeclared_names_have_no_once_flag():
    p = Traced()
    p.on('free', p.rec('on free'))
    p.publish('free').publish('free')
    assert p.trace == ['on free', 'on free']


# -- R26: public publish -------------------------------------------------------------------------

def test_r26_public_publish_ignores_declared_non_public_events():
    p = Traced()
    subscribe_all(p, 'x')
    assert p.publish('x', {'a': 1}) is p
    assert p.trace == []
    p.emit('x')
    assert p.trace == ['before x', 'on x', 'complete x', 'after x']


def test_r26_public_publish_allowed_when_declared_public():
    p = Traced()
    p.on('public', p.rec('on public'))
    p.publish('public')
    assert p.trace == ['on public', 'complete public']


def test_r26_public_publish_ignored_does_not_mark_once_events():
    class P(Emitter):
        _pubsub = {'e': {'publish_once': True}}

    p = P()
    p.publish('e')
    seen = []
    p.on('e', seen.append)
    assert seen == []
    p.emit('e')
    assert len(seen) == 1


# -- R27, R28: coroutine handlers ----------------------------------------------------------------

def spawned(loop: asyncio.AbstractEventLoop | None = None) -> set[asyncio.Task]:
    """The unfinished tasks on `loop` (default: the running one) other than the test's own."""
    loop = loop or asyncio.get_running_loop()
    return asyncio.all_tasks(loop) - {asyncio.current_task(loop)}


def released(task_ref: weakref.ref) -> bool:
    """True when nothing but garbage refers to the task any more."""
    gc.collect()
    return task_ref() is None


class LoopPublisher(Traced):
    """Records task failures instead of raising them into the loop."""

    def __init__(self) -> None:
        super().__init__()
        self.failures: list[BaseException] = []

    def _task_failed(self, exc: BaseException) -> None:
        self.failures.append(exc)


def test_r27_coroutine_handler_does_not_run_inline_and_publish_does_not_wait():
    async def main():
        p = LoopPublisher()

        async def handler(event):
            p.trace.append('coro start')
            await asyncio.sleep(0)
            p.trace.append('coro end')

        p.on('x', handler)
        p.after('x', p.rec('after x'))
        p.emit('x')
        assert p.trace == ['complete x', 'after x']
        assert len(spawned()) == 1
        await asyncio.gather(*spawned())
        assert p.trace == ['complete x', 'after x', 'coro start', 'coro end']

    asyncio.run(main())


def test_r27_coroutine_handler_prevent_and_stop_have_no_effect():
    async def main():
        p = LoopPublisher()

        async def handler(event):
            event.prevent()
            event.stop_event()
            event.stop_dispatch()
            event.unsubscribe()

        sub = p.before('x', handler)
        p.before('x', p.rec('before x'))
        p.after('x', p.rec('after x'))
        p.emit('x')
        await asyncio.gather(*spawned())
        assert p.trace == ['before x', 'complete x', 'after x']
        assert sub.subscribed

    asyncio.run(main())


def test_r27_coroutine_complete_function_is_scheduled():
    class P(LoopPublisher):
        async def _event_x(self, event):
            self.trace.append('complete x')

    async def main():
        p = P()
        p.after('x', p.rec('after x'))
        p.emit('x')
        assert p.trace == ['after x']
        await asyncio.gather(*spawned())
        assert p.trace == ['after x', 'complete x']

    asyncio.run(main())


def test_r27_non_coroutine_awaitable_is_wrapped_in_a_task():
    async def main():
        p = LoopPublisher()
        fut = asyncio.get_running_loop().create_future()
        p.on('x', lambda e: fut)
        p.emit('x')
        (task,) = spawned()
        assert isinstance(task, asyncio.Task) and not task.done()
        fut.set_result(7)
        assert await task == 7

    asyncio.run(main())


def test_r27_late_subscriber_coroutine_is_scheduled():
    async def main():
        p = LoopPublisher()
        p.emit('copen')
        ran = []

        async def late(event):
            ran.append(event.name)

        p.on('copen', late)
        assert ran == []
        await asyncio.gather(*spawned())
        assert ran == ['copen']

    asyncio.run(main())


def test_r27_tasks_use_the_loop_running_at_construction():
    loop = asyncio.new_event_loop()
    try:
        async def build():
            return LoopPublisher()

        p = loop.run_until_complete(build())

        async def handler(event):
            ran.append(asyncio.get_running_loop())

        ran = []
        p.on('x', handler)
        p.emit('x')  # no loop running now: the task still goes to p's loop
        loop.run_until_complete(asyncio.gather(*spawned(loop)))
        assert ran == [loop]
    finally:
        loop.close()


def test_r27_pubsub_loop_override_is_used_by_spawn():
    loop = asyncio.new_event_loop()
    try:
        class P(LoopPublisher):
            def _pubsub_loop(self):
                return loop

        p = P()

        async def handler(event):
            return 'done'

        p.on('x', handler)
        p.emit('x')
        (task,) = spawned(loop)
        assert task.get_loop() is loop
        assert loop.run_until_complete(task) == 'done'
    finally:
        loop.close()


def test_r28_task_reference_kept_until_done():
    async def main():
        p = LoopPublisher()
        waits: list[weakref.ref] = []

        async def handler(event):
            future = asyncio.get_running_loop().create_future()
            waits.append(weakref.ref(future))
            await future  # only this task refers to the future, and only the future's callback to the task
            p.trace.append('finished')

        p.on('x', handler)
        p.emit('x')
        (task,) = spawned()
        task_ref = weakref.ref(task)
        del task
        await asyncio.sleep(0)
        assert not released(task_ref)
        waits[0]().set_result(None)
        await task_ref()
        assert p.trace == ['complete x', 'finished']
        await asyncio.sleep(0)
        assert released(task_ref)

    asyncio.run(main())


def test_r28_exception_escaping_task_reaches_task_failed():
    async def main():
        p = LoopPublisher()
        error = ValueError('in task')

        async def handler(event):
            raise error

        p.on('x', handler)
        p.emit('x')
        (task,) = spawned()
        await asyncio.wait([task])
        await asyncio.sleep(0)  # let the done-callback run
        assert p.failures == [error]

    asyncio.run(main())


def test_r28_cancelled_task_is_not_a_failure():
    async def main():
        p = LoopPublisher()

        async def handler(event):
            await asyncio.sleep(3600)

        p.on('x', handler)
        p.emit('x')
        (task,) = spawned()
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.wait([task])
        await asyncio.sleep(0)
        task_ref = weakref.ref(task)
        del task
        assert p.failures == [] and released(task_ref)

    asyncio.run(main())


def test_r28_default_task_failed_raises_into_the_loop_exception_handler():
    loop = asyncio.new_event_loop()
    caught = []
    loop.set_exception_handler(lambda loop, context: caught.append(context.get('exception')))
    try:
        async def build():
            return Traced()

        p = loop.run_until_complete(build())
        error = KeyError('k')

        async def handler(event):
            raise error

        p.on('x', handler)
        p.emit('x')
        (task,) = spawned(loop)
        loop.run_until_complete(asyncio.wait([task]))
        loop.run_until_complete(asyncio.sleep(0))
        assert caught == [error]
    finally:
        loop.close()


# -- §2 R31: handler exceptions propagate --------------------------------------------------------

def test_r31_exception_propagates_and_stops_outer_publishes():
    p = Traced()

    def boom(e):
        raise LookupError('boom')

    p.on('outer', lambda e: p.emit('inner'))
    p.on('outer', p.rec('on outer 2'))
    p.on('inner', boom)
    p.on('inner', p.rec('on inner 2'))
    p.after('outer', p.rec('after outer'))
    with pytest.raises(LookupError):
        p.emit('outer')
    assert p.trace == []


def test_r31_exception_from_complete_function_propagates():
    class P(Traced):
        def _event_x(self, event):
            raise KeyError('complete')

    p = P()
    p.after('x', p.rec('after x'))
    with pytest.raises(KeyError):
        p.publish('free').emit('x')
    assert p.trace == []


# -- R48, R50: closing the publisher -------------------------------------------------------------

def test_r50_after_close_publish_subscribe_and_off_raise_destroyed_error():
    p = Traced()
    p.destroy()
    assert p.destroyed
    calls = [
        lambda: p.publish('x'), lambda: p.publish('public'), lambda: p.emit('x'),
        lambda: p.off(), lambda: p.off('x'),
    ]
    for _, method in every_subscribe_method(p):
        calls.append(lambda m=method: m('x', p.rec('never')))
    for call in calls:
        with pytest.raises(DestroyedError) as info:
            call()
        assert isinstance(info.value, ClusterError)
        assert 'Traced' in str(info.value) and 'destroyed' in str(info.value)
    assert p.trace == []


def test_r50_close_removes_public_and_internal_subscriptions():
    p = Traced()
    public = p.on('x', p.rec('public'))
    internal = p.internal()['after']('x', p.rec('internal'))
    assert not p.destroyed
    p.destroy()
    assert not public.subscribed and not internal.subscribed
    public.unsubscribe()
    internal.unsubscribe()
    p.destroy()  # idempotent
    assert p.trace == []


def test_r48_close_during_publish_runs_no_more_handlers_and_does_not_raise():
    class P(Traced):
        def _event_x(self, event):
            self.trace.append('complete x')
            self._close_pubsub()

    p = P()
    p.on('x', p.rec('on x'))
    p.after('x', p.rec('after x'))
    p.internal()['after']('x', p.rec('internal after x'))
    assert p.emit('x') is p
    assert p.trace == ['on x', 'complete x']


def test_r48_close_from_handler_skips_rest_of_stage_and_later_stages():
    p = Traced()
    p.before('x', lambda e: p.destroy())
    p.before('x', p.rec('before 2'))
    p.on('x', p.rec('on x'))
    p.emit('x')
    assert p.trace == []
    assert p.destroyed


def test_r50_event_unsubscribe_after_close_is_noop():
    p = Traced()
    events = []
    p.on('x', lambda e: (events.append(e), p.destroy(), e.unsubscribe()))
    p.emit('x')
    events[0].unsubscribe()
    assert p.destroyed


def test_r27_without_running_loop_uses_the_current_loop_at_first_use():
    p = LoopPublisher()  # built outside any running loop
    ran = []

    async def handler(event):
        ran.append(asyncio.get_running_loop())

    p.on('x', handler)
    loop = asyncio.new_event_loop()
    other = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        p.emit('x')
        asyncio.set_event_loop(other)
        p.emit('x')  # bound at first use: still the first loop
        assert not spawned(other)
        loop.run_until_complete(asyncio.gather(*spawned(loop)))
        assert ran == [loop, loop]
    finally:
        asyncio.set_event_loop(None)
        other.close()
        loop.close()
