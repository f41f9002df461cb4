"""Bad option values are rejected with an error naming the option (issue 13, finding 9)."""

from __future__ import annotations

import logging

import pytest

from isocluster import Backoff, ClusterPrimary, HeartbeatTimeout
from isocluster.checks import MAX_WORKERS, MIN_HEARTBEAT_INTERVAL
from isocluster.transport.memory import MemoryTransport

from memory_helpers import close, make, ready_worker, started


def test_fork_beyond_the_worker_limit_raises_before_publishing():
    sim, p, rec = make()
    with pytest.raises(ValueError, match=rf'worker_count: 1000000 workers is over the limit of {MAX_WORKERS}'):
        p.fork(10**6)
    assert rec.count('fork') == 0
    close(sim, p)


def test_fork_counts_the_live_workers_against_the_limit():
    sim, p, rec = started(2)
    with pytest.raises(ValueError, match=f'with 2 live workers is over the limit of {MAX_WORKERS}'):
        p.fork(MAX_WORKERS - 1)
    assert rec.count('fork') == 1
    close(sim, p)


def test_scale_beyond_the_worker_limit_raises():
    sim, p, rec = started(1)
    with pytest.raises(ValueError, match='worker_count: 1000000 workers is over the limit'):
        p.scale(10**6)
    assert rec.count('fork') == 1
    close(sim, p)


@pytest.mark.parametrize('options, name', [
    ({'heartbeat_interval': 1e-9}, 'heartbeat_interval'),
    ({'heartbeat_timeout': 1e-9}, 'heartbeat_timeout'),
    ({'heartbeat_interval': MIN_HEARTBEAT_INTERVAL / 2, 'heartbeat_timeout': 1.0}, 'heartbeat_interval'),
])
def test_heartbeats_below_the_minimum_interval_are_rejected(options, name):
    with pytest.raises(ValueError, match=rf'{name}: .*below the minimum interval of {MIN_HEARTBEAT_INTERVAL}s'):
        ClusterPrimary(worker_target=ready_worker, transport=MemoryTransport(seed=1), **options)
    # at the minimum it is accepted and used as given: a hung worker is found within the default
    # heartbeat_timeout (3 intervals) plus the tick that notices it (virtual time: exact)
    sim, at_minimum, rec = started(1, heartbeat_interval=MIN_HEARTBEAT_INTERVAL)
    sim.hang(1)
    hung_at = sim.loop.time()
    sim.run_until(lambda: rec.count('worker_error') == 1, timeout=10)
    assert isinstance(rec.of('worker_error')[0]['error'], HeartbeatTimeout)
    assert sim.loop.time() - hung_at <= 3 * MIN_HEARTBEAT_INTERVAL + 2 * MIN_HEARTBEAT_INTERVAL
    close(sim, at_minimum)


@pytest.mark.parametrize('factor', [float('nan'), float('inf')])
def test_backoff_factor_must_be_finite(factor):
    with pytest.raises(ValueError, match='Backoff.factor'):
        Backoff(factor=factor)


def test_a_long_crash_loop_keeps_the_backoff_at_its_maximum():
    # factor ** k leaves the float range after ~1000 consecutive attempts; the delay stays capped.
    backoff = Backoff(initial=0.1, factor=2.0, maximum=30.0, jitter=0.0)
    assert backoff.delay(5000, 0.5) == 30.0


@pytest.mark.parametrize('value', ['no', 'false', 0, 1, None])
def test_worker_silent_takes_only_true_or_false(value):
    with pytest.raises(TypeError, match='worker_silent: expected True or False'):
        ClusterPrimary(worker_target=ready_worker, transport=MemoryTransport(seed=1), worker_silent=value)


def test_initialize_takes_only_true_or_false():
    with pytest.raises(TypeError, match='initialize: expected True or False'):
        ClusterPrimary(worker_target=ready_worker, transport=MemoryTransport(seed=1), initialize='no')


def test_stop_worker_replace_takes_only_true_or_false():
    sim, p, rec = started(1)
    with pytest.raises(TypeError, match='replace: expected True or False'):
        p.stop_worker(1, replace='no')
    assert p.workers[0].state == 'ready'
    close(sim, p)


@pytest.mark.parametrize('call', ['fork', 'scale'])
def test_fork_or_scale_after_shut_down_logs_a_warning_and_starts_nothing(call, caplog):
    sim, p, rec = started(1)
    p.shut_down()
    with caplog.at_level(logging.WARNING, logger='isocluster'):
        getattr(p, call)(2)
    assert f'{call}(worker_count=2) ignored: the primary is shutting down' in caplog.text
    sim.run_until(lambda: p.closed)
    assert rec.count('fork') == 1 and rec.count('worker_fork') == 1
    close(sim, p)
