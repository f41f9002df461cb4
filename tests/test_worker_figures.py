"""Per-worker figures (issue 16): `handle.stats()` and `primary.stats()['workers']`, in virtual time."""

from __future__ import annotations

from isocluster import ClusterPrimary
from isocluster.transport.memory import MemoryTransport

from memory_helpers import echo_worker


def start(worker_count: int) -> tuple[MemoryTransport, ClusterPrimary]:
    sim = MemoryTransport(seed=2)
    primary = ClusterPrimary(worker_target=echo_worker, transport=sim)
    primary.fork(worker_count=worker_count)
    sim.run_until(lambda: len(primary.workers) == worker_count)
    return sim, primary


def test_figures_count_messages_each_way_and_uptime_in_loop_time():
    sim, primary = start(2)
    first = primary.workers[0]
    forked_at = sim.loop.time() - first.stats()['uptime']
    primary.send('a', to=first)
    primary.send('b', to=first)
    sim.run_until(lambda: first.stats()['messages_in'] == 2)
    sim.advance(10.0)
    figures = first.stats()
    assert figures['messages_out'] == 2 and figures['in_flight'] == 0
    assert figures['uptime'] == sim.loop.time() - forked_at and figures['uptime'] >= 10.0
    assert figures['pid'] is None and figures['resident_bytes'] is None and figures['cpu_seconds'] is None
    sim.set_resident_bytes(first, 12345, cpu_seconds=1.5)
    assert (first.stats()['resident_bytes'], first.stats()['cpu_seconds']) == (12345, 1.5)
    workers = primary.stats()['workers']
    assert sorted(workers) == [1, 2] and workers[2]['messages_out'] == 0 and workers[1]['messages_out'] == 2
    primary.destroy()
    sim.run_until(lambda: primary.closed)


def test_slot_restarts_count_crash_replacements_not_reloads():
    sim, primary = start(1)
    sim.crash(primary.workers[0], signal=9)
    sim.run_until(lambda: 2 in primary.worker_by_id)
    sim.crash(primary.workers[0], code=3)
    sim.run_until(lambda: 3 in primary.worker_by_id)
    assert primary.worker_by_id[3].stats()['restarts'] == 2
    primary.reload()
    sim.run_until(lambda: 4 in primary.worker_by_id and len(primary.workers) == 1)
    assert primary.worker_by_id[4].stats()['restarts'] == 2  # the slot's history, not one more
    assert primary.stats()['workers'][4]['restarts'] == 2
    primary.destroy()
    sim.run_until(lambda: primary.closed)


def test_a_dead_workers_uptime_stops_at_its_exit():
    sim, primary = start(1)
    first = primary.workers[0]
    sim.crash(first, code=1)
    sim.run_until(lambda: first.is_dead())
    frozen = first.stats()['uptime']
    sim.advance(5.0)
    assert first.stats()['uptime'] == frozen and first.stats()['state'] == 'dead'
    assert first.stats()['resident_bytes'] is None
    primary.destroy()
    sim.run_until(lambda: primary.closed)


def test_a_replacement_delayed_by_backoff_counts_a_restart_of_the_slot_too():
    sim = MemoryTransport(seed=2)
    primary = ClusterPrimary(worker_target=echo_worker, transport=sim, restart_intensity=0)
    primary.on('restart_limit', lambda event: event.prevent())  # replacements go on, after a backoff delay
    primary.fork(worker_count=1)
    sim.run_until(lambda: len(primary.workers) == 1)
    sim.crash(primary.workers[0], code=1)
    sim.run_until(lambda: 2 in primary.worker_by_id)
    assert primary.worker_by_id[2].stats()['restarts'] == 1
    primary.destroy()
    sim.run_until(lambda: primary.closed)
