"""systemd (issue 16): what the primary tells the service manager, in virtual time and through a
Unix datagram socket the test owns; socket activation (LISTEN_FDS) for `--listen systemd`."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from isocluster import ClusterPrimary
from isocluster.transport.memory import MemoryTransport
from memory_helpers import ready_worker
from tests.cluster_helpers import ready_waiter, run_cluster

ROOT = Path(__file__).resolve().parent.parent
WAIT = 20.0


# -- in virtual time --------------------------------------------------------------------------

def states(sim: MemoryTransport) -> list[str]:
    return [state.split('\n')[0] for _, state in sim.notifications if state != 'WATCHDOG=1']


def test_ready_once_the_first_workers_are_ready_then_reloading_ready_and_stopping():
    sim = MemoryTransport(seed=4)
    sim.slow_boot(2.0)  # the second worker is ready 2 s after the first
    primary = ClusterPrimary(worker_target=ready_worker, transport=sim)
    primary.fork(worker_count=2)
    sim.run_until(lambda: len(primary.workers) == 1)
    assert states(sim) == []
    sim.run_until(lambda: len(primary.workers) == 2)
    assert states(sim) == ['READY=1'] and sim.notifications[0][0] == sim.loop.time()
    primary.fork(worker_count=1)  # later workers do not repeat it
    sim.run_until(lambda: len(primary.workers) == 3)
    reloaded = []
    primary.on('reload_complete', lambda event: reloaded.append(states(sim)))
    primary.reload()
    assert states(sim) == ['READY=1', 'RELOADING=1']
    sim.run_until(lambda: reloaded)
    assert reloaded == [['READY=1', 'RELOADING=1', 'READY=1']]  # told before the event's handlers run
    primary.shut_down()
    sim.run_until(lambda: primary.closed)
    assert states(sim) == ['READY=1', 'RELOADING=1', 'READY=1', 'STOPPING=1']


def test_a_reload_abandoned_by_shutdown_does_not_say_ready_after_stopping():
    sim = MemoryTransport(seed=4)
    primary = ClusterPrimary(worker_target=ready_worker, transport=sim)
    primary.fork(worker_count=2)
    sim.run_until(lambda: len(primary.workers) == 2)
    primary.reload()
    primary.shut_down()
    sim.run_until(lambda: primary.closed)
    assert states(sim) == ['READY=1', 'RELOADING=1', 'STOPPING=1']


def test_watchdog_pings_every_interval_while_the_loop_runs_and_stop_when_closed():
    sim = MemoryTransport(seed=4)
    sim.watchdog = 5.0
    primary = ClusterPrimary(worker_target=ready_worker, transport=sim)
    started = sim.loop.time()
    primary.fork(worker_count=1)
    sim.advance(21.0)
    pings = [when - started for when, state in sim.notifications if state == 'WATCHDOG=1']
    assert pings == pytest.approx([5.0, 10.0, 15.0, 20.0])
    primary.shut_down()
    sim.run_until(lambda: primary.closed)
    count = len(sim.notifications)
    sim.run_until_idle()  # no timer left: the watchdog stopped with the primary
    assert len(sim.notifications) == count


# -- through a datagram socket the test owns ----------------------------------------------------

def received(sock: socket.socket) -> list[str]:
    messages = []
    sock.setblocking(False)
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


@pytest.mark.parametrize('abstract', [False, True])
def test_the_process_primary_notifies_the_socket_named_by_notify_socket(tmp_path, monkeypatch, abstract):
    name = f'@isocluster-test-{os.getpid()}-{id(tmp_path)}' if abstract else str(tmp_path / 'notify')
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind('\0' + name[1:] if abstract else name)
        monkeypatch.setenv('NOTIFY_SOCKET', name)
        monkeypatch.setenv('WATCHDOG_USEC', '100000')  # a ping every 0.05 s
        monkeypatch.delenv('WATCHDOG_PID', raising=False)

        async def scenario(primary: ClusterPrimary) -> None:
            primary.fork(2)
            await ready_waiter(primary, 2)
            watchdog = primary.transport.loop.create_future()
            primary.transport.loop.call_later(0.3, watchdog.set_result, None)
            await watchdog

        run_cluster('process', scenario, worker_target=ready_worker)
        messages = received(manager)
    told = [message.split('\n')[0] for message in messages if message != 'WATCHDOG=1']
    assert told == ['READY=1', 'STOPPING=1']
    assert messages.count('WATCHDOG=1') >= 1  # 0.3 s of loop with a ping due every 0.05 s


def test_reloading_carries_the_monotonic_time_systemd_asks_for(tmp_path, monkeypatch):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(tmp_path / 'notify'))
        monkeypatch.setenv('NOTIFY_SOCKET', str(tmp_path / 'notify'))

        async def scenario(primary: ClusterPrimary) -> None:
            done = primary.transport.loop.create_future()
            primary.after('reload_complete', lambda event: done.set_result(None))
            primary.fork(1)
            await ready_waiter(primary, 1)
            primary.reload()
            await done

        run_cluster('process', scenario, worker_target=ready_worker)
        messages = received(manager)
    reloading = [message for message in messages if message.startswith('RELOADING=1')]
    assert len(reloading) == 1 and reloading[0].split('\n')[1].startswith('MONOTONIC_USEC=')


# -- socket activation: `isocluster run --listen systemd` ---------------------------------------

APP = '''
import asyncio
import os


async def serve(sock):
    async def handle(reader, writer):
        writer.write(f'hello from {os.getpid()}'.encode())
        await writer.drain()
        writer.close()

    await asyncio.start_server(handle, sock=sock)
'''

# As systemd does: the socket as fd 3, LISTEN_PID the pid of the process that exec's the command.
ACTIVATE = '''
import os, sys
os.dup2(int(os.environ.pop("TEST_FD")), 3, inheritable=True)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, "-m", "isocluster", *sys.argv[1:]])
'''


def test_listen_systemd_serves_the_passed_socket_without_binding(tmp_path):
    (tmp_path / 'app.py').write_text(APP)
    listener = socket.create_server(('127.0.0.1', 0))
    address = listener.getsockname()
    env = dict(os.environ, TEST_FD=str(listener.fileno()),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')])))
    process = subprocess.Popen(
        [sys.executable, '-c', ACTIVATE, 'run', 'app:serve', '--workers', '2', '--listen', 'systemd'],
        cwd=tmp_path, env=env, pass_fds=(listener.fileno(),), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    listener.close()  # only the command holds it now: an answer proves the command serves it
    try:
        ready = 0
        for line in process.stdout:  # ends early (and the connection below fails) if the command exits
            ready += re.search(r'worker \d+ ready', line) is not None
            if ready == 2:
                break
        with socket.create_connection(address, timeout=WAIT) as client:
            answer = client.recv(100).decode()
        assert answer.startswith('hello from ')
        assert int(answer.split()[-1]) != process.pid  # a worker answered
        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT) == 0
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(WAIT)
        process.stdout.close()


def test_listen_systemd_without_a_passed_socket_fails_once_with_exit_2(tmp_path):
    (tmp_path / 'app.py').write_text(APP)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')])))
    env.pop('LISTEN_FDS', None)
    result = subprocess.run([sys.executable, '-m', 'isocluster', 'run', 'app:serve', '--listen', 'systemd'],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=WAIT)
    assert result.returncode == 2 and result.stdout == ''
    assert result.stderr.splitlines() == [
        'isocluster: --listen systemd: systemd passed no socket to this process (LISTEN_FDS/LISTEN_PID unset or '
        'not for this pid); run it from a .socket unit, or give --listen HOST:PORT']


def test_a_reload_that_joins_a_recycling_step_is_announced_too():
    sim = MemoryTransport(seed=4)
    primary = ClusterPrimary(worker_target=ready_worker, transport=sim)
    primary.fork(worker_count=2)
    sim.run_until(lambda: len(primary.workers) == 2)
    done = []
    primary.on('reload_complete', lambda event: done.append(True))
    primary.stop_worker(primary.workers[0], replace=True)  # the step recycling takes
    primary.reload()
    sim.run_until(lambda: done)
    assert states(sim) == ['READY=1', 'RELOADING=1', 'READY=1']
    primary.destroy()
    sim.run_until(lambda: primary.closed)
