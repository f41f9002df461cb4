"""The Supervisor and the state tables decide without an event loop (issue 18): given the time,
a random draw and a worker's facts they return decisions, so the rules are tested here as plain
function calls (R126-R129, R136, the boot-failure end, the primary's state table)."""

from __future__ import annotations

import pytest

from isocluster import protocol
from isocluster.handle import WorkerHandle
from isocluster.states import PRIMARY_TRANSITIONS, PrimaryState, WorkerLife, frame_refusal
from isocluster.supervision import BOOT_FAILURE_LIMIT, Backoff, RestartPolicy, Supervisor


class _NoSender:
    def send(self, message, to=None):  # pragma: no cover - never sent to
        raise AssertionError('not sent')


def exited_worker(worker_id: int, *, ever_ready: bool = True, retired: bool = False) -> WorkerHandle:
    handle = WorkerHandle(_NoSender(), worker_id)
    handle.life.ever_ready = ever_ready
    handle.life.retired = retired
    return handle


def test_r127_restarts_within_the_budget_then_the_limit():
    supervisor = Supervisor(RestartPolicy(intensity=2, period=10.0))
    assert [supervisor.admit_restart(now) for now in (0.0, 1.0, 2.0)] == [True, True, False]
    assert supervisor.restarts_in_window(2.0) == 2


def test_r127_the_window_slides_with_the_time_given():
    supervisor = Supervisor(RestartPolicy(intensity=1, period=10.0))
    assert supervisor.admit_restart(0.0)
    assert not supervisor.admit_restart(9.999)
    assert supervisor.admit_restart(10.0)  # the first restart left the window
    assert supervisor.restarts_in_window(10.0) == 1


def test_r127_no_intensity_means_no_limit():
    supervisor = Supervisor(RestartPolicy(intensity=None))
    assert all(supervisor.admit_restart(0.0) for _ in range(1000))


def test_r128_backoff_grows_per_attempt_with_the_draw_and_resets_on_an_admitted_restart():
    supervisor = Supervisor(RestartPolicy(intensity=0, backoff=Backoff(initial=1.0, factor=2.0, maximum=5.0, jitter=0.5)))
    assert not supervisor.admit_restart(0.0)
    delays = [supervisor.backoff_delay(draw) for draw in (0.5, 0.5, 0.5, 0.5)]
    assert delays == [1.0, 2.0, 4.0, 5.0]  # draw 0.5: no jitter; capped at maximum
    assert supervisor.backoff_delay(0.0) == 2.5 and supervisor.backoff_delay(0.999999) == pytest.approx(7.5, rel=1e-5)
    supervisor.policy = RestartPolicy(intensity=None, backoff=supervisor.policy.backoff)
    assert supervisor.admit_restart(1.0)
    assert supervisor.backoff_delay(0.5) == 1.0  # the count starts again


def test_r128_no_backoff_replaces_without_delay():
    assert Supervisor(RestartPolicy(backoff=None)).backoff_delay(0.9) == 0.0


@pytest.mark.parametrize('restart, code, signal, ever_ready, wanted', [
    ('always', 0, None, True, True),
    ('never', 1, None, True, False),
    ('on-failure', 0, None, True, False),
    ('on-failure', 3, None, True, True),
    ('on-failure', None, 'SIGKILL', True, True),
    ('on-failure', 0, None, False, True),  # a clean exit before ready is a failure (R126)
])
def test_r126_the_policy_decides_which_exits_are_replaced(restart, code, signal, ever_ready, wanted):
    supervisor = Supervisor(RestartPolicy(restart=restart))
    assert supervisor.wants_restart(code, signal, ever_ready, retired=False, active=True) is wanted


def test_retired_workers_an_inactive_primary_and_a_stopped_supervisor_replace_nothing():
    supervisor = Supervisor(RestartPolicy())
    assert not supervisor.wants_restart(1, None, True, retired=True, active=True)
    assert not supervisor.wants_restart(1, None, True, retired=False, active=False)
    supervisor.stop()
    assert not supervisor.wants_restart(1, None, True, retired=False, active=True)
    assert supervisor.end_reason() == 'restart_limit'


def test_r136_resume_gives_a_fresh_budget_and_replacement_again():
    supervisor = Supervisor(RestartPolicy(intensity=1))
    assert supervisor.admit_restart(0.0) and not supervisor.admit_restart(0.0)
    supervisor.stop()
    supervisor.resume()
    assert supervisor.end_reason() == 'no_restart'
    assert supervisor.wants_restart(1, None, True, retired=False, active=True)
    assert supervisor.admit_restart(0.0)


def test_boot_failures_halt_only_while_no_worker_was_ever_ready():
    supervisor = Supervisor(RestartPolicy())
    halts = [supervisor.exited(exited_worker(n, ever_ready=False), 1, None, active=True)
             for n in range(1, BOOT_FAILURE_LIMIT + 1)]
    assert halts == [False] * (BOOT_FAILURE_LIMIT - 1) + [True]
    later = Supervisor(RestartPolicy())
    later.ready()  # one worker once became ready: failed starts are crashes, not a broken boot
    assert not any(later.exited(exited_worker(n, ever_ready=False), 1, None, active=True) for n in range(1, 10))


def test_the_end_error_names_the_last_failure_not_replaced():
    supervisor = Supervisor(RestartPolicy(restart='on-failure'))
    crashed, clean = exited_worker(1), exited_worker(2)
    crashed.exit_code, clean.exit_code = 3, 0
    supervisor.exited(crashed, 3, None, active=True)
    supervisor.exited(clean, 0, None, active=True)
    error = supervisor.end_error('no_restart', clean)
    assert error.worker_id == 1 and 'exit code 3' in str(error)
    supervisor.replaced()
    assert supervisor.end_error('no_restart', clean) is None  # a clean end


def test_worker_state_table_refuses_moves_it_does_not_list():
    life = WorkerLife(1)
    life.move('online')
    life.move('ready')
    assert life.ever_ready
    with pytest.raises(AssertionError, match='ready -> online'):
        life.move('online')


def test_heartbeating_is_derived_from_state_and_facts():
    life = WorkerLife(1)
    life.last_beat = 0.0
    assert not life.heartbeating  # not ready yet
    life.move('online')
    life.move('ready')
    assert life.heartbeating
    life.said_exiting = True
    assert life.heartbeating and life.disconnect_requested  # EXITING alone does not stop heartbeats
    life.asked_to_leave = True
    assert not life.heartbeating
    other = WorkerLife(2)
    other.move('online')
    other.move('ready')
    other.last_beat = 0.0
    other.error = RuntimeError('fault')
    assert other.faulted and not other.heartbeating


@pytest.mark.parametrize('kind, state, ready_received, refused', [
    (protocol.ONLINE, 'forked', False, None),
    (protocol.ONLINE, 'online', False, 'a second ONLINE'),
    (protocol.READY, 'forked', False, 'a READY frame before ONLINE'),
    (protocol.READY, 'online', True, 'a second READY'),
    (protocol.HEARTBEAT_ACK, 'forked', False, None),
    (protocol.DISCONNECT, 'ready', False, 'a DISCONNECT frame, which only the primary sends'),
])
def test_frame_legality_reads_the_table(kind, state, ready_received, refused):
    assert frame_refusal(kind, state, ready_received) == refused


def test_primary_state_moves_only_by_named_transitions():
    state = PrimaryState()
    state.initialized()
    assert state.active
    state.shutting_down()
    assert state.running and not state.active
    state.shut_down()
    assert state.ended
    with pytest.raises(AssertionError, match='shut_down to shutting_down'):
        state.shutting_down()
    state.destroyed()
    state.destroyed()  # idempotent
    assert set(PRIMARY_TRANSITIONS) == {'new', 'active', 'shutting_down', 'shut_down', 'destroyed'}
