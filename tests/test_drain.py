"""The drain of a leaving worker in virtual time (memory transport, issue 16): what a worker
holds when the primary asks it to leave delays its end, at most `drain_timeout`, and never
past the primary's SIGTERM."""

from __future__ import annotations

import asyncio

import pytest

from isocluster import ClusterPrimary, ClusterWorker
from isocluster.transport.memory import MemoryTransport

from memory_helpers import seen

LATENCY = 0.001  # the memory transport's default one-way latency


def holding_worker(seconds: float):
    """A worker whose coroutine primary_disconnect handler finishes its work in `seconds`."""
    def target():
        worker = ClusterWorker()
        seen.setdefault('draining', []).append(ClusterWorker.draining)

        async def finish_work(event):
            seen['draining'].append(ClusterWorker.draining)
            await asyncio.sleep(seconds)
            seen.setdefault('finished', []).append(True)

        worker.on('primary_disconnect', finish_work)

    return target


def leave(seconds_held: float, how: str = 'shut_down', **options) -> tuple[float, tuple]:
    """Start one worker holding work for `seconds_held`, make it leave; returns how long it
    took from the request to its exit, and its (code, signal)."""
    seen.clear()
    sim = MemoryTransport(seed=3)
    primary = ClusterPrimary(worker_target=holding_worker(seconds_held), transport=sim, **options)
    exits = []
    primary.after('worker_exit', lambda event: exits.append((sim.loop.time(), event.data['code'], event.data['signal'])))
    primary.fork(worker_count=1)
    sim.run_until(lambda: len(primary.workers) == 1)
    started = sim.loop.time()
    if how == 'shut_down':
        primary.shut_down()
    else:
        getattr(primary, how)(primary.workers[0])
    sim.run_until(lambda: exits)
    primary.destroy()
    sim.run_until(lambda: primary.closed)
    when, code, signal = exits[0]
    return when - started, (code, signal)


def test_a_leaving_worker_ends_once_its_primary_disconnect_coroutine_is_done():
    took, exit_ = leave(1.0, drain_timeout=3.0, shutdown_timeout=10.0)
    assert took == pytest.approx(1.0, abs=10 * LATENCY)
    assert exit_ == (0, None) and seen['finished'] == [True]
    assert seen['draining'] == [False, True]  # ClusterWorker.draining: set when asked to leave


@pytest.mark.parametrize('how', ['shut_down', 'stop_worker'])
def test_a_drain_longer_than_drain_timeout_is_cut_at_it(how):
    took, exit_ = leave(100.0, how, drain_timeout=3.0, shutdown_timeout=10.0)
    assert took == pytest.approx(3.0, abs=10 * LATENCY)
    assert exit_ == (0, None) and 'finished' not in seen  # ended by itself, before SIGTERM at 10 s


def test_drain_timeout_defaults_to_five_seconds_or_half_of_shutdown_timeout():
    assert leave(100.0, shutdown_timeout=20.0)[0] == pytest.approx(5.0, abs=10 * LATENCY)
    assert leave(100.0, shutdown_timeout=4.0)[0] == pytest.approx(2.0, abs=10 * LATENCY)


def test_drain_timeout_zero_ends_a_leaving_worker_at_once():
    took, exit_ = leave(100.0, drain_timeout=0, shutdown_timeout=10.0)
    assert took < 10 * LATENCY and exit_ == (0, None)
    assert seen['draining'] == [False, False]  # no drain asked: it never drains


def prevented_worker():
    worker = ClusterWorker()
    worker.on('primary_disconnect', lambda event: event.prevent())


def test_a_worker_that_prevents_primary_disconnect_ends_at_its_kill_timer_past_a_long_drain():
    sim = MemoryTransport(seed=3)
    primary = ClusterPrimary(worker_target=prevented_worker, transport=sim, drain_timeout=20, shutdown_timeout=60)
    exits = []
    primary.after('worker_exit', lambda event: exits.append(sim.loop.time()))
    primary.fork(worker_count=1)
    sim.run_until(lambda: len(primary.workers) == 1)
    started = sim.loop.time()
    primary.shut_down()
    sim.run_until(lambda: primary.closed)
    # drain_timeout + 1.765 s for its cleanup (6.765 s, the usual kill timer, past a 5 s drain)
    assert exits[0] - started == pytest.approx(21.765, abs=10 * LATENCY)


@pytest.mark.parametrize('options, message', [
    ({'drain_timeout': 10.0, 'shutdown_timeout': 10.0}, 'must be less than shutdown_timeout'),
    ({'drain_timeout': -1}, 'drain_timeout: expected'),
    ({'drain_timeout': 'soon'}, 'drain_timeout: expected'),
])
def test_a_drain_timeout_that_cannot_end_before_sigterm_is_refused(options, message):
    with pytest.raises((TypeError, ValueError), match=message):
        ClusterPrimary(worker_target=prevented_worker, transport=MemoryTransport(seed=1), **options)
