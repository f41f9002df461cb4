"""Rule tests for ClusterPrimary and WorkerHandle (SPEC §4, R54–R98) and supervision (§7,
R126–R139), on the deterministic memory transport."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import types
from typing import Any

import pytest

from isocluster import (
    Backoff, ClusterPrimary, ClusterWorker, DecodeError, DestroyedError, EncodeError, HeartbeatTimeout,
    InvalidDestinationError, NotInitializedError, ProtocolError, ReadyTimeout, RestartPolicy, SendError,
    TransportError, WorkerHandle,
)
from isocluster import ClusterError, protocol
from isocluster.supervision import check_seconds
from isocluster.transport.base import Signals
from isocluster.transport.base import current_link
from isocluster.transport.memory import MemoryTransport

from memory_helpers import (
    Recorder, RecordingTransport, close, crash_and_wait, crash_at_boot_worker, echo_worker, exit_at_boot_worker, inert_worker, make, ready_worker,
    started,
)

SIGTERM = signal.Signals.SIGTERM
SIGKILL = signal.Signals.SIGKILL


# == R54 construction and option validation ===================================================

@pytest.mark.parametrize('options, error, name', [
    ({'worker_target': ready_worker, 'worker_script': 'w.py'}, ValueError, 'worker_target'),
    ({'worker_target': ready_worker, 'worker_args': ['a']}, ValueError, 'worker_args'),
    ({'worker_target': ready_worker, 'codec': 'nope'}, ValueError, 'codec'),
    ({'worker_target': ready_worker, 'codec': 42}, TypeError, 'codec'),
    ({'worker_target': ready_worker, 'shutdown_timeout': -1}, ValueError, 'shutdown_timeout'),
    ({'worker_target': ready_worker, 'shutdown_timeout': 'soon'}, TypeError, 'shutdown_timeout'),
    ({'worker_target': ready_worker, 'kill_timeout': -0.5}, ValueError, 'kill_timeout'),
    ({'worker_target': ready_worker, 'kill_timeout': [1]}, TypeError, 'kill_timeout'),
    ({'worker_target': ready_worker, 'ready_timeout': -3}, ValueError, 'ready_timeout'),
    ({'worker_target': ready_worker, 'ready_timeout': '60'}, TypeError, 'ready_timeout'),
    ({'worker_target': ready_worker, 'heartbeat_interval': -1}, ValueError, 'heartbeat_interval'),
    ({'worker_target': ready_worker, 'heartbeat_timeout': 'x'}, TypeError, 'heartbeat_timeout'),
    ({'worker_target': 'not callable'}, TypeError, 'worker_target'),
    ({'worker_script': 42}, TypeError, 'worker_script'),
    ({'worker_target': ready_worker, 'transport': object()}, TypeError, 'transport'),
    ({'worker_target': ready_worker, 'restart': 'sometimes'}, ValueError, 'restart'),
    ({'worker_target': ready_worker, 'restart_intensity': -1}, ValueError, 'restart_intensity'),
    ({'worker_target': ready_worker, 'restart_period': 0}, ValueError, 'restart_period'),
    ({'worker_target': ready_worker, 'restart_backoff': 3}, TypeError, 'restart_backoff'),
    ({'worker_target': ready_worker, 'restart_policy': 'always'}, TypeError, 'restart_policy'),
    ({'worker_target': ready_worker, 'restart_policy': RestartPolicy(), 'restart': 'never'}, ValueError, 'restart_policy'),
])
def test_r54_constructor_rejects_bad_options_naming_them(options, error, name):
    published = []

    class Watching(ClusterPrimary):
        def _publish(self, event_name, data=None):
            published.append(event_name)
            return super()._publish(event_name, data)

    if 'transport' not in options:
        options = {**options, 'transport': MemoryTransport(seed=1)}
    with pytest.raises(error, match=name):
        Watching(**options)
    assert published == []  # raised before anything was published


def test_r54_valid_options_are_accepted():
    sim = MemoryTransport(seed=1)
    p = ClusterPrimary(worker_target=ready_worker, transport=sim, codec='pickle', ready_timeout=None,
                       shutdown_timeout=0, kill_timeout=0.5, heartbeat_interval=1, heartbeat_timeout=2.5,
                       restart_policy=RestartPolicy(restart='never'))
    assert p.initialized
    close(sim, p)


def test_r54_fork_with_script_workers_on_memory_transport_raises_value_error_before_publishing():
    sim = MemoryTransport(seed=1)
    p = ClusterPrimary(worker_script=__file__, transport=sim)
    rec = Recorder(p)
    with pytest.raises(ValueError):
        p.fork(1)
    assert rec.count('fork') == 0
    # neither target nor script: the current script, also not runnable on the memory transport
    p2 = ClusterPrimary(transport=MemoryTransport(seed=1))
    rec2 = Recorder(p2)
    with pytest.raises(ValueError):
        p2.fork(2)
    assert rec2.entries == []


def test_r55_worker_silent_and_stdio_have_no_effect_on_memory_transport():
    sim, p, rec = started(2, worker_silent=True)
    assert [w.id for w in p.workers] == [1, 2]
    close(sim, p)
    sim2, p2, _ = started(1, worker_stdio={'stdout': 'devnull'})
    assert len(p2.workers) == 1
    close(sim2, p2)


@pytest.mark.parametrize('options, error, text', [
    ({'worker_script': 'w.py', 'worker_args': ['a', 3]}, TypeError, 'worker_args: expected a list of strings'),
    ({'worker_script': 'w.py', 'worker_args': 'abc'}, TypeError, 'worker_args: expected a list of strings'),
    ({'worker_target': ready_worker, 'worker_stdio': ['stdout']}, TypeError, 'worker_stdio: expected a mapping'),
    ({'worker_target': ready_worker, 'worker_stdio': {'stdlog': 'pipe'}}, ValueError, "worker_stdio: unknown streams \\['stdlog'\\]"),
    ({'worker_target': ready_worker, 'transport': object()}, TypeError, 'transport: expected a Transport'),
])
def test_r54_invalid_options_raise_naming_the_option(options, error, text):
    with pytest.raises(error, match=text):
        ClusterPrimary(**options)


def test_r54_script_worker_args_become_the_worker_argv_and_memory_fork_rejects_scripts():
    sim = RecordingTransport(seed=1)
    p = ClusterPrimary(worker_script='w.py', worker_args=['--x', 'y'], transport=sim)
    with pytest.raises(ValueError, match='memory transport runs only worker_target'):
        p.fork()
    assert sim.specs[-1].args == ('--x', 'y')
    assert p.stats()['forked'] == 0
    close(sim, p)


def test_r54_worker_args_given_as_a_generator_are_kept():
    # regression: the type check used to consume a one-shot iterable (fixed in dc68723)
    sim = RecordingTransport(seed=1)
    p = ClusterPrimary(worker_script='w.py', worker_args=(a for a in ['--x', 'y']), transport=sim)
    for _ in range(2):  # each fork builds its spec from the kept arguments
        with pytest.raises(ValueError, match='memory transport runs only worker_target'):
            p.fork()
        assert sim.specs[-1].args == ('--x', 'y')


# == R56, R57 ==================================================================================

def test_r56_two_primaries_number_their_own_workers_and_see_only_their_own_events():
    sim_a, a, rec_a = started(2, seed=3)
    sim_b, b, rec_b = started(3, seed=4)
    assert [w.id for w in a.workers] == [1, 2]
    assert [w.id for w in b.workers] == [1, 2, 3]
    assert rec_a.count('worker_ready') == 2 and rec_b.count('worker_ready') == 3
    # a's handles are invalid destinations for b (R70: a handle must belong to this primary)
    future = b.send('x', to=a.workers[0])
    assert isinstance(future.exception(), InvalidDestinationError)
    close(sim_a, a)
    assert rec_b.count('worker_disconnect') == 0
    close(sim_b, b)


def test_r56_worker_ids_are_never_reused():
    sim, p, rec = started(2)
    crash_and_wait(sim, p, rec, 1, code=1, pool=2)
    crash_and_wait(sim, p, rec, 2, code=1, pool=2)
    assert [w.id for w in p.workers] == [3, 4]
    forked_ids = [d['worker'].id for d in rec.of('worker_fork')]
    assert forked_ids == [1, 2, 3, 4]
    close(sim, p)


def test_r57_plain_primary_is_initialized_during_construction():
    seen = []

    class P(ClusterPrimary):
        def _initialize_complete(self):
            seen.append(('initialize_complete', self.initialized))

    sim = MemoryTransport(seed=1)
    p = P(worker_target=ready_worker, transport=sim)
    assert seen == [('initialize_complete', True)]
    assert p.initialized
    # publish_once: a late subscriber is called at once with the stored event (R22)
    late = []
    p.on('initialize_complete', lambda e: late.append(e.name))
    assert late == ['initialize_complete']
    close(sim, p)


# == R58 states ==================================================================================

def test_r58_shut_down_in_state_new_stays_shutting_down_after_initialization():
    sim = MemoryTransport(seed=1)
    p = ClusterPrimary(worker_target=ready_worker, transport=sim, initialize=False)
    rec = Recorder(p)
    p.shut_down()
    p.initialize()
    assert p.initialized
    p.fork(2)  # not active: no-op
    sim.run_until(lambda: p.closed)
    assert rec.count('fork') == 0 and rec.count('worker_fork') == 0
    assert rec.count('shut_down_complete') == 1


def test_r58_destroy_in_state_new_destroys_at_once():
    sim = MemoryTransport(seed=1)
    p = ClusterPrimary(worker_target=ready_worker, transport=sim, initialize=False)
    rec = Recorder(p)
    p.destroy('a', k=1)
    assert p.destroyed
    assert rec.names() == ['destroy', 'destroy_complete']
    assert rec.count('shut_down') == 0
    assert p.closed


def test_r58_primary_is_never_active_again_after_shut_down():
    sim, p, rec = started(1)
    p.shut_down()
    sim.run_until(lambda: p.closed)
    p.fork(1)
    p.scale(3)
    p.reload()
    sim.run_until_idle()
    assert rec.count('fork') == 1  # only the first
    assert rec.count('reload') == 0
    assert p.workers == []


# == R59 fork ====================================================================================

@pytest.mark.parametrize('count', [2.5, -1, True, False, '2', None])
def test_r59_fork_rejects_bad_worker_count_with_value_error(count):
    sim, p, rec = make()
    with pytest.raises(ValueError, match='worker_count'):
        p.fork(count)
    assert rec.count('fork') == 0
    close(sim, p)


def test_r59_worker_count_is_checked_before_initialization_state():
    sim = MemoryTransport(seed=1)
    p = ClusterPrimary(worker_target=ready_worker, transport=sim, initialize=False)
    with pytest.raises(ValueError):
        p.fork(-1)
    with pytest.raises(NotInitializedError):
        p.fork(1)


def test_r59_fork_returns_self_and_starts_consecutive_forked_workers():
    sim, p, rec = make()
    states = []
    p.on('worker_fork', lambda e: states.append((e.data['worker'].id, e.data['worker'].state)))
    assert p.fork(worker_count=3) is p
    assert rec.of('fork') == [{'worker_count': 3}]
    sim.run_until(lambda: len(p.workers) == 3)
    assert states == [(1, 'forked'), (2, 'forked'), (3, 'forked')]
    close(sim, p)


def test_r59_fork_zero_publishes_fork_and_starts_nothing():
    sim, p, rec = make()
    p.fork(0)
    assert rec.of('fork') == [{'worker_count': 0}]
    sim.run_until_idle()
    assert rec.count('worker_fork') == 0 and p.stats()['forked'] == 0
    close(sim, p)


def test_r59_fork_after_shut_down_is_a_no_op_returning_self():
    sim, p, rec = make()
    p.shut_down()
    assert p.fork(2) is p
    sim.run_until(lambda: p.closed)
    assert rec.count('fork') == 0


def test_r59_fork_published_with_a_bad_count_raises_value_error_from_the_default_action():
    sim, p, rec = make()
    with pytest.raises(ValueError, match='fork: worker_count must be an int >= 0'):
        p._publish('fork', {'worker_count': 1.5})
    assert p.stats()['live'] == 0
    close(sim, p)


def test_r83_shut_down_in_an_on_fork_handler_starts_no_worker():
    sim, p, rec = make()
    p.once_on('fork', lambda event: p.shut_down())
    p.fork(2)
    sim.run_until(lambda: p.closed, timeout=10)
    assert rec.count('worker_fork') == 0 and p.stats()['forked'] == 0
    p.destroy()


# == R60, R61, R62 ================================================================================

def test_r60_worker_forks_follow_on_the_next_loop_turn_in_ascending_order():
    sim, p, rec = make()
    p.fork(3)
    assert rec.texts() == ['on fork', 'after fork']  # nothing more inside fork()
    sim.run_until(lambda: rec.count('worker_fork') == 3)
    assert rec.texts()[:8] == ['on fork', 'after fork', 'on worker_fork', 'after worker_fork',
                               'on worker_fork', 'after worker_fork', 'on worker_fork', 'after worker_fork']
    assert [e.worker for e in rec.entries[2:8]] == [1, 1, 2, 2, 3, 3]
    close(sim, p)


def _check_grammar(rec: Recorder, worker_id: int) -> None:
    """R61: fork once, online ≤1, ready ≤1 after online, disconnect once, exit once and last;
    messages/listening only between online and disconnect; errors between fork and exit."""
    names = rec.for_worker(worker_id)
    names = [n for n in names if n not in ('add_worker', 'remove_worker')]
    assert names.count('worker_fork') == 1 and names[0] == 'worker_fork'
    assert names.count('worker_online') <= 1
    assert names.count('worker_ready') <= 1
    if 'worker_ready' in names:
        assert names.index('worker_online') < names.index('worker_ready')
    assert names.count('worker_disconnect') == 1
    assert names.count('worker_exit') == 1 and names[-1] == 'worker_exit'
    assert names.count('worker_error') <= 1
    for i, name in enumerate(names):
        if name in ('worker_message', 'worker_listening'):
            assert names.index('worker_online') < i < names.index('worker_disconnect')


def chatty_worker():
    worker = ClusterWorker()
    worker.send('hello')
    worker.on('primary_message', lambda e: worker.send(e.data['message']))


@pytest.mark.parametrize('seed', [1, 2, 3, 4])
def test_r61_every_worker_follows_the_event_grammar(seed):
    sim, p, rec = started(3, chatty_worker, seed=seed, ready_timeout=5)
    p.send('ping')
    sim.crash(1, code=3)
    sim.crash(2, signal=9)
    p.worker_by_id[3].disconnect()
    sim.run_until(lambda: rec.count('worker_exit') == 3)
    sim.run_until(lambda: len(p.workers) == 3)
    p.destroy()
    sim.run_until(lambda: p.closed)
    ids = sorted({d['worker'].id for d in rec.of('worker_fork')})
    assert len(ids) >= 6
    for worker_id in ids:
        _check_grammar(rec, worker_id)


def early_sender():
    worker = ClusterWorker(initialize=False)
    worker.send('before init')
    worker.initialize()


def test_r62_worker_online_precedes_every_worker_message():
    sim, p, rec = make(early_sender)
    states = []
    p.on('worker_online', lambda e: states.append(e.data['worker'].state))
    p.fork(1)
    sim.run_until(lambda: len(p.workers) == 1)
    names = rec.for_worker(1)
    assert names.index('worker_online') < names.index('worker_message')
    assert rec.of('worker_message')[0]['message'] == 'before init'
    assert states == ['online']
    close(sim, p)


# == R63, R64, R65, R66 ===========================================================================

def fake_ready_worker():
    worker = ClusterWorker(initialize=False)  # bound, never initialized: never sends READY
    worker.send('ready')
    worker.send({'type': 'ready'})


def test_r63_user_message_ready_never_makes_a_worker_ready():
    sim, p, rec = make(fake_ready_worker, ready_timeout=None)
    p.fork(1)
    sim.run_until(lambda: rec.count('worker_message') == 2)
    sim.advance(5)
    assert [d['message'] for d in rec.of('worker_message')] == ['ready', {'type': 'ready'}]
    assert rec.count('worker_ready') == 0
    assert p.workers == []
    assert rec.of('worker_fork')[0]['worker'].state == 'online'
    close(sim, p)


def test_r63_ready_control_frame_is_never_a_worker_message():
    sim, p, rec = started(2)
    sim.run_until_idle()
    assert rec.count('worker_message') == 0
    assert rec.count('worker_ready') == 2
    close(sim, p)


def test_r64_worker_ready_nests_add_worker():
    sim, p, rec = make()
    p.fork(1)
    sim.run_until(lambda: len(p.workers) == 1)
    texts = rec.texts()
    i = texts.index('on worker_ready')
    assert texts[i:i + 4] == ['on worker_ready', 'on add_worker', 'after add_worker', 'after worker_ready']
    close(sim, p)


def test_r64_ready_from_a_worker_whose_online_was_prevented_is_ignored():
    sim, p, rec = make(ready_timeout=None)
    p.on('worker_online', lambda e: e.prevent())
    p.fork(1)
    sim.run_until(lambda: rec.count('worker_online') == 1)
    sim.advance(5)
    assert rec.count('worker_ready') == 0 and p.workers == []
    assert rec.count('worker_error') == 0  # ignored, not a protocol violation
    close(sim, p)


def slow_ready_worker():
    async def main():
        await asyncio.sleep(5.0 - ClusterWorker.worker_id)  # worker 1 is ready last
        ClusterWorker()
    return main()


def test_r65_workers_is_a_new_list_in_ascending_id_order_not_ready_order():
    sim, p, rec = make(slow_ready_worker)
    p.fork(3)
    sim.run_until(lambda: len(p.workers) == 3)
    assert [d['worker'].id for d in rec.of('worker_ready')] == [3, 2, 1]
    workers = p.workers
    assert [w.id for w in workers] == [1, 2, 3]
    assert workers is not p.workers
    workers.clear()
    assert len(p.workers) == 3
    close(sim, p)


def test_r65_worker_by_id_is_a_read_only_snapshot():
    sim, p, rec = started(2)
    mapping = p.worker_by_id
    assert isinstance(mapping, types.MappingProxyType)
    assert set(mapping) == {1, 2} and mapping[1] is p.workers[0]
    with pytest.raises(TypeError):
        mapping[3] = mapping[1]  # type: ignore[index]
    p.stop_worker(1)
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    assert set(mapping) == {1, 2}  # snapshot
    assert set(p.worker_by_id) == {2}
    close(sim, p)


def test_r65_worker_is_in_the_pool_in_after_worker_ready_not_in_on():
    sim, p, rec = make()
    seen = []
    p.on('worker_ready', lambda e: seen.append(('on', e.data['worker'] in p.workers, e.data['worker'].id in p.worker_by_id)))
    p.after('worker_ready', lambda e: seen.append(('after', e.data['worker'] in p.workers, e.data['worker'].id in p.worker_by_id)))
    p.fork(1)
    sim.run_until(lambda: len(p.workers) == 1)
    assert seen == [('on', False, False), ('after', True, True)]
    close(sim, p)


def test_r66_worker_ready_during_shutdown_is_published_added_then_removed():
    sim, p, rec = make()
    p.fork(1)
    sim.run_until(lambda: rec.count('worker_online') == 1)
    sim.hold(1, 'to_primary')  # READY is already written; keep it back
    p.shut_down()
    sim.run_until_idle()
    assert rec.count('worker_ready') == 0
    sim.release(1, 'to_primary')
    sim.run_until(lambda: p.closed)
    names = rec.names()
    assert names.index('shut_down') < names.index('worker_ready')
    assert names[names.index('worker_ready'):] == [
        'worker_ready', 'add_worker', 'worker_disconnect', 'remove_worker', 'worker_exit', 'shut_down_complete']


# == R67, R68, R69 round_robin =====================================================================

def test_r67_round_robin_cycles_in_ascending_id_order():
    sim, p, rec = started(3)
    assert [p.round_robin().id for _ in range(9)] == [1, 2, 3, 1, 2, 3, 1, 2, 3]
    close(sim, p)


def test_r67_picks_are_recorded_for_their_tag_only():
    sim, p, rec = started(3)
    assert [p.round_robin('a').id for _ in range(2)] == [1, 2]
    assert [p.round_robin().id for _ in range(2)] == [1, 2]
    assert p.round_robin('a').id == 3
    assert p.round_robin().id == 3
    assert p.round_robin(('t', 1)).id == 1  # any hashable tag
    close(sim, p)


def test_r67_never_picked_worker_goes_first_then_oldest_pick():
    sim, p, rec = started(3)
    assert [p.round_robin().id for _ in range(4)] == [1, 2, 3, 1]
    p.scale(4)  # adds worker 4, never picked
    sim.run_until(lambda: len(p.workers) == 4)
    assert [p.round_robin().id for _ in range(5)] == [4, 2, 3, 1, 4]
    close(sim, p)


def test_r68_round_robin_with_empty_pool_returns_none_and_records_nothing():
    sim, p, rec = make()
    assert p.round_robin() is None
    assert p.round_robin('x') is None
    p.fork(2)
    sim.run_until(lambda: len(p.workers) == 2)
    assert [p.round_robin().id for _ in range(3)] == [1, 2, 1]
    close(sim, p)


def test_r69_removed_worker_history_is_dropped_and_replacement_is_new():
    sim, p, rec = started(3)
    assert [p.round_robin().id for _ in range(3)] == [1, 2, 3]
    sim.crash(1, code=1)
    sim.run_until(lambda: [w.id for w in p.workers] == [2, 3, 4])
    # 4 was never picked: first; then the oldest of 2 and 3
    assert [p.round_robin().id for _ in range(4)] == [4, 2, 3, 4]
    # a fresh tag starts with the lowest id
    assert [p.round_robin(tag='custom').id for _ in range(3)] == [2, 3, 4]
    close(sim, p)


def test_r69_unhashable_tag_raises_type_error():
    sim, p, rec = started(1)
    with pytest.raises(TypeError):
        p.round_robin(tag=['list'])
    with pytest.raises(TypeError):
        p.round_robin(tag={})
    assert p.round_robin().id == 1
    close(sim, p)


# == R70–R75 send ===================================================================================

received: dict[int, list] = {}


def receiving_worker():
    worker_id = ClusterWorker.worker_id
    received[worker_id] = log = []
    worker = ClusterWorker()
    worker.on('primary_message', lambda e: log.append(e.data['message']))


@pytest.fixture
def receiving():
    received.clear()
    sim, p, rec = started(3, receiving_worker)
    yield sim, p, rec
    if not p.destroyed:
        close(sim, p)
    received.clear()


def test_r70_broadcast_reaches_every_pool_worker(receiving):
    sim, p, rec = receiving
    future = p.send({'n': 1})
    assert future.done() and future.result() is None
    sim.run_until(lambda: all(received[i] for i in (1, 2, 3)))
    assert received == {1: [{'n': 1}], 2: [{'n': 1}], 3: [{'n': 1}]}


def test_r70_int_destination_is_a_pool_worker_id(receiving):
    sim, p, rec = receiving
    assert p.send('to two', to=2).result() is None
    sim.run_until(lambda: received[2])
    sim.run_until_idle()
    assert received == {1: [], 2: ['to two'], 3: []}
    for bad in (4, 0, -1):
        assert isinstance(p.send('x', to=bad).exception(), InvalidDestinationError)


@pytest.mark.parametrize('bad', [True, False, '1', 1.0, -0.123, {}, object(), {1}])
def test_r70_other_destination_types_are_invalid(receiving, bad):
    sim, p, rec = receiving
    future = p.send('x', to=bad)
    assert future.done()
    assert isinstance(future.exception(), InvalidDestinationError)
    sim.run_until_idle()
    assert received == {1: [], 2: [], 3: []}


def test_r70_list_destinations_are_resolved_in_order_with_duplicates(receiving):
    sim, p, rec = receiving
    w1, w2, w3 = p.workers
    assert p.send('a', to=[3, w1, 3]).result() is None
    assert p.send('b', to=(w2,)).result() is None
    sim.run_until_idle()
    assert received == {1: ['a'], 2: ['b'], 3: ['a', 'a']}


def test_r70_handle_destination_must_be_online_or_ready():
    received.clear()
    sim, p, rec = make(receiving_worker)
    p.on('worker_online', lambda e: e.data['worker'].send('while online'))
    p.fork(1)
    sim.run_until(lambda: len(p.workers) == 1)
    sim.run_until_idle()
    assert received[1] == ['while online']
    handle = p.workers[0]
    p.stop_worker(handle)
    sim.run_until(lambda: handle.state == 'disconnected')
    assert isinstance(p.send('x', to=handle).exception(), InvalidDestinationError)
    sim.run_until(lambda: handle.state == 'dead')
    assert isinstance(handle.send('x').exception(), InvalidDestinationError)
    close(sim, p)


def test_r70_handle_of_an_online_worker_is_valid_but_its_id_is_not():
    sim, p, rec = make(inert_worker, ready_timeout=None)
    results = []
    p.on('worker_online', lambda e: results.append((p.send('x', to=e.data['worker']), p.send('x', to=e.data['worker'].id))))
    p.fork(1)
    sim.run_until(lambda: results)
    by_handle, by_id = results[0]
    assert by_handle.result() is None
    assert isinstance(by_id.exception(), InvalidDestinationError)
    close(sim, p)


def test_r71_message_is_encoded_once_at_call_time(receiving):
    sim, p, rec = receiving
    message = {'items': [1]}
    p.send(message, to=1)
    message['items'].append(2)
    sim.run_until_idle()
    assert received[1] == [{'items': [1]}]


def test_r71_unencodable_message_rejects_with_encode_error_and_sends_nothing(receiving):
    sim, p, rec = receiving
    out = p.stats()['messages_out']
    future = p.send({'bad': object()}, to=[1, 2, 99])
    assert future.done() and isinstance(future.exception(), EncodeError)
    future = p.send({1, 2})
    assert isinstance(future.exception(), EncodeError)
    sim.run_until_idle()
    assert received == {1: [], 2: [], 3: []}
    assert p.stats()['messages_out'] == out


def test_r71_oversized_frame_rejects_with_encode_error():
    received.clear()
    sim = MemoryTransport(seed=1, max_frame_size=64)
    sim_, p, rec = started(1, receiving_worker, sim=sim)
    future = p.send('x' * 200)
    assert future.done() and isinstance(future.exception(), EncodeError)
    assert p.send('small').result() is None
    sim.run_until_idle()
    assert received[1] == ['small']
    close(sim, p)


def test_r72_future_resolves_to_none_during_the_call():
    sim, p, rec = started(2)
    future = p.send('m')
    assert isinstance(future, asyncio.Future)
    assert future.done() and future.result() is None
    close(sim, p)


def test_r72_written_sends_share_one_resolved_future_and_failures_get_their_own():
    sim, p, rec = started(2)
    w1, w2 = p.workers
    futures = [p.send('a', to=w1), p.send('b', to=2), p.send('c'), p.send('d', to=[])]
    assert all(future.done() and future.result() is None for future in futures)
    assert len({id(future) for future in futures}) == 1  # one shared resolved future
    called: list[Any] = []
    futures[0].add_done_callback(called.append)
    assert not futures[0].cancel()  # done: a caller cannot cancel it for the others
    failed = p.send('e', to=99)
    assert failed is not futures[0] and isinstance(failed.exception(), InvalidDestinationError)
    sim.run_until_idle()
    assert called == [futures[0]]
    assert futures[0].result() is None
    close(sim, p)


def test_r73_every_destination_is_attempted_and_send_error_lists_failures(receiving):
    sim, p, rec = receiving
    w1, w2, w3 = p.workers
    future = p.send('hi', to=[w1, 99, 'x', w3])
    error = future.exception()
    assert type(error) is SendError
    assert [d for d, _ in error.failures] == [99, 'x']
    assert all(isinstance(e, InvalidDestinationError) for _, e in error.failures)
    sim.run_until_idle()
    assert received == {1: ['hi'], 2: [], 3: ['hi']}


def test_r73_single_destination_rejects_with_its_own_error(receiving):
    sim, p, rec = receiving
    error = p.send('hi', to=[42]).exception()
    assert type(error) is InvalidDestinationError
    assert [failure for _, failure in error.failures] == [error]  # it lists itself


def test_r73_failed_write_is_a_send_error_caused_by_transport_error(receiving):
    sim, p, rec = receiving
    sim.fail_next_send(2)
    future = p.send('hi', to=[1, 2, 3])
    error = future.exception()
    assert isinstance(error, SendError)
    assert [d for d, _ in error.failures] == [2]
    failure = error.failures[0][1]
    assert type(failure) is SendError and isinstance(failure.__cause__, TransportError)
    sim.run_until(lambda: rec.count('worker_error') == 1)
    assert isinstance(rec.of('worker_error')[0]['error'], TransportError)
    sim.run_until(lambda: received[1] and received[3])
    assert received[1] == ['hi'] and received[3] == ['hi']


def test_r73_single_failed_write_rejects_with_send_error(receiving):
    sim, p, rec = receiving
    sim.fail_next_send(1)
    error = p.send('hi', to=1).exception()
    assert type(error) is SendError and isinstance(error.__cause__, TransportError)


def test_r74_empty_destination_list_resolves_at_once():
    sim, p, rec = make()
    future = p.send('nobody')
    assert future.done() and future.result() is None
    assert p.send('x', to=[]).result() is None
    assert p.send('x', to=()).result() is None
    close(sim, p)


def test_r75_send_raises_only_for_a_missing_message():
    sim, p, rec = started(1)
    with pytest.raises(TypeError):
        p.send()
    with pytest.raises(TypeError):
        p.send(to=1)
    for args in [(object(),), ('x', object()), ('x', [[1]]), ('x', 'all')]:
        future = p.send(*args)
        assert isinstance(future, asyncio.Future) and future.done()
        assert isinstance(future.exception(), SendError)
    assert p.send(None).result() is None  # None is a message like any other
    close(sim, p)


def test_r34_unretrieved_rejected_send_future_is_not_fatal():
    sim, p, rec = started(1)
    p.send('x', to=99)  # rejected with InvalidDestinationError; nobody retrieves it
    p.send(object())  # rejected with EncodeError; nobody retrieves it
    import gc
    gc.collect()
    sim.run_until_idle()  # must not raise: asyncio merely reports it (R34)
    assert len(p.workers) == 1 and not p.closed
    close(sim, p)


# == R76, R77 type routing =========================================================================

def typed_sender():
    worker = ClusterWorker()
    for message in ({'type': 'ping', 'n': 1}, {'type': 'not-an-id'}, {'type': 1}, {'type': None},
                    'ping', ['ping'], 7, None, {'no': 'type'}, {'type': 'unknown'}, {'type': 'ping', 'n': 2}):
        worker.send(message)


class RoutingBase(ClusterPrimary):
    def _event_worker_message_ping(self, event):
        self.routed.append(('ping', event.data['message']['n'], event.name))


class Routing(RoutingBase):
    routed: list


def test_r76_typed_dict_messages_are_routed_to_inherited_methods():
    Routing.routed = routed = []
    sim, p, rec = make(typed_sender, cls=Routing)
    p.fork(1)
    sim.run_until(lambda: rec.count('worker_message') == 11)
    assert routed == [('ping', 1, 'worker_message'), ('ping', 2, 'worker_message')]
    assert rec.count('worker_error') == 0
    close(sim, p)


class OrderedRouting(ClusterPrimary):
    def _event_worker_message_ping(self, event):
        self.trace.append('routed')


def pinger():
    ClusterWorker().send({'type': 'ping'})


def test_r77_routing_runs_after_on_and_before_after_handlers():
    sim = MemoryTransport(seed=1)
    p = OrderedRouting(worker_target=pinger, transport=sim)
    p.trace = []
    p.on('worker_message', lambda e: p.trace.append('on'))
    p.after('worker_message', lambda e: p.trace.append('after'))
    p.fork(1)
    sim.run_until(lambda: 'after' in p.trace)
    assert p.trace == ['on', 'routed', 'after']
    close(sim, p)


def test_r77_preventing_worker_message_disables_routing():
    sim = MemoryTransport(seed=1)
    p = OrderedRouting(worker_target=pinger, transport=sim)
    p.trace = []
    p.on('worker_message', lambda e: (p.trace.append('on'), e.prevent()))
    p.fork(1)
    sim.run_until(lambda: p.trace)
    sim.run_until_idle()
    assert p.trace == ['on']
    close(sim, p)


class AsyncRouting(ClusterPrimary):
    async def _event_worker_message_ping(self, event):
        self.trace.append('routed start')
        await asyncio.sleep(1)
        self.trace.append('routed end')


def test_r77_awaitable_routed_method_is_scheduled_as_a_task():
    sim = MemoryTransport(seed=1)
    p = AsyncRouting(worker_target=pinger, transport=sim)
    p.trace = []
    p.after('worker_message', lambda e: p.trace.append('after'))
    p.fork(1)
    sim.run_until(lambda: 'routed end' in p.trace)
    assert p.trace == ['after', 'routed start', 'routed end']
    close(sim, p)


# == R78–R84 worker death and replacement =========================================================

def test_r78_state_is_disconnected_at_worker_disconnect_and_remove_worker_nests():
    sim, p, rec = started(1)
    states = []
    p.on('worker_disconnect', lambda e: states.append((e.data['worker'].state, e.data['worker'] in p.workers)))
    sim.crash(1, code=2)
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    assert states == [('disconnected', True)]
    texts = rec.texts()
    i = texts.index('on worker_disconnect')
    assert texts[i:i + 4] == ['on worker_disconnect', 'on remove_worker', 'after remove_worker', 'after worker_disconnect']
    close(sim, p)


def self_destroying_worker():
    worker = ClusterWorker()
    worker.on('primary_message', lambda e: worker.destroy())


@pytest.mark.parametrize('how', ['crash_code', 'crash_signal', 'kill', 'disconnect', 'worker_destroy', 'error'])
def test_r79_worker_disconnect_always_precedes_worker_exit(how):
    sim, p, rec = started(1, self_destroying_worker, restart='never')
    p.on('no_workers', lambda e: e.prevent())  # keep the primary up once no worker is left
    handle = p.workers[0]
    if how == 'crash_code':
        sim.crash(handle, code=5)
    elif how == 'crash_signal':
        sim.crash(handle, signal=signal.SIGSEGV)
    elif how == 'kill':
        handle.kill()
    elif how == 'disconnect':
        handle.disconnect()
    elif how == 'worker_destroy':
        handle.send('go')
    else:
        p._publish('worker_error', {'worker': handle, 'error': RuntimeError('x')})
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    names = rec.for_worker(1)
    assert names.index('worker_disconnect') < names.index('worker_exit')
    # remove_worker is nested in worker_disconnect (or worker_error), never in worker_exit
    texts = rec.texts()
    i = texts.index('on worker_exit')
    assert texts[i:i + 2] == ['on worker_exit', 'after worker_exit']
    close(sim, p)


@pytest.mark.parametrize('kwargs, expected', [
    ({'code': 3}, (3, None)),
    ({'code': 0}, (0, None)),
    ({'signal': 9}, (None, SIGKILL)),
    ({'signal': signal.SIGTERM}, (None, SIGTERM)),
])
def test_r80_worker_exit_carries_code_or_signal_set_on_the_handle_first(kwargs, expected):
    sim, p, rec = started(1, restart='never')
    seen = []
    p.on('worker_exit', lambda e: seen.append((
        e.data['code'], e.data['signal'], e.data['worker'].exit_code, e.data['worker'].exit_signal,
        e.data['worker'].state)))
    sim.crash(1, **kwargs)
    sim.run_until(lambda: seen)
    assert seen == [(*expected, *expected, 'dead')]
    assert seen[0][1] is None or isinstance(seen[0][1], signal.Signals)
    close(sim, p)


def test_r80_exit_code_and_signal_are_none_until_worker_exit():
    sim, p, rec = started(1)
    h = p.workers[0]
    assert (h.exit_code, h.exit_signal) == (None, None)
    close(sim, p)
    assert (h.exit_code, h.exit_signal, h.state) == (0, None, 'dead')


def exit_on_message_worker():
    worker = ClusterWorker()

    def handle(event):
        if event.data['message'] == 'exit':
            raise SystemExit(0)
        if event.data['message'] == 'destroy':
            worker.destroy()
        if event.data['message'] == 'throw':
            raise RuntimeError('thrown in worker')
    worker.on('primary_message', handle)


@pytest.mark.parametrize('how, expected', [
    ('shutdown', True), ('handle_disconnect', True), ('stop_worker', True), ('worker_destroy', True),
    ('crash', False), ('system_exit', False), ('throw', False), ('kill', False),
])
def test_r81_exited_after_disconnect(how, expected):
    sim, p, rec = started(1, exit_on_message_worker, restart='never')
    h = p.workers[0]
    {'shutdown': p.shut_down, 'handle_disconnect': h.disconnect, 'stop_worker': lambda: p.stop_worker(h),
     'worker_destroy': lambda: h.send('destroy'), 'crash': lambda: sim.crash(h, code=0),
     'system_exit': lambda: h.send('exit'), 'throw': lambda: h.send('throw'),
     'kill': lambda: h.kill(SIGTERM)}[how]()
    sim.run_until(lambda: h.state == 'dead')
    assert h.exited_after_disconnect is expected
    close(sim, p)


def test_r82_replacement_is_immediate_and_nested_with_a_higher_id():
    sim, p, rec = started(2)
    sim.crash(1, code=0)  # a voluntary exit is replaced too
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    texts = rec.texts()
    i = texts.index('on worker_exit')
    assert texts[i:i + 4] == ['on worker_exit', 'on fork', 'after fork', 'after worker_exit']
    assert rec.of('fork')[-1] == {'worker_count': 1}
    assert i + 4 == len(texts)  # worker_fork of the replacement comes on a later loop turn
    sim.run_until(lambda: rec.count('worker_fork') == 3)
    assert texts[:0] == [] and rec.texts()[i + 4:i + 6] == ['on worker_fork', 'after worker_fork']
    assert rec.entries[i + 4].worker == 3
    sim.run_until(lambda: len(p.workers) == 2)
    assert [w.id for w in p.workers] == [2, 3]
    close(sim, p)


def test_r83_no_replacement_when_shut_down_from_on_worker_exit():
    sim, p, rec = started(2)
    p.once_on('worker_exit', lambda e: p.shut_down())
    sim.crash(1, code=1)
    sim.run_until(lambda: p.closed)
    assert rec.count('fork') == 1
    assert rec.count('worker_fork') == 2


def test_r83_no_replacement_when_worker_exit_is_prevented():
    sim, p, rec = started(2)
    p.on('worker_exit', lambda e: e.prevent())
    sim.crash(1, code=1)
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    sim.run_until_idle()
    assert rec.count('fork') == 1 and [w.id for w in p.workers] == [2]
    close(sim, p)


def test_r83_no_replacement_for_a_stopped_worker():
    sim, p, rec = started(2)
    p.stop_worker(2)
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    sim.run_until_idle()
    assert rec.count('fork') == 1 and [w.id for w in p.workers] == [1]
    close(sim, p)


class FailingStartTransport(MemoryTransport):
    """Cannot start the workers whose ids are in `fail_ids`."""

    def __init__(self, *args, fail_ids=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fail_ids = set(fail_ids)

    def start_worker(self, spec, listener):
        if spec.id in self.fail_ids:
            raise TransportError('cannot start this worker (test)')
        return super().start_worker(spec, listener)


def test_r84_start_failure_publishes_fork_error_disconnect_and_exit_with_no_code():
    sim = FailingStartTransport(seed=1, fail_ids={1})
    sim_, p, rec = make(sim=sim, restart='on-failure')
    p.fork(1)
    sim.run_until(lambda: len(p.workers) == 1)
    assert rec.for_worker(1) == ['worker_fork', 'worker_error', 'worker_disconnect', 'worker_exit']
    error = rec.of('worker_error')[0]['error']
    assert isinstance(error, TransportError) and error.worker_id == 1
    exit_data = rec.of('worker_exit')[0]
    assert (exit_data['code'], exit_data['signal']) == (None, None)
    # a failed start counts as a failure under 'on-failure': replaced by worker 2
    assert [w.id for w in p.workers] == [2]
    close(sim, p)


def test_r78_duplicate_close_report_publishes_no_second_worker_disconnect():
    sim, p, rec = started(1)
    handle = p.workers[0]
    p.once_after('worker_disconnect', lambda event: p.link_closed(sim.links[handle.id]))
    sim.crash(1, code=0)
    sim.run_until(lambda: rec.count('worker_exit') == 1, timeout=10)
    assert rec.count('worker_disconnect') == 1
    close(sim, p)


# == R85, R86, R87 worker_error, kill and ready timeout ============================================

def _raw_writer(*frames):
    def target():
        link = current_link()
        worker = ClusterWorker()
        for kind, payload in frames:
            link.write(kind, payload)
        worker.send('after the fault')
    return target


@pytest.mark.parametrize('frames, error_type', [
    ([('ready', None)], ProtocolError),  # a second READY
    ([('online', None)], ProtocolError),  # a second ONLINE
    ([('disconnect', None)], ProtocolError),  # not a worker -> primary frame
    ([('message', b'\xff\xfe not json')], DecodeError),
    ([('message', b'x' * 500)], ProtocolError),  # larger than max_frame_size
    ([('ready', None), ('ready', None), ('message', b'\xff')], ProtocolError),  # at most once
])
def test_r85_protocol_and_decode_faults_publish_one_worker_error_and_stop_reading(frames, error_type):
    sim = MemoryTransport(seed=1, max_frame_size=256)
    sim_, p, rec = make(_raw_writer(*frames), sim=sim, restart='never')
    p.fork(1)
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    sim.run_until_idle()
    errors = rec.of('worker_error')
    assert len(errors) == 1
    assert isinstance(errors[0]['error'], error_type) and errors[0]['error'].worker_id == 1
    assert [d['message'] for d in rec.of('worker_message')] == []  # nothing read after the fault
    close(sim, p)


def test_r86_worker_error_removes_and_kills_then_normal_exit_and_replacement():
    sim, p, rec = started(2)
    h = p.workers[0]
    p._publish('worker_error', {'worker': h, 'error': RuntimeError('test fault')})
    texts = rec.texts()
    i = texts.index('on worker_error')
    assert texts[i:i + 4] == ['on worker_error', 'on remove_worker', 'after remove_worker', 'after worker_error']
    sim.run_until(lambda: h.state == 'dead')
    assert (h.exit_code, h.exit_signal) == (None, SIGTERM)
    sim.run_until(lambda: len(p.workers) == 2)
    assert [w.id for w in p.workers] == [2, 3]
    close(sim, p)


def test_r86_sigkill_after_kill_timeout_when_sigterm_is_ignored():
    sim, p, rec = started(1, kill_timeout=2.0)
    h = p.workers[0]
    sim.hang(h, ignore_sigterm=True)
    t0 = sim.loop.time()
    p._publish('worker_error', {'worker': h, 'error': RuntimeError('test fault')})
    sim.run_until(lambda: h.state == 'dead')
    assert h.exit_signal == SIGKILL
    assert rec.times('worker_exit')[0] - t0 == pytest.approx(2.0, abs=0.05)
    close(sim, p)


def test_r86_preventing_worker_error_leaves_the_worker_in_the_pool_and_alive():
    sim, p, rec = started(1)
    p.on('worker_error', lambda e: e.prevent())
    h = p.workers[0]
    p._publish('worker_error', {'worker': h, 'error': RuntimeError('test fault')})
    sim.advance(30)
    assert p.workers == [h] and h.state == 'ready' and sim.alive(h)
    close(sim, p)


def test_r87_worker_not_ready_in_time_gets_ready_timeout():
    sim, p, rec = make(inert_worker, ready_timeout=3.0, restart='never')
    p.fork(1)
    sim.run_until(lambda: rec.count('worker_error') == 1)
    error = rec.of('worker_error')[0]['error']
    assert isinstance(error, ReadyTimeout) and error.worker_id == 1
    assert rec.times('worker_error')[0] - rec.times('worker_fork')[0] == pytest.approx(3.0, abs=1e-6)
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    assert rec.of('worker_exit')[0]['signal'] == SIGTERM
    close(sim, p)


def test_r87_ready_timeout_none_disables_the_timer():
    sim, p, rec = make(inert_worker, ready_timeout=None)
    p.fork(1)
    sim.run_until(lambda: rec.count('worker_online') == 1)
    sim.run_until_idle()
    sim.advance(10_000)
    assert rec.count('worker_error') == 0
    close(sim, p)


def test_r87_ready_timer_is_cancelled_by_ready_and_by_shut_down():
    sim, p, rec = started(1, ready_timeout=2.0)
    sim.advance(10)
    assert rec.count('worker_error') == 0
    close(sim, p)
    sim2, p2, rec2 = make(inert_worker, ready_timeout=2.0, shutdown_timeout=30)
    p2.fork(1)
    sim2.run_until(lambda: rec2.count('worker_online') == 1)
    sim2.hold(1, 'to_worker')  # the worker does not see DISCONNECT: it stays live for a while
    p2.shut_down()
    sim2.advance(10)
    assert rec2.count('worker_error') == 0
    sim2.release(1, 'to_worker')
    sim2.run_until(lambda: p2.closed)
    assert rec2.count('worker_error') == 0


def test_r85_frames_before_online_are_protocol_violations():
    for kind, payload in ((protocol.MESSAGE, b'"x"'), (protocol.READY, None)):
        sim, p, rec = make()
        sim.slow_boot(5.0)
        p.fork(1)
        sim.run_until(lambda: rec.count('worker_fork') == 1)
        p.link_frame(sim.links[1], kind, payload)
        assert rec.count('worker_error') == 1
        error = rec.of('worker_error')[0]['error']
        assert isinstance(error, ProtocolError) and 'before ONLINE' in str(error)
        close(sim, p)


def malformed_listen_target():
    ClusterWorker()
    current_link().write(protocol.LISTEN, {'address': ['127.0.0.1', 0]})


def test_r85_malformed_listen_frame_is_a_protocol_violation():
    sim, p, rec = make(malformed_listen_target)
    p.fork(1)
    sim.run_until(lambda: rec.count('worker_error') == 1, timeout=10)
    assert 'malformed LISTEN' in str(rec.of('worker_error')[0]['error'])
    assert rec.count('worker_listening') == 0
    close(sim, p)


def test_r85_link_error_without_worker_id_is_stamped_and_published_once():
    sim, p, rec = started(1)
    handle = p.workers[0]
    error = ClusterError('link broke')
    p.link_error(sim.links[handle.id], error)
    p.link_error(sim.links[handle.id], TransportError('again'))
    assert error.worker_id == 1
    assert [d['error'] for d in rec.of('worker_error')] == [error]
    close(sim, p)


def test_r117_exit_reported_before_close_still_publishes_disconnect_first():
    sim, p, rec = started(1)
    handle = p.workers[0]
    p.link_exit(sim.links[handle.id], 3, None)
    assert rec.names()[-4:] == ['worker_disconnect', 'remove_worker', 'worker_exit', 'fork']
    assert handle.exit_code == 3
    p.link_closed(sim.links[handle.id])  # a late close of a dead worker is ignored
    assert rec.count('worker_disconnect') == 1
    close(sim, p)


def test_link_events_after_destruction_are_ignored():
    sim, p, rec = make()
    p.fork(1)
    sim.run_until(lambda: rec.count('worker_fork') == 1)
    link = sim.links[1]
    p.destroy()  # active: deferred until shut down
    sim.run_until(lambda: p.destroyed, timeout=60)
    before = list(rec.entries)
    p.link_error(link, TransportError('late'))
    p.link_closed(link)
    p.link_exit(link, 0, None)
    p.link_frame(link, protocol.READY, None)
    assert rec.entries == before


@pytest.mark.parametrize('event', ['worker_disconnect', 'worker_exit', 'worker_error'])
def test_r35_exception_in_a_link_event_handler_stops_the_simulation(event):
    sim, p, rec = started(1)
    failure = RuntimeError(f'{event} handler')
    p.on(event, lambda e: (_ for _ in ()).throw(failure))
    if event == 'worker_error':
        p.link_error(sim.links[1], TransportError('x'))
    else:
        sim.crash(1, code=0)
    with pytest.raises(RuntimeError) as caught:
        sim.run_until(lambda: False, timeout=10)
    assert caught.value is failure


def test_r64_worker_ready_for_a_worker_not_online_changes_nothing():
    sim, p, rec = started(1)
    handle = p.workers[0]
    p._publish('worker_ready', {'worker': handle})
    p._publish('add_worker', {'worker': handle})
    assert p.workers == [handle] and rec.count('add_worker') == 2
    other = handle.__class__(p, 99)
    p._publish('remove_worker', {'worker': other})
    assert p.workers == [handle]
    close(sim, p)


def test_r86_worker_error_for_a_dead_worker_kills_nothing():
    sim, p, rec = started(1, shutdown_timeout=30.0, kill_timeout=30.0)
    handle = p.workers[0]
    sim.crash(1, code=0)
    sim.run_until(lambda: handle.state == 'dead', timeout=10)
    p._publish('worker_error', {'worker': handle, 'error': ClusterError('late')})
    handle.disconnect()  # a dead worker is not disconnected either
    before = sim.loop.time()
    sim.run_until_idle()  # a SIGTERM or SIGKILL step armed for it would run 30 s from now
    assert sim.loop.time() - before < 30.0 and p.stats()['killed_by_timeout'] == 0
    close(sim, p)


# == R88–R95 shutdown and destroy ===================================================================

disconnects: list = []


def disconnect_recording_worker():
    worker = ClusterWorker()
    worker.on('primary_disconnect', lambda e: disconnects.append(ClusterWorker.worker_id))


def test_r88_shut_down_returns_self_and_disconnects_every_live_worker():
    disconnects.clear()
    sim, p, rec = started(3, disconnect_recording_worker)
    assert p.shut_down() is p
    sim.run_until(lambda: p.closed)
    assert sorted(disconnects) == [1, 2, 3]
    assert [d['worker'].exited_after_disconnect for d in rec.of('worker_exit')] == [True] * 3
    assert rec.count('fork') == 1


def stubborn_worker():
    worker = ClusterWorker()
    worker.on('primary_disconnect', lambda e: e.prevent())  # ignores DISCONNECT


def test_r89_worker_ignoring_disconnect_gets_sigterm_after_shutdown_timeout():
    sim, p, rec = started(1, stubborn_worker, shutdown_timeout=4.0, kill_timeout=2.0)
    t0 = sim.loop.time()
    p.shut_down()
    sim.run_until(lambda: p.closed)
    exit_data = rec.of('worker_exit')[0]
    assert (exit_data['code'], exit_data['signal']) == (None, SIGTERM)
    assert rec.times('worker_exit')[0] - t0 == pytest.approx(4.0, abs=0.05)
    assert p.stats()['killed_by_timeout'] == 1


def test_r89_worker_ignoring_sigterm_gets_sigkill_within_both_timeouts():
    sim, p, rec = started(1, stubborn_worker, shutdown_timeout=4.0, kill_timeout=2.0)
    h = p.workers[0]
    sim.hang(h, ignore_sigterm=True)
    t0 = sim.loop.time()
    p.shut_down()
    sim.run_until(lambda: p.closed)
    assert (h.exit_code, h.exit_signal) == (None, SIGKILL)
    assert rec.times('worker_exit')[0] - t0 == pytest.approx(6.0, abs=0.05)


def test_r89_handle_disconnect_uses_the_same_escalation_and_is_replaced():
    sim, p, rec = started(1, stubborn_worker, shutdown_timeout=1.0, kill_timeout=1.0)
    h = p.workers[0]
    assert h.disconnect() is h
    t0 = sim.loop.time()
    sim.run_until(lambda: h.state == 'dead')
    assert h.exit_signal == SIGTERM and sim.loop.time() - t0 == pytest.approx(1.0, abs=0.05)
    sim.run_until(lambda: len(p.workers) == 1)
    assert p.workers[0].id == 2  # while active, its exit is replaced like any other
    close(sim, p)


def late_talker():
    worker = ClusterWorker()

    def on_disconnect(event):
        worker.send('too late')  # rejected: the link is closed
    worker.before('primary_disconnect', lambda e: None)
    worker.on('primary_disconnect', on_disconnect)


def test_r90_worker_events_are_still_published_during_shutdown():
    sim, p, rec = make()
    p.fork(2)
    sim.run_until(lambda: rec.count('worker_online') == 2)
    sim.hold(2, 'to_primary')
    p.shut_down()
    sim.release(2, 'to_primary')
    sim.run_until(lambda: p.closed)
    names = rec.names()
    after_sd = names[names.index('shut_down'):]
    assert after_sd.count('worker_disconnect') == 2 and after_sd.count('worker_exit') == 2
    assert after_sd.count('remove_worker') >= 1


def test_r91_shut_down_complete_after_last_exit_on_next_turn():
    sim, p, rec = started(3)
    p.shut_down()
    assert rec.count('shut_down_complete') == 0  # never inside shut_down()
    sim.run_until(lambda: p.closed)
    texts = rec.texts()
    assert texts[-2:] == ['on shut_down_complete', 'after shut_down_complete']
    assert texts[-3] == 'after worker_exit'
    assert rec.count('worker_exit') == 3
    assert rec.times('shut_down_complete')[0] == rec.times('worker_exit')[-1]  # next turn, no delay


def test_r91_shut_down_complete_with_no_live_worker_is_on_the_next_turn():
    sim, p, rec = make()
    p.shut_down()
    assert rec.names() == ['shut_down']
    assert not p.closed
    sim.run_until(lambda: p.closed)
    assert rec.names() == ['shut_down', 'shut_down_complete']
    assert rec.times('shut_down_complete')[0] == 0.0


def test_r91_shut_down_complete_waits_for_a_slow_exit():
    sim, p, rec = started(2, stubborn_worker, shutdown_timeout=5.0)
    sim.crash(1, code=0)
    p.shut_down()
    sim.run_until(lambda: p.closed)
    exit_times = rec.times('worker_exit')
    assert len(exit_times) == 2 and rec.times('shut_down_complete')[0] >= max(exit_times)
    assert rec.names().index('shut_down_complete') > max(i for i, n in enumerate(rec.names()) if n == 'worker_exit')


def test_r92_later_shut_down_is_ignored_and_fork_is_a_no_op():
    sim, p, rec = started(1)
    p.shut_down()
    p.shut_down()
    assert p.fork(1) is p
    sim.run_until(lambda: p.closed)
    assert p.shut_down() is p
    sim.run_until_idle()
    assert rec.count('shut_down') == 1 and rec.count('shut_down_complete') == 1 and rec.count('fork') == 1


def test_r92_prevented_shut_down_changes_nothing_and_may_be_retried():
    sim, p, rec = started(1)
    sub = p.once_before('shut_down', lambda e: e.prevent())
    p.shut_down()
    sim.run_until_idle()
    assert not p.closed and len(p.workers) == 1 and p.workers[0].state == 'ready'
    p.fork(1)  # still active
    sim.run_until(lambda: len(p.workers) == 2)
    assert not sub.subscribed
    p.shut_down()
    sim.run_until(lambda: p.closed)
    assert rec.count('shut_down_complete') == 1


def test_r93_destroy_while_active_shuts_down_first_in_this_order():
    sim, p, rec = started(1)
    destroyed_in_after = []
    p.after('destroy', lambda e: destroyed_in_after.append(p.destroyed))
    complete_data = []
    p.on('destroy_complete', lambda e: complete_data.append(dict(e.data)))
    start = len(rec.entries)
    assert p.destroy('why', now=True) is p
    sim.run_until(lambda: p.closed)
    assert rec.texts()[start:] == [
        'on destroy', 'on shut_down', 'after shut_down', 'after destroy', 'on worker_disconnect',
        'on remove_worker', 'after remove_worker', 'after worker_disconnect', 'on worker_exit',
        'after worker_exit', 'on shut_down_complete', 'after shut_down_complete', 'on destroy_complete',
        'after destroy_complete']
    assert destroyed_in_after == [False]
    assert complete_data == [{'args': ('why',), 'kwargs': {'now': True}}]
    assert p.destroyed


def test_r93_deferred_destroy_runs_after_earlier_after_shut_down_complete_handlers():
    sim, p, rec = started(1)
    order = []
    p.after('shut_down_complete', lambda e: order.append(('user after', p.destroyed)))
    p.destroy()
    sim.run_until(lambda: p.closed)
    assert order == [('user after', False)]
    assert p.destroyed


def test_r94_destroy_while_shutting_down_waits_for_shut_down_complete():
    sim, p, rec = started(1, stubborn_worker, shutdown_timeout=3)
    p.shut_down()
    p.destroy('late')
    assert not p.destroyed
    sim.run_until(lambda: p.closed)
    assert p.destroyed
    texts = rec.texts()
    assert texts.index('after shut_down_complete') < texts.index('on destroy_complete')
    assert rec.of('destroy_complete')[0] == {'args': ('late',), 'kwargs': {}}


def test_r94_destroy_after_shut_down_destroys_at_once():
    sim, p, rec = started(1)
    p.shut_down()
    sim.run_until(lambda: p.closed)
    p.destroy()
    assert p.destroyed and rec.count('destroy_complete') == 1


def test_r94_prevented_shut_down_complete_cancels_a_deferred_destroy():
    sim, p, rec = started(1)
    p.on('shut_down_complete', lambda e: e.prevent())
    p.destroy()
    sim.run_until(lambda: p.closed)
    sim.run_until_idle()
    assert not p.destroyed
    assert rec.count('destroy_complete') == 0 and rec.count('after shut_down_complete', 'after') == 0


def test_r95_destroy_clears_pool_and_history_and_leaves_no_live_worker():
    sim, p, rec = started(3, heartbeat_interval=1.0, ready_timeout=100)
    p.round_robin()
    p.destroy()
    sim.run_until(lambda: p.closed)
    assert p.workers == [] and dict(p.worker_by_id) == {}
    assert p.round_robin() is None
    assert all(sim.exits[i] is not None for i in (1, 2, 3))
    assert not any(sim.alive(i) for i in (1, 2, 3))
    sim.run_until_idle()  # every timer (heartbeat, ready, kill) was cancelled: the simulation goes idle
    with pytest.raises(DestroyedError):
        p.shut_down()
    assert p.fork(1) is p and p.destroy() is p


def test_r95_destroy_closes_shared_listening_sockets():
    sockets = []

    def listener():
        async def main():
            worker = ClusterWorker()
            sockets.append(await worker.listen(('127.0.0.1', 0)))
        return main()

    sim, p, rec = make(listener)
    p.fork(1)
    sim.run_until(lambda: rec.count('worker_listening') == 1)
    primary_sockets = sim.open_sockets()
    assert primary_sockets and primary_sockets[0].fileno() != -1
    close(sim, p)
    assert primary_sockets[0].fileno() == -1
    for sock in sockets:
        sock.close()


def test_r89_hung_worker_ignoring_sigterm_is_killed_once_after_kill_timeout():
    sim, p, rec = started(1, shutdown_timeout=2.0, kill_timeout=3.0)
    handle = p.workers[0]
    sim.hang(1, ignore_sigterm=True)
    p.shut_down()
    sim.run_until(lambda: p.stats()['killed_by_timeout'] == 1, timeout=10)  # SIGTERM sent, SIGKILL armed
    assert sim.loop.time() == pytest.approx(2.0, abs=0.01)
    p._publish('worker_error', {'worker': handle, 'error': ClusterError('x')})  # kill already pending
    sim.run_until(lambda: p.closed, timeout=10)
    assert rec.of('worker_exit')[0]['signal'] == Signals.SIGKILL
    assert sim.loop.time() == pytest.approx(5.0, abs=0.01)
    p.destroy()


# == R96, R97 run / wait_closed =====================================================================

def test_r96_run_on_a_running_loop_raises_runtime_error():
    sim, p, rec = started(1)
    caught = []

    def try_run(_event):
        try:
            p.run()
        except RuntimeError as error:
            caught.append(error)
    p.once_on('worker_message', try_run)
    sim.loop.call_soon(lambda: p._publish('worker_message', {'worker': p.workers[0], 'message': 'x'}))
    sim.run_until(lambda: caught)
    assert isinstance(caught[0], RuntimeError)
    close(sim, p)


def test_r96_run_drives_the_loop_until_closed():
    sim, p, rec = make()
    p.fork(2)
    sim.loop.call_later(5.0, p.destroy)
    assert p.run() is None
    assert p.closed and p.destroyed
    assert rec.count('worker_ready') == 2 and rec.count('worker_exit') == 2


def test_r97_wait_closed_returns_at_once_when_closed():
    sim, p, rec = started(1)
    close(sim, p)
    done = []

    async def waiter():
        await p.wait_closed()
        done.append(True)
    sim.loop.create_task(waiter())
    sim.run_until(lambda: done, timeout=0.001)
    assert done == [True]


def test_r97_wait_closed_waits_for_shut_down_complete():
    sim, p, rec = started(1)
    done = []

    async def waiter():
        await p.wait_closed()
        done.append(rec.count('shut_down_complete'))
    sim.loop.create_task(waiter())
    sim.run_until_idle()
    assert done == []
    p.shut_down()
    sim.run_until(lambda: done)
    assert done == [1]


class RealLoopTransport(MemoryTransport):
    """A memory transport that lets the primary handle fatal errors itself, as on a real loop
    (capture_fatal returns False), and records the signal handlers run() installs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.handlers = None
        self.restored = 0

    def capture_fatal(self, error):
        return False

    def install_signal_handlers(self, handlers):
        self.handlers = dict(handlers)

        def restore():
            self.restored += 1
        return restore


def test_r34_fatal_error_shuts_down_and_wait_closed_raises_it_with_later_ones_noted(caplog):
    sim = RealLoopTransport(seed=1)
    p = ClusterPrimary(worker_target=ready_worker, transport=sim)
    first, second = RuntimeError('first'), RuntimeError('second')

    def explode(event):
        raise first
    p.once_after('worker_ready', explode)
    failures = [second, first]  # the second worker's disconnect raises `first` again

    def disconnect_fails(event):
        if failures:
            raise failures.pop(0)
    p.on('worker_disconnect', disconnect_fails)
    p.fork(2)
    outcome = []

    async def waiter():
        try:
            await p.wait_closed()
        except RuntimeError as error:
            outcome.append(error)
    sim.loop.create_task(waiter())
    with caplog.at_level(logging.CRITICAL, logger='isocluster'):
        sim.run_until(lambda: outcome, timeout=60)
    assert outcome == [first] and p.closed
    assert first.__notes__ == [f'also during shutdown: {second!r}']  # the repeat of `first` adds nothing
    assert any(r.levelno == logging.CRITICAL and r.exc_info[1] is first for r in caplog.records)
    p.destroy()


def test_r34_fatal_error_in_worker_exit_during_shutdown_still_closes_and_raises():
    # regression: the primary used to stay 'shutting_down' forever here (fixed in 0771bfe)
    sim = RealLoopTransport(seed=1)
    p = ClusterPrimary(worker_target=ready_worker, transport=sim)
    first, second = RuntimeError('first'), RuntimeError('second')
    p.once_after('worker_ready', lambda event: (_ for _ in ()).throw(first))
    p.once_on('worker_disconnect', lambda event: (_ for _ in ()).throw(second))
    p.once_on('worker_exit', lambda event: (_ for _ in ()).throw(first))
    p.fork(1)
    outcome = []

    async def waiter():
        try:
            await p.wait_closed()
        except RuntimeError as error:
            outcome.append(error)
    sim.loop.create_task(waiter())
    sim.run_until(lambda: outcome, timeout=60)
    assert outcome == [first] and p.closed


def test_r34_shut_down_failing_during_a_fatal_error_is_noted_on_the_first(caplog):
    sim = RealLoopTransport(seed=1)
    p = ClusterPrimary(worker_target=ready_worker, transport=sim)
    boom, again = RuntimeError('boom'), ValueError('shut_down handler failed')
    p.once_on('shut_down', lambda event: (_ for _ in ()).throw(again))
    p.once_after('worker_ready', lambda event: (_ for _ in ()).throw(boom))
    p.fork(1)
    with caplog.at_level(logging.CRITICAL, logger='isocluster'):
        sim.run_until(lambda: boom.__notes__ if hasattr(boom, '__notes__') else False, timeout=10)
    assert boom.__notes__ == [f'also during shutdown: {again!r}']
    p.shut_down()  # the prevented-by-error shut_down can be retried (it never completed)
    with pytest.raises(RuntimeError) as caught:
        p.run()
    assert caught.value is boom


def test_r96_run_raises_the_fatal_error_after_shut_down_complete():
    sim = RealLoopTransport(seed=1)
    p = ClusterPrimary(worker_target=ready_worker, transport=sim)
    failure = RuntimeError('handler failed')
    p.once_after('worker_ready', lambda event: (_ for _ in ()).throw(failure))
    p.fork(1)
    with pytest.raises(RuntimeError) as caught:
        p.run()
    assert caught.value is failure
    assert p.closed and p.transport.exits == {1: (0, None)}
    assert sim.restored == 1


def test_r137_run_signals_sigterm_shuts_down_and_sighup_reloads():
    sim = RealLoopTransport(seed=1)
    p = ClusterPrimary(worker_target=ready_worker, transport=sim)
    reloads = []
    p.on('reload', lambda event: reloads.append(event.data['worker_count']))
    p.fork(1)

    def on_ready(event):
        if not reloads:
            sim.handlers[Signals.SIGHUP]()
        elif event.data['worker'].id == 2:
            sim.loop.call_later(1.0, sim.handlers[Signals.SIGTERM])
    p.after('worker_ready', on_ready)
    p.run()
    assert reloads == [1]
    assert p.closed and not p.destroyed and sim.restored == 1
    sim.handlers[Signals.SIGTERM]()  # after shutdown: ignored (shut_down is complete_once)
    p.destroy()
    sim.handlers[Signals.SIGTERM]()  # after destruction: does nothing, raises nothing


def test_r137_second_sigint_kills_every_live_worker_and_shutdown_still_completes():
    sim = RealLoopTransport(seed=1)
    p = ClusterPrimary(worker_target=stubborn_worker, transport=sim, shutdown_timeout=100)
    exits = []
    p.on('worker_exit', lambda event: exits.append(event.data['signal']))
    p.fork(2)

    def on_ready(event):
        if len(p.workers) == 2:
            sim.handlers[Signals.SIGINT]()
            sim.handlers[Signals.SIGINT]()
    p.after('worker_ready', on_ready)
    p.run()
    assert exits == [Signals.SIGKILL, Signals.SIGKILL]
    assert p.closed and sim.loop.time() < 100
    p.destroy()


def test_r137_sigint_after_destruction_does_nothing(caplog):
    sim = RealLoopTransport(seed=1)
    p = ClusterPrimary(worker_target=ready_worker, transport=sim)
    sim.loop.call_soon(p.destroy)
    p.run()
    assert p.destroyed
    with caplog.at_level(logging.CRITICAL, logger='isocluster'):
        sim.handlers[Signals.SIGINT]()  # a first SIGINT once destroyed: no shut_down, no error
    assert not caplog.records


def test_r96_run_closes_the_transport_the_primary_created():
    p = ClusterPrimary(worker_target=ready_worker)
    transport = p.transport
    p.shut_down()
    assert p.run() is None
    assert p.closed and transport.loop.is_closed()
    p.destroy()


def test_r97_two_concurrent_wait_closed_both_return_when_closed():
    sim, p, rec = started(1)
    done = []

    async def waiter(name):
        await p.wait_closed()
        done.append(name)
    sim.loop.create_task(waiter('a'))
    sim.loop.create_task(waiter('b'))
    sim.advance(1.0)
    assert done == []
    p.destroy()
    sim.run_until(lambda: len(done) == 2, timeout=60)
    assert sorted(done) == ['a', 'b']


# == R98 and the WorkerHandle ======================================================================

def test_r98_handle_state_at_each_event():
    sim, p, rec = make()
    states = []
    for name in ('worker_fork', 'worker_online', 'worker_ready', 'worker_disconnect', 'worker_exit'):
        p.on(name, lambda e, n=name: states.append((n, 'on', e.data['worker'].state)))
        p.after(name, lambda e, n=name: states.append((n, 'after', e.data['worker'].state)))
    p.fork(1)
    sim.run_until(lambda: len(p.workers) == 1)
    close(sim, p)
    assert states == [
        ('worker_fork', 'on', 'forked'), ('worker_fork', 'after', 'forked'),
        ('worker_online', 'on', 'online'), ('worker_online', 'after', 'online'),
        ('worker_ready', 'on', 'online'), ('worker_ready', 'after', 'ready'),
        ('worker_disconnect', 'on', 'disconnected'), ('worker_disconnect', 'after', 'disconnected'),
        ('worker_exit', 'on', 'dead'), ('worker_exit', 'after', 'dead')]


def test_r98_handle_members():
    sim, p, rec = started(1)
    h = p.workers[0]
    assert isinstance(h, WorkerHandle) and h.id == 1 and h.pid is None
    assert h.is_connected() and not h.is_dead()
    assert h.send('x').result() is None
    assert h.kill() is h
    sim.run_until(lambda: h.is_dead())
    assert not h.is_connected() and h.exit_signal == SIGTERM
    assert h.kill(SIGKILL) is h  # no-op once dead
    assert h.exit_signal == SIGTERM
    close(sim, p)


# == §7.1 restart policy R126–R129 ================================================================

@pytest.mark.parametrize('restart, how, replaced', [
    ('always', {'code': 0}, True),
    ('always', {'code': 1}, True),
    ('on-failure', {'code': 0}, False),
    ('on-failure', {'code': 2}, True),
    ('on-failure', {'signal': 9}, True),
    ('never', {'code': 1}, False),
    ('never', {'signal': 9}, False),
])
def test_r126_restart_policy_decides_replacement(restart, how, replaced):
    sim, p, rec = started(1, restart=restart)
    sim.crash(1, **how)
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    sim.run_until_idle()
    assert (rec.count('fork') == 2) is replaced
    assert (len(p.workers) == 1) is replaced
    close(sim, p)


def test_r126_on_failure_replaces_a_failed_start_with_code_0():
    sim, p, rec = make(exit_at_boot_worker, restart='on-failure', restart_intensity=2)
    p.on('no_workers', lambda e: e.prevent())  # keep the primary up once no worker is left
    p.fork(1)
    sim.run_until(lambda: rec.count('restart_limit') == 1)
    assert [d['code'] for d in rec.of('worker_exit')] == [0, 0, 0]
    assert rec.count('worker_fork') == 3
    close(sim, p)


def test_r126_restart_policy_object_is_equivalent_to_options():
    sim, p, rec = started(1, restart_policy=RestartPolicy(restart='never'))
    sim.crash(1, code=1)
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    sim.run_until_idle()
    assert rec.count('fork') == 1
    close(sim, p)


def test_r127_budget_counts_replacements_in_a_sliding_window():
    sim, p, rec = started(1, restart_intensity=2, restart_period=10.0)
    for _ in range(2):
        crash_and_wait(sim, p, rec, p.workers[0], code=1, pool=1)
    assert rec.count('restart_limit') == 0
    assert p.stats()['restarts_in_window'] == 2
    sim.advance(10.5)  # the two replacements leave the window
    assert p.stats()['restarts_in_window'] == 0
    crash_and_wait(sim, p, rec, p.workers[0], code=1, pool=1)
    assert rec.count('restart_limit') == 0
    crash_and_wait(sim, p, rec, p.workers[0], code=1, pool=1)
    assert rec.count('restart_limit') == 0
    crash_and_wait(sim, p, rec, p.workers[0], code=1)  # third within 10 s: beyond the budget
    assert rec.count('restart_limit') == 1
    close(sim, p)


def test_r127_forks_by_fork_and_scale_do_not_count():
    sim, p, rec = started(1, restart_intensity=1)
    p.fork(3)
    p.scale(6)
    sim.run_until(lambda: len(p.workers) == 6)
    assert p.stats()['restarts_in_window'] == 0
    sim.crash(1, code=1)  # the one allowed replacement
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    assert rec.count('restart_limit') == 0
    close(sim, p)


def test_r128_restart_limit_after_budget_and_no_more_replacement():
    sim, p, rec = make(exit_at_boot_worker, restart_intensity=5)
    p.on('no_workers', lambda e: e.prevent())  # keep the primary up once no worker is left
    p.fork(1)
    sim.run_until(lambda: rec.count('restart_limit') == 1)
    sim.run_until_idle()
    assert rec.count('worker_fork') == 6
    assert rec.of('restart_limit') == [{'worker_count': 0}]
    # nested in the complete stage of the 6th worker_exit
    texts = rec.texts()
    i = texts.index('on restart_limit')
    assert texts[i - 1] == 'on worker_exit' and texts[i + 1:i + 3] == ['after restart_limit', 'after worker_exit']
    assert not p.closed and p.workers == []  # no_workers prevented: neither crashes nor shuts down
    close(sim, p)


def test_r128_scale_re_enables_replacement_after_restart_limit():
    sim, p, rec = started(2, restart_intensity=1)
    p.on('no_workers', lambda e: e.prevent())  # keep the primary up once no worker is left
    sim.crash(1, code=1)
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    sim.crash(2, code=1)
    sim.run_until(lambda: rec.count('worker_exit') == 2)
    assert rec.count('restart_limit') == 1
    assert rec.of('restart_limit') == [{'worker_count': 1}]
    sim.run_until(lambda: len(p.workers) == 1)
    sim.crash(3, code=1)  # not replaced: replacement is stopped
    sim.run_until(lambda: rec.count('worker_exit') == 3)
    sim.run_until_idle()
    assert p.workers == [] and rec.count('restart_limit') == 1
    p.scale(2)
    sim.run_until(lambda: len(p.workers) == 2)
    sim.crash(p.workers[0], code=1)
    sim.run_until(lambda: rec.count('worker_exit') == 4)
    sim.run_until(lambda: len(p.workers) == 2)
    assert rec.count('restart_limit') == 1
    close(sim, p)


def test_r129_prevented_restart_limit_replaces_after_backoff_delays():
    backoff = Backoff(initial=1.0, factor=2.0, maximum=3.0, jitter=0.0)
    sim, p, rec = make(exit_at_boot_worker, restart_intensity=1, restart_period=1000.0, restart_backoff=backoff)
    p.on('restart_limit', lambda e: e.prevent())
    p.on('no_workers', lambda e: e.prevent())  # keep the primary up once no worker is left
    p.fork(1)
    sim.run_until(lambda: rec.count('worker_fork') == 6)
    exits = rec.times('worker_exit')
    forks = rec.times('fork')
    # forks: fork() at 0, the within-budget replacement, then one per delayed replacement
    delays = [forks[k + 2] - exits[k + 1] for k in range(3)]
    assert delays == [pytest.approx(1.0), pytest.approx(2.0), pytest.approx(3.0)]
    assert rec.of('fork')[2:] == [{'worker_count': 1}] * (len(forks) - 2)
    # delayed replacements are top-level forks, not nested in worker_exit
    texts = rec.texts()
    nested = [i for i, t in enumerate(texts) if t == 'on fork' and texts[i - 1] == 'on worker_exit']
    assert len(nested) == 1
    close(sim, p)


def test_r129_backoff_jitter_uses_the_seeded_random_source():
    def run(seed):
        backoff = Backoff(initial=1.0, factor=2.0, maximum=30.0, jitter=0.5)
        sim, p, rec = make(exit_at_boot_worker, seed=seed, restart_intensity=0, restart_backoff=backoff)
        p.on('restart_limit', lambda e: e.prevent())
        p.on('no_workers', lambda e: e.prevent())  # failed starts only: keep retrying
        p.fork(1)
        sim.run_until(lambda: rec.count('fork') == 4)
        exits, forks = rec.times('worker_exit'), rec.times('fork')
        delays = [forks[k + 1] - exits[k] for k in range(3)]
        close(sim, p)
        return delays
    first = run(5)
    assert first == run(5)
    for k, delay in enumerate(first):
        base = 2.0 ** k
        assert base * 0.5 <= delay <= base * 1.5


def test_r129_backoff_count_resets_within_budget_and_shut_down_cancels_pending():
    backoff = Backoff(initial=2.0, factor=3.0, maximum=100.0, jitter=0.0)
    sim, p, rec = started(1, restart_intensity=1, restart_period=5.0, restart_backoff=backoff)
    p.on('restart_limit', lambda e: e.prevent())
    crash_and_wait(sim, p, rec, p.workers[0], code=1, pool=1)  # within budget: immediate
    assert rec.times('fork')[-1] == rec.times('worker_exit')[-1]
    crash_and_wait(sim, p, rec, p.workers[0], code=1, pool=1)  # beyond, k=1: 2 s
    assert rec.times('fork')[-1] - rec.times('worker_exit')[-1] == pytest.approx(2.0)
    sim.advance(6)  # the window empties
    crash_and_wait(sim, p, rec, p.workers[0], code=1, pool=1)  # within budget again: immediate, k resets
    assert rec.times('fork')[-1] == rec.times('worker_exit')[-1]
    crash_and_wait(sim, p, rec, p.workers[0], code=1, pool=1)  # beyond, k=1 again: 2 s (not 6 s)
    assert rec.times('fork')[-1] - rec.times('worker_exit')[-1] == pytest.approx(2.0)
    crash_and_wait(sim, p, rec, p.workers[0], code=1)  # beyond, k=2: 6 s, pending
    forks = rec.count('fork')
    sim.advance(3)
    assert rec.count('fork') == forks
    p.shut_down()  # cancels the pending delayed replacement
    sim.run_until(lambda: p.closed)
    sim.advance(20)
    assert rec.count('fork') == forks == 5  # fork(), immediate, delayed, immediate, delayed


@pytest.mark.parametrize('make_bad, error, text', [
    (lambda: check_seconds('t', None), TypeError, 't: expected a number of seconds, got None'),
    (lambda: check_seconds('t', True), TypeError, 'got True'),
    (lambda: check_seconds('t', float('nan')), ValueError, 'finite'),
    (lambda: check_seconds('t', 0, allow_zero=False), ValueError, '> 0'),
    (lambda: Backoff(factor=0.5), ValueError, 'Backoff.factor: expected a number >= 1'),
    (lambda: Backoff(factor=True), ValueError, 'Backoff.factor'),
    (lambda: Backoff(jitter=1.0), ValueError, r'Backoff.jitter: expected a number in \[0, 1\)'),
    (lambda: Backoff(jitter='0.1'), ValueError, 'Backoff.jitter'),
    (lambda: RestartPolicy(restart='sometimes'), ValueError, 'restart: expected one of'),
    (lambda: RestartPolicy(intensity=-1), ValueError, 'restart_intensity'),
    (lambda: RestartPolicy(backoff=1.0), TypeError, 'restart_backoff'),
])
def test_r126_supervision_options_are_validated_naming_the_option(make_bad, error, text):
    with pytest.raises(error, match=text):
        make_bad()


def test_r126_restart_policy_with_restart_options_raises_and_a_non_policy_is_rejected():
    sim = MemoryTransport(seed=1)
    with pytest.raises(ValueError, match='either restart_policy or the restart_'):
        ClusterPrimary(worker_target=ready_worker, transport=sim, restart='never', restart_policy=RestartPolicy())
    with pytest.raises(TypeError, match='restart_policy: expected a RestartPolicy'):
        ClusterPrimary(worker_target=ready_worker, transport=sim, restart_policy='never')


# == §7.2 heartbeats R130–R131 =====================================================================

def hung_after_ready(**options: Any) -> tuple[float, ClusterError]:
    """How long after it hangs, at its worker_ready, the worker is found hung, and the error."""
    sim, p, rec = make(ready_worker, **options)
    hung_at = []
    p.on('worker_ready', lambda event: (sim.hang(event.data['worker']), hung_at.append(sim.loop.time())))
    p.fork(1)
    sim.run_until(lambda: rec.count('worker_error') == 1, timeout=60)
    error = rec.of('worker_error')[0]['error']
    found_after = sim.loop.time() - hung_at[0]
    close(sim, p)
    return found_after, error


def test_r130_heartbeat_options_derive_and_validate():
    # The timeout derives from the interval (x 3) and the interval from the timeout (/ 3): a hung
    # worker is found after more than the timeout, at the first heartbeat tick past it.
    for options, interval, timeout in [({'heartbeat_interval': 2.0}, 2.0, 6.0), ({'heartbeat_timeout': 9.0}, 3.0, 9.0)]:
        found_after, error = hung_after_ready(**options)
        assert type(error).__name__ == 'HeartbeatTimeout' and f'(heartbeat_timeout={timeout}s)' in str(error)
        assert timeout < found_after <= timeout + interval + 0.01
    for interval, timeout in [(2.0, 2.0), (3.0, 1.0)]:
        with pytest.raises(ValueError, match='heartbeat'):
            ClusterPrimary(worker_target=ready_worker, transport=MemoryTransport(seed=1),
                           heartbeat_interval=interval, heartbeat_timeout=timeout)


def busy_worker():
    worker = ClusterWorker()

    async def busy():
        while True:  # busy but responsive: yields to its loop every 0.1 s
            await asyncio.sleep(0.1)
    worker._spawn(busy())


def test_r130_responsive_workers_are_never_killed_and_heartbeats_keep_the_loop_busy():
    sim, p, rec = started(2, busy_worker, heartbeat_interval=1.0, heartbeat_timeout=2.5)
    sim.advance(100)
    assert rec.count('worker_error') == 0 and len(p.workers) == 2
    sim2, p2, rec2 = started(1, heartbeat_interval=1.0)
    with pytest.raises(TimeoutError):
        sim2.run_until_idle(timeout=20)  # periodic heartbeats prevent idleness (R122)
    close(sim, p)
    close(sim2, p2)


def test_r131_hung_worker_gets_heartbeat_timeout_and_is_replaced():
    sim, p, rec = started(2, heartbeat_interval=1.0, heartbeat_timeout=3.0)
    sim.advance(5)
    h = p.worker_by_id[1]
    t_hang = sim.loop.time()
    sim.hang(h)
    sim.run_until(lambda: rec.count('worker_error') == 1)
    error = rec.of('worker_error')[0]['error']
    assert isinstance(error, HeartbeatTimeout) and error.worker_id == 1
    # the last answer came at most one interval before the hang
    detected = rec.times('worker_error')[0]
    assert detected - t_hang <= 3.0 + 1.0 + 0.1
    assert detected - t_hang >= 3.0 - 1.0
    sim.run_until(lambda: h.state == 'dead')
    assert h.exit_signal == SIGTERM
    sim.run_until(lambda: len(p.workers) == 2)
    assert [w.id for w in p.workers] == [2, 3]
    assert p.stats()['killed_by_timeout'] >= 1
    close(sim, p)


def test_r131_hung_worker_ignoring_sigterm_is_killed_after_kill_timeout():
    sim, p, rec = started(1, heartbeat_interval=1.0, kill_timeout=2.0)
    sim.hang(1, ignore_sigterm=True)
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    assert rec.of('worker_exit')[0]['signal'] == SIGKILL
    assert rec.times('worker_exit')[0] - rec.times('worker_error')[0] == pytest.approx(2.0, abs=0.05)
    close(sim, p)


def test_r131_heartbeats_stop_at_shut_down():
    sim, p, rec = started(2, heartbeat_interval=1.0)
    p.shut_down()
    sim.run_until(lambda: p.closed)
    sim.run_until_idle(timeout=50)  # no periodic timer is left
    assert rec.count('worker_error') == 0


def test_r131_heartbeats_stop_for_a_retired_worker():
    sim, p, rec = started(2, stubborn_worker, heartbeat_interval=1.0, shutdown_timeout=20)
    p.stop_worker(1)  # ignores DISCONNECT: stays live 20 s without heartbeats
    sim.hang(1)
    sim.advance(15)
    assert rec.count('worker_error') == 0
    close(sim, p)


# == §7.3 reload R132–R134 ==========================================================================

def test_r132_reload_replaces_each_worker_new_ready_before_old_leaves():
    sim, p, rec = started(3)
    capacity = []
    p.after('remove_worker', lambda e: capacity.append(len(p.workers)))
    assert p.reload() is p
    assert rec.of('reload') == [{'worker_count': 3}]
    sim.run_until(lambda: rec.count('reload_complete') == 1)
    assert rec.of('reload_complete') == [{'worker_count': 3, 'aborted': False}]
    assert [w.id for w in p.workers] == [4, 5, 6]
    seq = [(e.name, e.worker) for e in rec.entries if e.stage == 'on' and e.name in ('worker_ready', 'worker_exit')]
    assert seq[3:] == [('worker_ready', 4), ('worker_exit', 1), ('worker_ready', 5), ('worker_exit', 2),
                       ('worker_ready', 6), ('worker_exit', 3)]
    assert min(capacity) >= 3
    assert [d['worker_count'] for d in rec.of('fork')] == [3, 1, 1, 1]
    assert all(d['worker'].exited_after_disconnect for d in rec.of('worker_exit'))
    assert p.stats()['restarts'] == 0  # reload forks are not replacements
    close(sim, p)


def test_r132_reload_while_reloading_or_not_active_does_nothing():
    sim, p, rec = started(2)
    p.reload()
    p.reload()
    sim.run_until(lambda: rec.count('reload_complete') == 1)
    sim.run_until_idle()
    assert rec.count('reload') == 1
    p.shut_down()
    assert p.reload() is p
    sim.run_until(lambda: p.closed)
    assert rec.count('reload') == 1


ready_once: set = set()


def flaky_new_worker():
    # worker 3 (the first new one of the reload) fails at boot, the others are fine
    if ClusterWorker.worker_id == 3:
        raise SystemExit(1)
    ClusterWorker()


def test_r133_failed_start_during_reload_forks_another():
    sim, p, rec = started(2, flaky_new_worker)
    p.reload()
    sim.run_until(lambda: rec.count('reload_complete') == 1)
    assert rec.of('reload_complete') == [{'worker_count': 2, 'aborted': False}]
    assert [w.id for w in p.workers] == [4, 5]
    assert p.stats()['restarts'] == 1  # the failed-start retry counts
    close(sim, p)


def test_r133_shut_down_abandons_the_reload():
    sim, p, rec = started(3, stubborn_worker, shutdown_timeout=2)
    p.reload()
    sim.run_until(lambda: rec.count('worker_ready') == 4)
    p.shut_down()
    sim.run_until(lambda: p.closed)
    assert rec.of('reload_complete') == [{'worker_count': 0, 'aborted': True}]


def test_r133_restart_limit_abandons_the_reload_and_old_workers_keep_running():
    def target():
        if ClusterWorker.worker_id > 2:
            raise SystemExit(1)  # every new worker fails
        ClusterWorker()
    sim, p, rec = started(2, target, restart_intensity=2)
    p.reload()
    sim.run_until(lambda: rec.count('reload_complete') == 1)
    assert rec.count('restart_limit') == 1
    assert rec.of('reload_complete') == [{'worker_count': 0, 'aborted': True}]
    assert [w.id for w in p.workers] == [1, 2]
    close(sim, p)


def test_r134_reload_with_empty_pool_completes_on_the_next_turn_with_zero():
    sim, p, rec = make()
    p.reload()
    assert rec.of('reload') == [{'worker_count': 0}]
    assert rec.count('reload_complete') == 0
    sim.run_until(lambda: rec.count('reload_complete') == 1)
    assert rec.of('reload_complete') == [{'worker_count': 0, 'aborted': False}]
    assert sim.loop.time() == 0.0
    close(sim, p)


def test_r132_reload_during_a_stop_worker_step_announces_and_covers_the_rest():
    sim, p, rec = started(3)
    first = p.workers[0]
    p.stop_worker(first, replace=True)
    p.reload()
    p._publish('reload', {'worker_count': 3})  # a second reload publish while one runs: ignored
    sim.run_until(lambda: rec.count('reload_complete') == 1, timeout=120)
    assert rec.of('reload_complete')[0]['worker_count'] == 3 and rec.of('reload_complete')[0]['aborted'] is False
    assert [h.id for h in p.workers] == [4, 5, 6]
    close(sim, p)


def test_r132_reload_skips_old_workers_that_left_before_their_step():
    sim, p, rec = started(3)
    third = p.workers[2]
    p.reload()
    sim.crash(third, code=0)  # ends before its step: nothing to replace for it in the reload
    sim.run_until(lambda: rec.count('reload_complete') == 1, timeout=120)
    assert rec.of('reload_complete')[0]['worker_count'] == 2
    close(sim, p)


def test_r133_prevented_fork_abandons_the_reload():
    sim, p, rec = started(2)
    p.fork(0)
    p.once_on('fork', lambda event: event.prevent())
    p.reload()
    sim.run_until(lambda: rec.count('reload_complete') == 1, timeout=30)
    assert rec.of('reload_complete')[0] == {'worker_count': 0, 'aborted': True}
    assert [h.id for h in p.workers] == [1, 2]
    close(sim, p)


def test_r134_reload_whose_step_fork_is_prevented_still_completes_once():
    # regression: the step used to take a stale handle from the previous fork and wait forever (fixed in dc68723)
    sim, p, rec = started(2)
    p.once_on('fork', lambda event: event.prevent())
    p.reload()
    sim.run_until(lambda: rec.count('reload_complete') == 1, timeout=30)
    assert rec.of('reload_complete')[0]['aborted'] is True


def test_r133_prevented_fork_abandons_an_unannounced_step_silently():
    sim, p, rec = started(1)
    p.fork(0)
    p.once_on('fork', lambda event: event.prevent())
    p.stop_worker(1, replace=True)
    sim.advance(5.0)
    assert rec.count('reload_complete') == 0 and [h.id for h in p.workers] == [1]
    p.stop_worker(1, replace=True)  # a later step runs normally
    sim.run_until(lambda: [h.id for h in p.workers] == [2], timeout=30)
    close(sim, p)


def test_r133_shut_down_in_an_on_fork_handler_of_a_reload_step_aborts_the_reload():
    sim, p, rec = started(1)
    p.once_on('fork', lambda event: p.shut_down())
    p.reload()
    sim.run_until(lambda: p.closed, timeout=60)
    assert rec.of('reload_complete') == [{'worker_count': 0, 'aborted': True}]
    assert rec.count('worker_fork') == 1  # only the original worker was ever started
    p.destroy()


# == §7.4 stop_worker and scale R135–R136 ==========================================================

def test_r135_stop_worker_retires_without_replacement():
    sim, p, rec = started(2)
    assert p.stop_worker(p.workers[1]) is p
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    sim.run_until_idle()
    assert [w.id for w in p.workers] == [1] and rec.count('fork') == 1
    assert p.stop_worker(1) is p  # by id
    sim.run_until(lambda: rec.count('worker_exit') == 2)
    sim.run_until_idle()
    assert p.workers == []
    close(sim, p)


@pytest.mark.parametrize('bad', [99, '1', None, 1.0, True])
def test_r135_stop_worker_rejects_what_is_not_a_live_worker(bad):
    sim, p, rec = started(1)
    with pytest.raises(ValueError):
        p.stop_worker(bad)
    close(sim, p)


def test_r135_stop_worker_rejects_dead_and_foreign_handles():
    sim, p, rec = started(1)
    sim_b, b, rec_b = started(1, seed=2)
    with pytest.raises(ValueError):
        p.stop_worker(b.workers[0])
    h = p.workers[0]
    sim.crash(h, code=1)
    sim.run_until(lambda: h.is_dead())
    with pytest.raises(ValueError):
        p.stop_worker(h)
    close(sim, p)
    close(sim_b, b)


def test_r135_stop_worker_replace_true_is_one_reload_step():
    sim, p, rec = started(2)
    p.stop_worker(1, replace=True)
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    sim.run_until_idle()
    assert [w.id for w in p.workers] == [2, 3]
    seq = [(e.name, e.worker) for e in rec.entries if e.stage == 'on' and e.name in ('worker_ready', 'worker_exit')]
    assert seq[2:] == [('worker_ready', 3), ('worker_exit', 1)]
    assert rec.count('reload') == 0 and rec.count('reload_complete') == 0
    close(sim, p)


def test_r136_scale_up_forks_the_difference_in_one_publish():
    sim, p, rec = started(2)
    assert p.scale(5) is p
    assert rec.of('fork')[-1] == {'worker_count': 3}
    sim.run_until(lambda: len(p.workers) == 5)
    p.scale(5)
    assert rec.count('fork') == 2
    close(sim, p)


def test_r136_scale_down_retires_highest_ids_first():
    sim, p, rec = started(4)
    p.scale(1)
    sim.run_until(lambda: rec.count('worker_exit') == 3)
    sim.run_until_idle()
    assert [w.id for w in p.workers] == [1]
    assert sorted(d['worker'].id for d in rec.of('worker_exit')) == [2, 3, 4]
    disconnect_order = [d['worker'].id for d in rec.of('worker_disconnect')]
    assert set(disconnect_order) == {2, 3, 4}
    assert rec.count('fork') == 1
    p.scale(0)
    sim.run_until(lambda: rec.count('worker_exit') == 4)
    sim.run_until_idle()
    assert p.workers == []
    close(sim, p)


def test_r136_scale_down_disconnects_highest_first():
    disconnects.clear()
    sim, p, rec = started(4, disconnect_recording_worker)
    sent = []  # the worker ids DISCONNECT is written to, in order, seen at the transport seam

    def recording(worker_id, write):
        def write_and_record(kind, payload):
            if kind == protocol.DISCONNECT:
                sent.append(worker_id)
            return write(kind, payload)
        return write_and_record
    for worker_id, link in sim.links.items():
        link.write = recording(worker_id, link.write)
    p.scale(2)
    assert sent == [4, 3]
    close(sim, p)


@pytest.mark.parametrize('bad', [-1, 1.5, '2', None, True])
def test_r136_scale_rejects_bad_counts(bad):
    sim, p, rec = started(1)
    with pytest.raises(ValueError, match='worker_count'):
        p.scale(bad)
    close(sim, p)


def test_r136_scale_when_not_active_does_nothing():
    sim, p, rec = started(1)
    p.shut_down()
    assert p.scale(4) is p
    sim.run_until(lambda: p.closed)
    assert rec.count('fork') == 1


def test_r136_scale_counts_live_workers_not_being_retired():
    sim, p, rec = started(3, stubborn_worker, shutdown_timeout=50)
    p.stop_worker(3)  # retiring, still live for 50 s
    p.scale(3)
    assert rec.of('fork')[-1] == {'worker_count': 1}
    close(sim, p)


def test_r135_stop_worker_replace_when_not_active_does_nothing():
    sim, p, rec = started(1)
    handle = p.workers[0]
    p.shut_down()
    forks = rec.count('fork')
    assert p.stop_worker(handle, replace=True) is p
    sim.run_until(lambda: p.closed, timeout=30)
    assert rec.count('fork') == forks
    p.destroy()


def test_r135_stop_worker_replace_during_a_reload_joins_it_once():
    sim, p, rec = started(2)
    first, second = p.workers
    p.stop_worker(first, replace=True)  # one step running: first is its old worker
    p.stop_worker(second, replace=True)  # joins the running step
    p.stop_worker(second, replace=True)  # already queued: not added twice
    p.stop_worker(first, replace=True)  # the step's own old worker: not added again
    sim.run_until(lambda: first.is_dead() and second.is_dead() and len(p.workers) == 2, timeout=60)
    assert [h.id for h in p.workers] == [3, 4]
    assert rec.count('fork') == 3 and rec.count('reload_complete') == 0  # not announced
    close(sim, p)


# == §7.5 stats and logs R138–R139 =================================================================

def test_r138_stats_returns_a_new_dict_of_counters():
    sim, p, rec = started(2, echo_worker)
    stats = p.stats()
    for key in ('forked', 'exited', 'restarts', 'restarts_in_window', 'killed_by_timeout', 'messages_in',
                'messages_out', 'live', 'ready'):
        assert key in stats
    assert stats['forked'] == 2 and stats['live'] == 2 and stats['ready'] == 2 and stats['exited'] == 0
    stats['forked'] = 99
    assert p.stats()['forked'] == 2 and p.stats() is not p.stats()
    p.send('x')
    sim.run_until(lambda: rec.count('worker_message') == 2)
    crash_and_wait(sim, p, rec, 1, code=1, pool=2)
    stats = p.stats()
    assert stats['messages_out'] == 2 and stats['messages_in'] == 2
    assert stats['exited'] == 1 and stats['restarts'] == 1 and stats['restarts_in_window'] == 1
    assert stats['forked'] == 3 and stats['live'] == 2 and stats['ready'] == 2
    close(sim, p)


def test_r139_worker_exit_is_logged_with_extra_fields(caplog):
    caplog.set_level(logging.DEBUG, logger='isocluster')
    sim, p, rec = started(1, restart='never')
    sim.crash(1, signal=9)
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    records = [r for r in caplog.records if r.name == 'isocluster' and getattr(r, 'worker_id', None) == 1
               and hasattr(r, 'exit_code')]
    assert records
    assert records[-1].exit_code is None and records[-1].signal == 'SIGKILL'
    assert getattr(records[-1], 'reason', None)
    close(sim, p)


def test_r139_worker_error_is_logged_with_reason_and_heartbeat_age(caplog):
    caplog.set_level(logging.DEBUG, logger='isocluster')
    sim, p, rec = started(1, heartbeat_interval=1.0, heartbeat_timeout=3.0, restart='never')
    sim.hang(1)
    sim.run_until(lambda: rec.count('worker_error') == 1)
    records = [r for r in caplog.records if r.name == 'isocluster' and getattr(r, 'worker_id', None) == 1
               and getattr(r, 'heartbeat_age', None) is not None]
    assert records and records[0].heartbeat_age > 3.0
    assert 'Heartbeat' in str(records[0].reason)
    close(sim, p)


def test_r139_ready_timeout_is_logged_with_reason(caplog):
    caplog.set_level(logging.DEBUG, logger='isocluster')
    sim, p, rec = make(inert_worker, ready_timeout=1.0, restart='never')
    p.fork(1)
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    reasons = [getattr(r, 'reason', None) for r in caplog.records if getattr(r, 'worker_id', None) == 1]
    assert any('ReadyTimeout' in str(reason) for reason in reasons)
    exit_records = [r for r in caplog.records if getattr(r, 'worker_id', None) == 1 and hasattr(r, 'exit_code')]
    assert exit_records and exit_records[0].signal == 'SIGTERM'
    close(sim, p)


# == bad arguments on every public method ===========================================================

def test_bad_arguments_on_public_methods_name_the_argument():
    sim, p, rec = started(1)
    with pytest.raises(ValueError, match='worker_count'):
        p.fork('3')
    with pytest.raises(ValueError, match='worker_count'):
        p.scale(-2)
    with pytest.raises(TypeError):
        p.round_robin([1])
    with pytest.raises(TypeError, match='message'):
        p.send()
    with pytest.raises(ValueError):
        p.stop_worker('one')
    with pytest.raises(TypeError):
        p.on(42, lambda e: None)
    close(sim, p)


# == additional coverage ===========================================================================

def test_r87_ready_timer_is_cancelled_by_worker_disconnect():
    sim, p, rec = make(inert_worker, ready_timeout=3.0, restart='never')
    p.fork(1)
    sim.run_until(lambda: rec.count('worker_online') == 1)
    sim.crash(1, code=0)
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    sim.advance(10)
    assert rec.count('worker_error') == 0
    close(sim, p)


def test_r133_old_worker_exiting_during_its_step_is_not_replaced_separately():
    sim, p, rec = started(2)
    sim.slow_boot(5.0)  # the step's new worker (3) boots slowly
    p.reload()
    sim.run_until(lambda: rec.count('worker_fork') == 3)
    sim.crash(1, code=1)  # the old worker of the running step dies before the new one is ready
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    assert rec.count('fork') == 2  # fork(2) and the step's fork: no separate replacement
    sim.run_until(lambda: rec.count('reload_complete') == 1)
    assert [w.id for w in p.workers] == [3, 4]
    assert rec.count('fork') == 3
    close(sim, p)


def test_r134_reload_complete_counts_a_step_whose_old_worker_died_once():
    sim, p, rec = started(2)
    sim.slow_boot(5.0)  # the step's new worker (3) boots slowly
    p.reload()
    sim.run_until(lambda: rec.count('worker_fork') == 3)
    sim.crash(1, code=1)  # the old worker of the running step dies before the new one is ready
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    assert rec.count('fork') == 2  # fork(2) and the step's fork: no separate replacement
    sim.run_until(lambda: rec.count('reload_complete') == 1)
    assert rec.of('reload_complete') == [{'worker_count': 2, 'aborted': False}]
    close(sim, p)


def test_r136_scale_clears_the_restart_history():
    sim, p, rec = started(1, restart_intensity=1)
    crash_and_wait(sim, p, rec, p.workers[0], code=1, pool=1)
    assert p.stats()['restarts_in_window'] == 1
    p.scale(1)
    assert p.stats()['restarts_in_window'] == 0
    crash_and_wait(sim, p, rec, p.workers[0], code=1, pool=1)  # within the fresh budget
    assert rec.count('restart_limit') == 0
    close(sim, p)


def test_r94_destroy_called_repeatedly_during_shutdown_never_fails():
    sim, p, rec = started(2, stubborn_worker, shutdown_timeout=2.0)
    p.shut_down()
    assert p.destroy() is p
    assert p.destroy(1) is p
    sim.run_until(lambda: p.closed)
    assert p.destroyed and rec.count('destroy_complete') == 1
    assert rec.count('worker_exit') == 2


def test_r90_worker_message_during_shutdown_is_published():
    def talker():
        worker = ClusterWorker()
        worker.send('hello')

    sim, p, rec = make(talker)
    p.fork(1)
    sim.run_until(lambda: rec.count('worker_online') == 1)
    sim.hold(1, 'to_primary')
    p.shut_down()
    sim.release(1, 'to_primary')
    sim.run_until(lambda: p.closed)
    names = rec.names()
    assert names.index('shut_down') < names.index('worker_message') < names.index('worker_disconnect')
    assert [d['message'] for d in rec.of('worker_message')] == ['hello']


def test_r94_destroy_after_a_cancelled_deferred_destroy_destroys():
    """README 'Where this implementation chose': destroy is complete_once, so after a prevented
    shut_down_complete cancelled the deferred destroy, a new destroy() destroys directly."""
    from isocluster.transport.memory import MemoryTransport

    sim = MemoryTransport(seed=1)
    p = ClusterPrimary(worker_target=lambda: None, transport=sim)
    p.on('shut_down_complete', lambda event: event.prevent())
    completes = []
    p.on('destroy_complete', lambda event: completes.append(event.data))
    p.destroy('first')
    sim.run_until_idle()
    assert not p.destroyed and completes == []
    p.destroy('second')
    assert p.destroyed and completes == [{'args': ('second',), 'kwargs': {}}]


def test_memory_transport_refuses_a_second_primary():
    from isocluster.transport.memory import MemoryTransport

    sim = MemoryTransport(seed=1)
    ClusterPrimary(worker_target=lambda: None, transport=sim).fork(1)
    with pytest.raises(ValueError, match='one primary'):
        ClusterPrimary(worker_target=lambda: None, transport=sim).fork(1)


@pytest.mark.parametrize('target', [0, 1, 2])
def test_r136_scale_during_a_reload_step_counts_the_new_worker_not_the_leaving_one(target):
    """Found by the executable spec: scale() right after a reload step forked its new worker
    used to count both, retire the new one, and leave the pool empty."""
    from isocluster.transport.memory import MemoryTransport

    sim = MemoryTransport(seed=0)
    p = ClusterPrimary(worker_target=lambda: ClusterWorker(), transport=sim, restart_intensity=1, restart_period=2.0)
    completed = []
    p.on('reload_complete', lambda event: completed.append(event.data))
    p.fork(1)
    sim.run_until(lambda: len(p.workers) == 1)
    p.reload()  # step: fork worker 2, then retire worker 1 once 2 is ready
    p.scale(target)
    sim.run_until(lambda: completed and p.stats()['live'] == target and len(p.workers) == target, timeout=40)
    sim.advance(40)
    assert len(p.workers) == target and p.stats()['live'] == target
