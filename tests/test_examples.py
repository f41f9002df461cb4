"""Every program in examples/ (the seed README's examples) runs by itself, exits 0, prints
what happened, and leaves no process behind.

Each example runs as `python examples/<name>.py` in a session of its own, so its workers are
in its process group: the test checks that the group is empty afterwards, and kills the group
at the end whatever happened.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / 'examples'
TIMEOUT = 30.0

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
        if int(fields[2]) == pgid and fields[0] != 'Z':
            members.append(int(entry))
    return members


def run_example(name: str, timeout: float = TIMEOUT) -> tuple[str, str]:
    """Run examples/<name>.py; assert exit 0, a clean stderr and no process left. Returns
    (stdout, stderr)."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(ROOT), env.get('PYTHONPATH')]))
    # Unbuffered, print() writes the text and its newline with two write(2) calls, and lines
    # of different processes can interleave; buffered, each `print(..., flush=True)` is one.
    env.pop('PYTHONUNBUFFERED', None)
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / f'{name}.py')], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f'{name}.py did not finish within {timeout}s\nstdout:\n{stdout}\nstderr:\n{stderr}')
    finally:
        left = process_group_members(process.pid)
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    described = f'{name}.py exited {process.returncode}\nstdout:\n{stdout}\nstderr:\n{stderr}'
    assert process.returncode == 0, described
    assert left == [], f'processes left in the group: {left}\n{described}'
    assert 'Traceback' not in stderr and 'Error' not in stderr and 'Exception ignored' not in stderr, described
    for pid in map(int, re.findall(r'\(pid (\d+)\)', stdout)):
        assert pid not in process_group_members(process.pid), described
    return stdout, stderr


def lines_matching(pattern: str, text: str) -> list[re.Match[str]]:
    return list(re.finditer(pattern, text, re.M))


def test_basic_primary_and_workers_in_one_script():
    out, _ = run_example('basic')
    greeted = {int(m.group(1)) for m in lines_matching(r'^Hello, User! \(from worker (\d+)\)$', out)}
    assert greeted == {1, 2, 3, 4}
    received = lines_matching(r"^Received from worker (\d+): \{'content': 'Greeted User', 'type': 'response'\}$", out)
    assert sorted(int(m.group(1)) for m in received) == [1, 2, 3, 4]
    assert len(lines_matching(r'^Worker \d: primary disconnected, cleaning up\.\.\.$', out)) == 4
    assert len(lines_matching(r'^Worker \d \(pid \d+\) exited with code 0$', out)) == 4
    assert out.index('Every worker answered; shutting down') < out.index('Shut down complete')
    assert out.rstrip().endswith('Shut down complete')


def test_http_server_workers_share_one_port():
    out, _ = run_example('http_server')
    count = int(re.search(r'^Starting (\d+) workers$', out, re.M).group(1))
    listening = lines_matching(r'^Worker (\d+) listening on 127\.0\.0\.1:(\d+)$', out)
    assert len(listening) == count
    assert len({m.group(2) for m in listening}) == 1  # one port, shared
    answers = lines_matching(r'^GET http://127\.0\.0\.1:(\d+)/ -> Hello from worker (\d+)$', out)
    assert len(answers) == 20
    assert {m.group(1) for m in answers} == {listening[0].group(2)}
    assert {int(m.group(2)) for m in answers} <= set(range(1, count + 1))
    assert re.search(r'^20 requests answered by \d worker\(s\)$', out, re.M)
    assert len(lines_matching(r'^Primary asked worker \d+ to disconnect, draining its connections$', out)) == count
    assert len(lines_matching(r'^Worker \d+ exited with code 0 and signal None$', out)) == count
    assert out.rstrip().endswith('Server shut down')


def test_round_robin_distributes_every_task():
    out, _ = run_example('round_robin')
    sent = {int(m.group(1)): int(m.group(2)) for m in lines_matching(r'^Task (\d+) sent to worker (\d+)$', out)}
    done = {int(m.group(1)): int(m.group(2)) for m in lines_matching(r'^Task (\d+) completed by worker (\d+)', out)}
    assert sorted(sent) == sorted(done) == list(range(1, 11))
    assert sent == done
    assert len(set(sent.values())) > 1  # balanced over several workers
    assert 'All 10 tasks completed; shutting down' in out
    assert len(lines_matching(r'^Worker \d \(pid \d+\) exited$', out)) == 4


def test_tagged_distribution_keeps_one_round_robin_per_queue():
    out, _ = run_example('tagged_distribution')
    sent = lines_matching(r'^Task ([cil][12]) sent to worker (\d+) \((compute|io|lightweight) queue\)$', out)
    assert sorted(m.group(1) for m in sent) == ['c1', 'c2', 'i1', 'i2', 'l1', 'l2']
    assert {m.group(1)[0]: m.group(3)[0] for m in sent} == {'c': 'c', 'i': 'i', 'l': 'l'}
    results = {m.group(1): m.group(2) for m in lines_matching(r'^Task (\w+) completed by worker \d+ with result: (.+)$', out)}
    assert results == {'c1': 'CRUNCH', 'c2': 'CRUNCH MORE', 'i1': 'READ', 'i2': 'WRITE', 'l1': 'PING', 'l2': 'PONG'}
    assert 'All 6 tasks completed; shutting down' in out
    assert len(lines_matching(r'^Worker \d \(pid \d+\) exited$', out)) == 6


def test_task_queue_spreads_uneven_tasks_over_both_workers():
    out, _ = run_example('task_queue')
    done = {int(m.group(1)): int(m.group(2)) for m in lines_matching(r'^Task (\d+) done by worker (\d+)$', out)}
    assert sorted(done) == list(range(10)) and len(lines_matching(r'^Task ', out)) == 10
    assert {done[task] for task in range(0, 10, 2)} == {1, 2}  # the slow ones too: not all on one worker


def test_task_queue_script_maps_without_a_loop_of_its_own():
    out, _ = run_example('task_queue_script')
    assert out.strip() == '1000 totals, the last 2997, together 1498500'


def test_type_routing_calls_the_handler_method_of_each_type():
    out, _ = run_example('type_routing')
    for worker in (1, 2):
        assert f'[Worker {worker} LOG] info: started' in out
        assert f'METRIC: worker_{worker}_boot_ms = {12.5 * worker}' in out
        assert f'Worker {worker} needs help with: puzzle #{worker}' in out
        assert f'Worker {worker} got help: Solution for puzzle #{worker}' in out
        assert out.index(f'needs help with: puzzle #{worker}') < out.index(f'Worker {worker} got help')
    stored = re.search(r'^Stored metrics: (.*)$', out, re.M).group(1)
    assert "('worker_1_boot_ms', 12.5)" in stored and "('worker_2_boot_ms', 25.0)" in stored


def test_custom_initialization_makes_workers_ready_only_after_it():
    out, _ = run_example('custom_init')
    for worker in (1, 2):
        connecting = out.index(f'Worker {worker} connecting to database...')
        initialized = out.index(f'Worker {worker} database initialized')
        ready = out.index(f'Worker {worker} ready (its database is connected)')
        closing = out.index(f'Worker {worker} closing database connection')
        exited = out.index(f'Worker {worker} exited with code 0')
        # Ordered by causality only (READY goes out just before `initialize_complete`, so the
        # worker's "initialized" and the primary's "ready" lines may come in either order).
        assert connecting < ready < closing < exited
        assert connecting < initialized < closing
    answers = {m.group(1): m.group(2) for m in lines_matching(r"answered '(\w+)': (\w+)$", out)}
    assert answers == {'en': 'Hello', 'fr': 'Bonjour'}


def test_health_monitoring_restarts_the_leaky_worker_and_kills_the_frozen_one():
    out, _ = run_example('health_monitoring')
    assert re.search(r'Worker 2 healthy: heap 1650 MB', out)
    assert 'Worker 2 using excessive memory, scheduling restart' in out
    assert 'Worker 2 finishing its work and leaving for a restart' in out
    assert 'Worker 2 exited (code 0)' in out
    assert 'Worker 3 freezing its event loop' in out
    assert 'Worker 3 missed its heartbeats: killing and replacing it' in out
    assert re.search(r'Worker 3 exited \(signal SIG(TERM|KILL)\)', out)
    assert 'Both replacements are ready: workers [1, 4, 5, 6]; shutting down' in out
    for worker in (1, 4, 5, 6):
        assert f'Worker {worker} exited (code 0)' in out


def test_ray_cluster_runs_on_ray_or_says_it_needs_it():
    """The README's Ray example: on Ray when it is installed; else it says so and exits 0."""
    # a Ray instance and two actor processes start: seconds each on a loaded 2-core machine
    out, _ = run_example('ray_cluster', timeout=120.0)
    if importlib.util.find_spec('ray') is None:
        assert out.strip() == "ray is not installed: pip install 'isocluster[ray]' to run this example"
        return
    greeted = lines_matching(r'^hello Ada from worker ([12]) \(pid \d+ on .+\)$', out)
    assert sorted(int(m.group(1)) for m in greeted) == [1, 1, 2, 2], out
    assert out.rstrip().endswith('Shut down complete')


# Programs with a test above; `http_worker.py` is the worker script of `http_server.py`.
EXPLICIT = {'basic', 'http_server', 'http_worker', 'round_robin', 'tagged_distribution', 'type_routing',
            'custom_init', 'health_monitoring', 'ray_cluster', 'task_queue', 'task_queue_script'}
OTHERS = sorted(path.stem for path in EXAMPLES.glob('*.py') if path.stem not in EXPLICIT)


@pytest.mark.parametrize('name', OTHERS)
def test_every_other_example_runs_cleanly(name):
    """Examples added later (e.g. the README's quick start) run too: exit 0, nothing left."""
    out, _ = run_example(name)


def test_every_example_of_the_seed_readme_is_here():
    assert EXPLICIT <= {path.stem for path in EXAMPLES.glob('*.py')}
