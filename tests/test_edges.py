"""Edge cases of the core (primary, worker, routing, supervision, memory transport): bad
arguments, failed writes, late or duplicate replies, rogue frames, run()/wait_closed() paths.
All on the deterministic memory transport (virtual time: no sleeps)."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from isocluster import ClusterError, ClusterPrimary, ClusterWorker, protocol
from isocluster.errors import (
    DecodeError, EncodeError, ListenError, NotAWorkerError, ProtocolError, RemoteError,
    RequestTimeout, SendError, TransportError, WorkerLost,
)
from isocluster.routing import PendingRequests, Request
from isocluster.supervision import Backoff, RestartPolicy, check_seconds
from isocluster.transport.base import Signals, current_link
from isocluster.transport.memory import MemoryTransport, SimulationDeadlock

from memory_helpers import close, inert_worker, make, ready_worker, started

seen: dict = {}


@pytest.fixture(autouse=True)
def _clear_seen():
    seen.clear()
    yield
    seen.clear()


def note(key, value):
    seen.setdefault(key, []).append(value)


# == primary options (R54) ==========================================================================

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
    sim = MemoryTransport(seed=1)
    p = ClusterPrimary(worker_script='w.py', worker_args=['--x', 'y'], transport=sim)
    assert p._spec(1).args == ('--x', 'y')
    with pytest.raises(ValueError, match='memory transport runs only worker_target'):
        p.fork()
    assert p.stats()['forked'] == 0
    close(sim, p)


def test_r54_worker_args_given_as_a_generator_are_kept():
    # regression: the type check used to consume a one-shot iterable (fixed in dc68723)
    sim = MemoryTransport(seed=1)
    p = ClusterPrimary(worker_script='w.py', worker_args=(a for a in ['--x', 'y']), transport=sim)
    assert p._spec(1).args == ('--x', 'y')


# == fatal exceptions on a transport that does not capture them (R34) ===============================

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


def stubborn_worker():
    worker = ClusterWorker()
    worker.on('primary_disconnect', lambda event: event.prevent())


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


# == fork (R59) ==================================================================================

def test_r59_fork_published_with_a_bad_count_raises_value_error_from_the_default_action():
    sim, p, rec = make()
    with pytest.raises(ValueError, match='fork: worker_count must be an int >= 0'):
        p._publish('fork', {'worker_count': 1.5})
    assert p._live == {}
    close(sim, p)


def test_r83_shut_down_in_an_on_fork_handler_starts_no_worker():
    sim, p, rec = make()
    p.once_on('fork', lambda event: p.shut_down())
    p.fork(2)
    sim.run_until(lambda: p.closed, timeout=10)
    assert rec.count('worker_fork') == 0 and p.stats()['forked'] == 0
    p.destroy()


# == request() from the primary ===================================================================

class Answering(ClusterWorker):
    def _event_primary_message_echo(self, event):
        return event.data['message']['value']


def answering():
    Answering()


def test_request_whose_write_fails_rejects_with_send_error_and_leaves_nothing_pending():
    sim, p, rec = started(1, answering)
    sim.fail_next_send(1)
    future = p.request({'type': 'echo', 'value': 1}, to=1, timeout=5)
    assert isinstance(future.exception(), SendError)
    assert isinstance(future.exception().__cause__, TransportError)
    assert p._requests._pending == {}
    close(sim, p)


def test_request_to_a_list_rejects_with_invalid_destination():
    sim, p, rec = started(1, answering)
    for to in ([1], (1,)):
        future = p.request({'type': 'echo', 'value': 1}, to=to)
        assert 'to must name one worker' in str(future.exception())
    # to=None is the least busy ready worker (issue 15, R141), not an error any more
    future = p.request({'type': 'echo', 'value': 1}, to=None)
    sim.run_until(future.done)
    assert future.exception() is None
    close(sim, p)


# == requests from a worker served by the primary =================================================

class RaisingPrimary(ClusterPrimary):
    def _event_worker_message_fail(self, event):
        raise KeyError('nope')


def requester(message):
    def target():
        worker = ClusterWorker()

        async def ask():
            try:
                note('reply', await worker.request(message, timeout=10))
            except Exception as error:
                note('reply', error)
        worker._spawn(ask())
    return target


def test_request_handler_error_on_the_primary_goes_back_as_remote_error():
    sim, p, rec = make(requester({'type': 'fail'}), cls=RaisingPrimary)
    p.fork(1)
    sim.run_until(lambda: seen.get('reply'), timeout=10)
    error = seen['reply'][0]
    assert isinstance(error, RemoteError) and error.remote_type == 'KeyError'
    assert p.workers[0].state == 'ready'
    close(sim, p)


def test_request_handler_that_replied_then_raised_is_fatal_to_the_primary():
    sim, p, rec = make(requester({'type': 'x'}))
    failure = RuntimeError('after reply')

    def reply_then_raise(event):
        event.reply('ok')
        raise failure
    p.on('worker_message', reply_then_raise)
    p.fork(1)
    with pytest.raises(RuntimeError) as caught:
        sim.run_until(lambda: False, timeout=10)
    assert caught.value is failure
    sim.run_until(lambda: seen.get('reply'), timeout=10)
    assert seen['reply'] == ['ok']


def test_event_reply_on_an_event_without_a_request_raises_type_error():
    sim, p, rec = started(1, answering)
    caught = []

    def reply(event):
        try:
            event.reply(1)
        except TypeError as error:
            caught.append(str(error))
    p.on('worker_message', reply)
    sim.loop.call_soon(lambda: p._publish('worker_message', {'worker': p.workers[0], 'message': 'm'}))
    sim.run_until(lambda: caught, timeout=1)
    assert "carries no request" in caught[0]
    close(sim, p)


def rogue_request_target():
    ClusterWorker()
    current_link().write(protocol.REQUEST, (1, b'\xff not json'))


def test_r85_undecodable_request_from_a_worker_is_a_decode_error():
    sim, p, rec = make(rogue_request_target)
    p.fork(1)
    sim.run_until(lambda: rec.count('worker_error') == 1, timeout=10)
    assert isinstance(rec.of('worker_error')[0]['error'], DecodeError)
    close(sim, p)


# == link events the primary must survive (R85, R117) =============================================

def test_r85_frames_before_online_are_protocol_violations():
    for kind, payload in ((protocol.MESSAGE, b'"x"'), (protocol.READY, None)):
        sim, p, rec = make()
        sim.slow_boot(5.0)
        p.fork(1)
        sim.run_until(lambda: rec.count('worker_fork') == 1)
        handle = p._live[1]
        p.link_frame(handle._link, kind, payload)
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
    p.link_error(handle._link, error)
    p.link_error(handle._link, TransportError('again'))
    assert error.worker_id == 1
    assert [d['error'] for d in rec.of('worker_error')] == [error]
    close(sim, p)


def test_r117_exit_reported_before_close_still_publishes_disconnect_first():
    sim, p, rec = started(1)
    handle = p.workers[0]
    p.link_exit(handle._link, 3, None)
    assert rec.names()[-4:] == ['worker_disconnect', 'remove_worker', 'worker_exit', 'fork']
    assert handle.exit_code == 3
    p.link_closed(handle._link)  # a late close of a dead worker is ignored
    assert rec.count('worker_disconnect') == 1
    close(sim, p)


def test_link_events_after_destruction_are_ignored():
    sim, p, rec = make()
    p.fork(1)
    sim.run_until(lambda: rec.count('worker_fork') == 1)
    link = p._live[1]._link
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
        p.link_error(p.workers[0]._link, TransportError('x'))
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
    sim, p, rec = started(1)
    handle = p.workers[0]
    sim.crash(1, code=0)
    sim.run_until(lambda: handle.state == 'dead', timeout=10)
    p._publish('worker_error', {'worker': handle, 'error': ClusterError('late')})
    handle.disconnect()  # a dead worker is not disconnected either
    assert 'kill' not in handle._timers and 'terminate' not in handle._timers
    close(sim, p)


def test_r89_hung_worker_ignoring_sigterm_is_killed_once_after_kill_timeout():
    sim, p, rec = started(1, shutdown_timeout=2.0, kill_timeout=3.0)
    handle = p.workers[0]
    sim.hang(1, ignore_sigterm=True)
    p.shut_down()
    sim.run_until(lambda: 'kill' in handle._timers, timeout=10)
    assert sim.loop.time() == pytest.approx(2.0, abs=0.01)
    p._publish('worker_error', {'worker': handle, 'error': ClusterError('x')})  # kill already pending
    sim.run_until(lambda: p.closed, timeout=10)
    assert rec.of('worker_exit')[0]['signal'] == Signals.SIGKILL
    assert sim.loop.time() == pytest.approx(5.0, abs=0.01)
    p.destroy()


# == shared listening sockets when the worker is gone (R114, R116) ===============================

def listen_then_die(address):
    def target():
        ClusterWorker()
        current_link().write(protocol.LISTEN, {'id': 1, 'address': list(address)})
        raise SystemExit(0)
    return target


def test_r116_listen_answer_to_a_dead_worker_publishes_no_worker_listening():
    sim, p, rec = make(listen_then_die(('127.0.0.1', 0)))
    p.fork(1)
    sim.run_until(lambda: rec.count('worker_exit') == 1, timeout=10)
    assert rec.count('worker_listening') == 0 and rec.count('worker_error') == 0
    close(sim, p)


def test_r116_bind_failure_for_a_dead_worker_is_dropped_silently():
    blocker = socket.socket()
    blocker.bind(('127.0.0.1', 0))
    blocker.listen(1)
    try:
        sim, p, rec = make(listen_then_die(blocker.getsockname()))
        p.fork(1)
        sim.run_until(lambda: rec.count('worker_exit') == 1, timeout=10)
        assert rec.count('worker_listening') == 0 and rec.count('worker_error') == 0
        close(sim, p)
    finally:
        blocker.close()


def test_r78_duplicate_close_report_publishes_no_second_worker_disconnect():
    sim, p, rec = started(1)
    handle = p.workers[0]
    p.once_after('worker_disconnect', lambda event: p.link_closed(handle._link))
    sim.crash(1, code=0)
    sim.run_until(lambda: rec.count('worker_exit') == 1, timeout=10)
    assert rec.count('worker_disconnect') == 1
    close(sim, p)


# == ClusterWorker edges (§5) =====================================================================

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
            worker._call_soon(destroy)
            return

        async def wait_for_answer():
            try:
                await worker.listen(('127.0.0.1', 0))
            except ListenError as error:
                note('listen', str(error))
        worker._spawn(wait_for_answer())
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
    sim.run_until(lambda: sim._links[1].to_primary.queue, timeout=10)
    p.workers[0].disconnect()
    sim.run_until(lambda: seen.get('listen'), timeout=10)
    assert 'primary disconnected before answering' in seen['listen'][0]
    sim.release(1)
    close(sim, p)


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
        worker = ClusterWorker(initialize=False)
        worker._ps_loop = loop  # the loop its run() would drive (R53)
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
    close(sim, p)


def bad_listen_target():
    worker = ClusterWorker()

    async def attempts():
        for address in (('127.0.0.1',), ('127.0.0.1', '80'), (1, 80), 8080):
            try:
                await worker.listen(address)
            except (TypeError, ValueError) as error:
                note('errors', type(error))
    worker._spawn(attempts())


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
        worker._spawn(listen())
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
        worker._spawn(listen())
    worker.on('primary_disconnect', on_disconnect)


def test_r114_listen_after_the_link_closed_rejects_with_listen_error():
    sim, p, rec = started(1, listen_after_close_target)
    p.workers[0].disconnect()
    sim.run_until(lambda: seen.get('listen'), timeout=10)
    assert 'link to the primary is closed' in str(seen['listen'][0])
    assert isinstance(seen['listen'][0].__cause__, TransportError)
    close(sim, p)


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
    sim._links[1].to_worker.push((protocol.HEARTBEAT, None))  # a heartbeat already on the wire
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
    p.workers[0]._link.send_socket(sock, {'id': 12345, 'address': ['x', 1]})
    sim.advance(1.0)
    sock.close()
    assert sim.alive(1) and sim.tracebacks == {}
    close(sim, p)


def test_r120_unexpected_control_frame_is_fatal_to_the_worker():
    sim, p, rec = started(1)
    p.workers[0]._link.write(protocol.ONLINE, None)
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


# == routing: Request and PendingRequests ==========================================================

class _Wire:
    """The write side of a Request: records replies, or fails like a broken link."""

    def __init__(self, broken=False):
        self.frames = []
        self.broken = broken

    def __call__(self, reply):
        if self.broken:
            raise TransportError('gone')
        self.frames.append(reply)


def _request(wire, spawned=None):
    return Request(5, wire, protocol.JsonCodec(), (spawned.append if spawned is not None else None))


def test_request_answers_exactly_once():
    wire = _Wire()
    request = _request(wire)
    request.reply({'a': 1})
    with pytest.raises(RuntimeError, match='request 5 has already been answered'):
        request.reply(2)
    with pytest.raises(RuntimeError, match='already been answered'):
        request.fail(ValueError('late'))
    request.answer_with(3)  # a routed return value after an explicit reply is ignored
    request.settle_unanswered('x')
    assert wire.frames == [(5, True, b'{"a":1}')]


def test_request_reply_that_cannot_be_encoded_fails_the_request_with_encode_error():
    wire = _Wire()
    _request(wire).reply(object())
    (request_id, ok, data), = wire.frames
    assert ok is False and b'EncodeError' in data


def test_request_reply_to_a_gone_requester_is_dropped_silently():
    request = _request(_Wire(broken=True))
    request.reply('x')
    assert request.answered


def _run(coro):
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def test_awaited_answer_replies_with_the_value_or_fails_with_the_error():
    async def value():
        return 'v'

    async def error():
        raise KeyError('k')

    wire = _Wire()
    spawned = []
    _request(wire, spawned).answer_with(value())
    _request(wire, spawned).answer_with(error())
    for coro in spawned:
        _run(coro)
    assert wire.frames[0] == (5, True, b'"v"')
    assert wire.frames[1][1] is False and b'KeyError' in wire.frames[1][2]


def test_awaited_answer_after_an_explicit_reply_sends_nothing_more():
    wire = _Wire()
    spawned = []
    request = _request(wire, spawned)

    async def replies_itself(outcome):
        request.reply('explicit')
        if outcome == 'raise':
            raise ValueError('after reply')
        return 'ignored'

    request.answer_with(replies_itself('return'))
    assert request.pending
    _run(spawned.pop())
    second = _request(wire, spawned)
    request = second
    second.answer_with(replies_itself('raise'))
    _run(spawned.pop())
    assert wire.frames == [(5, True, b'"explicit"'), (5, True, b'"explicit"')]


def test_cancelled_answer_fails_the_request_unless_already_answered():
    wire = _Wire()
    spawned = []

    async def forever():
        await asyncio.get_running_loop().create_future()

    async def scenario(request):
        task = asyncio.ensure_future(spawned.pop())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    first = _request(wire, spawned)
    first.answer_with(forever())
    _run(scenario(first))
    assert wire.frames[0][1] is False and b'cancelled' in wire.frames[0][2]

    second = _request(wire, spawned)
    second.answer_with(forever())
    second.reply('done first')
    _run(scenario(second))
    assert wire.frames[1:] == [(5, True, b'"done first"')]


def test_pending_requests_settle_late_duplicate_and_malformed_replies():
    loop = asyncio.new_event_loop()
    try:
        codec = protocol.JsonCodec()
        pending = PendingRequests()
        rid, future = pending.open(loop, 'peer', 10.0, 'the request')
        pending.settle((rid, True, b'"ok"'), codec, 1)
        assert future.result() == 'ok'
        pending.settle((rid, True, b'"duplicate"'), codec, 1)  # already settled: dropped
        pending.settle((999, True, b'"unknown"'), codec, 1)  # never sent: dropped

        rid, future = pending.open(loop, 'peer', None, 'the request')
        pending.settle((rid, True, b'\xff'), codec, 1)
        assert isinstance(future.exception(), DecodeError)

        rid, future = pending.open(loop, 'peer', None, 'the request')
        pending.settle((rid, False, b'not json at all'), codec, 4)
        error = future.exception()
        assert isinstance(error, RemoteError) and error.remote_type == 'unknown' and error.worker_id == 4
        assert 'not json' in error.remote_message

        rid, future = pending.open(loop, 'peer', None, 'the request')
        future.cancel()  # the caller gave up: a reply changes nothing
        pending.settle((rid, True, b'1'), codec, 1)
        assert future.cancelled()
    finally:
        loop.close()


def test_pending_requests_time_out_lose_and_cancel_per_peer():
    loop = asyncio.new_event_loop()
    try:
        pending = PendingRequests()
        a_id, a = pending.open(loop, 'a', 1.0, 'the request to a')
        b_id, b = pending.open(loop, 'b', None, 'the request to b')
        c_id, c = pending.open(loop, 'c', 5.0, 'the request to c')
        c.cancel()
        pending.lose('b', lambda: WorkerLost('b left'))
        assert isinstance(b.exception(), WorkerLost) and not a.done()
        pending.lose('c', lambda: WorkerLost('c left'))  # done already: untouched
        assert c.cancelled()
        pending.cancel(a_id)
        pending.cancel(a_id)  # twice: nothing left to cancel
        pending._time_out(a_id, 1.0, 'the request to a')  # a timer firing after its request settled
        assert not a.done()
        a.cancel()
    finally:
        loop.close()
    sim = MemoryTransport(seed=1)  # virtual time: the timeout fires without waiting
    _, d = pending.open(sim.loop, 'd', 0.5, 'the request to d')
    sim.advance(0.6)
    assert isinstance(d.exception(), RequestTimeout) and 'the request to d got no reply within 0.5s' in str(d.exception())


# == supervision options and reload edges (§7) =====================================================

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


# == memory transport edges (§6.3) ================================================================

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
    handle._link.close()
    handle._link.close()  # closing twice sends one EOF
    with pytest.raises(TransportError, match='is closed'):
        handle._link.write(protocol.MESSAGE, b'1')
    assert isinstance(p.send('x', to=handle).exception(), SendError)
    sim.run_until(lambda: rec.count('worker_exit') == 1, timeout=30)
    assert rec.of('worker_exit')[0]['code'] == 0
    close(sim, p)


def test_r104_listening_answer_to_a_worker_that_died_before_attaching_is_closed():
    sim, p, rec = make(inert_worker)
    p.fork(1)
    sim.run_until(lambda: rec.count('worker_online') == 1, timeout=10)
    sock = socket.socket()
    p._live[1]._link.send_socket(sock, {'id': 1, 'address': ['x', 1]})
    sim.run_until(lambda: sim._links[1].primary_link._early, timeout=10)
    kept = sim._links[1].primary_link._early[0][1]['socket']
    sim.crash(1, code=0)
    assert kept.fileno() == -1  # the worker's copy was closed with it
    sock.close()
    close(sim, p)


def detaching_target():
    worker = ClusterWorker()
    link = current_link()
    link.detach(object())  # detaching what was never attached is a no-op
    worker.on('primary_disconnect', lambda event: event.prevent())


def test_r109_frames_reaching_a_destroyed_worker_are_dropped_and_sockets_closed():
    sim, p, rec = started(1, detaching_target)
    handle = p.workers[0]
    sim.hold(1, 'to_worker')
    handle.disconnect()
    sock = socket.socket()
    handle._link.send_socket(sock, {'id': 7, 'address': ['x', 1]})
    queue = sim._links[1].to_worker.queue
    assert [frame[0] for frame in queue] == [protocol.DISCONNECT, protocol.LISTENING]
    copy = queue[1][1]['socket']
    sim._links[1].primary_link._receivers.clear()  # the worker detached before these arrive
    sim.release(1, 'to_worker')
    sim.advance(1.0)
    assert copy.fileno() == -1  # the unwanted socket was closed, not leaked
    assert sim.alive(1)  # a DISCONNECT after the worker had attached does not end it here
    assert rec.count('worker_disconnect') == 0
    sock.close()
    close(sim, p)


def test_r95_closing_the_transport_from_inside_the_loop_leaves_the_loop_open():
    sim = MemoryTransport(seed=1)
    sim.loop.call_soon(sim.close)
    sim.run_until_idle()
    assert not sim.loop.is_closed()
    sim.close()
    assert sim.loop.is_closed()


def test_r35_exception_escaping_a_transport_callback_stops_the_simulation():
    sim = MemoryTransport(seed=1)
    error = RuntimeError('escaped a kernel callback')
    handle = sim.loop.call_soon(lambda: None)
    sim.loop.call_exception_handler({'message': 'Exception in callback', 'exception': error, 'handle': handle})
    with pytest.raises(RuntimeError) as caught:
        sim.run_until(lambda: False, timeout=1)
    assert caught.value is error


def cancelled_listen_target(address, then):
    def target():
        worker = ClusterWorker()
        task = worker._spawn(worker.listen(address))

        def cancel_then():
            task.cancel()
            if then == 'destroy':
                worker._call_soon(worker.destroy)
        worker._call_soon(cancel_then)  # after the task sent LISTEN
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
            sim.run_until(lambda: p._live[1].state == 'online' and sim._links[1].to_primary.queue, timeout=10)
            p._live[1].disconnect()
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
