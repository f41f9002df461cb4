"""Rule tests for ClusterWorker (SPEC §5, R99–R114) and worker-side fatal exceptions (R33),
on the deterministic memory transport. Worker targets run as tasks on the simulation's loop."""

from __future__ import annotations

import asyncio
import socket

import pytest

from isocluster import (
    ClusterPrimary, ClusterWorker, EncodeError, ListenError, NotAWorkerError, ReadyTimeout, SendError,
    TransportError, WorkerLost, protocol,
)
from isocluster.transport.base import current_link
from isocluster.transport.memory import MemoryTransport

from memory_helpers import close, inert_worker, make, note, ready_worker, seen, started

KILL_TIMER = 6.765

# == R99 worker targets ===============================================================================

def recording_target(*args, **kwargs):
    note('target', (args, kwargs, ClusterWorker.worker_id))
    ClusterWorker()


def test_r99_target_is_called_with_no_arguments_in_each_worker():
    sim, p, rec = started(2, recording_target)
    assert sorted(seen['target'], key=lambda t: t[2]) == [((), {}, 1), ((), {}, 2)]
    close(sim, p)


async def coroutine_target():
    note('steps', 'start')
    await asyncio.sleep(2.0)
    note('steps', 'after sleep')
    worker = ClusterWorker()
    await asyncio.sleep(1.0)
    note('steps', ('still running', worker.initialized))


def test_r99_coroutine_target_is_awaited_on_the_worker_loop():
    sim, p, rec = make(coroutine_target)
    p.fork(1)
    sim.run_until(lambda: len(p.workers) == 1)
    assert rec.times('worker_ready')[0] >= 2.0
    sim.run_until(lambda: len(seen.get('steps', ())) == 3)
    assert seen['steps'] == ['start', 'after sleep', ('still running', True)]
    close(sim, p)


def returning_target():
    worker = ClusterWorker()
    worker.on('primary_message', lambda e: note('messages', e.data['message']))
    # returns at once: the library keeps the worker running


def test_r99_worker_keeps_running_after_the_target_returns():
    sim, p, rec = started(1, returning_target)
    sim.advance(100)
    p.send('later')
    sim.run_until(lambda: seen.get('messages'))
    assert seen['messages'] == ['later']
    assert sim.alive(1)
    close(sim, p)


# == R101, R102 =======================================================================================

def test_r101_worker_id_is_none_outside_a_worker():
    assert ClusterWorker.worker_id is None
    assert ClusterWorker.is_worker() is False
    assert ClusterWorker(initialize=False).worker_id is None


def identity_target():
    worker = ClusterWorker()
    note('ids', (ClusterWorker.worker_id, worker.worker_id, ClusterWorker.is_worker()))

    def on_message(event):
        note('later', (event.data['message'], ClusterWorker.worker_id))
    worker.on('primary_message', on_message)


def test_r101_each_simulated_worker_sees_its_own_id():
    sim, p, rec = started(3, identity_target)
    assert sorted(seen['ids']) == [(1, 1, True), (2, 2, True), (3, 3, True)]
    for handle in p.workers:
        handle.send(handle.id)
    sim.run_until(lambda: len(seen.get('later', ())) == 3)
    assert all(message == worker_id for message, worker_id in seen['later'])
    assert ClusterWorker.worker_id is None  # the test (primary side) is not a worker
    close(sim, p)


def test_r102_worker_without_cluster_worker_never_ready_ends_with_code_0_on_disconnect():
    sim, p, rec = make(inert_worker, ready_timeout=None)
    p.fork(1)
    sim.run_until(lambda: rec.count('worker_online') == 1)
    sim.advance(50)
    assert rec.count('worker_ready') == 0 and sim.alive(1)
    p.shut_down()
    sim.run_until(lambda: p.closed)
    assert sim.exits[1] == (0, None)
    assert rec.of('worker_exit')[0]['code'] == 0


def test_r102_worker_without_cluster_worker_ends_with_code_0_when_its_link_closes():
    sim, p, rec = make(inert_worker, ready_timeout=None)
    p.fork(1)
    sim.run_until(lambda: rec.count('worker_online') == 1)
    sim.kill_primary()
    sim.run_until(lambda: not sim.alive(1))
    assert sim.exits[1] == (0, None)


# == R103 binding outside a worker ===================================================================

def test_r103_cluster_worker_outside_a_worker_publishes_not_a_worker_error_later():
    async def main():
        worker = ClusterWorker()
        errors = []
        worker.on('initialize_error', lambda e: (errors.append(e.data['error']), e.prevent()))
        assert errors == []  # never during the call that raised (R42)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return worker, errors

    worker, errors = asyncio.run(main())
    assert len(errors) == 1 and isinstance(errors[0], NotAWorkerError)
    assert worker.initialized is False


def test_r103_unprevented_not_a_worker_error_is_fatal_on_the_loop():
    caught = []

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda loop, context: caught.append(context.get('exception')))
        ClusterWorker()
        for _ in range(3):
            await asyncio.sleep(0)

    asyncio.run(main())
    assert len(caught) == 1 and isinstance(caught[0], NotAWorkerError)


def test_r103_uninitialized_worker_and_its_destroy_work_outside_a_worker():
    worker = ClusterWorker(initialize=False)
    events = []
    worker.on('destroy_complete', lambda e: events.append(e.name))
    assert worker.destroy() is worker
    assert worker.destroyed and events == ['destroy_complete']


def test_run_outside_a_worker_raises_not_a_worker_error():
    with pytest.raises(NotAWorkerError, match='run'):
        ClusterWorker(initialize=False).run()


def run_in_memory_target():
    worker = ClusterWorker()
    try:
        worker.run()
    except TransportError as error:
        note('run', str(error))


def test_worker_run_on_the_memory_transport_raises_transport_error():
    sim, p, rec = started(1, run_in_memory_target)
    assert 'only worker_target workers' in seen['run'][0]
    close(sim, p)


def test_request_outside_a_worker_rejects_with_not_a_worker_error():
    loop = asyncio.new_event_loop()
    try:
        async def build():
            return ClusterWorker(initialize=False)

        worker = loop.run_until_complete(build())  # its loop: the one running at construction (R53)
        result = worker.request({'type': 'x'})
        assert isinstance(result.exception(), NotAWorkerError)
        assert 'only works inside a worker process' in str(result.exception())
    finally:
        loop.close()


def worker_request_edges_target():
    worker = ClusterWorker()
    note('encode', worker.request({'bad': object()}).exception())
    with pytest.raises(ValueError):
        worker.request('x', timeout=0)

    def after_disconnect(event):
        note('closed', worker.request('late').exception())
    worker.after('primary_disconnect', after_disconnect)


def test_worker_request_rejects_unencodable_and_after_the_link_closed():
    sim, p, rec = started(1, worker_request_edges_target)
    assert isinstance(seen['encode'][0], EncodeError)
    p.workers[0].disconnect()
    sim.run_until(lambda: seen.get('closed'), timeout=10)
    assert isinstance(seen['closed'][0], SendError)
    assert isinstance(seen['closed'][0].__cause__, TransportError)


# == R104 early messages ===============================================================================

async def late_binding_target():
    await asyncio.sleep(3.0)
    worker = ClusterWorker()
    worker.on('primary_message', lambda e: note('messages', e.data['message']))


def test_r104_messages_before_the_cluster_worker_are_kept_in_order():
    sim, p, rec = make(late_binding_target)
    p.on('worker_online', lambda e: [e.data['worker'].send(m) for m in ('a', 'b', {'c': 1})])
    p.fork(1)
    sim.run_until(lambda: len(seen.get('messages', ())) == 3)
    assert seen['messages'] == ['a', 'b', {'c': 1}]
    sim.run_until(lambda: len(p.workers) == 1)
    p.send('d')
    sim.run_until(lambda: len(seen['messages']) == 4)
    assert seen['messages'][-1] == 'd'
    close(sim, p)


class FrameSeeingWorker(ClusterWorker):
    """Overrides link_message: the worker's one-call receiver must not take its place."""

    def link_message(self, payload):
        note('frames', self._link.codec.decode(payload))
        super().link_message(payload)

    def _event_primary_message_task(self, event):
        note('routed', event.data['message']['id'])


def frame_seeing_target():
    FrameSeeingWorker()


def test_an_override_of_link_message_sees_every_message_frame_and_its_super_routes_it():
    sim, p, rec = started(1, frame_seeing_target)
    for i in range(3):
        p.send({'type': 'task', 'id': i})
    sim.run_until(lambda: len(seen.get('routed', ())) == 3)
    assert seen['frames'] == [{'type': 'task', 'id': i} for i in range(3)]
    assert seen['routed'] == [0, 1, 2]
    close(sim, p)


# == R105, R106 readiness ===============================================================================

class NoSuperCompleteWorker(ClusterWorker):
    def _initialize_complete(self):
        note('complete', True)  # no super(): readiness must not depend on it


class OverriddenEventWorker(ClusterWorker):
    def _event_initialize_complete(self, event):
        note('complete', 'event overridden')


def no_super_target():
    NoSuperCompleteWorker()


def overridden_event_target():
    OverriddenEventWorker()


def prevented_complete_target():
    worker = ClusterWorker(initialize=False)
    worker.on('initialize_complete', lambda e: e.prevent())
    worker.initialize()


@pytest.mark.parametrize('target', [no_super_target, overridden_event_target, prevented_complete_target])
def test_r105_ready_does_not_depend_on_overridable_hooks(target):
    sim, p, rec = started(1, target)
    assert p.workers[0].state == 'ready'
    close(sim, p)


def ready_sent_during_construction_target():
    ClusterWorker()
    note('link', current_link().ready_sent)


def test_r105_ready_is_sent_during_construction_with_sync_initializers():
    sim, p, rec = started(1, ready_sent_during_construction_target)
    assert seen['link'] == [True]
    close(sim, p)


class AsyncInitWorker(ClusterWorker):
    async def _initialize(self):
        await asyncio.sleep(4.0)
        note('order', 'initialized')

    def _initialize_complete(self):
        note('order', 'initialize_complete')


def async_init_target():
    AsyncInitWorker()


def test_r105_async_initialize_sends_ready_when_it_resolves():
    sim, p, rec = make(async_init_target)
    p.fork(1)
    sim.run_until(lambda: len(p.workers) == 1)
    ready_at = rec.times('worker_ready')[0]
    assert 4.0 <= ready_at < 4.1
    assert seen['order'] == ['initialized', 'initialize_complete']
    close(sim, p)


def send_in_initialize_complete_target():
    worker = ClusterWorker(initialize=False)
    worker.on('initialize_complete', lambda e: worker.send('from initialize_complete'))
    worker.initialize()


def test_r105_ready_is_sent_just_before_initialize_complete():
    sim, p, rec = make(send_in_initialize_complete_target)
    p.fork(1)
    sim.run_until(lambda: rec.count('worker_message') == 1)
    names = rec.for_worker(1)
    assert names.index('worker_ready') < names.index('worker_message')
    close(sim, p)


def two_workers_target():
    ClusterWorker()
    ClusterWorker()  # READY at most once per worker process


def test_r105_ready_is_sent_at_most_once_per_worker():
    sim, p, rec = started(1, two_workers_target)
    sim.run_until_idle()
    assert rec.count('worker_error') == 0  # a second READY would be a ProtocolError (R85)
    assert rec.count('worker_ready') == 1
    close(sim, p)


class FailingInitWorker(ClusterWorker):
    def _initialize(self):
        raise RuntimeError('cannot initialize')


def failing_init_target():
    FailingInitWorker()


def test_r106_failed_initialization_never_sends_ready_and_kills_the_worker():
    sim, p, rec = make(failing_init_target, restart='never')
    p.fork(1)
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    assert rec.count('worker_ready') == 0
    assert sim.exits[1] == (1, None)
    assert 'cannot initialize' in sim.tracebacks[1]
    names = rec.for_worker(1)
    assert names.index('worker_disconnect') < names.index('worker_exit')
    close(sim, p)


def prevented_failure_target():
    worker = FailingInitWorker(initialize=False)
    worker.on('initialize_error', lambda e: (note('error', repr(e.data['error'])), e.prevent()))
    worker.initialize()


def test_r106_prevented_initialize_error_leaves_the_worker_not_ready_until_ready_timeout():
    sim, p, rec = make(prevented_failure_target, ready_timeout=5.0, restart='never')
    p.fork(1)
    sim.run_until(lambda: rec.count('worker_error') == 1)
    assert seen['error'] == ["RuntimeError('cannot initialize')"]
    assert rec.count('worker_ready') == 0
    assert isinstance(rec.of('worker_error')[0]['error'], ReadyTimeout)
    close(sim, p)


def unwritable_ready_target():
    sim = seen['sim'][0]
    sim.fail_next_send(ClusterWorker.worker_id, 'to_primary')
    worker = ClusterWorker()
    worker.on('primary_disconnect', lambda event: note('disconnect', worker.initialized))


def test_r105_ready_that_cannot_be_written_leaves_the_worker_unready_and_it_ends_with_code_0():
    sim, p, rec = make(unwritable_ready_target)
    note('sim', sim)
    p.fork(1)
    sim.run_until(lambda: rec.count('worker_exit') == 1, timeout=20)
    assert seen['disconnect'] == [True]
    assert rec.count('worker_ready') == 0
    assert rec.of('worker_exit')[0]['code'] == 0
    close(sim, p)


# == R107 worker.send ===================================================================================

def sending_target():
    worker = ClusterWorker(initialize=False)  # bound but not initialized: send works
    future = worker.send({'n': 1})
    note('first', (isinstance(future, asyncio.Future), future.done(), future.result()))
    bad = worker.send({'bad': object()})
    note('bad', type(bad.exception()).__name__)
    worker.initialize()


def test_r107_send_works_once_bound_and_resolves_when_written():
    sim, p, rec = started(1, sending_target)
    assert seen['first'] == [(True, True, None)]
    assert seen['bad'] == ['EncodeError']
    sim.run_until(lambda: rec.count('worker_message') == 1)
    sim.run_until_idle()
    assert [d['message'] for d in rec.of('worker_message')] == [{'n': 1}]
    close(sim, p)


def oversized_sender():
    worker = ClusterWorker()
    note('big', type(worker.send('x' * 500).exception()).__name__)


def test_r107_oversized_message_rejects_with_encode_error():
    sim = MemoryTransport(seed=1, max_frame_size=128)
    sim_, p, rec = started(1, oversized_sender, sim=sim)
    assert seen['big'] == ['EncodeError']
    sim.run_until_idle()
    assert rec.count('worker_message') == 0 and rec.count('worker_error') == 0
    close(sim, p)


def send_after_disconnect_target():
    worker = ClusterWorker()

    def on_disconnect(event):
        future = worker.send('too late')
        note('late', (future.done(), type(future.exception()).__name__))
    worker.on('primary_disconnect', on_disconnect)


def test_r107_send_after_the_link_closed_is_already_rejected_with_send_error():
    sim, p, rec = started(1, send_after_disconnect_target)
    p.shut_down()
    sim.run_until(lambda: p.closed)
    assert seen['late'] == [(True, 'SendError')]
    assert rec.count('worker_message') == 0


def test_r107_send_outside_a_worker_rejects_with_not_a_worker_error():
    async def main():
        worker = ClusterWorker(initialize=False)
        return worker.send('x')

    future = asyncio.run(main())
    assert isinstance(future.exception(), NotAWorkerError)
    with pytest.raises(TypeError):
        ClusterWorker(initialize=False).send()


# == R108 primary_message ==============================================================================

class RoutingWorker(ClusterWorker):
    def _event_primary_message_job(self, event):
        note('trace', ('routed', event.data['message']['n']))


def routing_target():
    worker = RoutingWorker()
    worker.on('primary_message', lambda e: note('trace', ('on', e.data['message'])))
    worker.after('primary_message', lambda e: note('trace', 'after'))


def test_r108_primary_messages_arrive_in_order_and_route_between_on_and_after():
    sim, p, rec = started(1, routing_target)
    for message in ({'type': 'job', 'n': 1}, 'plain', {'type': 'not-id'}, {'type': 'job', 'n': 2}):
        p.send(message)
    sim.run_until(lambda: len(seen.get('trace', ())) == 10)
    assert seen['trace'] == [
        ('on', {'type': 'job', 'n': 1}), ('routed', 1), 'after',
        ('on', 'plain'), 'after',
        ('on', {'type': 'not-id'}), 'after',
        ('on', {'type': 'job', 'n': 2}), ('routed', 2), 'after']
    close(sim, p)


def prevent_routing_target():
    worker = RoutingWorker()
    worker.on('primary_message', lambda e: (note('trace', 'on'), e.prevent()))


def test_r108_preventing_primary_message_disables_routing():
    sim, p, rec = started(1, prevent_routing_target)
    p.send({'type': 'job', 'n': 1})
    sim.run_until(lambda: seen.get('trace'))
    sim.run_until_idle()
    assert seen['trace'] == ['on']
    close(sim, p)


# == R109–R111 disconnect ===============================================================================

def flushing_target():
    worker = ClusterWorker()
    link = current_link()
    worker.on('primary_message', lambda e: note('got', e.data['message']))
    worker.on('primary_disconnect', lambda e: note('disconnect', link.is_open))


def test_r109_disconnect_flushes_written_frames_and_discards_later_messages():
    sim, p, rec = started(1, flushing_target)
    h = p.workers[0]
    p.shut_down()
    p.send('after DISCONNECT', to=h)  # the handle is still ready: written after DISCONNECT
    sim.run_until(lambda: p.closed)
    assert seen['disconnect'] == [False]  # its end of the link is closed when it is published
    assert 'got' not in seen  # discarded


def write_then_get_disconnected_target():
    worker = ClusterWorker()

    def on_message(event):
        worker.send('reply 1')
        worker.send('reply 2')
    worker.on('primary_message', on_message)


def test_r109_frames_written_before_disconnect_still_reach_the_primary():
    sim, p, rec = started(1, write_then_get_disconnected_target)
    sim.hold(1, 'to_primary')
    p.send('go')
    sim.advance(0.1)
    p.shut_down()  # DISCONNECT reaches the worker after it wrote its replies
    sim.release(1, 'to_primary')
    sim.run_until(lambda: p.closed)
    assert [d['message'] for d in rec.of('worker_message')] == ['reply 1', 'reply 2']


def eof_target():
    worker = ClusterWorker()
    worker.on('primary_disconnect', lambda e: note('disconnect', (ClusterWorker.worker_id, e.data)))


def test_r110_eof_without_disconnect_publishes_primary_disconnect_and_exits_0():
    sim, p, rec = started(2, eof_target)
    entries = len(rec.entries)
    sim.kill_primary()
    sim.run_until(lambda: not sim.alive(1) and not sim.alive(2))
    assert sorted(seen['disconnect']) == [(1, {}), (2, {})]
    assert sim.exits == {1: (0, None), 2: (0, None)}
    assert len(rec.entries) == entries  # the primary publishes nothing more


def after_disconnect_target():
    worker = ClusterWorker()
    link = current_link()
    worker.after('primary_disconnect', lambda e: note('after', (worker.destroyed, link.is_open,
                                                                type(worker.send('x').exception()).__name__)))
    worker.on('destroy', lambda e: note('destroy', True))


def test_r111_default_action_destroys_on_the_next_turn_after_the_after_stage():
    sim, p, rec = started(1, after_disconnect_target)
    p.shut_down()
    sim.run_until(lambda: p.closed)
    assert seen['after'] == [(False, False, 'SendError')]
    assert seen['destroy'] == [True]
    assert sim.exits[1] == (0, None)
    assert rec.of('worker_exit')[0]['code'] == 0


def keep_running_target():
    worker = ClusterWorker()
    worker.on('primary_disconnect', lambda e: e.prevent())


def test_r111_prevented_primary_disconnect_keeps_running_until_the_kill_timer():
    sim, p, rec = started(1, keep_running_target, shutdown_timeout=100)
    t0 = sim.loop.time()
    p.shut_down()
    sim.run_until(lambda: p.closed)
    # the kill timer of 6.765 s force-exits it with code 0 (before shutdown_timeout)
    assert sim.exits[1] == (0, None)
    assert rec.times('worker_exit')[0] - t0 == pytest.approx(KILL_TIMER, abs=0.05)


def later_destroy_target(timeout):
    def target():
        worker = ClusterWorker()

        def on_disconnect(event):
            event.prevent()

            async def clean_up():
                await asyncio.sleep(1.0)
                note('cleanup', 'started')
                worker.destroy(timeout=timeout)
                await asyncio.sleep(100)  # would keep it busy, but destroy ends it
            return clean_up()  # a handler's awaitable runs as a task (R27)
        worker.on('primary_disconnect', on_disconnect)
    return target


def test_r111_later_destroy_ends_the_worker_after_its_cleanup():
    sim, p, rec = started(1, later_destroy_target(2.0), shutdown_timeout=100)
    t0 = sim.loop.time()
    p.shut_down()
    sim.run_until(lambda: p.closed)
    assert seen['cleanup'] == ['started']
    assert sim.exits[1] == (0, None)
    assert 1.0 <= rec.times('worker_exit')[0] - t0 < 1.1


def hanging_cleanup_target(timeout):
    def target():
        worker = ClusterWorker()

        def on_disconnect(event):
            event.prevent()
            asyncio.get_running_loop().call_later(0.5, lambda: worker.destroy(timeout=timeout))
        worker.on('primary_disconnect', on_disconnect)
        worker.on('destroy_complete', lambda e: note('destroyed', ClusterWorker.worker_id))
    return target


def test_r111_destroy_timeout_can_shorten_but_not_extend_the_kill_timer():
    # shorter: destroy at 0.5 s with timeout 1 -> deadline 1.5 s; the worker hangs right after destroy
    sim, p, rec = started(1, hanging_cleanup_target(1.0), shutdown_timeout=100)
    p.on('worker_exit', lambda e: None)
    t0 = sim.loop.time()
    p.shut_down()
    sim.run_until(lambda: seen.get('destroyed'))
    sim.hang(1)
    sim.run_until(lambda: p.closed)
    assert sim.exits[1] == (0, None)
    assert rec.times('worker_exit')[0] - t0 <= 1.5 + 0.01
    # longer: timeout 100 cannot push the deadline past 6.765 s
    seen.clear()
    sim, p, rec = started(1, hanging_cleanup_target(100.0), shutdown_timeout=100)
    t0 = sim.loop.time()
    p.shut_down()
    sim.run_until(lambda: seen.get('destroyed'))
    sim.hang(1)
    sim.run_until(lambda: p.closed)
    assert sim.exits[1] == (0, None)
    assert rec.times('worker_exit')[0] - t0 <= KILL_TIMER + 0.01


# == R112, R113 destroy and the end of a worker ======================================================

def self_destroy_target():
    worker = ClusterWorker()
    worker.on('primary_disconnect', lambda e: note('primary_disconnect', True))
    worker.on('destroy_complete', lambda e: note('destroy_complete', e.data))

    def on_message(event):
        worker.destroy('bye', timeout=3.0)
    worker.on('primary_message', on_message)


def test_r112_self_destroy_sends_exiting_and_publishes_no_primary_disconnect():
    sim, p, rec = started(1, self_destroy_target, restart='never')
    h = p.workers[0]
    p.send('go')
    t0 = sim.loop.time()
    sim.run_until(lambda: h.is_dead())
    assert 'primary_disconnect' not in seen
    assert seen['destroy_complete'] == [{'args': ('bye',), 'kwargs': {}}]
    assert h.exited_after_disconnect is True
    assert sim.exits[1] == (0, None)
    assert rec.times('worker_exit')[0] - t0 < 0.1  # at once, not after the timeout (R113)
    close(sim, p)


@pytest.mark.parametrize('timeout', [0, -1, 0.0])
def test_r112_destroy_timeout_must_be_positive(timeout):
    worker = ClusterWorker(initialize=False)
    with pytest.raises(ValueError, match='timeout'):
        worker.destroy(timeout=timeout)
    assert not worker.destroyed


def test_r112_destroy_timeout_type_is_checked():
    with pytest.raises(TypeError, match='timeout'):
        ClusterWorker(initialize=False).destroy(timeout='soon')


def cleanup_target():
    worker = ClusterWorker()

    async def long_task():
        try:
            await asyncio.sleep(1000)
        finally:
            note('cleanup', ClusterWorker.worker_id)
    worker.on('primary_message', lambda e: worker.destroy())
    return long_task()  # runs as a task on the worker's loop (R99)


def test_r113_destroy_cancels_tasks_lets_them_clean_up_and_exits_0_at_once():
    sim, p, rec = started(1, cleanup_target, restart='never')
    t0 = sim.loop.time()
    p.send('go')
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    assert seen['cleanup'] == [1]
    assert sim.exits[1] == (0, None)
    assert rec.times('worker_exit')[0] - t0 < 0.1
    close(sim, p)


def raising_handler_target():
    worker = ClusterWorker()

    def on_message(event):
        raise ValueError('handler failed: ' + event.data['message'])
    worker.on('primary_message', on_message)
    worker.after('primary_message', lambda e: note('after', True))


def test_r33_exception_in_a_worker_handler_ends_the_worker_with_code_1():
    sim, p, rec = started(1, raising_handler_target, restart='never')
    p.send('boom')
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    assert sim.exits[1] == (1, None)
    assert 'ValueError: handler failed: boom' in sim.tracebacks[1]
    assert 'after' not in seen
    names = [n for n in rec.for_worker(1) if n != 'remove_worker']
    assert names[-2:] == ['worker_disconnect', 'worker_exit']
    assert rec.of('worker_exit')[0]['code'] == 1
    assert rec.of('worker_exit')[0]['worker'].exited_after_disconnect is False
    close(sim, p)


def raising_target():
    ClusterWorker()
    raise KeyError('target failed')


async def raising_coroutine_target():
    ClusterWorker()
    await asyncio.sleep(1)
    raise KeyError('coroutine target failed')


def raising_task_target():
    worker = ClusterWorker()

    async def handler(event):
        await asyncio.sleep(0)
        raise LookupError('task failed')
    worker.on('primary_message', handler)


def raising_callback_target():
    ClusterWorker()

    def fail():
        raise ArithmeticError('callback failed')
    asyncio.get_running_loop().call_later(2.0, fail)


@pytest.mark.parametrize('target, text, needs_message', [
    (raising_target, 'target failed', False),
    (raising_coroutine_target, 'coroutine target failed', False),
    (raising_task_target, 'task failed', True),
    (raising_callback_target, 'callback failed', False),
])
def test_r33_exceptions_reaching_the_worker_runtime_are_fatal(target, text, needs_message):
    sim, p, rec = make(target, restart='never')
    p.fork(1)
    sim.run_until(lambda: rec.count('worker_online') == 1)
    if needs_message:
        sim.run_until(lambda: len(p.workers) == 1)
        p.send('go')
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    assert sim.exits[1] == (1, None)
    assert text in sim.tracebacks[1]
    assert not p.closed  # the primary is unaffected
    close(sim, p)


def system_exit_target(code):
    def target():
        worker = ClusterWorker()
        worker.on('primary_message', lambda e: (_ for _ in ()).throw(SystemExit(code)))
    return target


@pytest.mark.parametrize('code, expected', [(None, 0), (0, 0), (3, 3), (-2, -2), ('bye', 1)])
def test_r33_system_exit_ends_the_worker_with_its_code_and_no_traceback(code, expected, capsys):
    sim, p, rec = started(1, system_exit_target(code), restart='never')
    p.send('go')
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    assert sim.exits[1] == (expected, None)
    assert rec.of('worker_exit')[0]['code'] == expected
    assert 1 not in sim.tracebacks
    if code == 'bye':
        assert 'bye' in capsys.readouterr().err
    close(sim, p)


def blocked_after_disconnect_target():
    worker = ClusterWorker()
    worker.on('primary_disconnect', lambda e: e.prevent())


def test_r113_kill_timer_fires_even_when_the_worker_loop_is_blocked():
    sim, p, rec = started(1, blocked_after_disconnect_target, shutdown_timeout=100)
    t0 = sim.loop.time()
    p.shut_down()
    sim.run_until(lambda: rec.count('worker_disconnect') == 1)
    sim.hang(1)  # its loop is blocked now
    sim.run_until(lambda: p.closed)
    assert sim.exits[1] == (0, None)
    assert rec.times('worker_exit')[0] - t0 == pytest.approx(KILL_TIMER, abs=0.05)


def test_r50_destroy_twice_outside_a_worker_is_a_no_op():
    worker = ClusterWorker(initialize=False)
    assert worker.destroy(timeout=1.0) is worker
    assert worker.destroy(timeout=0.5) is worker
    assert worker.destroyed and worker._kill_timeout == 1.0


def exiting_unwritable_target():
    sim = seen['sim'][0]
    worker = ClusterWorker()

    def leave(event):
        sim.fail_next_send(ClusterWorker.worker_id, 'to_primary')
        worker.destroy()
    worker.on('primary_message', leave)


def test_r112_destroy_whose_exiting_frame_cannot_be_written_still_ends_with_code_0():
    sim, p, rec = make(exiting_unwritable_target)
    note('sim', sim)
    p.fork(1)
    sim.run_until(lambda: len(p.workers) == 1, timeout=10)
    handle = p.workers[0]
    p.send('leave')
    sim.run_until(lambda: rec.count('worker_exit') == 1, timeout=20)
    assert rec.of('worker_exit')[0]['code'] == 0
    assert handle.exited_after_disconnect is False  # EXITING never arrived
    close(sim, p)


def pending_listen_target(then):
    def target():
        worker = ClusterWorker()
        if then == 'destroy':
            listen = worker.listen(('127.0.0.1', 0))
            listen.send(None)  # runs up to waiting for the primary's answer

            def destroy():
                worker.destroy()
                try:
                    listen.send(None)
                except ListenError as error:
                    note('listen', str(error))
            asyncio.get_running_loop().call_soon(destroy)
            return

        async def wait_for_answer():
            try:
                await worker.listen(('127.0.0.1', 0))
            except ListenError as error:
                note('listen', str(error))
        return wait_for_answer()
    return target


def test_r112_destroy_rejects_a_pending_listen_with_listen_error():
    sim, p, rec = make(pending_listen_target('destroy'))
    p.fork(1)
    sim.run_until(lambda: seen.get('listen'), timeout=10)
    assert 'destroyed before the primary answered' in seen['listen'][0]
    close(sim, p)


def test_r109_disconnect_rejects_a_pending_listen_with_listen_error():
    sim, p, rec = make(pending_listen_target('wait'))
    p.fork(1)
    sim.run_until(lambda: len(p.workers) == 1, timeout=10)
    sim.hold(1, 'to_primary')  # the LISTEN request stays in flight
    sim.run_until(lambda: sim.links[1].to_primary.queue, timeout=10)
    p.workers[0].disconnect()
    sim.run_until(lambda: seen.get('listen'), timeout=10)
    assert 'primary disconnected before answering' in seen['listen'][0]
    sim.release(1)
    close(sim, p)


# == R114 listen =========================================================================================

def listen_target(address):
    async def target():
        worker = ClusterWorker()
        try:
            sock = await worker.listen(address)
        except Exception as error:  # noqa: BLE001 - recorded for the test
            note('error', error)
            return
        note('sockets', (ClusterWorker.worker_id, sock.getsockname()))
        note('open', sock)
    return target


def close_sockets():
    for sock in seen.get('open', ()):
        sock.close()


def test_r114_workers_share_one_listening_socket_per_address():
    sim, p, rec = make(listen_target(('127.0.0.1', 0)))
    p.fork(2)
    sim.run_until(lambda: len(seen.get('sockets', ())) == 2)
    (_, first), (_, second) = seen['sockets']
    assert first == second and first[1] > 0
    addresses = [d['address'] for d in rec.of('worker_listening')]
    assert addresses == [first, first] or [tuple(a) for a in addresses] == [tuple(first)] * 2
    assert sorted(d['worker'].id for d in rec.of('worker_listening')) == [1, 2]
    close(sim, p)
    close_sockets()


def listen_and_close_target():
    async def target():
        worker = ClusterWorker()
        sock = await worker.listen(('127.0.0.1', 0))
        note('sockets', (ClusterWorker.worker_id, sock.getsockname()))
        sock.close()  # this worker is done with its socket; the primary keeps the shared one
    return target()


def test_r114_shared_socket_survives_a_worker_closing_its_copy():
    sim, p, rec = make(listen_and_close_target)
    p.fork(1)
    sim.run_until(lambda: len(seen.get('sockets', ())) == 1)
    p.fork(1)  # a later worker asks for the same address: it must get the same open socket
    sim.run_until(lambda: len(seen.get('sockets', ())) == 2)
    (_, first), (_, second) = seen['sockets']
    assert first == second and first[1] > 0
    assert rec.count('worker_listening') == 2
    close(sim, p)


def test_r114_bind_failure_rejects_with_listen_error_and_publishes_nothing():
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(('127.0.0.1', 0))
    blocker.listen(1)
    try:
        sim, p, rec = make(listen_target(blocker.getsockname()))
        p.fork(1)
        sim.run_until(lambda: seen.get('error'))
        assert isinstance(seen['error'][0], ListenError)
        assert rec.count('worker_listening') == 0
        close(sim, p)
    finally:
        blocker.close()


def test_r114_listen_error_cause_is_the_os_error():
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(('127.0.0.1', 0))
    blocker.listen(1)
    try:
        sim, p, rec = make(listen_target(blocker.getsockname()))
        p.fork(1)
        sim.run_until(lambda: seen.get('error'))
        error = seen['error'][0]
        assert isinstance(error, ListenError)
        assert isinstance(error.__cause__, OSError)
        close(sim, p)
    finally:
        blocker.close()


def test_r114_listen_outside_a_worker_rejects_with_not_a_worker_error():
    async def main():
        with pytest.raises(NotAWorkerError):
            await ClusterWorker(initialize=False).listen(('127.0.0.1', 0))
    asyncio.run(main())


def bad_listen_target():
    worker = ClusterWorker()

    async def attempts():
        for address in (('127.0.0.1',), ('127.0.0.1', '80'), (1, 80), 8080):
            try:
                await worker.listen(address)
            except (TypeError, ValueError) as error:
                note('errors', type(error))
    return attempts()


def test_r114_listen_rejects_malformed_addresses_before_asking_the_primary():
    sim, p, rec = started(1, bad_listen_target)
    sim.run_until(lambda: len(seen.get('errors', [])) == 4, timeout=10)
    assert seen['errors'] == [ValueError, ValueError, ValueError, TypeError]
    assert rec.count('worker_error') == 0 and rec.count('worker_listening') == 0
    close(sim, p)


def unix_listen_target(path):
    def target():
        worker = ClusterWorker()

        async def listen():
            sock = await worker.listen(path)
            note('unix', sock.getsockname())
            sock.close()
        return listen()
    return target


def test_r114_listen_on_a_unix_socket_path(tmp_path):
    path = str(tmp_path / 's.sock')
    sim, p, rec = started(1, unix_listen_target(path))
    sim.run_until(lambda: seen.get('unix'), timeout=10)
    assert seen['unix'] == [path]
    assert rec.of('worker_listening')[0]['address'] == path
    close(sim, p)


def listen_after_close_target():
    worker = ClusterWorker()

    async def listen():
        try:
            await worker.listen(('127.0.0.1', 0))
        except ListenError as error:
            note('listen', error)
    def on_disconnect(event):
        event.prevent()
        return listen()
    worker.on('primary_disconnect', on_disconnect)


def test_r114_listen_after_the_link_closed_rejects_with_listen_error():
    sim, p, rec = started(1, listen_after_close_target)
    p.workers[0].disconnect()
    sim.run_until(lambda: seen.get('listen'), timeout=10)
    assert 'link to the primary is closed' in str(seen['listen'][0])
    assert isinstance(seen['listen'][0].__cause__, TransportError)
    close(sim, p)


def cancelled_listen_target(address, then):
    def target():
        worker = ClusterWorker()
        loop = asyncio.get_running_loop()
        task = loop.create_task(worker.listen(address))

        def cancel_then():
            task.cancel()
            if then == 'destroy':
                loop.call_soon(worker.destroy)
        loop.call_soon(cancel_then)  # after the task sent LISTEN
        worker.on('primary_disconnect', lambda event: note('disconnected', True))
    return target


@pytest.mark.parametrize('then', ['destroy', 'disconnect', 'answer'])
def test_r114_cancelled_listen_is_forgotten_without_harm(then):
    blocker = socket.socket()
    blocker.bind(('127.0.0.1', 0))
    blocker.listen(1)
    try:
        address = blocker.getsockname() if then == 'answer' else ('127.0.0.1', 0)
        sim, p, rec = make(cancelled_listen_target(address, then))
        if then == 'destroy':
            sim.slow_boot(0.0)
        p.fork(1)
        sim.run_until(lambda: rec.count('worker_online') == 1, timeout=10)
        if then == 'destroy':
            sim.hold(1, 'to_worker')  # the primary's answer never reaches it before destroy
            sim.run_until(lambda: rec.count('worker_exit') == 1, timeout=30)
        elif then == 'disconnect':
            sim.hold(1, 'to_primary')
            handle = rec.of('worker_fork')[0]['worker']
            sim.run_until(lambda: handle.state == 'online' and sim.links[1].to_primary.queue, timeout=10)
            handle.disconnect()
            sim.release(1, 'to_primary')
            sim.run_until(lambda: rec.count('worker_exit') == 1, timeout=30)
            assert seen['disconnected'] == [True]
        else:  # the bind-failure answer arrives for a listen nobody awaits any more
            sim.run_until(lambda: len(p.workers) == 1, timeout=10)
            sim.advance(1.0)
            assert sim.alive(1)
        assert sim.tracebacks == {}
        assert all(code == 0 for code, _signal in sim.exits.values())
        close(sim, p)
    finally:
        blocker.close()


class LateWorker(ClusterWorker):
    def _event_primary_message_ask(self, event):
        return 'answer'


def late_frames_target():
    worker = LateWorker()
    worker.on('primary_message', lambda event: note('got', event.data['message']))
    worker.on('primary_disconnect', lambda event: event.prevent())


def test_r109_messages_and_requests_after_disconnect_are_discarded():
    sim, p, rec = started(1, late_frames_target)
    handle = p.workers[0]
    handle.disconnect()
    p.send('late', to=handle)
    reply = p.request({'type': 'ask'}, to=handle)
    sim.run_until(lambda: reply.done(), timeout=30)
    assert seen.get('got') is None
    assert isinstance(reply.exception(), WorkerLost)
    close(sim, p)


def test_r130_heartbeat_after_the_worker_closed_its_link_is_not_answered():
    sim, p, rec = started(1, late_frames_target)
    handle = p.workers[0]
    handle.disconnect()  # the worker closes its end but keeps running (prevented)
    sim.run_until(lambda: handle.state == 'disconnected', timeout=10)
    sim.links[1].to_worker.push((protocol.HEARTBEAT, None))  # a heartbeat already on the wire
    sim.advance(1.0)
    assert sim.alive(1) and sim.tracebacks == {}
    close(sim, p)


def test_r130_heartbeat_ack_that_cannot_be_written_is_dropped():
    sim, p, rec = started(1, heartbeat_interval=1.0)
    sim.fail_next_send(1, 'to_primary')
    sim.run_until(lambda: rec.count('worker_exit') == 1, timeout=10)
    # the failed ACK broke the link: the worker ended as if its primary were gone (code 0)
    assert rec.of('worker_exit')[0]['code'] == 0 and sim.tracebacks == {}
    close(sim, p)


def test_r114_unexpected_listening_answer_closes_the_socket():
    sim, p, rec = started(1)
    sock = socket.socket()
    sim.links[1].send_socket(sock, {'id': 12345, 'address': ['x', 1]})
    sim.advance(1.0)
    sock.close()
    assert sim.alive(1) and sim.tracebacks == {}
    close(sim, p)


def test_r120_unexpected_control_frame_is_fatal_to_the_worker():
    sim, p, rec = started(1)
    sim.links[1].write(protocol.ONLINE, None)
    sim.run_until(lambda: rec.count('worker_exit') == 1, timeout=10)
    assert rec.of('worker_exit')[0]['code'] == 1
    assert 'unexpected ONLINE frame' in sim.tracebacks[1]
    close(sim, p)


class ReplyThenRaise(ClusterWorker):
    def _event_primary_message_twice(self, event):
        event.reply('first')
        raise RuntimeError('after the reply')


def reply_then_raise_target():
    ReplyThenRaise()


def test_r33_request_handler_raising_after_it_replied_is_fatal_to_the_worker():
    sim, p, rec = started(1, reply_then_raise_target)
    reply = p.request({'type': 'twice'}, to=1)
    sim.run_until(lambda: rec.count('worker_exit') == 1, timeout=10)
    assert reply.result() == 'first'
    assert rec.of('worker_exit')[0]['code'] == 1 and 'after the reply' in sim.tracebacks[1]
    close(sim, p)


# == the primary stays unaffected by worker-side failures ==============================================

def test_r33_worker_failure_is_replaced_by_default():
    sim, p, rec = started(1, raising_handler_target)
    p.send('boom')
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    sim.run_until(lambda: len(p.workers) == 1)
    assert p.workers[0].id == 2
    close(sim, p)
