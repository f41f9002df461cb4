"""A pure reference model of one isocluster primary and its workers (no isocluster import).

The model is fed two things, in the order they happen:

* the commands the spec gives the cluster (`fork`, `send`, `round_robin`, `shut_down`, the
  injected faults, ...): from these it predicts return values (the round_robin pick, which
  destinations of a send are valid, whether `shut_down()` raises) and which top-level
  publishes must follow;
* the events the cluster published (`observe(stage, name, worker, data, time)`), in trace
  order: each is checked against what the model allows at that point (event grammar,
  nested replacement decision, restart budget in virtual time, shutdown completion), and
  moves the model on.

Every violation raises `SpecViolation` whose message starts with the SPEC rule it breaks.
Where the outcome depends on timing the model cannot know (a write racing a worker that
is leaving on its own), it accepts either outcome and says so.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

FORKED, ONLINE, READY, DISCONNECTED, DEAD = 'forked', 'online', 'ready', 'disconnected', 'dead'
LIVE_STATES = (FORKED, ONLINE, READY, DISCONNECTED)
BOOT_FAILURE_LIMIT = 3  # README: failed starts in a row, before any worker was ready, stop the cluster


class SpecViolation(AssertionError):
    """The cluster did something the SPEC forbids; the message names the rule."""


def require(condition: bool, rule: str, what: str) -> None:
    if not condition:
        raise SpecViolation(f'{rule}: {what}')


@dataclass
class WorkerModel:
    id: int
    state: str = FORKED
    ever_ready: bool = False
    retired: bool = False
    disconnect_requested: bool = False
    error_published: bool = False
    error_kinds: list[str] = field(default_factory=list)
    process_alive: bool = True  # False once the spec itself ended it (crash) and knows it
    expected_exit: tuple[Any, Any] | None = None  # (code, signal) of an injected crash
    may_exit_by_itself: bool = False  # told to exit/raise/leave: it ends on its own, when it gets there
    leaving_cleanly: bool = False  # told to leave (ClusterWorker.destroy): exited_after_disconnect
    hung: bool = False
    ignores_sigterm: bool = False
    held: bool = False
    unresponsive: bool = False  # ever hung or held: heartbeat/ready timeouts are allowed
    slow_boot: bool = False
    fail_to_worker: str | None = None  # 'pending': the next write fails; 'maybe': a write may have used it
    link_broken: bool = False  # a write failed: the link is faulted
    killed_by_primary: bool = False
    hostile: bool = False  # raw bytes that break the protocol were injected on its link
    inflight: deque[int] = field(default_factory=deque)  # seqs written to it, not yet answered
    # seqs in flight when it died: it may have answered them before dying, in order (R116, R125)
    maybe_answered: deque[int] = field(default_factory=deque)
    commands: set[int] = field(default_factory=set)  # seqs of exit/raise/leave: never answered
    last_reply: int = 0


@dataclass
class ReloadModel:
    olds: list[int]
    old: int | None = None
    new: int | None = None
    replaced: int = 0
    step_pending: bool = False  # the next step was scheduled for a later loop turn
    expect_fork: bool = False  # a step started: the very next fork is its fork{1}


@dataclass
class Frame:
    """One publish in progress: what its complete stage must (and may) publish nested."""

    name: str
    worker: int | None
    expect_nested: str | None = None  # 'fork' | 'restart_limit' | None
    expect_end: str | None = None  # reason of a no_workers published after it (issue 13), if any
    nested_seen: list[str] = field(default_factory=list)


class ClusterModel:
    """What a ClusterPrimary must do, given what it was told and what it published."""

    def __init__(self, *, restart_intensity: int | None, restart_period: float, heartbeat: bool,
                 ready_timeout: float, exact_writes: bool = True) -> None:
        self.ready_timeout = ready_timeout
        self.intensity = restart_intensity
        self.period = restart_period
        self.heartbeat = heartbeat
        self.exact_writes = exact_writes  # memory transport: a write to a dead peer fails at once
        self.phase = 'active'  # active | shutting_down | shut_down | destroyed | vanished
        self.destroy_pending = False
        self.next_id = 1
        self.workers: dict[int, WorkerModel] = {}
        self.rr_history: dict[Any, dict[int, int]] = {}
        self.rr_counter = 0
        self.restart_times: deque[float] = deque()
        self.replacement_stopped = False
        self.restart_limit_seen = False  # since the last scale()
        self.any_ever_ready = False
        self.boot_failures = 0  # failed starts while no worker was ever ready
        self.no_workers_seen: str | None = None
        self.target = 0  # slots: workers the cluster should keep ready
        self.reload: ReloadModel | None = None
        self.reloads_started = 0
        self.reloads_completed = 0
        self.expected_reload_completes: deque[tuple[int, bool]] = deque()
        self.expected_top_forks: deque[int] = deque()
        self.expected_worker_forks: deque[int] = deque()
        self.stack: list[Frame] = []
        self.shut_down_complete_seen = False
        self.destroy_complete_seen = False
        self.routed_echo: list[int] = []  # seqs the primary's routed echo_reply handler must have seen
        self.now = 0.0
        self._pool: set[int] = set()
        self.pending_slow_boots: list[float] = []

    # -- derived state ---------------------------------------------------------------------

    def live(self) -> list[int]:
        return sorted(w.id for w in self.workers.values() if w.state in LIVE_STATES)

    def pool(self) -> list[int]:
        return sorted(self._pool)

    def choosable(self) -> list[int]:
        """R147: the pool without the workers asked to leave: the ones new work goes to."""
        return [worker_id for worker_id in self.pool() if not self.workers[worker_id].disconnect_requested]

    def worker(self, worker_id: int) -> WorkerModel:
        return self.workers[worker_id]

    # -- commands: predictions -------------------------------------------------------------

    def fork(self, count: int) -> None:
        """R59, R92: fork publishes `fork` only while active."""
        if self.phase == 'active':
            self.expected_top_forks.append(count)
            self.target += count

    def scale(self, count: int) -> list[int]:
        """R136: fork the difference or retire the surplus, highest ids first. Returns retired ids."""
        if self.phase != 'active':
            return []
        self.restart_times.clear()
        self.replacement_stopped = False
        self.restart_limit_seen = False
        # A reload step's old worker is leaving: the step's new worker takes its place, so
        # only the new one counts (README: "Where this implementation chose").
        reload = self.reload
        leaving = reload.old if reload is not None and reload.new is not None else None
        staying = [worker_id for worker_id in self.live()
                   if not self.workers[worker_id].retired and worker_id != leaving]
        self.target = count
        if count > len(staying):
            self.expected_top_forks.append(count - len(staying))
            return []
        surplus = staying[count:]
        if leaving is not None and reload.new in surplus:
            surplus.append(leaving)  # its replacement is retired: nothing takes its place
        for worker_id in surplus:
            self._retire(worker_id)
        return surplus

    def _retire(self, worker_id: int) -> None:
        worker = self.workers[worker_id]
        worker.retired = True
        self._request_disconnect(worker)

    def _request_disconnect(self, worker: WorkerModel) -> None:
        if worker.state == DEAD:
            return
        worker.disconnect_requested = True

    def round_robin(self, tag: Any) -> int | None:
        """R67, R68, R69: the lowest id never picked for tag, else the least recently picked."""
        pool = self.choosable()
        if not pool:
            return None
        history = self.rr_history.setdefault(tag, {})
        never = [worker_id for worker_id in pool if worker_id not in history]
        chosen = never[0] if never else min(pool, key=lambda worker_id: history[worker_id])
        self.rr_counter += 1
        history[chosen] = self.rr_counter
        return chosen

    def least_busy(self, tag: Any, in_flight: dict[int, int]) -> int | None:
        """R141: the ready worker with the fewest requests in flight; ties in round-robin order
        (R67), and the pick counts as the tag's round-robin pick."""
        pool = self.choosable()
        if not pool:
            return None
        fewest = min(in_flight.get(worker_id, 0) for worker_id in pool)
        tied = [worker_id for worker_id in pool if in_flight.get(worker_id, 0) == fewest]
        history = self.rr_history.setdefault(tag, {})
        never = [worker_id for worker_id in tied if worker_id not in history]
        chosen = never[0] if never else min(tied, key=lambda worker_id: history[worker_id])
        self.rr_counter += 1
        history[chosen] = self.rr_counter
        return chosen

    def destination(self, kind: str, value: Any) -> bool:
        """R70: is this single destination valid right now?"""
        if kind == 'id':
            return value in self.pool()
        if kind == 'handle':
            worker = self.workers.get(value)
            return worker is not None and worker.state in (ONLINE, READY)
        return False

    def write_outcome(self, worker_id: int) -> str:
        """'ok', 'fail' or 'either' for a write to a valid destination (R72, R116, R125)."""
        worker = self.workers[worker_id]
        if worker.fail_to_worker == 'pending':
            return 'fail'
        if self.exact_writes and (not worker.process_alive or worker.link_broken):
            return 'fail'
        if (worker.fail_to_worker or worker.may_exit_by_itself or worker.disconnect_requested or worker.link_broken
                or not worker.process_alive or worker.killed_by_primary or worker.hostile):
            return 'either'
        return 'ok'

    def wrote(self, worker_id: int, seq: int, ok: bool, command: bool) -> None:
        worker = self.workers[worker_id]
        if not ok:
            worker.link_broken = True
        if worker.fail_to_worker == 'pending':
            worker.fail_to_worker = None
        if ok:
            worker.inflight.append(seq)
            if command:
                worker.commands.add(seq)

    def primary_may_have_written(self) -> None:
        """Heartbeats, DISCONNECT: a pending fail_next_send may now be used up."""
        for worker in self.workers.values():
            if worker.fail_to_worker == 'pending':
                worker.fail_to_worker = 'maybe'

    def crash(self, worker_id: int, code: Any, signal: Any, alive: bool) -> None:
        worker = self.workers[worker_id]
        if alive and worker.process_alive:
            worker.expected_exit = (code, signal)
            worker.process_alive = False
            worker.maybe_answered.extend(worker.inflight)
            worker.inflight.clear()

    def shut_down(self) -> str:
        """R88, R92, R50: 'publish' | 'ignored' | 'raises'."""
        if self.phase == 'destroyed':
            return 'raises'
        if self.phase == 'active':
            return 'publish'
        return 'ignored'

    def destroy(self) -> None:
        if self.phase in ('active', 'shutting_down'):
            self.destroy_pending = True

    def reload_allowed(self) -> bool:
        """R132: publishes `reload` when active and no reload is running."""
        return self.phase == 'active' and self.reload is None

    def kill_primary(self) -> None:
        self.phase = 'vanished'

    # -- events ----------------------------------------------------------------------------

    def observe(self, stage: str, name: str, worker_id: int | None, data: dict[str, Any], time: float) -> None:
        require(self.phase not in ('vanished',), 'R125', f'{stage} {name} published after kill_primary()')
        require(time >= self.now, 'R122', f'virtual time went backwards: {time} < {self.now}')
        self.now = time
        if stage == 'on':
            parent = self.stack[-1] if self.stack else None
            if parent is not None:
                parent.nested_seen.append(name)
            frame = Frame(name, worker_id)
            self.stack.append(frame)
            getattr(self, '_on_' + name, self._on_other)(frame, worker_id, data, parent)
        else:
            require(bool(self.stack) and self.stack[-1].name == name, 'R6',
                    f'after {name} does not close the innermost publish ({[f.name for f in self.stack]})')
            frame = self.stack.pop()
            getattr(self, '_after_' + name, self._after_other)(frame, worker_id, data)

    def _on_other(self, frame: Frame, worker_id: int | None, data: dict[str, Any], parent: Frame | None) -> None:
        pass

    def _after_other(self, frame: Frame, worker_id: int | None, data: dict[str, Any]) -> None:
        pass

    def _on_fork(self, frame: Frame, _worker: Any, data: dict[str, Any], parent: Frame | None) -> None:
        count = data['worker_count']
        if parent is not None and parent.name == 'worker_exit':
            require(parent.expect_nested == 'fork', 'R82/R83/R127',
                    f'worker {parent.worker} exit: unexpected nested fork (expected {parent.expect_nested})')
            require(count == 1, 'R82', f'a replacement forks one worker, not {count}')
        elif self.reload is not None and (self.reload.expect_fork or (
                parent is None and self.reload.step_pending and not self.expected_top_forks)):
            if self.reload.step_pending:
                self._reload_step()
            self._reload_step_fork(count)
        else:
            require(parent is None, 'R59', f'fork nested in {parent and parent.name}')
            require(bool(self.expected_top_forks), 'R59', f'fork {{worker_count: {count}}} that nobody asked for')
            expected = self.expected_top_forks.popleft()
            require(count == expected, 'R59', f'fork worker_count {count}, expected {expected}')
        if self.phase == 'active':
            for _ in range(count):
                self.workers[self.next_id] = WorkerModel(self.next_id)
                self.expected_worker_forks.append(self.next_id)
                self.next_id += 1
            for worker_id in range(self.next_id - count, self.next_id):
                if self.pending_slow_boots:  # the transport delays the next workers started, in id order
                    self.workers[worker_id].slow_boot = self.pending_slow_boots.pop(0) >= self.ready_timeout

    def _reload_step(self) -> None:
        """R132: one step of the rolling reload: the next old worker still running gets a new
        worker forked for it; with none left the reload is complete."""
        reload = self.reload
        if reload is None or reload.old is not None or reload.new is not None or self.phase != 'active':
            return
        reload.step_pending = False
        # A worker already retired (scale, stop_worker) is leaving for good: it is not replaced (R83, R136).
        while reload.olds and (self.workers[reload.olds[0]].state in (DISCONNECTED, DEAD)
                               or self.workers[reload.olds[0]].retired):
            reload.olds.pop(0)
        if not reload.olds:
            self._end_reload(aborted=False)
            return
        reload.old = reload.olds.pop(0)
        reload.expect_fork = True

    def _end_reload(self, aborted: bool) -> None:
        """R133, R134: reload_complete follows on a later loop turn, exactly once."""
        reload = self.reload
        if reload is not None:
            self.expected_reload_completes.append((reload.replaced, aborted))
            self.reload = None

    def _reload_step_fork(self, count: int) -> None:
        reload = self.reload
        require(reload is not None and reload.expect_fork, 'R132', 'a reload step fork with no step due')
        require(count == 1, 'R132', f'a reload step forks one worker, not {count}')
        reload.expect_fork = False
        reload.new = self.next_id

    def _on_worker_fork(self, frame: Frame, worker_id: int, data: dict[str, Any], parent: Frame | None) -> None:
        require(parent is None, 'R60', f'worker_fork {worker_id} nested in {parent and parent.name}')
        require(bool(self.expected_worker_forks) and self.expected_worker_forks[0] == worker_id, 'R60',
                f'worker_fork {worker_id}; expected {list(self.expected_worker_forks)[:1]} (ascending, consecutive ids)')
        self.expected_worker_forks.popleft()
        worker = self.workers[worker_id]
        require(worker.state == FORKED, 'R61', f'worker_fork {worker_id} twice')

    def _on_worker_online(self, frame: Frame, worker_id: int, data: dict[str, Any], parent: Frame | None) -> None:
        worker = self.workers.get(worker_id)
        require(worker is not None and worker.state == FORKED and worker_id not in self.expected_worker_forks,
                'R61', f'worker_online {worker_id} in state {worker and worker.state}')
        worker.state = ONLINE

    def _on_worker_ready(self, frame: Frame, worker_id: int, data: dict[str, Any], parent: Frame | None) -> None:
        worker = self.workers[worker_id]
        require(worker.state == ONLINE and not worker.ever_ready, 'R61/R64',
                f'worker_ready {worker_id} in state {worker.state}')

    def _after_worker_ready(self, frame: Frame, worker_id: int, data: dict[str, Any]) -> None:
        worker = self.workers[worker_id]
        require(frame.nested_seen == ['add_worker'], 'R64', f'worker_ready nests {frame.nested_seen}, not add_worker')
        worker.state = READY
        worker.ever_ready = True
        self.any_ever_ready = True
        self._pool.add(worker_id)
        reload = self.reload
        if reload is not None and worker_id == reload.new and not worker.retired:
            reload.new = None
            old = reload.old
            if old is None:  # the old worker left early: the step is done now that its new worker is ready
                reload.replaced += 1
                reload.step_pending = True  # the library runs the next step on the next loop turn
            else:
                self._retire(old)

    def _on_worker_message(self, frame: Frame, worker_id: int, data: dict[str, Any], parent: Frame | None) -> None:
        worker = self.workers[worker_id]
        require(worker.state in (ONLINE, READY), 'R61', f'worker_message from {worker_id} in state {worker.state}')
        message = data['message']
        seq, claimed, routed_kind = _reply_fields(message)
        require(seq is not None, 'R123', f'worker {worker_id} sent a message the spec worker never sends: {message!r}')
        require(claimed == worker_id, 'R101', f'worker {worker_id} says it is worker {claimed}')
        if seq in worker.maybe_answered:  # answered before it died: delivered, in order
            while worker.maybe_answered.popleft() != seq:
                pass
        else:
            require(bool(worker.inflight) and worker.inflight[0] == seq, 'R115',
                    f'worker {worker_id} answered seq {seq}; frames in flight to it, in order: {list(worker.inflight)}')
            worker.inflight.popleft()
        require(seq not in worker.commands, 'R115', f'worker {worker_id} answered a command')
        worker.last_reply = seq
        if routed_kind == 'echo':
            self.routed_echo.append(seq)
        elif routed_kind == 'unrouted':
            require(message.get('routed') is False, 'R108',
                    f"worker {worker_id} routed a message of an unknown type: {message!r}")

    def _on_worker_error(self, frame: Frame, worker_id: int, data: dict[str, Any], parent: Frame | None) -> None:
        worker = self.workers[worker_id]
        require(worker.state != DEAD, 'R61', f'worker_error {worker_id} after its exit')
        require(not worker.error_published, 'R85', f'a second worker_error for worker {worker_id}')
        worker.error_published = True
        kind = data['error']
        worker.error_kinds.append(kind)
        if kind == 'HeartbeatTimeout':
            require(self.heartbeat and worker.unresponsive, 'R130/R131',
                    f'worker {worker_id} killed by HeartbeatTimeout but it was never hung or held')
        elif kind == 'ReadyTimeout':
            require(worker.unresponsive or worker.slow_boot, 'R87',
                    f'worker {worker_id} got ReadyTimeout but nothing delayed it')
        elif kind in ('ProtocolError', 'DecodeError'):
            require(worker.hostile, 'R120', f'worker {worker_id} got a {kind} but nothing broke its link protocol')
        elif kind == 'TransportError':
            require(worker.link_broken or worker.fail_to_worker, 'R116/R125',
                    f'worker {worker_id} got a TransportError without a failed write')
        else:
            raise SpecViolation(f'R85: unexpected worker_error {kind} for worker {worker_id}')

    def _after_worker_error(self, frame: Frame, worker_id: int, data: dict[str, Any]) -> None:
        worker = self.workers[worker_id]
        was_in_pool = worker_id in self._pool
        require(frame.nested_seen == (['remove_worker'] if was_in_pool else []), 'R86',
                f'worker_error {worker_id} nests {frame.nested_seen}')
        self._pool.discard(worker_id)
        self._forget(worker_id)
        worker.killed_by_primary = True

    def _on_worker_disconnect(self, frame: Frame, worker_id: int, data: dict[str, Any], parent: Frame | None) -> None:
        worker = self.workers[worker_id]
        require(worker.state in (FORKED, ONLINE, READY), 'R61', f'worker_disconnect {worker_id} in state {worker.state}')
        require(worker_id not in self.expected_worker_forks, 'R61', f'worker_disconnect {worker_id} before worker_fork')
        frame.__dict__['was_in_pool'] = worker_id in self._pool
        worker.state = DISCONNECTED

    def _after_worker_disconnect(self, frame: Frame, worker_id: int, data: dict[str, Any]) -> None:
        expected = ['remove_worker'] if frame.__dict__['was_in_pool'] else []
        require(frame.nested_seen == expected, 'R78', f'worker_disconnect {worker_id} nests {frame.nested_seen}, expected {expected}')
        self._pool.discard(worker_id)
        self._forget(worker_id)

    def _forget(self, worker_id: int) -> None:
        for history in self.rr_history.values():  # R69: a removed worker's history is dropped
            history.pop(worker_id, None)

    def _on_worker_exit(self, frame: Frame, worker_id: int, data: dict[str, Any], parent: Frame | None) -> None:
        worker = self.workers[worker_id]
        require(worker.state == DISCONNECTED, 'R79', f'worker_exit {worker_id} in state {worker.state} (no disconnect first)')
        code, signal = data['code'], data['signal']
        require(code is None or signal is None, 'R80', f'worker {worker_id} exit with both code {code} and signal {signal}')
        if worker.expected_exit is not None:
            require((code, signal) == worker.expected_exit, 'R125',
                    f'worker {worker_id} crashed with {worker.expected_exit} but exited {(code, signal)}')
        if code is None and signal is None:
            raise SpecViolation(f'R80: worker {worker_id} exit with neither code nor signal (only for a failed start)')
        if not worker.leaving_cleanly:
            require(data['exited_after_disconnect'] == worker.disconnect_requested, 'R81',
                    f"worker {worker_id}: exited_after_disconnect={data['exited_after_disconnect']}, "
                    f'disconnect requested by the primary: {worker.disconnect_requested}')
        worker.state = DEAD
        worker.process_alive = False
        supervised = self.phase == 'active' and not worker.retired
        reload = self.reload
        if reload is not None and worker.id == reload.old and reload.new is not None:
            supervised = False  # the step's new worker replaces it (R133)
        if supervised and not self.replacement_stopped and not worker.ever_ready and not self.any_ever_ready:
            self.boot_failures += 1
            if self.boot_failures >= BOOT_FAILURE_LIMIT:
                frame.expect_end = 'boot_failure'
                return
        frame.expect_nested = self._replacement_decision(worker, code, signal)
        if supervised and frame.expect_nested != 'fork' and not self.live():
            frame.expect_end = 'restart_limit' if frame.expect_nested == 'restart_limit' or self.replacement_stopped \
                else 'no_restart'

    def _replacement_decision(self, worker: WorkerModel, code: Any, signal: Any) -> str | None:
        """R82, R83, R126-R128, R133: what the complete stage of worker_exit publishes nested."""
        reload = self.reload
        if reload is not None and worker.id == reload.old and reload.new is not None:
            return None
        if self.phase != 'active' or worker.retired or self.replacement_stopped:
            return None
        while self.restart_times and self.now - self.restart_times[0] >= self.period:
            self.restart_times.popleft()
        if self.intensity is None or len(self.restart_times) < self.intensity:
            self.restart_times.append(self.now)
            return 'fork'
        return 'restart_limit'

    def _after_worker_exit(self, frame: Frame, worker_id: int, data: dict[str, Any]) -> None:
        expected = {'fork': ['fork'], 'restart_limit': ['restart_limit'], None: []}[frame.expect_nested]
        expected = expected + (['no_workers'] if frame.expect_end else [])
        require(frame.nested_seen == expected, 'R82/R128',
                f'worker_exit {worker_id} nests {frame.nested_seen}; expected {expected} '
                f'(phase {self.phase}, budget {list(self.restart_times)} at t={self.now})')
        self._pool.discard(worker_id)
        reload = self.reload
        if reload is not None:
            if worker_id == reload.new:  # a failed start of the step's new worker (R133)
                if frame.expect_nested == 'fork':
                    reload.new = self.next_id - 1
                elif frame.expect_nested is None:
                    # No replacement can be made (replacement stopped, retired, ...): the step
                    # cannot finish, so the reload is abandoned (R133, R134).
                    self._end_reload(aborted=True)
                    return
            if worker_id == reload.old:
                reload.old = None
                if reload.new is None:  # the step was retiring it: the step is done
                    reload.replaced += 1
                    self._reload_step()  # run synchronously after the worker_exit publish

    def _on_restart_limit(self, frame: Frame, worker_id: Any, data: dict[str, Any], parent: Frame | None) -> None:
        require(parent is not None and parent.name == 'worker_exit' and parent.expect_nested == 'restart_limit',
                'R128', f'restart_limit published outside an over-budget exit ({parent and parent.name})')
        live = len(self.live())
        require(data['worker_count'] == live, 'R128', f"restart_limit worker_count {data['worker_count']}, live {live}")
        self.replacement_stopped = True
        self.restart_limit_seen = True
        self._end_reload(aborted=True)

    def _on_no_workers(self, frame: Frame, worker_id: Any, data: dict[str, Any], parent: Frame | None) -> None:
        """Issue 13: no worker live and none to be started: published nested in that last exit,
        its default action shuts the cluster down."""
        require(parent is not None and parent.name == 'worker_exit' and parent.expect_end is not None,
                'no_workers', f'no_workers published outside an exit that leaves nobody ({parent and parent.name})')
        require(data['reason'] == parent.expect_end, 'no_workers',
                f"no_workers reason {data['reason']}, expected {parent.expect_end}")
        if data['reason'] != 'boot_failure':  # a boot failure stops the workers still starting
            require(not self.live(), 'no_workers', f'no_workers with live workers {self.live()}')
        self.no_workers_seen = data['reason']

    def _after_no_workers(self, frame: Frame, worker_id: Any, data: dict[str, Any]) -> None:
        require(frame.nested_seen == ['shut_down'], 'no_workers', f'no_workers nests {frame.nested_seen}, not shut_down')

    def _on_reload(self, frame: Frame, worker_id: Any, data: dict[str, Any], parent: Frame | None) -> None:
        require(self.phase == 'active' and self.reload is None, 'R132', 'reload published while not allowed')
        pool = self.pool()
        require(data['worker_count'] == len(pool), 'R132', f"reload worker_count {data['worker_count']}, pool {pool}")
        self.reload = ReloadModel(olds=list(pool))
        self.reloads_started += 1
        self._reload_step()

    def _after_reload(self, frame: Frame, worker_id: Any, data: dict[str, Any]) -> None:
        require(self.reload is None or not self.reload.expect_fork, 'R132', 'reload forked nothing for its first step')

    def _on_reload_complete(self, frame: Frame, worker_id: Any, data: dict[str, Any], parent: Frame | None) -> None:
        if self.reload is not None and self.reload.step_pending:
            self._reload_step()
        self.reloads_completed += 1
        require(bool(self.expected_reload_completes), 'R134',
                f"reload_complete {data} not expected (reload running: {self.reload})")
        expected = self.expected_reload_completes.popleft()
        got = (data['worker_count'], data['aborted'])
        require(got == expected, 'R134', f'reload_complete (worker_count, aborted) = {got}, expected {expected}')

    def _on_shut_down(self, frame: Frame, worker_id: Any, data: dict[str, Any], parent: Frame | None) -> None:
        require(self.phase == 'active', 'R92', f'shut_down published in phase {self.phase}')

    def _after_shut_down(self, frame: Frame, worker_id: Any, data: dict[str, Any]) -> None:
        self.phase = 'shutting_down'
        self.expected_top_forks.clear()
        self._end_reload(aborted=True)
        for worker_id_ in self.live():
            self._request_disconnect(self.workers[worker_id_])

    def _on_shut_down_complete(self, frame: Frame, worker_id: Any, data: dict[str, Any], parent: Frame | None) -> None:
        require(self.phase == 'shutting_down', 'R91', f'shut_down_complete in phase {self.phase}')
        require(not self.live(), 'R91', f'shut_down_complete while workers {self.live()} are live')
        require(parent is None, 'R91', f'shut_down_complete nested in {parent and parent.name}')
        require(not self.shut_down_complete_seen, 'R23', 'shut_down_complete twice')
        self.shut_down_complete_seen = True
        self.phase = 'shut_down'

    def _on_destroy_complete(self, frame: Frame, worker_id: Any, data: dict[str, Any], parent: Frame | None) -> None:
        require(not self.live(), 'R95', f'destroyed with live workers {self.live()}')
        require(self.shut_down_complete_seen or not self.workers, 'R93', 'destroy_complete before shut_down_complete')
        self.destroy_complete_seen = True
        self.phase = 'destroyed'

    def _after_destroy_complete(self, frame: Frame, worker_id: Any, data: dict[str, Any]) -> None:
        if self.stack and self.stack[-1].name == 'destroy':
            self.stack.pop()  # R48: destroyed inside the complete stage of destroy: no `after destroy`

    # -- checks at rest ----------------------------------------------------------------------

    def at_rest(self) -> None:
        """Between commands nothing is being published."""
        require(not self.stack, 'R6', f'publishes left open: {[f.name for f in self.stack]}')


def _reply_fields(message: Any) -> tuple[int | None, int | None, str | None]:
    """(seq, worker id it claims, kind) of a reply the spec worker sends, else Nones."""
    if isinstance(message, dict):
        kind = message.get('type')
        if kind == 'echo_reply':
            return message.get('seq'), message.get('worker'), 'echo'
        if kind == 'unrouted_reply':
            return message.get('seq'), message.get('worker'), 'unrouted'
    if isinstance(message, list) and len(message) == 3 and message[0] == 'plain':
        return message[1], message[2], 'plain'
    return None, None, None
