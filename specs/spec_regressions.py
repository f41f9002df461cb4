"""Minimal reproductions of library bugs the executable spec found (issue 4).

Each was written as `xfail(strict=True)` while the bug was open (with an entry in
`spec_cluster.KNOWN_BUGS` keeping the state machine away from it); all are fixed now, so
they are plain regression tests.
"""

from __future__ import annotations

import pytest

from isocluster import ClusterPrimary, ClusterWorker
from isocluster.transport.memory import MemoryTransport


def plain_worker() -> None:
    ClusterWorker()


def ready_cluster(count: int = 1, **options):
    sim = MemoryTransport(seed=0)
    primary = ClusterPrimary(worker_target=plain_worker, transport=sim, **options)
    primary.fork(count)
    sim.run_until(lambda: len(primary.workers) == count, timeout=10)
    return sim, primary


def test_r118_hung_worker_does_not_outlive_its_primary():
    sim, primary = ready_cluster()
    worker = primary.workers[0]
    sim.hang(worker)
    sim.kill_primary()
    sim.advance(10.0)  # > the 6.765 s kill timer
    assert not sim.alive(worker.id)


def test_r83_reload_does_not_replace_a_worker_scale_retired():
    sim, primary = ready_cluster(1)
    primary.scale(0)  # worker 1 retired: DISCONNECT sent, still in the pool until it leaves
    primary.reload()
    sim.advance(5.0)
    assert primary.workers == []
    assert primary.stats()['live'] == 0


def test_r118_worker_on_a_held_link_does_not_outlive_its_primary():
    sim, primary = ready_cluster()
    worker = primary.workers[0]
    sim.hold(worker)
    sim.kill_primary()
    sim.advance(10.0)
    assert not sim.alive(worker.id)


def test_r133_reload_is_abandoned_when_its_new_worker_cannot_be_replaced():
    sim, primary = ready_cluster(2, restart_intensity=0)
    completes = []
    primary.on('reload_complete', lambda event: completes.append(dict(event.data)))
    sim.crash(primary.workers[0], code=1)  # over budget at once: restart_limit, replacement stopped
    sim.advance(1.0)
    primary.reload()  # forks a new worker for the remaining one
    new = max(primary.stats()['forked'], 0)
    sim.crash(new, code=1)  # the step's new worker dies before it is ready
    sim.advance(10.0)
    assert completes == [{'worker_count': 0, 'aborted': True}]
