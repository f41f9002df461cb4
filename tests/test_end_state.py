"""A defined end state (issue 13, finding 6): when no worker is live and the supervisor will
start none, the primary publishes `no_workers`, shuts down, and `run()` / `wait_closed()`
raise NoWorkersError unless every unreplaced worker ended cleanly. Failed starts before any
worker was ever ready stop the cluster after BOOT_FAILURE_LIMIT of them."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from isocluster import ClusterWorker, NoWorkersError
from isocluster.supervision import BOOT_FAILURE_LIMIT

from memory_helpers import PRIMARY_EVENTS, Recorder, close, crash_and_wait, crash_at_boot_worker, make, started

EVENTS = PRIMARY_EVENTS + ('no_workers',)
ROOT = Path(__file__).resolve().parent.parent
WAIT = 60.0  # seconds; the real-process clusters below end within a few hundred ms


def closed_with(sim, p):
    """Run until closed; what wait_closed() then raises (None if it returns)."""
    sim.run_until(lambda: p.closed, timeout=120)
    try:
        sim.loop.run_until_complete(p.wait_closed())
    except NoWorkersError as error:
        return error
    return None


def recorded(target=None, **options):
    sim, p, _ = make(target, record=False, **options) if target else make(record=False, **options)
    return sim, p, Recorder(p, EVENTS)


def test_restart_limit_with_no_worker_left_stops_the_cluster_with_an_error():
    sim, p, rec = recorded(restart_intensity=1)
    p.fork(1)
    sim.run_until(lambda: len(p.workers) == 1)
    crash_and_wait(sim, p, rec, p.workers[0], code=1, pool=1)  # within budget: replaced
    crash_and_wait(sim, p, rec, p.workers[0], code=7)  # beyond: restart_limit, nobody left
    texts = rec.texts()
    i = texts.index('on restart_limit')
    assert texts[i - 1:i + 5] == ['on worker_exit', 'on restart_limit', 'after restart_limit',
                                  'on no_workers', 'on shut_down', 'after shut_down']
    assert rec.of('no_workers')[0]['reason'] == 'restart_limit'
    error = closed_with(sim, p)
    assert isinstance(error, NoWorkersError) and error.reason == 'restart_limit' and error.worker_id == 2
    assert 'worker 2 ended (exit code 7)' in str(error) and 'restart limit was reached' in str(error)
    assert rec.of('no_workers')[0]['error'] is error


def test_restart_limit_with_workers_left_waits_for_the_last_one():
    sim, p, rec = recorded(restart_intensity=0)
    p.fork(2)
    sim.run_until(lambda: len(p.workers) == 2)
    crash_and_wait(sim, p, rec, 1, signal=9)
    assert rec.count('restart_limit') == 1 and rec.count('no_workers') == 0 and not p.closed
    crash_and_wait(sim, p, rec, 2, code=0)
    error = closed_with(sim, p)
    assert error.reason == 'restart_limit' and 'worker 2 ended (exit code 0)' not in str(error)
    assert 'worker 1 ended (killed by SIGKILL)' in str(error)  # the last failure, not the clean exit


@pytest.mark.parametrize('restart', ['never', 'on-failure'])
def test_clean_exits_that_are_not_replaced_end_the_cluster_without_error(restart):
    sim, p, rec = started(2, restart=restart, record=False)
    rec = Recorder(p, EVENTS)
    for worker in (1, 2):
        crash_and_wait(sim, p, rec, worker, code=0)
    assert rec.of('no_workers') == [{'reason': 'no_restart', 'error': None}]
    assert closed_with(sim, p) is None


def test_a_crash_that_restart_never_does_not_replace_ends_the_cluster_with_an_error():
    """An empty pool made on purpose (scale(0), stop_worker of the last worker) is no end:
    the primary stays up and can grow again; only exits the policy leaves unreplaced count."""
    sim, p, rec = recorded(restart='never')
    p.fork(3)
    sim.run_until(lambda: len(p.workers) == 3)
    p.scale(2)  # retires worker 3: a worker retired on purpose never counts as an end
    sim.run_until(lambda: rec.count('worker_exit') == 1)
    crash_and_wait(sim, p, rec, 1, code=3)
    assert not p.closed
    crash_and_wait(sim, p, rec, 2, code=0)
    error = closed_with(sim, p)
    assert error.reason == 'no_restart' and error.worker_id == 1
    assert "worker 1 ended (exit code 3); restart='never'" in str(error)


def test_failed_starts_before_any_worker_was_ready_stop_the_cluster_early():
    sim, p, rec = recorded(crash_at_boot_worker)  # default budget: 10 restarts
    p.fork(1)
    error = closed_with(sim, p)
    assert rec.count('worker_fork') == BOOT_FAILURE_LIMIT == 3
    assert rec.count('restart_limit') == 0
    assert rec.of('no_workers')[0]['reason'] == 'boot_failure'
    assert error.reason == 'boot_failure' and error.worker_id == 3
    assert 'worker 3 ended before it became ready (exit code 1)' in str(error)
    assert '3 workers failed to start and none ever became ready' in str(error)


def test_a_ready_timeout_is_a_failed_start_and_named_in_the_error():
    sim, p, rec = recorded(lambda: None, ready_timeout=1.0)  # never builds its ClusterWorker
    p.fork(1)
    error = closed_with(sim, p)
    assert error.reason == 'boot_failure' and 'ReadyTimeout: worker 3 did not become ready' in str(error)


_booted = []


def first_ready_then_crash_at_boot() -> None:
    _booted.append(1)
    if len(_booted) > 1:
        raise RuntimeError('boom at boot, after the first worker was ready')
    ClusterWorker()


def test_failed_starts_after_a_worker_was_ready_fall_under_the_restart_limit():
    _booted.clear()
    sim, p, rec = recorded(first_ready_then_crash_at_boot, restart_intensity=5)
    p.fork(1)
    sim.run_until(lambda: len(p.workers) == 1)
    sim.crash(1, code=1)
    error = closed_with(sim, p)
    assert rec.count('worker_fork') == 6 and rec.count('restart_limit') == 1  # the first and 5 replacements
    assert error.reason == 'restart_limit'


def test_preventing_no_workers_keeps_the_primary_up_and_supervising():
    sim, p, rec = recorded(crash_at_boot_worker, restart_intensity=4)
    p.on('no_workers', lambda event: event.prevent())
    p.fork(1)
    sim.run_until(lambda: rec.count('restart_limit') == 1)
    sim.run_until_idle()
    # boot_failure at the 3rd failed start, prevented: replacement goes on to the restart limit
    assert [data['reason'] for data in rec.of('no_workers')] == ['boot_failure', 'boot_failure', 'boot_failure',
                                                                  'restart_limit']
    assert rec.count('worker_fork') == 5 and not p.closed
    close(sim, p)


# -- real processes: run() raises, the command exits 1 with one line --------------------------

SCRIPT = '''
import sys
from isocluster import ClusterPrimary, NoWorkersError

def boot():
    raise RuntimeError('cannot reach the database')

if __name__ == '__main__':
    primary = ClusterPrimary(worker_target=boot, worker_silent=True)
    primary.fork(2)
    try:
        primary.run()
    except NoWorkersError as error:
        print('raised', error.reason, primary.stats()['forked'], primary.stats()['live'], error)
        sys.exit(0)
    print('returned')
'''


def _env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(ROOT), env.get('PYTHONPATH')]))
    return env


def test_run_raises_when_every_worker_fails_to_start(tmp_path):
    script = tmp_path / 'primary.py'
    script.write_text(SCRIPT)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=WAIT, env=_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('raised boot_failure '), result.stdout
    forked, live = map(int, result.stdout.split()[2:4])
    assert BOOT_FAILURE_LIMIT <= forked <= BOOT_FAILURE_LIMIT + 1 and live == 0  # not a storm of 11


def test_the_command_exits_1_with_one_line_when_workers_cannot_start(tmp_path):
    (tmp_path / 'app.py').write_text(textwrap.dedent('''
        def boot():
            raise RuntimeError('cannot reach the database')
    '''))
    result = subprocess.run([sys.executable, '-m', 'isocluster', 'run', 'app:boot', '--workers', '1'],
                            cwd=tmp_path, capture_output=True, text=True, timeout=WAIT, env=_env())
    assert result.returncode == 1, result
    lines = result.stdout.splitlines()
    assert lines[-1].startswith('isocluster: stopped: the cluster stopped with no worker left: worker 3 ended '
                                'before it became ready (exit code 1)'), result.stdout
    assert sum('forked' in line for line in lines) == BOOT_FAILURE_LIMIT
    assert 'the cluster stopped' not in result.stderr  # printed once, by the command
