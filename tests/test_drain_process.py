"""Lossless drain on real processes (issue 16): the README's HTTP worker
(`examples/http_worker.py`) loses no request while workers leave under load, keep-alive or
not, and a server written the obvious way (`asyncio.start_server`, nothing else) has its
in-flight requests finished before its worker ends.

The load is a few client threads on 127.0.0.1 sending GET / until stopped (bounded by
MAX_REQUESTS and socket timeouts); every outcome is recorded with the time its connection
was made, so a shutdown's refusals of new clients are told apart from lost requests.
"""

from __future__ import annotations

import asyncio
import http.client
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cluster_helpers import run_cluster
from command_helpers import Command
from isocluster import ClusterWorker

ROOT = Path(__file__).resolve().parent.parent
SOCKET_TIMEOUT = 10.0
MAX_REQUESTS = 20_000  # per load, all client threads together
CLIENTS = 3

# The documented pattern as documented: examples/http_worker.py run as each worker's script
# (fork + exec: the primary forks while the client threads run).
HTTP_WORKER = {'worker_script': str(ROOT / 'examples' / 'http_worker.py'), 'worker_args': []}


class Load:
    """CLIENTS threads sending GET / until stopped; keep_alive reuses each connection until
    the server answers `Connection: close`."""

    def __init__(self, port: int, keep_alive: bool, answer: str = 'Hello from worker') -> None:
        self.port = port
        self.keep_alive = keep_alive
        self.answer = answer
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.answered = 0
        self.answered_by: set[str] = set()
        self.failures: list[tuple[float, str]] = []  # (when its connection was made, what happened)
        self.refused: list[float] = []  # when a connect was refused
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]

    def __enter__(self) -> 'Load':
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(SOCKET_TIMEOUT * 2)

    async def until_answered(self, count: int) -> None:
        """Let the load run until `count` more requests were answered (polled: the answers
        come from threads)."""
        target = self.answered + count
        while self.answered < target and not self.stopping.is_set():
            await asyncio.sleep(0.01)

    def _client(self) -> None:
        connection: http.client.HTTPConnection | None = None
        connected_at = 0.0
        while not self.stopping.is_set() and self.answered + len(self.failures) < MAX_REQUESTS:
            if connection is None:
                connection = http.client.HTTPConnection('127.0.0.1', self.port, timeout=SOCKET_TIMEOUT)
                try:
                    connection.connect()
                except ConnectionRefusedError:
                    with self.lock:
                        self.refused.append(time.monotonic())
                    connection = None
                    time.sleep(0.01)
                    continue
                connected_at = time.monotonic()
            try:
                connection.request('GET', '/', headers={'Connection': 'keep-alive' if self.keep_alive else 'close'})
                response = connection.getresponse()
                body = response.read().decode()
                closing = response.getheader('Connection', '').lower() == 'close'
                if response.status != 200 or not body.startswith(self.answer):
                    raise AssertionError(f'unexpected answer {response.status} {body!r}')
            except Exception as error:
                with self.lock:
                    self.failures.append((connected_at, repr(error)))
                connection.close()
                connection = None
                continue
            with self.lock:
                self.answered += 1
                self.answered_by.add(body)
            if closing or not self.keep_alive:
                connection.close()
                connection = None
        if connection is not None:
            connection.close()


def listening_port(primary: Any, count: int) -> 'asyncio.Future[int]':
    """The shared port, once `count` workers listen on it."""
    future = primary.transport.loop.create_future()
    listening: set[int] = set()

    def on_listening(event: Any) -> None:
        listening.add(event.data['worker'].id)
        if len(listening) >= count and not future.done():
            future.set_result(event.data['address'][1])

    primary.after('worker_listening', on_listening)
    return future


# The process transport warns of any fork while threads run, even for a worker that execs at once.
pytestmark = pytest.mark.filterwarnings('ignore:forking worker:RuntimeWarning')

KEEP_ALIVE = pytest.mark.parametrize('keep_alive', [False, True], ids=['new-connection', 'keep-alive'])


@KEEP_ALIVE
def test_a_rolling_reload_under_load_loses_no_request(keep_alive):
    async def scenario(primary):
        port = listening_port(primary, 2)
        primary.fork(worker_count=2)
        port = await port
        with Load(port, keep_alive) as load:
            await load.until_answered(200)
            done = primary.transport.loop.create_future()
            primary.once_after('reload_complete', lambda event: done.set_result(event.data))
            primary.reload()
            result = await done
            await load.until_answered(200)
        assert result == {'worker_count': 2, 'aborted': False}
        return load

    load = run_cluster('process', scenario, **HTTP_WORKER, shutdown_timeout=10)
    assert load.failures == [] and load.refused == []
    assert {'Hello from worker 3', 'Hello from worker 4'} & load.answered_by  # the new workers serve


@KEEP_ALIVE
def test_scaling_down_under_load_loses_no_request(keep_alive):
    async def scenario(primary):
        port = listening_port(primary, 3)
        primary.fork(worker_count=3)
        port = await port
        with Load(port, keep_alive) as load:
            await load.until_answered(200)
            left = primary.transport.loop.create_future()
            exits = []

            def on_exit(event):
                exits.append(event.data)
                if len(exits) == 2:
                    left.set_result(None)

            primary.after('worker_exit', on_exit)
            primary.scale(1)
            await left
            await load.until_answered(200)
        return load, list(exits)

    load, exits = run_cluster('process', scenario, **HTTP_WORKER, shutdown_timeout=10)
    assert load.failures == [] and load.refused == []
    assert [(exit['code'], exit['signal']) for exit in exits] == [(0, None), (0, None)]  # drained, not killed


@KEEP_ALIVE
def test_a_shutdown_under_load_loses_no_request_and_then_refuses_new_clients(keep_alive):
    async def scenario(primary):
        port = listening_port(primary, 2)
        primary.fork(worker_count=2)
        port = await port
        exits = []
        primary.after('worker_exit', lambda event: exits.append((event.data['code'], event.data['signal'])))
        with Load(port, keep_alive) as load:
            await load.until_answered(200)
            primary.shut_down()
            await primary.wait_closed()
            while not load.refused:  # every client finds the port closed: nothing waits in a backlog
                await asyncio.sleep(0.01)
        return load, list(exits)

    load, exits = run_cluster('process', scenario, **HTTP_WORKER,
                                           shutdown_timeout=10)
    assert exits == [(0, None), (0, None)]
    # Every request is answered, those of clients that connected after the shutdown began
    # too: the primary makes the shared socket drop new SYNs before the workers stop
    # accepting (a client that comes later is refused once the socket is closed), so no
    # connection is left in the kernel's backlog to be reset when the last worker closes it.
    assert load.failures == []
    assert load.answered > 0 and load.refused


# -- a server written the obvious way ---------------------------------------------------------

SLOW = 0.5  # seconds the slow server takes to answer


def obvious_server_target():
    """asyncio.start_server on the shared socket, and nothing about leaving."""
    worker = ClusterWorker()

    async def handle(reader, writer):
        await reader.readuntil(b'\r\n\r\n')
        worker.send('accepted')
        await asyncio.sleep(SLOW)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nslow')
        await writer.drain()
        writer.close()

    async def serve():
        sock = await worker.listen(('127.0.0.1', 0))
        await asyncio.start_server(handle, sock=sock)

    return serve()


def get(port: int) -> str:
    connection = http.client.HTTPConnection('127.0.0.1', port, timeout=SOCKET_TIMEOUT)
    try:
        connection.request('GET', '/')
        return connection.getresponse().read().decode()
    except Exception as error:
        return repr(error)
    finally:
        connection.close()


def in_flight_then(leave: str, drain_timeout: float | None, requests: int = 3) -> tuple[list[str], Any, float]:
    """`requests` requests in flight on one worker of the obvious server, then the worker is
    made to leave by `leave`; returns the answers, the worker's exit and how long it drained."""
    async def scenario(primary):
        port = listening_port(primary, 1)
        primary.fork(worker_count=1)
        port = await port
        worker = primary.workers[0]
        accepted = primary.transport.loop.create_future()
        count = 0

        def on_message(event):
            nonlocal count
            count += 1
            if count == requests:
                accepted.set_result(None)

        primary.on('worker_message', on_message)
        exited = primary.transport.loop.create_future()
        primary.after('worker_exit', lambda event: exited.set_result((event.data['code'], event.data['signal'])))
        loop = asyncio.get_running_loop()
        answers = [loop.run_in_executor(None, get, port) for _ in range(requests)]
        await accepted
        started = loop.time()
        if leave == 'stop_worker':
            primary.stop_worker(worker)
        else:
            primary.shut_down()
        code = await exited
        return await asyncio.gather(*answers), code, loop.time() - started

    options = {} if drain_timeout is None else {'drain_timeout': drain_timeout}
    return run_cluster('process', scenario, worker_target=obvious_server_target, shutdown_timeout=10, **options)


@pytest.mark.parametrize('leave', ['stop_worker', 'shut_down'])
def test_an_obvious_asyncio_server_finishes_its_requests_before_its_worker_ends(leave):
    answers, exit_, _ = in_flight_then(leave, drain_timeout=None)
    assert answers == ['slow'] * 3
    assert exit_ == (0, None)


def test_a_worker_whose_requests_outlast_drain_timeout_ends_at_it_before_sigterm():
    answers, exit_, drained = in_flight_then('stop_worker', drain_timeout=0.1)
    assert exit_ == (0, None)  # ended by itself: SIGTERM would come at shutdown_timeout=10
    assert drained >= 0.1
    assert all(answer != 'slow' for answer in answers)  # cut at the deadline: nothing hangs


# -- the --listen target of `isocluster run` ---------------------------------------------------

LISTEN_APP = """
import asyncio

from isocluster import ClusterWorker


async def serve(sock):
    async def handle(reader, writer):
        await reader.readuntil(b'\\r\\n\\r\\n')
        body = f'worker {ClusterWorker.worker_id}'.encode()
        writer.write(b'HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\nConnection: close\\r\\n\\r\\n%s' % (len(body), body))
        await writer.drain()
        writer.close()

    await asyncio.start_server(handle, sock=sock)
"""


async def answered(load: Load, count: int) -> None:
    await load.until_answered(count)


def test_a_sighup_reload_of_isocluster_run_listen_under_load_loses_no_request(tmp_path):
    (tmp_path / 'app.py').write_text(LISTEN_APP)
    command = Command(['run', 'app:serve', '--workers', '2', '--listen', '127.0.0.1:0'], tmp_path)
    try:
        port = int(command.wait_for(r'listening on 127\.0\.0\.1:(\d+)$')[0].group(1))
        command.wait_for(r'worker \d+ ready', count=2)
        with Load(port, keep_alive=False, answer='worker ') as load:
            asyncio.run(answered(load, 200))
            command.process.send_signal(signal.SIGHUP)
            command.wait_for(r'reload complete: 2 workers replaced')
            asyncio.run(answered(load, 200))
        command.process.send_signal(signal.SIGTERM)
        assert command.process.wait(SOCKET_TIMEOUT * 2) == 0
    finally:
        command.kill_group()
    assert load.failures == [] and load.refused == []
    assert {'worker 3', 'worker 4'} & load.answered_by


# -- listen(reuse_port=True): a socket per worker ---------------------------------------------

REUSE_PORT_WORKER = {'worker_script': str(ROOT / 'tests' / 'workers' / 'reuse_port_http.py'), 'worker_args': []}


def sockets_of(primary: Any, count: int) -> 'asyncio.Future[dict[int, dict]]':
    """{worker id: what its socket is}, once `count` workers reported theirs."""
    future = primary.transport.loop.create_future()
    sockets: dict[int, dict] = {}

    def on_message(event: Any) -> None:
        sockets[event.data['worker'].id] = event.data['message']
        if len(sockets) >= count and not future.done():
            future.set_result(dict(sockets))

    primary.on('worker_message', on_message)
    return future


def test_reuse_port_gives_each_worker_its_own_socket_on_one_port_and_the_kernel_spreads_connections():
    async def scenario(primary):
        port, sockets = listening_port(primary, 2), sockets_of(primary, 2)
        primary.fork(worker_count=2)
        port, sockets = await port, await sockets
        with Load(port, keep_alive=False) as load:
            await load.until_answered(200)
        return sockets, load

    sockets, load = run_cluster('process', scenario, **REUSE_PORT_WORKER)
    assert len({socket['inode'] for socket in sockets.values()}) == 2  # two sockets, not one shared
    assert all(socket['reuse_port'] == 1 for socket in sockets.values())
    assert load.failures == [] and load.answered_by == {'Hello from worker 1', 'Hello from worker 2'}


@KEEP_ALIVE
def test_reuse_port_workers_reload_scale_down_and_shut_down_under_load_losing_no_request(keep_alive):
    # A leaving worker's own socket has its own accept queue, reset when it closes: the worker
    # drops new SYNs on it first (their clients retry, reaching the other sockets), accepts
    # what is queued, then closes.
    async def scenario(primary):
        port = listening_port(primary, 2)
        primary.fork(worker_count=2)
        port = await port
        loop = primary.transport.loop
        with Load(port, keep_alive) as load:
            await load.until_answered(200)
            reloaded = loop.create_future()
            primary.once_after('reload_complete', lambda event: reloaded.set_result(None))
            primary.reload()
            await reloaded
            await load.until_answered(200)
            left = loop.create_future()
            primary.once_after('worker_exit', lambda event: left.set_result(None))
            primary.scale(1)
            await left
            await load.until_answered(200)
            answered_before_shutdown = load.answered
            primary.shut_down()
            await primary.wait_closed()
            while not load.refused:
                await asyncio.sleep(0.01)
        return load, answered_before_shutdown

    load, answered_before_shutdown = run_cluster('process', scenario, **REUSE_PORT_WORKER, shutdown_timeout=10)
    assert load.failures == []
    assert load.answered >= answered_before_shutdown >= 600
