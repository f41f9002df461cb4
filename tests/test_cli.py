"""The `isocluster` command, through subprocesses (`python -m isocluster`).

Every command runs in a session of its own (`start_new_session`), so its workers share its
process group: the checks look for leftovers by process group, and the teardown kills the
whole group, pass or fail. Nothing sleeps to synchronise: tests wait for output lines with a
deadline.
"""

from __future__ import annotations

import io
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from isocluster import ClusterPrimary, ClusterWorker
from isocluster.cli import Reporter
from isocluster.transport.memory import MemoryTransport

ROOT = Path(__file__).resolve().parent.parent
WAIT = 20.0  # seconds: the deadline of any one wait

APP = '''
import asyncio
import os

from isocluster import ClusterWorker


async def serve(sock):
    async def handle(reader, writer):
        await reader.readuntil(b'\\r\\n\\r\\n')
        loop = type(asyncio.get_running_loop()).__module__.split('.')[0]
        body = f'worker {ClusterWorker.worker_id} pid {os.getpid()} loop {loop}'.encode()
        writer.write(b'HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n%s' % (len(body), body))
        await writer.drain()
        writer.close()

    await asyncio.start_server(handle, sock=sock)


def crash():
    raise SystemExit(3)
'''


def command_env() -> dict[str, str]:
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(ROOT), env.get('PYTHONPATH')]))
    return env


def process_group_members(pgid: int) -> list[int]:
    """Pids of live (non-zombie) processes in process group `pgid`, from /proc."""
    members = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as file:
                fields = file.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != 'Z':
            members.append(int(entry))
    return members


class Command:
    """A running `python -m isocluster ...`, its output read line by line by a thread."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, '-m', 'isocluster', *args], cwd=cwd, env=command_env(),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )
        self.lines: list[str] = []
        self._incoming: queue.Queue[str | None] = queue.Queue()
        self._cursor = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._incoming.put(line.rstrip('\n'))
        self._incoming.put(None)

    def _pull(self, timeout: float) -> bool:
        """Move output that arrived within `timeout` to `lines`; False at end of output."""
        try:
            line = self._incoming.get(timeout=timeout)
        except queue.Empty:
            return True
        if line is None:
            self._incoming.put(None)
            return False
        self.lines.append(line)
        return True

    def wait_for(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        """The first line from the cursor on matching `pattern`; the cursor moves past it."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            while self._cursor < len(self.lines):
                line = self.lines[self._cursor]
                self._cursor += 1
                match = regex.search(line)
                if match:
                    return match
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._pull(min(remaining, 0.5)) and self._cursor >= len(self.lines):
                raise AssertionError(f'no line matching {pattern!r} within {timeout}s; output:\n' + self.output())

    def output(self) -> str:
        while self._pull(0):
            if self._incoming.empty():
                break
        return '\n'.join(self.lines)

    def exit_code(self, timeout: float = WAIT) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout)
        while self._pull(0) and not self._incoming.empty():
            pass
        return code

    def kill_group(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            pass
        self.process.stdout.close()


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / 'app.py').write_text(APP)
    return tmp_path


@pytest.fixture
def isocluster(app_dir: Path):
    """`isocluster(*args)` starts the command in `app_dir`; every command's process group is
    killed at teardown, whatever happened."""
    started: list[Command] = []

    def start(*args: str) -> Command:
        command = Command(list(args), app_dir)
        started.append(command)
        return command

    yield start
    for command in started:
        command.kill_group()


def serve_cluster(isocluster, workers: int = 3, *extra: str) -> tuple[Command, int, dict[int, int]]:
    """Start `app:serve` on a shared ephemeral port; wait until every worker is ready.
    Returns the command, the port and {worker id: pid}."""
    command = isocluster('run', 'app:serve', '--workers', str(workers), '--listen', '127.0.0.1:0',
                         '--shutdown-timeout', '3', '--kill-timeout', '2', *extra)
    port = int(command.wait_for(r'isocluster: listening on 127\.0\.0\.1:(\d+)$').group(1))
    for _ in range(workers):
        command.wait_for(r'isocluster: worker \d+ ready')
    pids = {int(worker): int(pid) for worker, pid in re.findall(r'worker (\d+) forked \(pid (\d+)\)', command.output())}
    return command, port, pids


def http_get(port: int) -> str:
    with urllib.request.urlopen(f'http://127.0.0.1:{port}/', timeout=WAIT) as response:
        assert response.status == 200
        return response.read().decode()


def answering_workers(port: int, requests: int = 60) -> set[int]:
    """Ids of the workers that answered `requests` sequential GETs on the shared port."""
    return {int(re.match(r'worker (\d+) pid \d+ loop \w+$', http_get(port)).group(1)) for _ in range(requests)}


def assert_exits_cleanly(command: Command, sig: signal.Signals = signal.SIGTERM) -> None:
    command.process.send_signal(sig)
    assert command.exit_code() == 0, command.output()
    assert 'isocluster: shut down: no worker left' in command.output()
    assert process_group_members(command.process.pid) == [], command.output()


# -- help and arguments ------------------------------------------------------------------------


def test_help_describes_every_command_and_option():
    top = subprocess.run([sys.executable, '-m', 'isocluster', '--help'], env=command_env(),
                         capture_output=True, text=True, timeout=WAIT)
    assert top.returncode == 0
    assert 'run' in top.stdout and 'demo' in top.stdout
    run = subprocess.run([sys.executable, '-m', 'isocluster', 'run', '--help'], env=command_env(),
                         capture_output=True, text=True, timeout=WAIT)
    assert run.returncode == 0
    for option in ('MODULE:FUNCTION', '--workers N|auto', '--script PATH', '--script-arg', '--listen HOST:PORT',
                   '--restart {always,on-failure,never}', '--restart-intensity', '--restart-period',
                   '--ready-timeout', '--shutdown-timeout', '--kill-timeout', '--heartbeat-interval',
                   '--heartbeat-timeout', '--codec {json,pickle,msgpack,orjson}', '--uvloop', 'SIGHUP', 'SIGTERM', 'FUNCTION(sock)', 'Exit status'):
        assert option in run.stdout, option


@pytest.mark.parametrize('args, message', [
    (['run', 'app:serve', '--workers', 'many'], 'argument -w/--workers: expected a number of workers or "auto"'),
    (['run', 'app:serve', '--workers', '0'], 'expected at least 1 worker'),
    (['run'], 'give MODULE:FUNCTION'),
    (['run', 'app:serve', '--script', 'app.py'], 'not both'),
    (['run', 'app'], 'expected MODULE:FUNCTION'),
    (['run', 'no_such_module:serve'], "cannot import module 'no_such_module'"),
    (['run', 'app:no_such_function'], "module 'app' has no attribute 'no_such_function'"),
    (['run', 'app:serve', '--restart', 'sometimes'], "argument --restart: invalid choice: 'sometimes'"),
    (['run', 'app:serve', '--listen', 'nowhere'], 'expected HOST:PORT'),
    (['run', 'app:serve', '--listen', '127.0.0.1:99999'], 'not in 0..65535'),
    (['run', 'app:serve', '--shutdown-timeout', '-1'], 'argument --shutdown-timeout'),
    (['run', 'app:serve', '--heartbeat-interval', '5', '--heartbeat-timeout', '2'], 'heartbeat_timeout'),
    (['run', '--script', 'missing.py'], "'missing.py' is not an existing file"),
    (['run', 'app:serve', '--codec', 'yaml'], "argument --codec: invalid choice: 'yaml'"),
    (['launch'], "invalid choice: 'launch'"),
])
def test_a_bad_argument_is_a_clear_error_with_exit_status_2(app_dir, args, message):
    result = subprocess.run([sys.executable, '-m', 'isocluster', *args], cwd=app_dir, env=command_env(),
                            capture_output=True, text=True, timeout=WAIT)
    assert result.returncode == 2, result
    assert 'error: ' + message in result.stderr or message in result.stderr, result.stderr
    assert 'Traceback' not in result.stderr
    assert result.stdout == ''


# -- running a cluster -------------------------------------------------------------------------


def test_three_workers_answer_http_on_the_shared_port(isocluster):
    command, port, pids = serve_cluster(isocluster)
    assert sorted(pids) == [1, 2, 3]
    answered = answering_workers(port)
    assert answered <= {1, 2, 3}
    assert answered, command.output()
    assert_exits_cleanly(command)


def test_sighup_reloads_every_worker_and_the_port_stays_served(isocluster):
    command, port, pids = serve_cluster(isocluster)
    command.process.send_signal(signal.SIGHUP)
    command.wait_for(r'isocluster: reload: replacing 3 workers')
    command.wait_for(r'isocluster: reload complete: 3 workers replaced .*workers \[4, 5, 6\]')
    output = command.output()
    for old in (1, 2, 3):
        assert f'isocluster: worker {old} exited (code 0, after disconnect)' in output
    for new in (4, 5, 6):
        assert re.search(rf'isocluster: worker {new} ready', output)
    # New ready before old leaves: the new worker's ready line precedes the old one's exit.
    for old, new in ((1, 4), (2, 5), (3, 6)):
        assert output.index(f'worker {new} ready') < output.index(f'worker {old} exited')
    assert answering_workers(port) <= {4, 5, 6}
    assert_exits_cleanly(command)


def test_sigterm_exits_0_with_no_worker_left(isocluster):
    command, port, pids = serve_cluster(isocluster)
    assert len(pids) == 3
    assert all(pid in process_group_members(command.process.pid) for pid in pids.values())
    assert_exits_cleanly(command, signal.SIGTERM)
    for worker, pid in pids.items():
        assert f'isocluster: worker {worker} exited (code 0, after disconnect)' in command.output()
        assert not os.path.exists(f'/proc/{pid}') or pid not in process_group_members(command.process.pid)


def test_uvloop_and_codec_are_opt_in_and_reach_the_workers(isocluster):
    pytest.importorskip('uvloop')
    command, port, pids = serve_cluster(isocluster, 2, '--uvloop', '--codec', 'pickle')
    assert len(pids) == 2
    assert http_get(port).endswith(' loop uvloop')
    assert_exits_cleanly(command)
    assert process_group_members(command.process.pid) == []


def test_the_default_loop_is_asyncio(isocluster):
    command, port, pids = serve_cluster(isocluster, 1)
    assert http_get(port).endswith(' loop asyncio')
    assert_exits_cleanly(command)


def test_sigint_shuts_down_too(isocluster):
    command, port, pids = serve_cluster(isocluster, workers=2)
    assert_exits_cleanly(command, signal.SIGINT)


def test_workers_that_are_not_replaced_end_the_command_with_status_1(isocluster):
    command = isocluster('run', 'app:crash', '--workers', '2', '--restart', 'never')
    assert command.exit_code() == 1, command.output()
    output = command.output()
    assert 'isocluster: worker 1 exited (code 3)' in output
    assert 'isocluster: worker 2 exited (code 3)' in output
    stopped = [line for line in output.splitlines() if line.startswith('isocluster: stopped: ')]
    assert len(stopped) == 1, output
    assert re.fullmatch(r"isocluster: stopped: the cluster stopped with no worker left: worker [12] ended before it "
                        r"became ready \(exit code 3\); restart='never' replaces none .*", stopped[0]), stopped
    assert 'Traceback' not in output.split('isocluster: stopped: ')[1]
    assert process_group_members(command.process.pid) == []


def test_demo_runs_and_exits_0(isocluster):
    command = isocluster('demo')
    assert command.exit_code() == 0, command.output()
    assert 'shut down complete: no worker left' in command.output()
    assert process_group_members(command.process.pid) == []


# -- progress ----------------------------------------------------------------------------------


def _report_three_workers_starting(tty: bool) -> str:
    sim = MemoryTransport(seed=3)
    stream = io.StringIO()
    primary = ClusterPrimary(worker_target=ClusterWorker, transport=sim)
    Reporter(primary, 3, stream, tty=tty)
    primary.fork(worker_count=3)
    sim.run_until(lambda: len(primary.workers) == 3)
    primary.shut_down()
    sim.run_until(lambda: primary.closed)
    sim.close()
    return stream.getvalue()


def test_progress_on_a_terminal_is_redrawn_in_place():
    output = _report_three_workers_starting(tty=True)
    assert 'isocluster: [--------------------] workers ready 0/3' in output
    assert re.search(r'isocluster: \[#{6}-{14}\] workers ready 1/3\r\x1b\[K', output)
    assert 'workers ready 2/3' in output
    assert 'workers ready 3/3' not in output  # done: the progress line is gone
    assert re.search(r'isocluster: worker \d ready \(3/3 ready\)\nisocluster: shutting down\n', output)
    assert output.endswith('isocluster: shut down: no worker left\n')


def test_progress_is_plain_lines_when_not_a_terminal():
    output = _report_three_workers_starting(tty=False)
    assert '\r' not in output and '\x1b' not in output
    lines = output.splitlines()
    assert all(line.startswith('isocluster: ') for line in lines)
    assert [line for line in lines if ' ready (' in line] == [
        f'isocluster: worker {worker} ready ({count}/3 ready)' for worker, count in zip(
            [int(re.search(r'worker (\d+) ready', line).group(1)) for line in lines if ' ready (' in line], (1, 2, 3))
    ]
