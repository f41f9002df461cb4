"""The process transport on its own: real forked workers driven through the seam of
`transport/base.py`, with a fake listener instead of the core.

Worker targets are module-level functions that use only their `PrimaryLink`. Every test
kills and reaps every child it started, even when it fails (the `harness` fixture).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from isocluster import protocol
from isocluster.errors import ProtocolError, TransportError
from isocluster.transport import base, process
from isocluster.transport.process import ProcessTransport

from cluster_helpers import ORPHAN_GONE_BOUND

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith('linux'), reason='Linux process transport'),
    # pytest-xdist runs a thread in each test process; the transport rightly warns about it.
    pytest.mark.filterwarnings('ignore:forking worker:RuntimeWarning'),
]

TIMEOUT = 10.0
ROOT = Path(__file__).resolve().parent.parent
WORKERS = Path(__file__).resolve().parent / 'workers'
JSON = protocol.get_codec('json')


# --- worker targets (run in the forked child) -------------------------------------------


class Echo:
    """Echoes message frames; a few payloads are commands."""

    def __init__(self, link):
        self.link = link

    def link_frame(self, kind, payload):
        if kind == 'listening':
            self.serve(payload)
        elif kind != 'message':
            self.link.write('message', f'control:{kind}'.encode())
        elif payload == b'finish':
            self.link.finish()
        elif payload.startswith(b'exit:'):
            os._exit(int(payload[5:]))
        elif payload.startswith(b'big:'):  # a frame of that many bytes, whatever the limit
            self.link.write('message', b'x' * int(payload[4:]))
        elif payload == b'garbage':
            self.link._sock.send(b'\xff\xff\xff\xff garbage')
            self.link.write('message', b'after garbage')
        else:
            self.link.write('message', payload)

    def link_closed(self):
        self.link.finish()

    def serve(self, payload):
        sock = payload['socket']
        worker_id = self.link.worker_id
        self.link.write('message', b'got socket')

        async def greet(reader, writer):
            writer.write(f'hello from {worker_id} {payload["address"]}'.encode())
            await writer.drain()
            writer.close()

        async def start():
            await asyncio.start_server(greet, sock=sock)
            self.link.write('message', b'serving')

        self.link.loop.create_task(start())


def echo_target():
    link = base.current_link()
    link.attach(Echo(link))


def exit3_target():
    os._exit(3)


def raising_target():
    raise ValueError('boom in the target')


def system_exit_target():
    raise SystemExit(5)


async def async_raising_target():
    link = base.current_link()
    link.attach(Echo(link))
    await asyncio.sleep(0)
    raise ValueError('boom in the async target')


def callback_raising_target():
    link = base.current_link()
    link.attach(Echo(link))
    link.loop.call_soon(lambda: 1 / 0)


EARLIEST_KILL_TIMER = 0.2
LATER_KILL_TIMER = 30


def blocked_loop_target():
    link = base.current_link()
    link.arm_kill_timer(LATER_KILL_TIMER)
    link.arm_kill_timer(EARLIEST_KILL_TIMER)
    link.arm_kill_timer(2 * LATER_KILL_TIMER)  # later deadlines never extend the earlier one
    link.loop.call_soon(time.sleep, 60)


def cleanup_target():
    link = base.current_link()
    link.attach(Echo(link))

    async def forever():
        try:
            await asyncio.sleep(3600)
        finally:
            link.write('message', b'cleanup')

    link.loop.create_task(forever())


def no_receiver_target():
    pass


def late_receiver_target():
    """Attaches only once three frames are waiting, to check they are kept in order."""
    link = base.current_link()

    def attach_when_ready():
        if len(link._backlog) >= 3:
            link.attach(Echo(link))
        else:
            link.loop.call_later(0.005, attach_when_ready)

    link.write('message', b'waiting')
    attach_when_ready()


def chatty_target():
    link = base.current_link()
    line = 'x' * 99 + '\n'
    for _ in range(100_000):  # 10 MB
        sys.stdout.write(line)
    sys.stdout.flush()
    os.write(2, b'to stderr\n')
    link.write('message', b'done')
    link.finish()


async def nested_primary_target():
    """A worker that is itself a primary: its own worker must hold neither its link ends
    nor the link to the top primary."""
    link = base.current_link()
    link.attach(Echo(link))
    own_end = os.fstat(link._sock.fileno()).st_ino
    transport = ProcessTransport()
    listener = FakeListener()
    sub = transport.start_worker(base.WorkerSpec(id=1, codec=JSON, target=echo_target), listener)
    await listener.online(sub)
    sub.write('message', b'deep')
    await listener.message(sub, b'deep')
    clean = own_end not in socket_inodes(sub.pid) and os.fstat(sub._sock.fileno()).st_ino not in socket_inodes(sub.pid)
    sub.kill(base.SIGKILL)
    await listener.exit(sub)
    transport.close()
    link.write('message', b'nested clean' if clean else b'nested leaked')


def talking_target():
    print('first line')
    print('second line', flush=True)
    os.write(2, b'an error line\n')
    link = base.current_link()
    link.attach(Echo(link))


# --- harness -----------------------------------------------------------------------------


class FakeListener:
    """Records every call; tests await conditions on the record."""

    def __init__(self):
        self.calls = []
        self._changed = asyncio.Event()

    def link_frame(self, link, kind, payload):
        self._add('frame', link, kind, payload)

    def link_error(self, link, error):
        self._add('error', link, error)

    def link_closed(self, link):
        self._add('closed', link)

    def link_exit(self, link, code, signal):
        self._add('exit', link, code, signal)

    def _add(self, *call):
        self.calls.append(call)
        self._changed.set()

    def of(self, link):
        return [(call[0], *call[2:]) for call in self.calls if call[1] is link]

    def messages(self, link):
        return [call[2] for call in self.of(link) if call[:2] == ('frame', 'message')]

    async def until(self, predicate, timeout=TIMEOUT):
        async def wait():
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout)

    async def online(self, link):
        await self.until(lambda: ('frame', 'online', None) in self.of(link))

    async def message(self, link, payload):
        await self.until(lambda: payload in self.messages(link))

    async def exit(self, link):
        await self.until(lambda: any(call[0] == 'exit' for call in self.of(link)))
        calls = self.of(link)
        assert [call[0] for call in calls].count('closed') == 1
        assert calls[-2][0] == 'closed' and calls[-1][0] == 'exit', calls  # closed, then exit, last
        return calls[-1][1:]


class Harness:
    def __init__(self):
        self._transport = None
        self.listener = None
        self.pids = []
        self._next_id = 1

    @property
    def transport(self):
        if self._transport is None:  # inside the test's running loop
            self._transport = ProcessTransport()
            self.listener = FakeListener()
        return self._transport

    def start(self, target=None, **options):
        transport = self.transport
        spec = base.WorkerSpec(id=self._next_id, codec=JSON, target=target, **options)
        self._next_id += 1
        transport.check_spec(spec)
        link = transport.start_worker(spec, self.listener)
        self.pids.append(link.pid)
        return link

    def cleanup(self):
        for pid in self.pids:
            try:
                # Still our child (alive or zombie)? Otherwise it was reaped and the pid may
                # already name another process.
                os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                continue
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


@pytest.fixture
def harness():
    harness = Harness()
    try:
        yield harness
    finally:
        harness.cleanup()


def run(coroutine):
    asyncio.run(asyncio.wait_for(coroutine, 60))


def socket_inodes(pid):
    inodes = set()
    for entry in Path(f'/proc/{pid}/fd').iterdir():
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if target.startswith('socket:['):
            inodes.add(int(target[8:-1]))
    return inodes


# --- tests -------------------------------------------------------------------------------


def test_online_is_the_first_frame_and_echo_round_trips(harness):
    async def body():
        link = harness.start(echo_target)
        assert link.pid > 0 and link.is_open
        for index in range(20):
            link.write('message', b'ping %d' % index)
        await harness.listener.message(link, b'ping 19')
        calls = harness.listener.of(link)
        assert calls[0] == ('frame', 'online', None)
        assert harness.listener.messages(link) == [b'ping %d' % index for index in range(20)]
        link.write('heartbeat', {'n': 1})
        await harness.listener.message(link, b'control:heartbeat')
        link.write('message', b'finish')
        assert await harness.listener.exit(link) == (0, None)
        harness.transport.close()

    run(body())


def test_closed_precedes_exit_and_exit_code_is_reported(harness):
    async def body():
        link = harness.start(exit3_target)
        assert await harness.listener.exit(link) == (3, None)
        assert harness.listener.of(link)[0] == ('frame', 'online', None)

    run(body())


def test_death_by_signal_reports_the_signal_and_kill_after_reaping_is_a_no_op(harness):
    async def body():
        link = harness.start(echo_target)
        await harness.listener.online(link)
        link.kill(base.SIGKILL)
        code, sig = await harness.listener.exit(link)
        assert code is None and sig is signal.SIGKILL and isinstance(sig, signal.Signals)
        link.kill(base.SIGTERM)
        link.kill(base.SIGKILL)
        assert not link.is_open

    run(body())


def test_workers_ignore_sigint_and_die_of_sigterm(harness):
    async def body():
        link = harness.start(echo_target)
        await harness.listener.online(link)
        link.kill(signal.SIGINT)  # R119: the terminal's Ctrl-C is for the primary
        link.write('message', b'still here')
        await harness.listener.message(link, b'still here')
        link.kill(base.SIGTERM)
        assert await harness.listener.exit(link) == (None, signal.SIGTERM)

    run(body())


def test_garbage_from_a_worker_is_one_protocol_error_then_nothing_is_read(harness):
    async def body():
        link = harness.start(echo_target)
        await harness.listener.online(link)
        link.write('message', b'garbage')
        await harness.listener.until(lambda: any(call[0] == 'error' for call in harness.listener.of(link)))
        link.kill(base.SIGKILL)
        await harness.listener.exit(link)
        calls = harness.listener.of(link)
        kinds = [call[0] for call in calls]
        assert kinds == ['frame', 'error', 'closed', 'exit'], calls
        error = calls[1][1]
        assert isinstance(error, ProtocolError) and error.worker_id == link.id
        assert b'after garbage' not in harness.listener.messages(link)

    run(body())


def test_oversized_frame_is_a_protocol_error(harness):
    async def body():
        harness.transport.max_frame_size = 10
        link = harness.start(echo_target)
        await harness.listener.online(link)
        link.write('message', b'big:64')  # the worker answers with a 65-byte frame
        await harness.listener.until(lambda: any(call[0] == 'error' for call in harness.listener.of(link)))
        assert 'exceeds the maximum frame size' in str(harness.listener.of(link)[-1][1])
        link.kill(base.SIGKILL)
        await harness.listener.exit(link)

    run(body())


def test_a_worker_applies_the_transports_frame_limit_too(harness, capfd):
    """R120 on both sides of a link: the worker's decoder has the transport's limit, so an
    oversized frame from the primary is fatal to the worker (R33), not silently accepted."""
    async def body():
        harness.transport.max_frame_size = 10
        link = harness.start(echo_target)
        await harness.listener.online(link)
        link.write('message', b'x' * 64)  # written raw: the primary's encode check is bypassed
        return await harness.listener.exit(link)

    code, sig = asyncio.run(asyncio.wait_for(body(), 60))
    assert (code, sig) == (1, None)
    assert 'exceeds the maximum frame size of 10 bytes' in capfd.readouterr().err


def test_write_to_a_dead_worker_raises_transport_error(harness):
    async def body():
        link = harness.start(echo_target)
        await harness.listener.online(link)
        link.kill(base.SIGKILL)
        # Wait for the death without reaping and without letting the loop see it, so the
        # write meets the dead socket itself (EPIPE), not a link already known closed.
        os.waitid(os.P_PID, link.pid, os.WEXITED | os.WNOWAIT)
        with pytest.raises(TransportError) as caught:
            for _ in range(3):
                link.write('message', b'into the void')
        assert caught.value.worker_id == link.id
        assert not link.is_open
        await harness.listener.exit(link)
        with pytest.raises(TransportError):
            link.write('message', b'again')
        with pytest.raises(TransportError), socket.socket() as unsent:
            link.send_socket(unsent, {'address': None})

    run(body())


def test_exceptions_in_the_worker_are_fatal_with_code_1(harness, capfd):
    async def body():
        links = [harness.start(target) for target in (raising_target, async_raising_target, callback_raising_target)]
        for link in links:
            assert await harness.listener.exit(link) == (1, None)
        exiting = harness.start(system_exit_target)
        assert await harness.listener.exit(exiting) == (5, None)

    run(body())
    err = capfd.readouterr().err
    assert 'boom in the target' in err and 'boom in the async target' in err and 'ZeroDivisionError' in err
    assert 'SystemExit' not in err


def test_kill_timer_ends_a_worker_whose_loop_is_blocked(harness):
    async def body():
        link = harness.start(blocked_loop_target)
        started = time.monotonic()
        assert await harness.listener.exit(link) == (0, None)
        # The earliest timer ended it: a wide margin over it, far below the later ones.
        assert time.monotonic() - started < EARLIEST_KILL_TIMER + LATER_KILL_TIMER / 6

    run(body())


def test_finish_cancels_tasks_lets_them_clean_up_and_exits_0(harness):
    async def body():
        link = harness.start(cleanup_target)
        await harness.listener.online(link)
        link.write('message', b'finish')
        assert await harness.listener.exit(link) == (0, None)
        assert harness.listener.messages(link) == [b'cleanup']

    run(body())


def test_a_worker_without_receiver_ends_on_eof_or_disconnect(harness):
    async def body():
        closed = harness.start(no_receiver_target)
        disconnected = harness.start(no_receiver_target)
        await harness.listener.online(closed)
        await harness.listener.online(disconnected)
        closed.close()
        assert not closed.is_open
        with pytest.raises(TransportError):
            closed.write('message', b'too late')
        disconnected.write('disconnect', None)
        assert await harness.listener.exit(closed) == (0, None)
        assert await harness.listener.exit(disconnected) == (0, None)

    run(body())


def test_frames_before_the_first_attach_are_delivered_in_order(harness):
    async def body():
        link = harness.start(late_receiver_target)
        await harness.listener.message(link, b'waiting')
        for payload in (b'one', b'two', b'three'):
            link.write('message', payload)
        await harness.listener.message(link, b'three')
        assert harness.listener.messages(link) == [b'waiting', b'one', b'two', b'three']
        link.close()  # EOF reaches the receiver: Echo finishes
        assert await harness.listener.exit(link) == (0, None)

    run(body())


def test_each_worker_holds_no_link_end_but_its_own(harness):
    async def body():
        first = harness.start(echo_target)
        second = harness.start(echo_target)
        await harness.listener.online(first)
        await harness.listener.online(second)
        primary_ends = {os.fstat(link._sock.fileno()).st_ino for link in (first, second)}
        for link in (first, second):
            assert not socket_inodes(link.pid) & primary_ends
        first.kill(base.SIGKILL)
        second.kill(base.SIGKILL)
        await harness.listener.exit(first)
        await harness.listener.exit(second)

    run(body())


def test_a_worker_can_be_a_primary_of_its_own(harness):
    async def body():
        link = harness.start(nested_primary_target)
        await harness.listener.until(lambda: harness.listener.messages(link))
        assert harness.listener.messages(link) == [b'nested clean']
        link.close()
        assert await harness.listener.exit(link) == (0, None)

    run(body())


def test_a_silent_worker_printing_10_mb_never_blocks(harness):
    async def body():
        link = harness.start(chatty_target, silent=True)
        assert await harness.listener.exit(link) == (0, None)
        assert harness.listener.messages(link) == [b'done']

    run(body())


def test_piped_output_is_logged_line_by_line(harness):
    records = []
    seen = None
    logger = logging.getLogger('isocluster.worker')

    class Collect(logging.Handler):
        def emit(self, record):
            records.append((record.getMessage(), record.worker_id, record.stream))
            seen.set()

    handler = Collect(logging.DEBUG)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)

    async def body():
        nonlocal seen
        seen = asyncio.Event()
        link = harness.start(talking_target, stdio={'stdout': 'pipe', 'stderr': 'pipe'})

        async def three_lines():
            while len(records) < 3:
                seen.clear()
                await seen.wait()

        await asyncio.wait_for(three_lines(), TIMEOUT)
        link.kill(base.SIGKILL)
        await harness.listener.exit(link)

    try:
        run(body())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert sorted(records) == [
        ('an error line', 1, 'stderr'), ('first line', 1, 'stdout'), ('second line', 1, 'stdout'),
    ]


def test_send_socket_passes_a_working_listening_socket(harness):
    async def body():
        transport = harness.transport
        listening = transport.bind(('127.0.0.1', 0))
        address = listening.getsockname()
        links = [harness.start(echo_target) for _ in range(2)]
        for link in links:
            await harness.listener.online(link)
            link.write('message', b'before')
            link.send_socket(listening, {'address': list(address)})
            link.write('message', b'after')
        listening.close()  # the workers hold their own duplicates
        for link in links:
            await harness.listener.message(link, b'serving')
            await harness.listener.message(link, b'after')
            ordered = [message for message in harness.listener.messages(link) if message != b'serving']
            assert ordered == [b'before', b'got socket', b'after']
        greetings = set()
        for _ in range(20):
            reader, writer = await asyncio.open_connection(*address)
            greetings.add((await reader.read()).decode())
            writer.close()
        assert greetings <= {f'hello from {link.id} {list(address)}' for link in links}
        for link in links:
            link.kill(base.SIGKILL)
            await harness.listener.exit(link)

    run(body())


def test_bind_unix_path_replaces_a_stale_socket_file(tmp_path):
    path = str(tmp_path / 'server.sock')
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()
    transport = ProcessTransport(loop=asyncio.new_event_loop())
    sock = transport.bind(path)
    try:
        assert sock.getsockname() == path and not sock.get_inheritable()
        client = socket.socket(socket.AF_UNIX)
        client.connect(path)
        client.close()
    finally:
        sock.close()
        transport.close()
        transport.loop.close()
    regular = tmp_path / 'not-a-socket'
    regular.write_text('keep me')
    transport = ProcessTransport(loop=asyncio.new_event_loop())
    try:
        with pytest.raises(OSError):
            transport.bind(str(regular))
    finally:
        transport.close()
        transport.loop.close()
    assert regular.read_text() == 'keep me'


def test_check_spec_rejects_what_cannot_start(tmp_path):
    transport = ProcessTransport(loop=asyncio.new_event_loop())
    try:
        with pytest.raises(ValueError, match='worker_script'):
            transport.check_spec(base.WorkerSpec(id=1, codec=JSON, script=str(tmp_path / 'missing.py')))
        with pytest.raises(ValueError):
            transport.check_spec(base.WorkerSpec(id=1, codec=JSON))
        with pytest.raises(ValueError, match='worker_stdio'):
            transport.check_spec(base.WorkerSpec(id=1, codec=JSON, target=echo_target, stdio={'stdout': 'nowhere'}))
        transport.check_spec(base.WorkerSpec(id=1, codec=JSON, target=echo_target, stdio={'stderr': 1}))
    finally:
        transport.close()
        transport.loop.close()


def test_script_worker_finds_its_link_in_the_environment(harness, monkeypatch):
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')])))

    async def body():
        link = harness.start(script=str(WORKERS / 'echo_script.py'), args=('7',))
        await harness.listener.online(link)
        for payload in (b'id', b'env', b'hello'):
            link.write('message', payload)
        await harness.listener.message(link, b'hello')
        assert harness.listener.messages(link) == [str(link.id).encode(), b'False', b'hello']
        link.write('message', b'finish')  # run() returns, the script exits with its argv[1]
        assert await harness.listener.exit(link) == (7, None)

    run(body())


def test_start_kill_cycles_leave_no_zombie(harness):
    async def body():
        for _ in range(50):
            link = harness.start(echo_target)
            await harness.listener.online(link)
            link.kill(base.SIGKILL)
            assert await harness.listener.exit(link) == (None, signal.SIGKILL)
        harness.transport.close()

    run(body())
    me = str(os.getpid())
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            fields = stat.read_text().rsplit(')', 1)[1].split()
        except OSError:
            continue
        assert not (fields[1] == me and fields[0] == 'Z'), f'zombie child {stat.parent.name}'
    for pid in harness.pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_start_kill_cycles_leave_the_primary_no_extra_fd(harness):
    """Each forked worker's loop is built by the primary before the fork (start-up speed);
    the primary must let go of every fd of it, whatever happens to the worker."""
    async def body():
        link = harness.start(echo_target)  # warm-up: the transport's own fds now exist
        await harness.listener.online(link)
        link.kill(base.SIGKILL)
        await harness.listener.exit(link)
        before = sorted(os.listdir('/proc/self/fd'))
        for _ in range(20):
            link = harness.start(echo_target)
            await harness.listener.online(link)
            link.kill(base.SIGKILL)
            await harness.listener.exit(link)
        assert len(os.listdir('/proc/self/fd')) == len(before), (before, sorted(os.listdir('/proc/self/fd')))
        harness.transport.close()

    run(body())


def test_workers_die_soon_after_a_sigkilled_primary():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')])))
    # The reaper is a subreaper: it adopts the orphaned workers and reaps them itself.
    reaper = subprocess.Popen(
        [sys.executable, str(WORKERS / 'orphan_primary.py')], stdout=subprocess.PIPE, env=env,
        start_new_session=True,
    )
    try:
        output, _ = reaper.communicate(timeout=30)
    finally:
        if reaper.returncode is None:
            os.killpg(reaper.pid, signal.SIGKILL)  # unreaped, so the group is still its own
            reaper.communicate()
    result = json.loads(output)
    assert len(result['pids']) == 2 and reaper.returncode == 0, result
    assert max(result['reaped_after'].values()) < ORPHAN_GONE_BOUND, result


class DrainOnDisconnect:
    """Serves HTTP-ish requests on the shared socket; on DISCONNECT closes its server, lets
    every connection it accepted finish, then ends (the graceful drain of a rolling reload)."""

    def __init__(self, link):
        self.link = link
        self.server = None

    def link_frame(self, kind, payload):
        if kind == 'listening':
            self.link.loop.create_task(self.serve(payload['socket']))
        elif kind == 'disconnect':
            self.server.close()
            self.link.loop.create_task(self.leave())

    async def serve(self, sock):
        async def handle(reader, writer):
            await reader.readuntil(b'\r\n\r\n')
            writer.write(b'served')
            await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(handle, sock=sock)
        self.link.write('message', b'serving')
        # Blocked: a connection, then the DISCONNECT, arrive meanwhile, so the next loop
        # pass sees both: the accept callback first, then the link's.
        time.sleep(0.5)

    async def leave(self):
        await self.server.wait_closed()
        others = asyncio.all_tasks() - {asyncio.current_task()}
        while others:
            await asyncio.wait(others)
            others = asyncio.all_tasks() - {asyncio.current_task()}
        self.link.finish()

    def link_closed(self):
        self.link.finish()


def drain_on_disconnect_target():
    link = base.current_link()
    link.attach(DrainOnDisconnect(link))


def test_a_connection_accepted_in_the_pass_that_reads_disconnect_is_served(harness):
    # asyncio (CPython gh-109564) silently drops a connection accepted in the same loop pass
    # in which Server.close() is then called: the transport is built one pass later and
    # Server._attach() asserts. The worker must deliver DISCONNECT after those accepts are
    # attached, or the connection is never served and is reset when the worker exits.
    async def body():
        transport = harness.transport
        listening = transport.bind(('127.0.0.1', 0))
        address = listening.getsockname()
        link = harness.start(drain_on_disconnect_target)
        await harness.listener.online(link)
        link.send_socket(listening, {'address': list(address)})
        await harness.listener.message(link, b'serving')
        reader, writer = await asyncio.open_connection(*address)
        writer.write(b'GET / HTTP/1.1\r\n\r\n')
        await asyncio.sleep(0.1)
        link.write('disconnect', None)
        try:
            answer = await asyncio.wait_for(reader.read(), TIMEOUT)
        except ConnectionResetError as error:
            answer = error
        writer.close()
        listening.close()
        assert answer == b'served'
        assert await harness.listener.exit(link) == (0, None)

    run(body())


def test_script_workers_run_on_uvloop_when_the_primary_asks(monkeypatch):
    uvloop = pytest.importorskip('uvloop')
    monkeypatch.setenv(base.LOOP_ENV, 'uvloop')
    loop = process._new_script_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
    monkeypatch.delenv(base.LOOP_ENV)
    loop = process._new_script_loop()
    try:
        assert type(loop).__module__.startswith('asyncio')
    finally:
        loop.close()


def test_a_uvloop_request_without_uvloop_warns_and_uses_asyncio(monkeypatch):
    monkeypatch.setenv(base.LOOP_ENV, 'uvloop')
    monkeypatch.setitem(sys.modules, 'uvloop', None)  # import fails as if not installed
    with pytest.warns(RuntimeWarning, match='uvloop is not installed'):
        loop = process._new_script_loop()
    try:
        assert type(loop).__module__.startswith('asyncio')
    finally:
        loop.close()
