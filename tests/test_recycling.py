"""Recycling healthy workers (issue 16): the pure decision, then the primary acting on it in
virtual time (memory transport) by count, age and memory."""

from __future__ import annotations

import pytest

from isocluster import ClusterPrimary
from isocluster.recycling import Limits, RecyclePolicy, decide
from isocluster.transport.memory import MemoryTransport

from memory_helpers import ready_worker


# -- the decision, without a loop -------------------------------------------------------------

def test_request_jitter_adds_zero_to_jitter_inclusive():
    policy = RecyclePolicy(max_requests=1000, max_requests_jitter=50)
    assert policy.limits(0.0, 0.0).requests == 1000
    assert policy.limits(0.5, 0.0).requests == 1025
    assert policy.limits(0.999999, 0.0).requests == 1050


def test_age_jitter_spreads_the_age_limit():
    policy = RecyclePolicy(max_age=60.0, max_age_jitter=10.0)
    assert policy.limits(0.0, 0.0).age == 60.0
    assert policy.limits(0.0, 0.25).age == 62.5


@pytest.mark.parametrize('facts, expected', [
    ({'handled': 9, 'age': 5.0, 'resident': 100}, None),
    ({'handled': 10, 'age': 5.0, 'resident': 100}, ('max_requests', 10)),
    ({'handled': 0, 'age': 30.0, 'resident': 100}, ('max_age', 30.0)),
    ({'handled': 0, 'age': 0.0, 'resident': 1001}, ('max_memory', 1001)),
    ({'handled': 0, 'age': 0.0, 'resident': 1000}, None),
    ({'handled': 0, 'age': 0.0, 'resident': None}, None),  # unknown memory never recycles
])
def test_decide_names_the_limit_reached(facts, expected):
    decision = decide(Limits(requests=10, age=30.0, memory=1000), **facts)
    assert (decision.reason, decision.value) == expected if expected else decision is None


def test_no_limits_never_recycle():
    assert not RecyclePolicy().enabled
    assert decide(RecyclePolicy().limits(0.5, 0.5), handled=10**9, age=1e9, resident=10**12) is None


@pytest.mark.parametrize('options', [
    {'max_requests': 0}, {'max_requests': 1.5}, {'max_requests': True}, {'max_requests_jitter': -1},
    {'max_age': -1.0}, {'max_age': float('inf')}, {'max_memory': 'big'}, {'memory_check_interval': 0},
])
def test_bad_recycling_options_raise_naming_the_option(options):
    name = next(iter(options))
    with pytest.raises(ValueError, match=name):
        ClusterPrimary(worker_target=ready_worker, transport=MemoryTransport(), **options)


# -- the primary acting on it, in virtual time ------------------------------------------------

def start(worker_count: int = 2, **options) -> tuple[MemoryTransport, ClusterPrimary, list, list]:
    sim = MemoryTransport(seed=5)
    primary = ClusterPrimary(worker_target=ready_worker, transport=sim, restart_intensity=0, **options)
    recycled, trace = [], []
    primary.on('worker_recycle', lambda event: recycled.append(
        (event.data['worker'].id, event.data['reason'], event.data['value'], sim.loop.time())))
    for name in ('worker_ready', 'worker_disconnect', 'worker_exit'):
        primary.on(name, lambda event, name=name: trace.append((name, event.data['worker'].id)))
    primary.fork(worker_count=worker_count)
    sim.run_until(lambda: len(primary.workers) == worker_count)
    return sim, primary, recycled, trace


def finish(sim: MemoryTransport, primary: ClusterPrimary) -> None:
    primary.destroy()
    sim.run_until(lambda: primary.closed)


def test_a_worker_is_recycled_after_max_requests_new_one_ready_before_the_old_leaves():
    sim, primary, recycled, trace = start(worker_count=2, max_requests=5)
    limits_reached = []
    primary.on('restart_limit', limits_reached.append)
    first = primary.workers[0]
    for _ in range(5):
        primary.send({'n': 1}, to=first)
    sim.run_until(lambda: first.is_dead())
    assert [(worker, reason, value) for worker, reason, value, _ in recycled] == [(1, 'max_requests', 5)]
    after = trace[trace.index(('worker_ready', 2)) + 1:]
    assert after.index(('worker_ready', 3)) < after.index(('worker_disconnect', 1))
    assert [worker.id for worker in primary.workers] == [2, 3]
    # restart_intensity=0: a counted restart would have hit the limit; recycling is not one
    assert primary.stats()['restarts'] == 0 and limits_reached == []
    assert primary.worker_by_id[3].stats()['restarts'] == 0
    finish(sim, primary)


def test_max_requests_counts_messages_and_requests_to_that_worker_only():
    sim, primary, recycled, _ = start(worker_count=2, max_requests=3)
    first, second = primary.workers
    primary.send('a', to=first)
    primary.send('b', to=second)
    primary.send('c', to=[first, second])
    sim.run_until_idle()
    assert recycled == []
    primary.request({'type': 'nothing'}, to=first).add_done_callback(lambda future: future.exception())
    sim.run_until(lambda: recycled)
    assert [entry[:3] for entry in recycled] == [(first.id, 'max_requests', 3)]
    finish(sim, primary)


def test_request_jitter_gives_each_worker_its_own_limit_drawn_from_the_seeded_source():
    sim, primary, recycled, _ = start(worker_count=3, max_requests=10, max_requests_jitter=10)
    for worker in list(primary.workers):
        for _ in range(20 + 1):  # one message at a time, up to the largest limit jitter allows
            if any(entry[0] == worker.id for entry in recycled):
                break
            primary.send({'n': 1}, to=worker)
            sim.run_until_idle()
    assert [(entry[0], entry[1]) for entry in recycled] == [(1, 'max_requests'), (2, 'max_requests'), (3, 'max_requests')]
    limits = [entry[2] for entry in recycled]  # each recycled on reaching its own limit
    assert all(10 <= limit <= 20 for limit in limits) and len(set(limits)) > 1
    finish(sim, primary)


def test_a_worker_is_recycled_at_max_age_counted_from_its_ready():
    sim, primary, recycled, trace = start(worker_count=1, max_age=30.0, max_age_jitter=5.0)
    ready_at = sim.loop.time()
    sim.run_until(lambda: recycled)
    worker, reason, value, when = recycled[0]
    assert (worker, reason) == (1, 'max_age')
    assert 30.0 <= when - ready_at < 35.0 and value == pytest.approx(when - ready_at)
    sim.run_until(lambda: primary.worker_by_id.keys() == {2} and not sim.alive(1))
    assert trace.index(('worker_ready', 2)) < trace.index(('worker_disconnect', 1))
    # the new worker gets its own age limit: recycled again later, never counted as a restart
    sim.run_until(lambda: len(recycled) == 2)
    assert recycled[1][:2] == (2, 'max_age') and primary.stats()['restarts'] == 0
    finish(sim, primary)


def test_a_worker_above_max_memory_is_recycled_at_the_next_check():
    sim, primary, recycled, _ = start(worker_count=2, max_memory=100_000_000, memory_check_interval=2.0)
    first, second = primary.workers
    sim.set_resident_bytes(first, 90_000_000)
    sim.set_resident_bytes(second, None)  # unknown: never recycled for memory
    sim.advance(10.0)
    assert recycled == []
    sim.set_resident_bytes(first, 150_000_000)
    set_at = sim.loop.time()
    sim.run_until(lambda: recycled)
    assert recycled[0][:3] == (first.id, 'max_memory', 150_000_000)
    assert recycled[0][3] - set_at <= 2.0
    sim.run_until(lambda: first.is_dead())
    assert [handle.id for handle in primary.workers] == [2, 3]
    finish(sim, primary)


def test_preventing_worker_recycle_keeps_the_worker():
    sim, primary, recycled, _ = start(worker_count=1, max_age=1.0)
    primary.before('worker_recycle', lambda event: event.prevent())
    sim.advance(5.0)
    assert [entry[:2] for entry in recycled] == [(1, 'max_age')]
    assert [handle.id for handle in primary.workers] == [1]
    finish(sim, primary)


def test_no_recycling_while_shutting_down():
    sim, primary, recycled, _ = start(worker_count=1, max_age=1.0, shutdown_timeout=5.0)
    primary.shut_down()
    sim.run_until(lambda: primary.closed)
    assert recycled == []
    finish(sim, primary)


def test_the_recycling_example_recycles_for_each_reason_and_counts_no_restart():
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, str(root / 'examples' / 'recycling.py')], capture_output=True, text=True,
                            timeout=60, env={**os.environ, 'PYTHONPATH': str(root)})
    assert result.returncode == 0, result.stderr
    reasons = [line.split()[3] for line in result.stdout.splitlines() if 'recycled' in line]
    assert reasons == ['max_requests', 'max_memory', 'max_age', 'max_age']
    assert 'restarts counted: 0' in result.stdout.splitlines()
