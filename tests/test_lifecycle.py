"""Rule tests for the initialize / destroy lifecycle (SPEC §3, R37–R53), with small
`Initializable` subclasses. Async paths run on a MemoryTransport's virtual loop or on a plain
asyncio loop."""

from __future__ import annotations

import asyncio

import pytest

from isocluster import ClusterPrimary, ClusterWorker, DestroyedError
from isocluster.lifecycle import Initializable
from isocluster.transport.memory import MemoryTransport

from memory_helpers import close, note, seen, started

LIFECYCLE = ('initialize', 'initialize_complete', 'initialize_error', 'destroy', 'destroy_complete')


def watch(obj, trace, events=LIFECYCLE, stages=('on', 'after')):
    for name in events:
        for stage in stages:
            getattr(obj, stage)(name, lambda e, s=stage, n=name: trace.append(f'{s} {n}'))


def run_async(coro_fn, timeout=1000.0):
    """Run `coro_fn()` as a task on a MemoryTransport's virtual-time loop (no real waiting); return
    its result. An exception that reaches the loop (fatal, §2) is re-raised from here (R35)."""
    sim = MemoryTransport(seed=1)
    task = sim.loop.create_task(coro_fn())
    sim.run_until(task.done, timeout=timeout)
    return task.result()


async def turns(n=5):
    for _ in range(n):
        await asyncio.sleep(0)


# == R37, R38 ==========================================================================================

def test_r37_initialize_true_initializes_in_the_constructor():
    calls = []

    class Thing(Initializable):
        def _initialize(self):
            calls.append('init')

    thing = Thing()
    assert calls == ['init'] and thing.initialized


def test_r37_initialize_false_waits_for_initialize_with_arguments():
    calls = []

    class Thing(Initializable):
        def _initialize(self, *args, **kwargs):
            calls.append((args, kwargs))

    thing = Thing(initialize=False)
    assert calls == [] and not thing.initialized
    assert thing.initialize(1, 2, key='v') is thing
    assert calls == [((1, 2), {'key': 'v'})] and thing.initialized


def test_r37_library_constructors_initialize_with_no_arguments():
    seen = []

    class P(ClusterPrimary):
        def _initialize(self, *args, **kwargs):
            seen.append((args, kwargs))

    P(worker_target=lambda: None, transport=MemoryTransport(seed=1))
    assert seen == [((), {})]


def test_r38_initialize_publishes_args_and_kwargs_and_is_complete_once():
    thing = Initializable(initialize=False)
    data = []
    thing.on('initialize', lambda e: data.append(e.data))
    thing.initialize('a', b=2)
    thing.initialize('again')
    assert data == [{'args': ('a',), 'kwargs': {'b': 2}}]


# == R39 the _initialize chain ===========================================================================

def test_r39_every_class_own_initialize_runs_once_base_first_without_super():
    order = []

    class A(Initializable):
        def _initialize(self):
            order.append('A')

    class B(A):
        def _initialize(self):
            order.append('B')  # no super()

    class C(A):
        def _initialize(self):
            order.append('C')

    class D(B, C):
        def _initialize(self):
            order.append('D')

    D()
    assert order == ['A', 'C', 'B', 'D']  # reverse MRO: D, B, C, A, Initializable...


def test_r39_a_function_shared_by_several_classes_runs_once_and_inherited_ones_do_not_repeat():
    order = []

    def shared(self):
        order.append('shared')

    class A(Initializable):
        _initialize = shared

    class B(A):
        _initialize = shared

    class C(B):  # defines none: nothing extra
        pass

    C()
    assert order == ['shared']


class SuperCallingWorker(ClusterWorker):
    def _initialize(self):
        super()._initialize()  # the base _initialize runs from the chain too (R39)


def super_calling_target():
    worker = SuperCallingWorker()
    worker.on('primary_message', lambda event: note('got', event.data['message']))


def test_r39_subclass_initialize_calling_super_still_receives_each_message_once():
    sim, p, rec = started(1, super_calling_target)
    p.send('hello')
    sim.run_until(lambda: seen.get('got'), timeout=10)
    sim.advance(1.0)
    assert seen['got'] == ['hello']
    close(sim, p)


# == R40 synchronous path ==================================================================================

def test_r40_synchronous_order_and_initialized_flag():
    trace = []

    class Thing(Initializable):
        def _initialize(self):
            trace.append('_initialize')

        def _initialize_complete(self, *args, **kwargs):
            trace.append('_initialize_complete')

    thing = Thing(initialize=False)
    watch(thing, trace)
    thing.on('initialize', lambda e: trace.append(('initialized in on', thing.initialized)))
    thing.after('initialize', lambda e: trace.append(('initialized in after', thing.initialized)))
    thing.initialize()
    assert trace == [
        'on initialize', ('initialized in on', False), '_initialize', 'on initialize_complete',
        '_initialize_complete', 'after initialize_complete', 'after initialize', ('initialized in after', True)]


def test_r40_initialize_complete_carries_args_and_kwargs():
    thing = Initializable(initialize=False)
    data = []
    thing.on('initialize_complete', lambda e: data.append(e.data))
    thing.initialize(7, x=1)
    assert data == [{'args': (7,), 'kwargs': {'x': 1}}]


# == R41 asynchronous path =================================================================================

def test_r41_async_initialize_completes_in_a_task_after_the_publish():
    trace = []

    class Base(Initializable):
        def _initialize(self, *args):
            trace.append('base sync')

    class Thing(Base):
        async def _initialize(self, *args):
            trace.append('async start')
            await asyncio.sleep(0.5)
            trace.append(('async end', args))

    class Last(Thing):
        async def _initialize(self, *args):
            trace.append('last')

    async def main():
        thing = Last(initialize=False)
        watch(thing, trace, stages=('after',))
        thing.after('initialize', lambda e: trace.append(('after initialize sees', thing.initialized)))
        thing.initialize('x')
        trace.append('returned')
        await asyncio.sleep(1)
        return thing

    thing = run_async(main)
    assert trace == ['base sync', 'after initialize', ('after initialize sees', False), 'returned',
                     'async start', ('async end', ('x',)), 'last', 'after initialize_complete']
    assert thing.initialized


def test_r41_async_initialize_on_the_virtual_loop():
    sim = MemoryTransport(seed=1)
    done = []

    class Thing(Initializable):
        def _pubsub_loop(self):
            return sim.loop

        async def _initialize(self):
            await asyncio.sleep(10.0)

    thing = Thing()
    thing.on('initialize_complete', lambda e: done.append(sim.loop.time()))
    assert not thing.initialized
    sim.run_until(lambda: thing.initialized, timeout=20)
    assert done == [10.0]


# == R42 failure ==========================================================================================

def test_r42_sync_failure_stops_the_chain_and_publishes_error_later():
    trace = []
    boom = ValueError('nope')

    class A(Initializable):
        def _initialize(self):
            raise boom

    class B(A):
        def _initialize(self):
            trace.append('B ran')

    async def main():
        thing = B()
        errors = []
        thing.on('initialize_error', lambda e: (errors.append(e.data['error']), e.prevent()))
        assert errors == []  # never during the call that raised
        await turns()
        return thing, errors

    thing, errors = run_async(main)
    assert errors == [boom] and errors[0] is boom  # the exception itself, not wrapped
    assert trace == [] and not thing.initialized


def test_r42_async_failure_publishes_initialize_error_with_the_exception():
    boom = KeyError('async nope')

    class Thing(Initializable):
        async def _initialize(self):
            await asyncio.sleep(0.1)
            raise boom

    class Later(Thing):
        def _initialize(self):
            raise AssertionError('must not run')

    async def main():
        thing = Later()
        errors = []
        completes = []
        thing.on('initialize_error', lambda e: (errors.append(e.data['error']), e.prevent()))
        thing.on('initialize_complete', lambda e: completes.append(True))
        await asyncio.sleep(0.5)
        return thing, errors, completes

    thing, errors, completes = run_async(main)
    assert errors == [boom] and completes == [] and not thing.initialized


# == R43, R44, R45 =============================================================================================

def test_r43_initialize_complete_default_action_calls_the_hook_with_args():
    calls = []

    class Thing(Initializable):
        def _initialize(self, *a, **k):
            pass

        def _initialize_complete(self, *args, **kwargs):
            calls.append((args, kwargs))

    Thing(initialize=False).initialize(1, two=2)
    assert calls == [((1,), {'two': 2})]


def test_r43_preventing_initialize_complete_skips_the_hook():
    calls = []

    class Thing(Initializable):
        def _initialize_complete(self):
            calls.append('hook')

    thing = Thing(initialize=False)
    thing.on('initialize_complete', lambda e: e.prevent())
    thing.initialize()
    assert calls == [] and thing.initialized


def test_r44_unprevented_initialize_error_is_fatal_on_the_loop():
    class Thing(Initializable):
        def _initialize(self):
            raise OSError('fatal init')

    async def main():
        Thing()
        await turns()

    with pytest.raises(OSError, match='fatal init'):
        run_async(main)


def test_r44_unprevented_initialize_error_is_fatal_on_a_plain_asyncio_loop():
    caught = []

    class Thing(Initializable):
        def _initialize(self):
            raise OSError('fatal init')

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: caught.append(ctx.get('exception')))
        Thing()
        await turns()

    asyncio.run(main())
    assert len(caught) == 1 and isinstance(caught[0], OSError)


def test_r44_prevented_initialize_error_is_not_fatal():
    class Thing(Initializable):
        def _initialize(self):
            raise OSError('fatal init')

    async def main():
        thing = Thing()
        thing.before('initialize_error', lambda e: e.prevent())
        await turns()
        return thing

    thing = run_async(main)  # nothing fatal reaches the loop
    assert not thing.initialized


def test_r45_sync_initialize_complete_handler_exception_propagates_from_initialize():
    errors = []

    class Thing(Initializable):
        def _initialize_complete(self):
            raise RuntimeError('from hook')

    with pytest.raises(RuntimeError, match='from hook'):
        Thing()

    thing = Initializable(initialize=False)
    thing.on('initialize_complete', lambda e: (_ for _ in ()).throw(LookupError('from handler')))
    thing.on('initialize_error', lambda e: errors.append(e))
    with pytest.raises(LookupError):
        thing.initialize()
    assert thing.initialized is True and errors == []


def test_r45_async_initialize_complete_handler_exception_is_fatal_not_initialize_error():
    errors, things = [], []

    class Thing(Initializable):
        async def _initialize(self):
            await asyncio.sleep(0)

    async def main():
        thing = Thing()
        things.append(thing)
        thing.on('initialize_complete', lambda e: (_ for _ in ()).throw(LookupError('from handler')))
        thing.on('initialize_error', lambda e: (errors.append(e), e.prevent()))
        await asyncio.sleep(0.1)

    with pytest.raises(LookupError, match='from handler'):
        run_async(main)
    assert errors == [] and things[0].initialized is True


# == R46–R50 destroy ======================================================================================

def test_r46_destroy_publishes_args_and_calls_destroy_hook():
    calls = []

    class Thing(Initializable):
        def _destroy(self, *args, **kwargs):
            calls.append((args, kwargs))
            super()._destroy(*args, **kwargs)

    thing = Thing()
    data = []
    thing.on('destroy', lambda e: data.append(e.data))
    assert thing.destroy(1, k='v') is thing
    assert data == [{'args': (1,), 'kwargs': {'k': 'v'}}]
    assert calls == [((1,), {'k': 'v'})]


def test_r47_base_destroy_order_marks_publishes_then_unsubscribes():
    trace = []

    class Thing(Initializable):
        def _destroy(self, *args, **kwargs):
            trace.append('own cleanup')
            super()._destroy(*args, **kwargs)

        def _destroy_complete(self, *args, **kwargs):
            trace.append(('_destroy_complete', args, kwargs, self.destroyed))

    thing = Thing()
    thing.on('destroy_complete', lambda e: trace.append(('on destroy_complete', e.data, thing.destroyed)))
    thing.destroy('x', y=1)
    assert trace == ['own cleanup', ('on destroy_complete', {'args': ('x',), 'kwargs': {'y': 1}}, True),
                     ('_destroy_complete', ('x',), {'y': 1}, True)]
    with pytest.raises(DestroyedError):
        thing.on('anything', lambda e: None)  # every subscription was removed and none can be added


def test_r48_destroyed_flag_by_stage_and_no_after_destroy():
    trace = []
    thing = Initializable()
    thing.before('destroy', lambda e: trace.append(('before destroy', thing.destroyed)))
    thing.on('destroy', lambda e: trace.append(('on destroy', thing.destroyed)))
    thing.on('destroy_complete', lambda e: trace.append(('on destroy_complete', thing.destroyed)))
    thing.after('destroy_complete', lambda e: trace.append(('after destroy_complete', thing.destroyed)))
    thing.after('destroy', lambda e: trace.append(('after destroy', thing.destroyed)))
    thing.destroy()
    assert trace == [('before destroy', False), ('on destroy', False), ('on destroy_complete', True),
                     ('after destroy_complete', True)]


def test_r49_prevented_destroy_cancels_and_may_be_retried():
    thing = Initializable()
    sub = thing.once_on('destroy', lambda e: e.prevent())
    thing.destroy()
    assert not thing.destroyed and thing.initialized
    assert not sub.subscribed
    thing.destroy()
    assert thing.destroyed


def test_r49_prevent_in_before_destroy_cancels_too():
    thing = Initializable()
    thing.once_before('destroy', lambda e: e.prevent())
    thing.destroy()
    assert not thing.destroyed
    thing.destroy()
    assert thing.destroyed


def test_r50_after_destruction():
    thing = Initializable()
    sub = thing.on('custom', lambda e: None)
    thing.destroy()
    for call in (lambda: thing.publish('custom'), lambda: thing._publish('custom'),
                 lambda: thing.on('x', lambda e: None), lambda: thing.before('x', lambda e: None),
                 lambda: thing.after('x', lambda e: None), lambda: thing.once_on('x', lambda e: None),
                 lambda: thing.once_before('x', lambda e: None), lambda: thing.once_after('x', lambda e: None),
                 lambda: thing.off()):
        with pytest.raises(DestroyedError):
            call()
    assert thing.destroy() is thing  # no-op
    sub.unsubscribe()  # no-op, never raises
    assert thing.destroyed is True and thing.initialized is False  # properties stay readable


# == R51 destroy during a pending async initialization ====================================================

def test_r51_destroy_cancels_pending_async_initialization_silently():
    events = []

    class Thing(Initializable):
        async def _initialize(self):
            await asyncio.sleep(1)
            events.append('init finished')

    async def main():
        thing = Thing()
        thing.on('initialize_complete', lambda e: events.append('complete'))
        thing.on('initialize_error', lambda e: events.append('error'))
        await asyncio.sleep(0.1)
        thing.destroy()
        await asyncio.sleep(2)
        return thing

    thing = run_async(main)  # nothing surfaces on the loop either
    assert events == []
    assert thing.destroyed and not thing.initialized


def test_r51_destroy_before_a_sync_failure_is_published_suppresses_it():
    events = []

    class Thing(Initializable):
        def _initialize(self):
            raise ValueError('never seen')

    async def main():
        thing = Thing()
        thing.on('initialize_error', lambda e: events.append('error'))
        thing.destroy()
        await turns()

    run_async(main)  # the pending initialize_error is not published, so nothing is fatal
    assert events == []


# == R52 initialized flag =====================================================================================

def test_r52_initialized_flag_over_the_lifecycle():
    thing = Initializable(initialize=False)
    assert thing.initialized is False and thing.destroyed is False
    thing.initialize()
    assert thing.initialized is True
    thing.destroy()
    assert thing.initialized is False and thing.destroyed is True


def test_r52_initialized_false_after_initialize_error():
    class Thing(Initializable):
        def _initialize(self):
            raise ValueError('x')

    async def main():
        thing = Thing()
        seen = []
        thing.on('initialize_error', lambda e: (seen.append(thing.initialized), e.prevent()))
        await turns()
        return thing, seen

    thing, seen = run_async(main)
    assert seen == [False] and thing.initialized is False


def test_r52_destroyed_is_true_at_the_first_step_of_base_destroy():
    states = []

    class Thing(Initializable):
        def _destroy(self, *args, **kwargs):
            states.append(('before super', self.destroyed))
            super()._destroy(*args, **kwargs)
            states.append(('after super', self.destroyed))

    thing = Thing()
    thing.on('destroy_complete', lambda e: states.append(('destroy_complete', thing.destroyed)))
    thing.destroy()
    assert states == [('before super', False), ('destroy_complete', True), ('after super', True)]


# == R53 the object's loop =================================================================================

def test_r53_async_steps_use_the_loop_running_at_construction():
    loops = []

    class Thing(Initializable):
        async def _initialize(self):
            loops.append(asyncio.get_running_loop())

    async def main():
        thing = Thing()
        await turns()
        return asyncio.get_running_loop(), thing

    loop, thing = run_async(main)
    assert loops == [loop] and thing.initialized


def test_r53_primary_uses_its_transport_loop():
    sim = MemoryTransport(seed=1)
    loops = []

    class P(ClusterPrimary):
        pass

    p = P(worker_target=lambda: None, transport=sim)

    async def handler(event):
        loops.append(asyncio.get_running_loop())
    p.on('shut_down', handler)
    p.shut_down()
    sim.run_until(lambda: p.closed and loops, timeout=1)
    assert loops == [sim.loop]


def test_r53_without_a_running_loop_the_object_uses_the_loop_run_drives():
    # constructed outside any running loop: a later async step runs on the loop that drives it
    class Thing(Initializable):
        async def _initialize(self):
            await asyncio.sleep(0)

    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        thing = Thing()
        assert not thing.initialized
        loop.run_until_complete(asyncio.sleep(0))
        assert thing.initialized
    finally:
        asyncio.set_event_loop(None)
        loop.close()
