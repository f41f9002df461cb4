"""The `isocluster` command as a server's supervisor (issue 16): an address it cannot listen
on fails once, before any worker is forked; each worker exit is printed once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from command_helpers import Command

ROOT = Path(__file__).resolve().parent.parent
WAIT = 20.0

APP = '''
import asyncio


async def serve(sock):
    async def handle(reader, writer):
        writer.close()

    await asyncio.start_server(handle, sock=sock)


def crash():
    raise SystemExit(3)
'''


def isocluster(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / 'app.py').write_text(APP)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')])))
    return subprocess.run([sys.executable, '-m', 'isocluster', 'run', *args], cwd=tmp_path, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=WAIT,
                          start_new_session=True)


def test_listen_on_a_busy_address_fails_once_before_any_worker_with_exit_2(tmp_path):
    with socket.create_server(('127.0.0.1', 0)) as taken:
        address = '127.0.0.1:%d' % taken.getsockname()[1]
        result = isocluster(tmp_path, 'app:serve', '--workers', '3', '--listen', address)
    assert result.returncode == 2
    assert result.stdout == ''  # nothing forked, nothing reported
    assert result.stderr.splitlines() == [
        f'isocluster: cannot listen on {address}: Address already in use; no worker was started '
        '(free it or choose another)'
    ]


def test_listen_on_a_path_that_cannot_be_bound_fails_once_with_exit_2(tmp_path):
    path = str(tmp_path / 'missing' / 'server.sock')
    result = isocluster(tmp_path, 'app:serve', '--workers', '3', '--listen', path)
    assert (result.returncode, result.stdout) == (2, '')
    assert len(result.stderr.splitlines()) == 1 and 'No such file or directory' in result.stderr


def test_each_worker_exit_is_printed_once(tmp_path):
    result = isocluster(tmp_path, 'app:crash', '--workers', '1', '--restart', 'never')
    output = result.stdout + result.stderr
    assert [line for line in output.splitlines() if 'worker 1 exited' in line] == ['isocluster: worker 1 exited (code 3)']
    # and the end state is said once, as the last line (issue 13)
    assert [line for line in output.splitlines() if 'stopped:' in line] == [output.splitlines()[-1]]


def test_a_drain_timeout_not_below_shutdown_timeout_is_a_bad_argument(tmp_path):
    result = isocluster(tmp_path, 'app:serve', '--drain-timeout', '5', '--shutdown-timeout', '5')
    assert result.returncode == 2 and 'must be less than shutdown_timeout' in result.stderr


def test_sigttin_adds_a_worker_and_sigttou_retires_one_never_the_last(tmp_path):
    (tmp_path / 'app.py').write_text(APP)
    command = Command(['run', 'app:serve', '--workers', '2', '--listen', '127.0.0.1:0'], tmp_path)
    try:
        command.wait_for(r'worker \d+ ready', count=2)
        command.process.send_signal(signal.SIGTTIN)
        command.wait_for(r'worker 3 ready \(3/2 ready\)')
        for retired in (1, 2):  # one at a time: a signal sent while the same one is pending is lost
            command.process.send_signal(signal.SIGTTOU)
            command.wait_for(r'worker \d exited \(code 0, after disconnect\)', count=retired)
        command.process.send_signal(signal.SIGTTOU)
        command.wait_for(r'SIGTTOU: the last worker is not retired; SIGTERM shuts the cluster down$')
        command.process.send_signal(signal.SIGTERM)
        assert command.process.wait(WAIT) == 0
        command.reader.join(WAIT)
    finally:
        command.kill_group()
    exits = [line for line in command.lines if 'exited' in line]
    assert exits[:2] == ['isocluster: worker 3 exited (code 0, after disconnect)',
                         'isocluster: worker 2 exited (code 0, after disconnect)']  # the newest leave first
    assert len(exits) == 3  # the last one left at the SIGTERM
