"""Rule tests for the deterministic memory transport (SPEC §6.3, R121–R125) and R35."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

import pytest

from isocluster import ClusterPrimary, ClusterWorker, SendError, TransportError
from isocluster import protocol
from isocluster.transport.base import current_link
from isocluster.transport.memory import MemoryTransport, SimulationDeadlock

from memory_helpers import PRIMARY_EVENTS, Recorder, close, inert_worker, make, note, ready_worker, seen, started

SIGTERM = signal.Signals.SIGTERM
SIGKILL = signal.Signals.SIGKILL

def collecting_worker():
    worker = ClusterWorker()
    worker_id = ClusterWorker.worker_id
    worker.on('primary_message', lambda e: note(worker_id, e.data['message']))
    worker.on('primary_disconnect', lambda e: note('disconnect', worker_id))


# == R121 determinism =====================================================================================

def busy_scenario_worker():
    worker = ClusterWorker()

    async def work(event):
        await asyncio.sleep(0.25 * ClusterWorker.worker_id)
        worker.send({'done': event.data['message'], 'by': ClusterWorker.worker_id})
    worker.on('primary_message', work)


def _trace(seed):
    sim = MemoryTransport(seed=seed)
    p = ClusterPrimary(worker_target=busy_scenario_worker, transport=sim, restart_intensity=3,
                       restart_backoff=None, heartbeat_interval=0.5)
    trace = []
    for name in PRIMARY_EVENTS:
        for stage, subscribe in (('on', p.on), ('after', p.after)):
            subscribe(name, lambda e, n=name, s=stage: trace.append((
                s, n, sim.loop.time(), getattr(e.data.get('worker'), 'id', None),
                repr({k: v for k, v in e.data.items() if k != 'worker'}))))
    p.fork(4)
    sim.run_until(lambda: len(p.workers) == 4)
    for i in range(6):
        p.send(i, to=p.round_robin())
    sim.crash(2, signal=9)
    sim.hang(3)
    sim.run_until(lambda: sum(1 for t in trace if t[1] == 'worker_exit' and t[0] == 'on') == 2)
    p.reload()
    sim.run_until(lambda: any(t[1] == 'reload_complete' for t in trace))
    p.destroy()
    sim.run_until(lambda: p.closed)
    return trace, dict(sim.exits)


def test_r121_same_seed_gives_the_identical_trace_with_virtual_timestamps():
    first, exits_first = _trace(11)
    second, exits_second = _trace(11)
    assert first == second
    assert exits_first == exits_second
    assert len(first) > 100
    assert any(t[2] > 0 and t[2] != int(t[2]) for t in first)  # real virtual timestamps recorded


def test_r121_seed_decides_latencies():
    first, _ = _trace(11)
    other, _ = _trace(12)
    assert [t[2] for t in first] != [t[2] for t in other]


# == R122 virtual time, run_until, run_until_idle ==========================================================

def test_r122_timers_fire_in_virtual_time_order_without_waiting():
    sim = MemoryTransport(seed=1)
    fired = []
    for delay in (1000.0, 5.0, 300.0):
        sim.loop.call_later(delay, lambda d=delay: fired.append((d, sim.loop.time())))
    sim.run_until(lambda: len(fired) == 3)
    assert fired == [(5.0, 5.0), (300.0, 300.0), (1000.0, 1000.0)]


def sleeping_worker():
    ClusterWorker()

    async def nap():
        start = asyncio.get_running_loop().time()
        await asyncio.sleep(120.0)
        note('slept', asyncio.get_running_loop().time() - start)
    return nap()


def test_r122_asyncio_sleep_in_a_worker_uses_virtual_time():
    sim, p, rec = started(1, sleeping_worker)
    sim.run_until(lambda: seen.get('slept'))
    assert seen['slept'] == [pytest.approx(120.0)]
    assert sim.loop.time() < 121
    close(sim, p)


def test_r122_run_until_raises_timeout_error_when_virtual_time_passes_timeout():
    sim, p, rec = started(1)
    start = sim.loop.time()
    sim.loop.call_later(100.0, lambda: None)
    with pytest.raises(TimeoutError):
        sim.run_until(lambda: False, timeout=10.0)
    assert sim.loop.time() == pytest.approx(start + 10.0)
    close(sim, p)


def test_r122_run_until_raises_simulation_deadlock_when_nothing_is_left():
    sim, p, rec = started(1)
    with pytest.raises(SimulationDeadlock):
        sim.run_until(lambda: False, timeout=10.0)
    close(sim, p)


def test_r122_run_until_idle_runs_until_nothing_is_pending():
    sim, p, rec = make()
    p.fork(2)
    sim.run_until_idle()
    assert len(p.workers) == 2
    assert sim.loop.is_idle()
    t = sim.loop.time()
    sim.run_until_idle()  # already idle: returns at once
    assert sim.loop.time() == t
    close(sim, p)


def test_r122_run_until_idle_with_heartbeats_raises_timeout_error():
    sim, p, rec = started(1, heartbeat_interval=1.0)
    with pytest.raises(TimeoutError):
        sim.run_until_idle(timeout=30.0)
    close(sim, p)


def test_r122_advance_runs_what_is_due_and_moves_the_clock():
    sim = MemoryTransport(seed=1)
    fired = []
    sim.loop.call_later(3.0, lambda: fired.append(3))
    sim.loop.call_later(7.0, lambda: fired.append(7))
    sim.advance(5.0)
    assert fired == [3] and sim.loop.time() == pytest.approx(5.0)
    sim.advance(5.0)
    assert fired == [3, 7] and sim.loop.time() == pytest.approx(10.0)


def test_r122_run_on_an_idle_simulation_raises_simulation_deadlock_instead_of_hanging():
    sim, p, rec = make()
    with pytest.raises(SimulationDeadlock, match='idle'):
        p.run()
    assert not p.closed


def test_r122_run_until_from_inside_a_callback_raises_runtime_error():
    sim = MemoryTransport(seed=1)
    caught = []

    def reenter():
        try:
            sim.run_until(lambda: True)
        except RuntimeError as error:
            caught.append(str(error))
    sim.loop.call_soon(reenter)
    sim.run_until(lambda: caught)
    assert 'already running' in caught[0]


def test_r122_call_soon_threadsafe_runs_on_the_virtual_loop():
    sim = MemoryTransport(seed=1)
    ran = []
    sim.loop.call_soon_threadsafe(ran.append, 'x')
    sim.run_until(lambda: ran)
    assert ran == ['x'] and sim.loop.time() == 0.0


# == R123 codec round trip ====================================================================================

def echo_types_worker():
    worker = ClusterWorker()
    worker.on('primary_message', lambda e: (note('got', e.data['message']), worker.send(e.data['message'])))


def test_r123_messages_are_encoded_and_decoded_with_the_primary_codec():
    sim, p, rec = started(1, echo_types_worker)
    p.send({'tuple': (1, 2), 'key': 'v'})
    sim.run_until(lambda: rec.count('worker_message') == 1)
    assert seen['got'] == [{'tuple': [1, 2], 'key': 'v'}]  # json: decode(encode(message))
    assert rec.of('worker_message')[0]['message'] == {'tuple': [1, 2], 'key': 'v'}
    close(sim, p)


def test_r123_pickle_codec_keeps_python_types():
    sim, p, rec = started(1, echo_types_worker, codec='pickle')
    p.send({'tuple': (1, 2), 'set': {3}})
    sim.run_until(lambda: rec.count('worker_message') == 1)
    assert seen['got'] == [{'tuple': (1, 2), 'set': {3}}]
    close(sim, p)


def test_r123_receiver_gets_a_copy_not_the_sent_object():
    sim, p, rec = started(1, echo_types_worker, codec='pickle')
    message = {'list': [1]}
    p.send(message)
    sim.run_until(lambda: seen.get('got'))
    assert seen['got'][0] == message and seen['got'][0] is not message
    close(sim, p)


# == R124 each worker its own link ==========================================================================

def test_r124_each_simulated_worker_binds_to_its_own_link():
    sim, p, rec = started(3, collecting_worker)
    for h in p.workers:
        h.send(f'for {h.id}')
    sim.run_until(lambda: all(seen.get(i) for i in (1, 2, 3)))
    assert {i: seen[i] for i in (1, 2, 3)} == {1: ['for 1'], 2: ['for 2'], 3: ['for 3']}
    close(sim, p)


# == R125 fault injection =====================================================================================

def write_then_crash_worker():
    worker = ClusterWorker()

    def on_message(event):
        worker.send('last words')
        sim_of_test['sim'].crash(ClusterWorker.worker_id, code=7)
    worker.on('primary_message', on_message)


sim_of_test: dict = {}


def test_r125_crash_delivers_written_frames_then_eof_then_exit():
    sim, p, rec = started(1, write_then_crash_worker, restart='never')
    sim_of_test['sim'] = sim
    p.send('go')
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    names = [n for n in rec.for_worker(1) if n != 'remove_worker']
    assert names[-3:] == ['worker_message', 'worker_disconnect', 'worker_exit']
    assert rec.of('worker_message')[0]['message'] == 'last words'
    assert sim.exits[1] == (7, None)
    close(sim, p)
    sim_of_test.clear()


@pytest.mark.parametrize('kwargs, exits', [({'code': 4}, (4, None)), ({'signal': 9}, (None, SIGKILL)),
                                           ({'signal': SIGTERM}, (None, SIGTERM))])
def test_r125_crash_with_a_code_or_a_signal(kwargs, exits):
    sim, p, rec = started(1, restart='never')
    sim.crash(p.workers[0], **kwargs)  # a handle works as well as an id
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    assert sim.exits[1] == exits
    data = rec.of('worker_exit')[0]
    assert (data['code'], data['signal']) == exits
    close(sim, p)


@pytest.mark.parametrize('kwargs', [{}, {'code': 1, 'signal': 9}])
def test_r125_crash_needs_exactly_one_of_code_or_signal(kwargs):
    sim, p, rec = started(1)
    with pytest.raises(ValueError):
        sim.crash(1, **kwargs)
    assert sim.alive(1)
    close(sim, p)


def test_r125_fault_operations_reject_unknown_workers():
    sim, p, rec = started(1)
    for operation in (lambda: sim.crash(99, code=1), lambda: sim.hang(99), lambda: sim.hold(99),
                      lambda: sim.release(99), lambda: sim.fail_next_send(99)):
        with pytest.raises(ValueError):
            operation()
    with pytest.raises(ValueError):
        sim.hold(1, direction='sideways')
    with pytest.raises(ValueError):
        sim.fail_next_send(1, direction='both')
    close(sim, p)


def test_r125_hang_stops_everything_but_sigterm_still_kills():
    sim, p, rec = started(1, collecting_worker, restart='never')
    sim.hang(1)
    p.send('unheard')
    sim.advance(10)
    assert 1 not in seen
    assert sim.alive(1)
    p.workers[0].kill(SIGTERM)
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    assert sim.exits[1] == (None, SIGTERM)
    close(sim, p)


def test_r125_hang_ignoring_sigterm_needs_sigkill():
    sim, p, rec = started(1, restart='never')
    h = p.workers[0]
    sim.hang(h, ignore_sigterm=True)
    h.kill(SIGTERM)
    sim.advance(10)
    assert sim.alive(h) and rec.count('worker_exit') == 0
    h.kill(SIGKILL)
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    assert sim.exits[1] == (None, SIGKILL)
    close(sim, p)


def test_r125_hold_and_release_keep_then_deliver_in_order():
    sim, p, rec = started(1, collecting_worker)
    sim.hold(1, 'to_worker')
    for i in range(5):
        p.send(i)
    sim.advance(100)
    assert 1 not in seen
    sim.release(1, 'to_worker')
    sim.run_until(lambda: len(seen.get(1, ())) == 5)
    assert seen[1] == [0, 1, 2, 3, 4]
    close(sim, p)


def counting_sender():
    worker = ClusterWorker()
    worker.on('primary_message', lambda e: [worker.send(i) for i in range(4)])


def test_r125_hold_to_primary_keeps_worker_frames():
    sim, p, rec = started(1, counting_sender)
    sim.hold(1, 'to_primary')
    p.send('go')
    sim.advance(50)
    assert rec.count('worker_message') == 0
    sim.release(1)  # direction defaults to both
    sim.run_until(lambda: rec.count('worker_message') == 4)
    assert [d['message'] for d in rec.of('worker_message')] == [0, 1, 2, 3]
    close(sim, p)


def test_r125_fail_next_send_to_worker():
    sim, p, rec = started(2, collecting_worker)
    sim.fail_next_send(1)
    future = p.send('hello', to=1)
    error = future.exception()
    assert isinstance(error, SendError) and isinstance(error.__cause__, TransportError)
    sim.run_until(lambda: rec.count('worker_error') == 1)
    data = rec.of('worker_error')[0]
    assert data['worker'].id == 1 and isinstance(data['error'], TransportError)
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    assert p.send('next', to=2).result() is None  # only the next write failed, and only for worker 1
    sim.run_until(lambda: seen.get(2))
    assert seen[2] == ['next'] and 1 not in seen
    close(sim, p)


def failing_worker_sender():
    worker = ClusterWorker()
    worker.on('primary_disconnect', lambda e: note('disconnect', ClusterWorker.worker_id))

    def on_message(event):
        future = worker.send('reply')
        note('future', (type(future.exception()).__name__, type(future.exception().__cause__).__name__))
    worker.on('primary_message', on_message)


def test_r125_fail_next_send_to_primary_ends_the_worker_as_if_the_primary_were_gone():
    sim, p, rec = started(1, failing_worker_sender, restart='never')
    sim.fail_next_send(1, direction='to_primary')
    p.send('go')
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    assert seen['future'] == [('SendError', 'TransportError')]
    assert seen['disconnect'] == [1]
    assert sim.exits[1] == (0, None)
    assert rec.count('worker_message') == 0
    close(sim, p)


def test_r125_kill_primary_every_worker_sees_eof_and_the_primary_publishes_nothing_more():
    sim, p, rec = started(3, collecting_worker)
    before = len(rec.entries)
    sim.kill_primary()
    sim.run_until(lambda: not any(sim.alive(i) for i in (1, 2, 3)))
    assert sorted(seen['disconnect']) == [1, 2, 3]
    assert all(sim.exits[i] == (0, None) for i in (1, 2, 3))
    sim.run_until_idle()
    assert len(rec.entries) == before


def test_r125_slow_boot_delays_online_of_the_next_count_workers():
    sim, p, rec = make()
    sim.slow_boot(5.0, count=2)
    p.fork(3)
    sim.run_until(lambda: len(p.workers) == 3)
    online = {d['worker'].id: t for d, t in zip(rec.of('worker_online'), rec.times('worker_online'))}
    assert online[1] == pytest.approx(5.0, abs=0.01) and online[2] == pytest.approx(5.0, abs=0.01)
    assert online[3] < 0.01
    assert [d['worker'].id for d in rec.of('worker_online')][0] == 3
    close(sim, p)


@pytest.mark.parametrize('delay, count', [(-1, 1), (1, 0)])
def test_r125_slow_boot_rejects_bad_arguments(delay, count):
    with pytest.raises(ValueError):
        MemoryTransport(seed=1).slow_boot(delay, count)


def test_r125_crash_rejects_a_non_int_code_and_ignores_dead_workers():
    sim, p, rec = started(1)
    with pytest.raises(TypeError, match='code: expected an int'):
        sim.crash(1, code='1')
    sim.crash(1, code=4)
    sim.crash(1, code=5)  # already dead: no second exit
    sim.hang(1)  # hanging a dead worker does nothing
    sim.run_until(lambda: rec.count('worker_exit') == 1, timeout=10)
    assert sim.exits[1] == (4, None)
    close(sim, p)


def test_r125_kill_primary_twice_pushes_one_eof_per_link():
    sim, p, rec = started(2)
    sim.kill_primary()
    sim.kill_primary()
    sim.run_until(lambda: not sim.alive(1) and not sim.alive(2), timeout=30)
    assert sim.exits == {1: (0, None), 2: (0, None)}


def test_r119_closing_the_primary_end_of_a_link_disconnects_the_worker_and_later_writes_fail():
    sim, p, rec = started(1)
    handle = p.workers[0]
    sim.links[handle.id].close()
    sim.links[handle.id].close()  # closing twice sends one EOF
    with pytest.raises(TransportError, match='is closed'):
        sim.links[handle.id].write(protocol.MESSAGE, b'1')
    assert isinstance(p.send('x', to=handle).exception(), SendError)
    sim.run_until(lambda: rec.count('worker_exit') == 1, timeout=30)
    assert rec.of('worker_exit')[0]['code'] == 0
    close(sim, p)


def test_r104_listening_answer_to_a_worker_that_died_before_attaching_is_closed():
    sim, p, rec = make(inert_worker)
    p.fork(1)
    sim.run_until(lambda: rec.count('worker_online') == 1, timeout=10)
    sock = socket.socket()
    sim.links[1].send_socket(sock, {'id': 1, 'address': ['x', 1]})
    sim.run_until(lambda: sim.links[1].primary_link._backlog, timeout=10)
    kept = sim.links[1].primary_link._backlog[0][1]['socket']
    sim.crash(1, code=0)
    assert kept.fileno() == -1  # the worker's copy was closed with it
    sock.close()
    close(sim, p)


attached_workers: list[ClusterWorker] = []


def detaching_target():
    worker = ClusterWorker()
    link = current_link()
    link.detach(object())  # detaching what was never attached is a no-op
    worker.on('primary_disconnect', lambda event: event.prevent())
    attached_workers.append(worker)


def test_r109_frames_reaching_a_detached_worker_end_it_and_sockets_close():
    attached_workers.clear()
    sim, p, rec = started(1, detaching_target)
    handle = p.workers[0]
    sim.hold(1, 'to_worker')
    handle.disconnect()
    sock = socket.socket()
    sim.links[handle.id].send_socket(sock, {'id': 7, 'address': ['x', 1]})
    queue = sim.links[1].to_worker.queue
    assert [frame[0] for frame in queue] == [protocol.DISCONNECT, protocol.LISTENING]
    copy = queue[1][1]['socket']
    sim.links[handle.id].primary_link.detach(attached_workers[0])  # the worker detached before these arrive
    sim.release(1, 'to_worker')
    sim.run_until(lambda: rec.count('worker_exit') == 1, timeout=1.0)
    # The shared worker runtime (R102): a DISCONNECT that no ClusterWorker receives ends the
    # worker with code 0, as on the other transports; the socket it never received closes with it.
    assert rec.of('worker_exit')[0]['code'] == 0
    assert copy.fileno() == -1
    sock.close()
    close(sim, p)


def test_r95_closing_the_transport_from_inside_the_loop_leaves_the_loop_open():
    sim = MemoryTransport(seed=1)
    sim.loop.call_soon(sim.close)
    sim.run_until_idle()
    assert not sim.loop.is_closed()
    sim.close()
    assert sim.loop.is_closed()


# == R35 fatal exceptions on the memory transport ===========================================================

def test_r35_primary_side_exception_is_re_raised_from_run_until_without_shutting_down():
    sim, p, rec = make()

    def explode(event):
        raise ZeroDivisionError('handler bug')
    p.on('worker_ready', explode)
    p.fork(2)
    with pytest.raises(ZeroDivisionError, match='handler bug'):
        sim.run_until(lambda: False, timeout=100)
    assert rec.count('shut_down') == 0 and not p.closed


def test_r35_primary_side_exception_is_re_raised_from_run_until_idle():
    sim, p, rec = started(1)
    t0 = sim.loop.time()
    sim.loop.call_later(2.0, lambda: 1 / 0)
    sim.loop.call_later(50.0, lambda: note('later', True))
    with pytest.raises(ZeroDivisionError):
        sim.run_until_idle()
    assert sim.loop.time() == pytest.approx(t0 + 2.0)  # stopped there
    assert 'later' not in seen
    assert rec.count('shut_down') == 0
    close(sim, p)


def test_r35_primary_coroutine_handler_failure_is_re_raised():
    sim, p, rec = make()

    async def failing(event):
        await asyncio.sleep(1)
        raise KeyError('async handler bug')
    p.on('worker_ready', failing)
    p.fork(1)
    with pytest.raises(KeyError):
        sim.run_until(lambda: False, timeout=100)


def test_r35_worker_side_exception_ends_only_that_worker_and_keeps_its_traceback():
    def target():
        ClusterWorker()
        if ClusterWorker.worker_id == 2:
            asyncio.get_running_loop().call_soon(lambda: [][1])
    sim, p, rec = make(target, restart='never')
    p.fork(3)
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    assert sim.exits == {2: (1, None)}
    assert 'IndexError' in sim.tracebacks[2] and set(sim.tracebacks) == {2}
    sim.run_until(lambda: len(p.workers) == 2)
    close(sim, p)


def test_r36_unprevented_initialize_error_in_primary_is_re_raised():
    class Broken(ClusterPrimary):
        def _initialize(self):
            raise RuntimeError('primary init failed')
    sim = MemoryTransport(seed=1)
    p = Broken(worker_target=ready_worker, transport=sim)
    assert not p.initialized
    with pytest.raises(RuntimeError, match='primary init failed'):
        sim.run_until_idle()


def test_r54_memory_transport_rejects_forking_without_a_target():
    sim = MemoryTransport(seed=1)
    p = ClusterPrimary(worker_script='worker.py', transport=sim)
    with pytest.raises(ValueError, match='worker_target'):
        p.fork(1)
    p.destroy()


def test_r34_unretrieved_future_exception_is_only_reported_not_fatal(caplog):
    sim = MemoryTransport(seed=1)
    future = sim.loop.create_future()
    error = RuntimeError('never retrieved')
    with caplog.at_level(logging.ERROR, logger='asyncio'):
        sim.loop.call_exception_handler({'message': 'Future exception was never retrieved', 'future': future, 'exception': error})
        sim.run_until_idle()
    assert any('never retrieved' in r.getMessage() for r in caplog.records)
    future.cancel()


def test_r35_two_primary_side_failures_in_one_turn_raise_the_first_with_the_second_noted():
    sim = MemoryTransport(seed=1)
    first, second = RuntimeError('first'), RuntimeError('second')

    def fail(error):
        raise error
    sim.loop.call_soon(fail, first)
    sim.loop.call_soon(fail, second)
    sim.loop.call_soon(fail, first)  # the same error again is not noted twice
    with pytest.raises(RuntimeError) as caught:
        sim.run_until(lambda: False, timeout=1)
    assert caught.value is first and first.__notes__ == ["also: RuntimeError('second')"]


def test_r35_exception_escaping_a_transport_callback_stops_the_simulation():
    sim = MemoryTransport(seed=1)
    error = RuntimeError('escaped a kernel callback')
    handle = sim.loop.call_soon(lambda: None)
    sim.loop.call_exception_handler({'message': 'Exception in callback', 'exception': error, 'handle': handle})
    with pytest.raises(RuntimeError) as caught:
        sim.run_until(lambda: False, timeout=1)
    assert caught.value is error
