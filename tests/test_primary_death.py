"""R110/R118 on real processes: when the primary is SIGKILLed, each worker still publishes
primary_disconnect (its cleanup runs) and is gone soon after; a blocked one too."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from typing import Any
from pathlib import Path

from cluster_helpers import ORPHAN_GONE_BOUND

ROOT = Path(__file__).resolve().parent.parent

PRIMARY = r'''
import asyncio, os, sys, time
from isocluster import ClusterPrimary, ClusterWorker

def cleaning_worker():
    worker = ClusterWorker()
    def cleanup(event):
        with open(os.environ['MARKER'] + str(ClusterWorker.worker_id), 'w') as marker:
            marker.write('primary_disconnect')
    worker.after('primary_disconnect', cleanup)

async def main():
    primary = ClusterPrimary(worker_target=cleaning_worker)
    ready = asyncio.Event()
    primary.after('worker_ready', lambda e: len(primary.workers) == 2 and ready.set())
    primary.fork(2)
    await ready.wait()
    print(' '.join(str(w.pid) for w in primary.workers), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
'''


def _end_both(pids: 'int | None | list[int]', primary: Any) -> None:
    """Whatever the test saw: the worker(s) `pids` and the primary subprocess are ended."""
    for pid in [] if pids is None else [pids] if isinstance(pids, int) else pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if primary.poll() is None:
        primary.kill()
        primary.wait()


def _gone(pid: int) -> bool:
    try:
        state = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ('Z', 'X')  # a zombie has ended; its reaper is not ours to be


def test_workers_of_a_killed_primary_clean_up_and_leave(tmp_path: Path) -> None:
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'MARKER': str(tmp_path / 'disconnected-')}
    primary = subprocess.Popen([sys.executable, '-c', PRIMARY], stdout=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    pids: list[int] = []
    try:
        readable, _, _ = select.select([primary.stdout], [], [], 20)
        assert readable, 'the primary did not report its workers'
        pids = [int(pid) for pid in primary.stdout.readline().split()]
        assert len(pids) == 2
        os.kill(primary.pid, signal.SIGKILL)
        primary.wait()
        killed_at = time.monotonic()
        while not all(_gone(pid) for pid in pids) and time.monotonic() - killed_at < 5:
            time.sleep(0.02)  # polling another process's state: there is no event to wait on
        gone_after = time.monotonic() - killed_at
        assert all(_gone(pid) for pid in pids) and gone_after < ORPHAN_GONE_BOUND
        assert sorted(path.name for path in tmp_path.iterdir()) == ['disconnected-1', 'disconnected-2']
    finally:
        _end_both(pids, primary)


# A worker stuck in a C call that holds the GIL (the builtin sum over a range checks no
# signal and never releases the GIL) runs no Python code: neither its parent-death handler
# nor its kill timer thread. It must still be gone soon after its primary's SIGKILL (R118):
# within ORPHAN_GONE_BOUND, well before any kill timer.
STALLING_WORKER = r'''
import os, sys
from isocluster import ClusterWorker

class Staller(ClusterWorker):
    def _event_primary_message_stall(self, event):
        print(os.getpid(), flush=True)  # to the test, on the primary's stdout, which it inherits
        sum(range(10 ** 15))
'''

STALLING_PRIMARY = r'''
import asyncio, sys
from isocluster import ClusterPrimary

sys.path.insert(0, sys.argv[1])
import stalling_worker

async def main():
    script = sys.argv[1] + '/stalling_script.py' if sys.argv[2] == 'script' else None
    options = {'worker_script': script, 'worker_args': []} if script else {'worker_target': stalling_worker.Staller}
    primary = ClusterPrimary(**options)
    primary.after('worker_ready', lambda e: primary.send({'type': 'stall'}, to=e.data['worker']))
    primary.fork(1)
    await asyncio.sleep(3600)

asyncio.run(main())
'''


def _stalled_worker_outlives_primary_by(tmp_path: Path, mode: str) -> float:
    (tmp_path / 'stalling_worker.py').write_text(STALLING_WORKER)
    (tmp_path / 'stalling_script.py').write_text(STALLING_WORKER + '\nStaller().run()\n')
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    primary = subprocess.Popen([sys.executable, '-c', STALLING_PRIMARY, str(tmp_path), mode], stdout=subprocess.PIPE,
                               text=True, env=env, start_new_session=True)
    pid = None
    try:
        readable, _, _ = select.select([primary.stdout], [], [], 20)
        assert readable, 'the worker did not report that it stalls'
        pid = int(primary.stdout.readline())
        os.kill(primary.pid, signal.SIGKILL)
        primary.wait()
        killed_at = time.monotonic()
        while not _gone(pid) and time.monotonic() - killed_at < 10:
            time.sleep(0.02)  # polling another process's state: there is no event to wait on
        return time.monotonic() - killed_at
    finally:
        _end_both(pid, primary)


def test_a_forked_worker_holding_the_gil_is_gone_soon_after_its_primarys_death(tmp_path: Path) -> None:
    assert _stalled_worker_outlives_primary_by(tmp_path, 'fork') < ORPHAN_GONE_BOUND


def test_a_script_worker_holding_the_gil_is_gone_soon_after_its_primarys_death(tmp_path: Path) -> None:
    assert _stalled_worker_outlives_primary_by(tmp_path, 'script') < ORPHAN_GONE_BOUND


# A worker that prevents primary_disconnect keeps its kill timer (R111, R118): the watchdog
# must not end it at the 1.5 s parent-death stage, and must end it at that timer even when
# it is stuck holding the GIL by then.
CLEANING_STALLER = r'''
import asyncio, os, sys, time
from isocluster import ClusterPrimary, ClusterWorker

def mark(name):
    with open(os.environ['MARKER'] + name, 'w'):
        pass

class SlowCleaner(ClusterWorker):
    def _event_primary_disconnect(self, event):
        event.prevent()
        mark('cleanup-started')
        asyncio.get_running_loop().create_task(self.clean_up())

    async def clean_up(self):
        await asyncio.sleep(2.0)  # a cleanup that outlasts the parent-death stage
        mark('cleanup-continued')
        sum(range(10 ** 15))  # then stuck, holding the GIL, until the kill timer

async def main():
    primary = ClusterPrimary(worker_target=SlowCleaner)
    primary.after('worker_ready', lambda e: print(e.data['worker'].pid, flush=True))
    primary.fork(1)
    await asyncio.sleep(3600)

asyncio.run(main())
'''


def test_a_worker_cleaning_up_after_its_primary_died_ends_at_its_kill_timer_even_stuck(tmp_path: Path) -> None:
    from isocluster.worker import DEFAULT_KILL_TIMEOUT

    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'MARKER': str(tmp_path / 'marker-')}
    primary = subprocess.Popen([sys.executable, '-c', CLEANING_STALLER], stdout=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    pid = None
    try:
        readable, _, _ = select.select([primary.stdout], [], [], 20)
        assert readable, 'the primary did not report its worker'
        pid = int(primary.stdout.readline())
        os.kill(primary.pid, signal.SIGKILL)
        primary.wait()
        killed_at = time.monotonic()
        while not _gone(pid) and time.monotonic() - killed_at < DEFAULT_KILL_TIMEOUT + 5:
            time.sleep(0.05)  # polling another process's state: there is no event to wait on
        assert _gone(pid) and time.monotonic() - killed_at < DEFAULT_KILL_TIMEOUT + 2.0
        assert sorted(path.name for path in tmp_path.iterdir()) == ['marker-cleanup-continued', 'marker-cleanup-started']
    finally:
        _end_both(pid, primary)
