"""Shared listening sockets give a worker no authority over the primary (issue 13, finding 4):
the primary never unlinks a live server's Unix socket, any bind or descriptor failure is that
worker's ListenError, a socket no live worker claims is closed, and the number of distinct
shared sockets is capped."""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any

import pytest

from isocluster import Backoff, ClusterPrimary, ClusterWorker, ListenError, NotSupportedError, protocol
from isocluster.shared_sockets import DEFAULT_MAX_SHARED_SOCKETS
from isocluster.transport.base import current_link

from cluster_helpers import ready_waiter, run_cluster
from memory_helpers import close, crash_and_wait, make, started


def listening_worker() -> None:
    """Listens on the address of every `{'type': 'listen'}` message and answers how it went."""
    worker = ClusterWorker()

    async def listen(address: Any) -> None:
        try:
            sock = await worker.listen(tuple(address) if isinstance(address, list) else address)
        except ListenError as error:
            await worker.send({'type': 'listened', 'error': str(error)})
        else:
            name = sock.getsockname()
            sock.close()
            await worker.send({'type': 'listened', 'address': name, 'error': None})

    worker.on('primary_message', lambda event: listen(event.data['message']['address']))  # runs as a task (R27)


def answers(primary: ClusterPrimary) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    primary.on('worker_message', lambda event: found.append(event.data['message']))
    return found


def listen(sim, p, got, worker_id, address):
    count = len(got)
    p.send({'type': 'listen', 'address': address}, to=worker_id)
    sim.run_until(lambda: len(got) > count, timeout=30)
    return got[-1]


def serving_unix_socket(path: str) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    return server


def still_serves(path: str) -> bool:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(path)
        return True
    except OSError:
        return False
    finally:
        client.close()


def test_a_live_servers_unix_socket_is_never_unlinked(tmp_path):
    path = str(tmp_path / 'served.sock')
    server = serving_unix_socket(path)
    try:
        sim, p, _ = started(1, listening_worker)
        got = answers(p)
        answer = listen(sim, p, got, 1, path)
        assert answer['error'] is not None and 'Address already in use' in answer['error'], answer
        assert still_serves(path)
        assert p.stats()['live'] == 1 and not p.closed
        # A socket file nobody serves any more (a crashed program's) is replaced.
        server.close()
        answer = listen(sim, p, got, 1, path)
        assert answer == {'type': 'listened', 'address': path, 'error': None}
        close(sim, p)
    finally:
        server.close()


def test_a_descriptor_failure_is_the_workers_listen_error_not_fatal():
    sim, p, rec = started(2, listening_worker)
    got = answers(p)
    link = sim.links[p.workers[0].id]

    def out_of_descriptors(sock, payload):
        raise OSError(errno.EMFILE, 'Too many open files')
    link.send_socket = out_of_descriptors
    answer = listen(sim, p, got, 1, ('127.0.0.1', 0))
    assert 'Too many open files' in answer['error']
    assert not p.closed and p.stats()['live'] == 2 and rec.count('worker_error') == 0
    assert sim.open_sockets() == []  # bound for nobody: closed again
    assert listen(sim, p, got, 2, ('127.0.0.1', 0))['error'] is None  # the other worker is untouched
    close(sim, p)


def test_a_transport_that_cannot_bind_rejects_listen_without_stopping_the_primary():
    sim, p, rec = started(1, listening_worker)
    got = answers(p)

    def cannot(address):
        raise NotSupportedError('no shared sockets here')
    sim.bind = cannot
    answer = listen(sim, p, got, 1, ('127.0.0.1', 0))
    assert 'no shared sockets here' in answer['error']
    assert not p.closed and rec.count('worker_error') == 0
    close(sim, p)


def test_distinct_shared_sockets_are_capped():
    sim, p, rec = started(1, listening_worker, max_shared_sockets=2)
    got = answers(p)
    first = listen(sim, p, got, 1, ('127.0.0.1', 0))
    assert first['error'] is None
    assert listen(sim, p, got, 1, ('127.0.0.1', 0))['address'] == first['address']  # shared: not a new one
    assert listen(sim, p, got, 1, ('127.0.0.2', 0))['error'] is None
    third = listen(sim, p, got, 1, ('127.0.0.3', 0))
    assert 'already shares 2 listening sockets (max_shared_sockets=2)' in third['error']
    assert len(sim.open_sockets()) == 2 and not p.closed and rec.count('worker_error') == 0
    close(sim, p)


def test_max_shared_sockets_is_validated():
    with pytest.raises(ValueError, match='max_shared_sockets: expected an int >= 1'):
        make(max_shared_sockets=0)
    assert DEFAULT_MAX_SHARED_SOCKETS == 64


def test_a_socket_is_kept_for_replacements_and_closed_when_no_live_worker_claims_it():
    sim, p, rec = started(2, listening_worker)
    got = answers(p)
    port = listen(sim, p, got, 1, ('127.0.0.1', 0))['address'][1]
    shared = sim.bound_for(('127.0.0.1', 0))
    # crash: the replacement inherits the claim; the socket stays open and is the one it gets
    crash_and_wait(sim, p, rec, 1, code=1, pool=2)
    assert shared.fileno() != -1
    assert listen(sim, p, got, 3, ('127.0.0.1', 0))['address'][1] == port
    # a rolling reload: each new worker inherits, the socket never closes
    p.reload()
    sim.run_until(lambda: rec.count('reload_complete') == 1)
    assert shared.fileno() != -1 and [w.id for w in p.workers] == [4, 5]
    # worker 5 took over worker 3's claim; retired with nothing to replace it, the socket is
    # closed, though worker 4 (which replaced worker 2, never a listener) lives on
    p.stop_worker(5)
    sim.run_until(lambda: p.stats()['live'] == 1)
    assert shared.fileno() == -1 and sim.open_sockets() == []
    close(sim, p)


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


# -- real processes ---------------------------------------------------------------------------

def test_a_worker_cannot_make_the_primary_unlink_a_served_unix_socket_on_real_processes(tmp_path):
    path = str(tmp_path / 'served.sock')
    server = serving_unix_socket(path)

    async def scenario(primary: ClusterPrimary) -> Any:
        got: asyncio.Queue = asyncio.Queue()
        primary.on('worker_message', lambda event: got.put_nowait(event.data['message']))
        ready = ready_waiter(primary, 1)
        primary.fork(1)
        await ready
        primary.send({'type': 'listen', 'address': path}, to=primary.workers[0])
        return await got.get(), primary.closed, primary.stats()['live']

    try:
        answer, closed, live = run_cluster('process', scenario, worker_target=listening_worker)
        assert 'Address already in use' in answer['error'], answer
        assert not closed and live == 1
        assert still_serves(path)
    finally:
        server.close()


def test_a_socket_stays_open_for_a_replacement_delayed_by_backoff_until_shutdown():
    backoff = Backoff(initial=5.0, factor=2.0, maximum=5.0, jitter=0.0)
    sim, p, rec = started(1, listening_worker, restart_intensity=0, restart_backoff=backoff)
    p.on('restart_limit', lambda event: event.prevent())  # beyond the budget: replaced after 5 s
    got = answers(p)
    port = listen(sim, p, got, 1, ('127.0.0.1', 0))['address'][1]
    shared = sim.bound_for(('127.0.0.1', 0))
    crash_and_wait(sim, p, rec, 1, code=1)
    assert p.stats()['live'] == 0 and shared.fileno() != -1  # nobody holds it, a replacement will
    sim.run_until(lambda: len(p.workers) == 1, timeout=30)
    assert listen(sim, p, got, 2, ('127.0.0.1', 0))['address'][1] == port
    crash_and_wait(sim, p, rec, 2, code=1)  # delayed again; shutting down cancels it
    p.shut_down()
    sim.run_until(lambda: p.closed)
    assert shared.fileno() == -1 and sim.open_sockets() == []
    close(sim, p)


def test_an_address_the_application_bound_stays_open_while_no_worker_holds_it():
    """`primary.bind()` (the command's --listen) binds before any worker exists: the socket is
    the application's and outlives workers that never listened, until shutdown."""
    sim, p, rec = started(1, listening_worker, restart='never')
    p.once_on('no_workers', lambda event: event.prevent())  # an empty pool is fine here
    host, port = p.bind(('127.0.0.1', 0))
    shared = sim.bound_for(('127.0.0.1', 0))
    crash_and_wait(sim, p, rec, 1, code=1)
    assert p.stats()['live'] == 0 and shared.fileno() != -1
    with socket.create_connection((host, port), timeout=5):
        pass  # still listening: a client is queued, not refused
    p.shut_down()
    sim.run_until(lambda: p.closed, timeout=60)
    assert shared.fileno() == -1
    close(sim, p)
