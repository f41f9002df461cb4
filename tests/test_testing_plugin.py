"""isocluster.testing: the `sim_cluster` fixture, `next_event`, `assert_trace`, the seed in
failure reports.

`test_health_app_with_30_second_timers_runs_in_milliseconds` is the documented example: the
health-monitoring app of `examples/health_monitoring.py` (30-second health checks, 10-second
heartbeats) runs hours of virtual time, a simulated leak, a restart and a hung worker, in a
fraction of a second of wall time.
"""

from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path

import pytest

from isocluster import ClusterPrimary, ClusterWorker, HeartbeatTimeout
from isocluster.testing import SimCluster, assert_trace
# The plugin normally provides this fixture (entry point pytest11 `isocluster`); importing it
# here as well keeps this file working where isocluster is on sys.path but not installed.
from isocluster.testing import sim_cluster  # noqa: F401

pytest_plugins = ['pytester']

EXAMPLES = Path(__file__).resolve().parent.parent / 'examples'


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(f'isocluster_example_{name}', EXAMPLES / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


health = _load_example('health_monitoring')


def run_health_app(sim: SimCluster):
    """The health app with the seed's 30-second checks, driven through its whole story."""
    primary = health.HealthPrimary(
        worker_target=health.worker_main, transport=sim,
        check_interval=30.0, heartbeat_interval=10.0, heartbeat_timeout=30.0,
    )
    trace = sim.record(primary, 'worker_ready', 'worker_error', 'worker_exit')
    primary.start(4)
    for _ in range(4):
        sim.next_event(primary, 'worker_ready')
    assert sim.time < 1.0

    # First round of health checks at t=30: every worker reports.
    sim.advance(31)
    assert sorted(primary.worker_health) == [1, 2, 3, 4]
    assert primary.worker_health[2]['memory_usage']['heap_used'] == health.BASE_HEAP + health.LEAK_PER_CHECK

    # Worker 2 leaks 400 MB per check (simulated): the 4th check (t=120) finds it over 1.5 GB;
    # it is asked to prepare for a restart, leaves by itself and is replaced.
    left = sim.next_event(primary, 'worker_exit')
    assert (left.data['worker'].id, left.data['code'], left.data['signal']) == (2, 0, None)
    assert left.data['worker'].exited_after_disconnect
    assert 120.0 <= sim.time < 121.0
    assert sim.next_event(primary, 'worker_ready').data['worker'].id == 5

    # A worker whose loop hangs answers no heartbeat: worker_error, killed, replaced.
    sim.hang(3)
    hung_at = sim.time
    error = sim.next_event(primary, 'worker_error')
    assert error.data['worker'].id == 3
    assert isinstance(error.data['error'], HeartbeatTimeout)
    assert sim.time - hung_at <= 30.0 + 10.0 + 1.0  # heartbeat_timeout + heartbeat_interval (R131)
    assert sim.next_event(primary, 'worker_ready').data['worker'].id == 6

    # Another hour of 30-second checks: nothing else happens.
    sim.advance(3600)
    assert [worker.id for worker in primary.workers] == [1, 4, 5, 6]
    assert all(sim.time - health['last_response'] < 31 for wid, health in primary.worker_health.items()
               if wid in (1, 4, 5, 6))

    primary.shut_down()
    sim.next_event(primary, 'shut_down_complete')
    return trace


def test_health_app_with_30_second_timers_runs_in_milliseconds(sim_cluster):
    started = time.perf_counter()
    trace = run_health_app(sim_cluster)
    wall = time.perf_counter() - started

    # Workers of different links interleave freely (R115): compare per-worker projections,
    # and the middle of the story, where the order is fixed by the app.
    assert_trace(trace.of(2), ['worker_ready 2', 'worker_exit 2'])
    assert_trace(trace.of(3), ['worker_ready 3', 'worker_error 3', 'worker_exit 3'])
    assert_trace(trace[4:9], ['worker_exit 2', 'worker_ready 5', 'worker_error 3', 'worker_exit 3', 'worker_ready 6'])
    assert sorted(str(entry) for entry in trace[9:]) == ['worker_exit 1', 'worker_exit 4', 'worker_exit 5', 'worker_exit 6']
    assert sim_cluster.time > 3600
    assert wall < 5.0, f'{sim_cluster.time:.0f} virtual seconds took {wall:.3f} s of wall time'


@pytest.mark.parametrize('seed', [0, 7, 123456789])
def test_same_seed_gives_the_same_trace(seed):
    first, second = SimCluster(seed), SimCluster(seed)
    try:
        assert run_health_app(first).timed() == run_health_app(second).timed()
    finally:
        first.close()
        second.close()


def test_next_event_returns_the_next_matching_event_after_it_is_handled(sim_cluster):
    primary = ClusterPrimary(worker_target=ClusterWorker, transport=sim_cluster)
    primary.fork(worker_count=3)
    event = sim_cluster.next_event(primary, 'worker_ready', where=lambda event: event.data['worker'].id == 2)
    assert event.name == 'worker_ready'
    assert event.data['worker'].id == 2
    assert event.data['worker'] in primary.workers  # its default action and after stage ran


def test_next_event_times_out_in_virtual_time_and_names_the_seed(sim_cluster):
    primary = ClusterPrimary(worker_target=ClusterWorker, transport=sim_cluster, heartbeat_interval=1.0)
    primary.fork()
    sim_cluster.next_event(primary, 'worker_ready')
    started = time.perf_counter()
    with pytest.raises(TimeoutError, match=rf"next_event\('worker_exit'\).*600.*seed {sim_cluster.seed}"):
        sim_cluster.next_event(primary, 'worker_exit', timeout=600)
    assert time.perf_counter() - started < 5.0


def test_record_keeps_time_stage_and_worker(sim_cluster):
    primary = ClusterPrimary(worker_target=ClusterWorker, transport=sim_cluster)
    trace = sim_cluster.record(primary, 'fork', 'worker_fork', stage='after')
    primary.fork(worker_count=2)
    sim_cluster.run_until(lambda: len(trace) == 3)
    assert trace.names() == ['fork', 'worker_fork 1', 'worker_fork 2']
    assert {entry.stage for entry in trace} == {'after'}
    assert trace.of(None).names() == ['fork']
    assert trace[1].event.data['worker'].id == 1


def test_assert_trace_failure_is_a_readable_diff():
    with pytest.raises(AssertionError) as failure:
        assert_trace(['worker_fork 1', 'worker_ready 1', 'worker_exit 1'], ['worker_fork 1', 'worker_exit 1', 'worker_ready 2'])
    message = str(failure.value)
    assert 'trace differs from expected (- expected, + recorded)' in message
    assert '  + worker_ready 1' in message
    assert '  - worker_ready 2' in message
    assert '    worker_fork 1' in message


def test_assert_trace_partial_checks_an_ordered_subsequence():
    recorded = ['worker_fork 1', 'worker_online 1', 'worker_ready 1', 'worker_exit 1']
    assert_trace(recorded, ['worker_fork 1', 'worker_exit 1'], partial=True)
    with pytest.raises(AssertionError, match="matched 1 of 2, missing from 'worker_fork 1'"):
        assert_trace(recorded, ['worker_exit 1', 'worker_fork 1'], partial=True)


# -- the plugin in a pytest run of its own (pytester) ---------------------------------------------

FAILING_TEST = '''
from isocluster import ClusterPrimary, ClusterWorker

def test_ready_order(sim_cluster):
    primary = ClusterPrimary(worker_target=ClusterWorker, transport=sim_cluster)
    trace = sim_cluster.record(primary, 'worker_ready', 'worker_message')
    primary.fork(worker_count=4)
    for _ in range(4):
        sim_cluster.next_event(primary, 'worker_ready')
    print('ORDER', sim_cluster.seed, trace.timed())
    assert False, 'fails on purpose'
'''


def _plugin_args(request) -> list[str]:
    """Load the plugin in the inner run as the outer run did: by its entry point when
    installed, else explicitly."""
    if request.config.pluginmanager.has_plugin('isocluster'):
        return []
    return ['-p', 'isocluster.testing']


def _order_and_seed(result) -> tuple[str, int]:
    output = result.stdout.str()
    order = re.search(r'^ORDER (\d+) (.*)$', output, re.M)
    section = re.search(r'sim_cluster seed: (\d+)\nreplay: pytest \S+ --isocluster-seed=(\d+)', output)
    assert order and section, output
    assert int(order.group(1)) == int(section.group(1)) == int(section.group(2))
    return order.group(2), int(section.group(1))


def test_failure_report_shows_the_seed_and_the_seed_replays(pytester, request):
    pytester.makepyfile(test_app=FAILING_TEST)
    first = pytester.runpytest(*_plugin_args(request), '-p', 'no:cacheprovider')
    first.assert_outcomes(failed=1)
    assert '- isocluster -' in first.stdout.str()
    order, seed = _order_and_seed(first)

    replay = pytester.runpytest(*_plugin_args(request), '-p', 'no:cacheprovider', f'--isocluster-seed={seed}')
    replay.assert_outcomes(failed=1)
    assert _order_and_seed(replay) == (order, seed)


def test_passing_tests_report_no_seed_and_the_option_is_documented(pytester, request):
    pytester.makepyfile(test_ok='def test_ok(sim_cluster):\n    assert sim_cluster.seed == 42\n')
    result = pytester.runpytest(*_plugin_args(request), '-p', 'no:cacheprovider', '--isocluster-seed', '42')
    result.assert_outcomes(passed=1)
    assert 'sim_cluster seed' not in result.stdout.str()
    help_text = pytester.runpytest(*_plugin_args(request), '--help').stdout.str()
    assert '--isocluster-seed=N' in help_text
