"""The executable spec: the lifecycle and routing model against both transports (issue 4).

One `RuleBasedStateMachine` drives a `ClusterModel` (specs/model.py, pure) and a real
`ClusterPrimary` (specs/driver.py) together. Every rule gives the same command to both;
everything the primary publishes is fed to the model, which checks it and predicts return
values; the invariants re-check the trace and the primary's state after every step, each
naming the SPEC rule it checks. Teardown checks liveness (every slot ready again once the
faults stop, or `restart_limit`), a bounded shutdown (R89, R91) and, for sampled memory
runs, determinism (R121: the same seed and program replayed give the same trace hash).

Run: `python3 -m pytest specs -q`; `ISOCLUSTER_SPEC_PROFILE=full` for `make spec`.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import event as hypothesis_event
from hypothesis import note as hypothesis_note
from hypothesis.errors import InvalidArgument
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test

from isocluster.transport.partial import DEFAULT_FRAME_TIMEOUT as FRAME_TIMEOUT

from .driver import HOSTILE_BYTES, KILL_TIMEOUT, READY_TIMEOUT, SHUTDOWN_TIMEOUT, WORKER_KILL_TIMER, Driver, replay
from .model import DEAD, DISCONNECTED, FORKED, ONLINE, READY, ClusterModel, SpecViolation, require

PROFILE = os.environ.get('ISOCLUSTER_SPEC_PROFILE', 'default')
FULL = PROFILE == 'full'
MEMORY_EXAMPLES = 1000 if FULL else 100
PROCESS_EXAMPLES = 30 if FULL else 5
MEMORY_STEPS = 30
PROCESS_STEPS = 20 if FULL else 12
# Real-time heartbeats on processes: a timeout far above any scheduling pause of a loaded
# 2-core machine, so only a worker that really stopped answering misses it.
PROCESS_HEARTBEAT = {'heartbeat': 0.3, 'heartbeat_timeout': 3.0}
REPLAY_EVERY = 4  # every 4th memory run is replayed and its trace hash compared (R121)
LIVENESS_BOUND = 40.0  # virtual seconds after the faults stop (ready_timeout + kill + heartbeats + slack)
SLOW_BOOT_ALLOWANCE = 15.0  # per slow boot still queued: slow boot + ready_timeout + kill_timeout + restart
SHUTDOWN_BOUND = SHUTDOWN_TIMEOUT + KILL_TIMEOUT + 0.5  # R89, plus delivery latencies

# Library bugs the spec found (reproduced in spec_regressions.py). While one is open the
# machine steers around it, so a single known bug does not hide every other failure.
# Remove an entry once its regression test XPASSes.
KNOWN_BUGS: set[str] = set()  # names of open library bugs the machine steers around

RARE_PATHS = ('crash_during_shutdown', 'death_before_ready', 'crash_during_reload',
              'send_to_dying_worker', 'hold_release_reordering', 'hostile_bytes_faulted')
RARE: Counter[str] = Counter({name: 0 for name in RARE_PATHS})
STATS: dict[str, float] = {'memory_examples': 0, 'process_examples': 0, 'replays': 0,
                           'memory_seconds': 0.0, 'process_seconds': 0.0}


def note(text: str) -> None:
    try:
        hypothesis_note(text)
    except InvalidArgument:  # outside a Hypothesis test (a machine driven by hand, for debugging)
        pass


def event(text: str) -> None:
    try:
        hypothesis_event(text)
    except InvalidArgument:
        pass


def process_transport_unavailable() -> str | None:
    """Why this platform cannot run the process transport, or None. A process transport that
    fails to import fails the process machine (the driver imports it); it is never skipped."""
    if not hasattr(os, 'fork'):
        return 'the process transport needs os.fork'
    return None


WORKER_INDEX = st.integers(0, 7)
INVALID = st.sampled_from(['str', 'float', 'dict', 'bool', 'neg', 'unknown_id'])
SINGLE = st.one_of(st.tuples(st.just('id'), WORKER_INDEX), st.tuples(st.just('handle'), WORKER_INDEX))
DESTINATION = st.one_of(
    st.just('all'), SINGLE, st.tuples(st.just('invalid'), INVALID),
    st.lists(st.one_of(SINGLE, st.tuples(st.just('invalid'), INVALID)), max_size=3),
)


class ClusterMachine(RuleBasedStateMachine):
    """Model and cluster driven together; see the module docstring."""

    TRANSPORT = 'memory'

    def __init__(self) -> None:
        super().__init__()
        self.driver: Driver | None = None
        self.started = time.monotonic()
        self.failed = False

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def memory(self) -> bool:
        return self.TRANSPORT == 'memory'

    def step(self, op: str, **kwargs: Any) -> Any:
        self.program.append((op, kwargs))
        self.failed = True  # stays set if the step or the model raises
        result = self.driver.apply(op, **kwargs)
        self.sync()
        self.failed = False
        return result

    def sync(self) -> None:
        """Feed what the primary published since the last call to the model."""
        trace = self.driver.trace
        model = self.model
        while self.cursor < len(trace):
            entry = trace[self.cursor]
            self.cursor += 1
            stage, name, worker_id, data, when = entry
            if stage == 'call':
                continue
            if stage == 'on' and name == 'worker_exit' and not model.workers[worker_id].ever_ready:
                self.rare('death_before_ready')
            if stage == 'on' and name == 'worker_error':
                event(f"worker_error: {data['error']}")
            if stage == 'on' and name == 'worker_exit' and data['signal'] is not None:
                event(f"worker_exit by signal {data['signal']}")
            if stage == 'on' and name == 'worker_message':
                self.watch_reordering(worker_id, data['message'])
            model.observe(stage, name, worker_id, data, when)

    def watch_reordering(self, worker_id: int, message: Any) -> None:
        """A reply overtaken by a later reply on another link, because its link was held."""
        seq = message.get('seq') if isinstance(message, dict) else message[1]
        if not isinstance(seq, int):
            return
        others = [top for other, top in self.max_seq.items() if other != worker_id]
        if others and max(others) > seq and worker_id in self.held_ever:
            self.rare('hold_release_reordering')
        self.max_seq[worker_id] = max(self.max_seq.get(worker_id, 0), seq)

    def rare(self, name: str) -> None:
        RARE[name] += 1
        event(f'rare path: {name}')

    def pick(self, index: int, ids: list[int]) -> int | None:
        return ids[index % len(ids)] if ids else None

    def live_ids(self) -> list[int]:
        return self.model.live()

    def has_live(self) -> bool:
        return self.driver is not None and bool(self.model.live()) and self.model.phase != 'vanished'

    def usable(self) -> bool:
        return self.driver is not None and self.model.phase != 'vanished'

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    # -- setup ------------------------------------------------------------------------------

    @initialize(
        seed=st.integers(0, 2**32 - 1),
        intensity=st.sampled_from([1, 2, 3, 10]),
        period=st.sampled_from([2.0, 30.0]),
        heartbeat=st.sampled_from([None, 1.0]),
        workers=st.integers(0, 3),
    )
    def start(self, seed: int, intensity: int, period: float, heartbeat: float | None, workers: int) -> None:
        self.config = {'intensity': intensity, 'period': period, 'heartbeat': heartbeat}
        if self.TRANSPORT == 'process' and heartbeat is not None:
            self.config.update(PROCESS_HEARTBEAT)
        elif self.TRANSPORT == 'ray':
            self.config['heartbeat'] = heartbeat = None  # each actor is a new process on 2 shared CPUs
        self.seed = seed
        self.program: list[tuple[str, dict[str, Any]]] = []
        self.cursor = 0
        self.seq = 0
        self.max_seq: dict[int, int] = {}
        self.held_ever: set[int] = set()
        self.model = ClusterModel(restart_intensity=intensity, restart_period=period,
                                  heartbeat=heartbeat is not None, ready_timeout=READY_TIMEOUT,
                                  exact_writes=self.memory)
        self.driver = Driver(self.TRANSPORT, seed, self.config)
        note(f'seed={seed} config={self.config}')
        self.do_fork(workers)

    def do_fork(self, count: int) -> None:
        self.model.fork(count)
        self.step('fork', count=count)

    # -- rules: both transports ---------------------------------------------------------------

    @precondition(lambda self: self.usable())
    @rule(count=st.integers(0, 3))
    def fork(self, count: int) -> None:
        """R59, R60, R92: fork publishes `fork` only while active; ids are consecutive."""
        self.do_fork(count)

    @precondition(lambda self: self.usable())
    @rule(count=st.integers(0, 4))
    def scale(self, count: int) -> None:
        """R136: fork the difference or retire the surplus, highest ids first."""
        if 'R133-reload-stuck' in KNOWN_BUGS and self.model.reload is not None:
            return  # scale() may retire the step's new worker: the reload then never completes
        self.model.scale(count)
        self.model.primary_may_have_written()
        self.step('scale', count=count)

    @precondition(lambda self: self.usable())
    @rule()
    def reload(self) -> None:
        """R132: publishes `reload` only when active and no reload is running."""
        if 'R83-reload-replaces-retired-worker' in KNOWN_BUGS and any(
                w.retired and w.state != DEAD for w in self.model.workers.values()):
            return
        if 'R133-reload-stuck' in KNOWN_BUGS and self.model.replacement_stopped:
            return
        expected = self.model.reload_allowed()
        before = self.model.reloads_started
        self.step('reload')
        require(self.model.reloads_started == before + expected, 'R132',
                f'reload() published {self.model.reloads_started - before} reloads, expected {int(expected)}')

    @precondition(lambda self: self.usable())
    @rule(tag=st.sampled_from(['', 'a', 'b']))
    def round_robin(self, tag: str) -> None:
        """R67, R68, R69: the pick is the model's."""
        expected = self.model.round_robin(tag)
        got = self.step('round_robin', tag=tag)
        require(got == expected, 'R67', f'round_robin({tag!r}) picked {got}, the model says {expected} '
                f'(pool {self.model.pool()}, history {self.model.rr_history.get(tag)})')

    @precondition(lambda self: self.usable())
    @rule(to=DESTINATION, kind=st.sampled_from(['echo', 'mystery', 'plain']))
    def send(self, to: Any, kind: str) -> None:
        """R70-R74: destinations resolved at call time, outcome settled during the call."""
        seq = self.next_seq()
        message = [seq] if kind == 'plain' else {'type': kind, 'seq': seq}
        self.do_send(to, message, seq, command=False)

    @precondition(lambda self: self.usable() and bool(self.model.pool()))
    @rule(index=WORKER_INDEX, kind=st.sampled_from(['exit', 'raise', 'leave']), code=st.integers(0, 3))
    def command(self, index: int, kind: str, code: int) -> None:
        """R33, R112, R81: a worker that ends by itself (SystemExit, an exception, destroy())."""
        worker_id = self.pick(index, self.model.pool())
        seq = self.next_seq()
        self.do_send(('handle', worker_id), {'type': kind, 'seq': seq, 'code': code}, seq, command=True)

    def resolve_spec(self, spec: Any) -> Any:
        if spec == 'all' or spec[0] == 'invalid':
            return tuple(spec) if spec != 'all' else spec
        known = sorted(self.model.workers)
        if spec[0] == 'handle' and not known:
            return ('invalid', 'str')
        worker_id = self.pick(spec[1], known) if known else spec[1] + 1
        return (spec[0], worker_id)

    def do_send(self, to: Any, message: Any, seq: int, command: bool) -> None:
        model = self.model
        if isinstance(to, list):
            to = [self.resolve_spec(spec) for spec in to]
            labels = to
        else:
            to = self.resolve_spec(to)
            labels = [('handle', worker_id) for worker_id in model.choosable()] if to == 'all' else [to]
        valid = [label[0] != 'invalid' and model.destination(*label) for label in labels]
        writes = [model.write_outcome(label[1]) if ok else None for label, ok in zip(labels, valid)]
        for label, ok, write in zip(labels, valid, writes):
            worker = model.workers.get(label[1]) if ok else None
            if worker is not None and write != 'ok' and (
                    not worker.process_alive or worker.may_exit_by_itself or worker.disconnect_requested
                    or worker.killed_by_primary):
                self.rare('send_to_dying_worker')
        result = self.step('send', to=to, message=message)
        status, got_labels, outcomes = result[0], result[1], result[2]
        require(status != 'pending', 'R72', 'send() returned a future not settled during the call')
        require([tuple(label) for label in got_labels] == [tuple(label) for label in labels], 'R70',
                f'send resolved destinations {got_labels}, the model says {labels}')
        if not labels:
            require(status == 'ok', 'R74', f'send to no destination did not resolve: {result}')
            return
        for label, ok, write, outcome in zip(labels, valid, writes, outcomes):
            if not ok:
                require(outcome == ('InvalidDestinationError', None), 'R70/R73',
                        f'destination {label} should be invalid, got {outcome}')
                continue
            failed = ('SendError', 'TransportError')
            allowed = {'ok': ['ok'], 'fail': [failed], 'either': ['ok', failed]}[write]
            require(outcome in allowed, 'R72/R73/R116',
                    f'write to {label} gave {outcome}, the model allows {allowed}')
            model.wrote(label[1], seq, outcome == 'ok', command)
            if command and outcome == 'ok':
                worker = model.workers[label[1]]
                worker.may_exit_by_itself = True
                worker.leaving_cleanly = worker.leaving_cleanly or message['type'] == 'leave'
        if all(outcome == 'ok' for outcome in outcomes):
            require(status == 'ok', 'R72', f'every write succeeded but send rejected: {result}')
        elif len(labels) == 1:
            require(status == 'error' and result[3] == outcomes[0][0], 'R73',
                    f'a single destination rejects with its own error: {result}')
        else:
            require(status == 'error' and result[3] == 'SendError' and result[4], 'R73',
                    f'several destinations reject with SendError listing every failure: {result}')

    @precondition(lambda self: self.has_live())
    @rule(index=WORKER_INDEX, signal=st.sampled_from([9, 15]))
    def kill(self, index: int, signal: int) -> None:
        """handle.kill(signal): R80 (exit by signal), R82 (replaced), R119."""
        if self.TRANSPORT == 'ray':
            signal = 9  # ray.kill ends an actor whatever the signal: SIGTERM would check nothing more
        worker_id = self.pick(index, self.live_ids())
        if self.model.workers[worker_id].state == DEAD:
            return
        self.crash_worker(worker_id, None, signal, op='kill')

    def crash_worker(self, worker_id: int, code: int | None, signal: int | None, op: str = 'crash') -> None:
        model = self.model
        if op == 'kill':
            alive = self.step('kill', worker=worker_id, signal=signal)
        else:
            alive = self.step('crash', worker=worker_id, code=code, signal=signal)
        worker = model.workers[worker_id]
        if signal == 15 and worker.hung and worker.ignores_sigterm:
            return  # R125: a worker hung with ignore_sigterm survives SIGTERM
        precise = alive and worker.process_alive and (self.memory or not (
            worker.may_exit_by_itself or worker.disconnect_requested or worker.killed_by_primary))
        if alive and worker.process_alive and model.phase == 'shutting_down':
            self.rare('crash_during_shutdown')
        if alive and worker.process_alive and model.reload is not None:
            self.rare('crash_during_reload')
        if precise:
            model.crash(worker_id, code, signal, True)
        elif alive:
            worker.may_exit_by_itself = True

    @precondition(lambda self: self.usable())
    @rule()
    def shut_down(self) -> None:
        """R88, R92, R50: publishes once while active; ignored later; raises once destroyed."""
        expected = self.model.shut_down()
        got = self.step('shut_down')
        require(got == ('DestroyedError' if expected == 'raises' else 'ok'), 'R50/R92',
                f'shut_down() gave {got}, expected {expected}')
        if expected == 'publish':
            require(self.model.phase in ('shutting_down', 'shut_down'), 'R88', 'shut_down did not take effect')
        self.model.primary_may_have_written()

    @precondition(lambda self: self.usable())
    @rule()
    def destroy(self) -> None:
        """R93, R94: destroy while active shuts down first; never with live workers."""
        phase = self.model.phase
        self.model.destroy()
        self.step('destroy')
        if phase == 'active':
            require(self.model.phase == 'shutting_down', 'R93', f'destroy() while active: phase {self.model.phase}')
        elif phase == 'shut_down':
            require(self.model.phase == 'destroyed', 'R94', 'destroy() after shutdown did not destroy at once')
        self.model.primary_may_have_written()

    @precondition(lambda self: self.driver is not None)
    @rule(seconds=st.sampled_from([0.0005, 0.002, 0.01, 0.1, 1.0, 3.0, 7.0]))
    def advance(self, seconds: float) -> None:
        """Let (virtual) time pass: deliveries, timers, heartbeats."""
        self.model.primary_may_have_written()
        self.step('advance', seconds=seconds)

    @precondition(lambda self: self.usable() and self.model.phase == 'active' and bool(self.model.pool()))
    @rule(index=WORKER_INDEX, code=st.sampled_from([None, 0, 1, 3]))
    def crash_during_shutdown(self, index: int, code: int | None) -> None:
        """R90, R91: a worker dying while the cluster shuts down still gets its exit, then SDC."""
        worker_id = self.pick(index, self.model.pool())
        self.step('shut_down')
        self.model.primary_may_have_written()
        if self.memory and code is not None:
            self.crash_worker(worker_id, code, None)
        else:
            self.crash_worker(worker_id, None, 9, op='kill')

    @precondition(lambda self: self.usable() and self.model.phase == 'active' and bool(self.model.pool()))
    @rule(which=st.sampled_from(['old', 'new', 'other']), delay=st.sampled_from([0.0, 0.0005, 0.002, 0.01]))
    def reload_then_crash(self, which: str, delay: float) -> None:
        """R133: a crash during a rolling reload (old worker, new worker, or another one)."""
        self.reload()
        if delay:
            self.advance(delay)
        reload = self.model.reload
        candidates = self.live_ids()
        target = {'old': reload and reload.old, 'new': reload and reload.new}.get(which)
        worker_id = target if target in candidates else (candidates[-1] if candidates else None)
        if worker_id is None or self.model.workers[worker_id].state == DEAD:
            return
        if self.memory:
            self.crash_worker(worker_id, 3, None)
        else:
            self.crash_worker(worker_id, None, 9, op='kill')

    @precondition(lambda self: self.usable() and bool(self.model.pool()))
    @rule(index=WORKER_INDEX)
    def crash_then_send(self, index: int) -> None:
        """R116: a write to a worker that died but whose exit is not yet known rejects with SendError."""
        worker_id = self.pick(index, self.model.pool())
        if self.memory:
            self.crash_worker(worker_id, 1, None)
        else:
            self.crash_worker(worker_id, None, 9, op='kill')
        seq = self.next_seq()
        self.do_send(('handle', worker_id), {'type': 'echo', 'seq': seq}, seq, command=False)

    @precondition(lambda self: self.driver is not None)
    @rule()
    def settle(self) -> None:
        """Liveness mid-run: faults stop, and within bounded time every slot is ready again."""
        self.check_liveness()

    # -- rules: fault injection ---------------------------------------------------------------
    # Most exist only on MemoryTransport: a real process cannot be made to hold its socket,
    # fail one write or boot slowly from outside, and kill_primary would kill the test process
    # itself. On processes a crash with a chosen code is the `command` rule (the worker exits
    # by itself) and a crash by signal is `kill`; `hang` runs there too (the worker is told to
    # block its loop), so heartbeat timeouts and SIGTERM -> SIGKILL are checked on real workers.

    @precondition(lambda self: self.memory and self.has_live())
    @rule(index=WORKER_INDEX, code=st.integers(0, 3), by_signal=st.booleans())
    def crash(self, index: int, code: int, by_signal: bool) -> None:
        """R125 crash: the exit carries exactly the injected code or signal (R80)."""
        worker_id = self.pick(index, self.live_ids())
        self.crash_worker(worker_id, None if by_signal else code, 9 if by_signal else None)

    @precondition(lambda self: (self.memory and self.has_live())
                  or (self.TRANSPORT == 'process' and self.usable() and bool(self.model.pool())))
    @rule(index=WORKER_INDEX, ignore_sigterm=st.booleans())
    def hang(self, index: int, ignore_sigterm: bool) -> None:
        """R125 hang; R87 ready timeout, R131 heartbeat timeout, R89 SIGTERM -> SIGKILL. A process
        worker is told to block its loop (a message it acts on when it arrives): ready ones only."""
        worker_id = self.pick(index, self.live_ids() if self.memory else self.model.pool())
        if self.step('hang', worker=worker_id, ignore_sigterm=ignore_sigterm):
            worker = self.model.workers[worker_id]
            worker.hung = worker.unresponsive = True
            worker.ignores_sigterm = ignore_sigterm

    @precondition(lambda self: self.memory and self.has_live())
    @rule(index=WORKER_INDEX)
    def hold(self, index: int) -> None:
        """R125 hold: frames kept, delivered in order on release (R115)."""
        worker_id = self.pick(index, self.live_ids())
        self.step('hold', worker=worker_id)
        worker = self.model.workers[worker_id]
        worker.held = worker.unresponsive = True
        self.held_ever.add(worker_id)

    @precondition(lambda self: self.memory and self.usable() and any(w.held for w in self.model.workers.values()))
    @rule(index=WORKER_INDEX)
    def release(self, index: int) -> None:
        held = sorted(w.id for w in self.model.workers.values() if w.held)
        worker_id = self.pick(index, held)
        self.step('release', worker=worker_id)
        self.model.workers[worker_id].held = False

    @precondition(lambda self: self.memory and self.usable() and len(self.model.pool()) >= 2)
    @rule(index=WORKER_INDEX)
    def hold_and_reorder(self, index: int) -> None:
        """R115: order holds per link only; a held link's replies arrive after later ones elsewhere."""
        worker_id = self.pick(index, self.model.pool())
        self.step('hold', worker=worker_id)
        worker = self.model.workers[worker_id]
        worker.held = worker.unresponsive = True
        self.held_ever.add(worker_id)
        for _ in range(2):  # the second round's replies from other links overtake the first from this one
            seq = self.next_seq()
            self.do_send('all', {'type': 'echo', 'seq': seq}, seq, command=False)
        self.advance(0.01)
        self.step('release', worker=worker_id)
        worker.held = False
        self.advance(0.01)

    @precondition(lambda self: self.memory and self.has_live())
    @rule(index=WORKER_INDEX, direction=st.sampled_from(['to_worker', 'to_primary']))
    def fail_next_send(self, index: int, direction: str) -> None:
        """R125 fail_next_send: SendError for that write, then worker_error (to_worker) or the
        worker ends as if its primary were gone (to_primary)."""
        worker_id = self.pick(index, self.live_ids())
        self.step('fail_next_send', worker=worker_id, direction=direction)
        worker = self.model.workers[worker_id]
        if direction == 'to_worker':
            worker.fail_to_worker = 'pending'
        else:
            worker.may_exit_by_itself = True

    @precondition(lambda self: self.memory and self.has_live())
    @rule(index=WORKER_INDEX, fault=st.sampled_from(sorted(HOSTILE_BYTES)))
    def inject_bytes(self, index: int, fault: str) -> None:
        """R120, issue 13: bytes that break the link protocol fault their worker alone, with
        worker_error(ProtocolError): it is killed and replaced, the primary never stops. A
        frame left unfinished faults it once frame_timeout has passed."""
        model = self.model
        worker_id = self.pick(index, self.live_ids())
        worker = model.workers[worker_id]
        clean = (model.phase == 'active' and worker.state in (ONLINE, READY) and worker.process_alive
                 and not (worker.error_published or worker.hung or worker.held or worker.may_exit_by_itself
                          or worker.disconnect_requested or worker.link_broken or worker.fail_to_worker))
        if not self.step('inject_bytes', worker=worker_id, fault=fault):
            return
        worker.hostile = True
        truncated = fault == 'truncated'
        if truncated:  # its later frames (READY, heartbeat acks) vanish into the unfinished one
            worker.unresponsive = True
        if clean:
            bound = (FRAME_TIMEOUT if truncated else 0) + 1.0
            self.run_until(lambda: worker.error_published, bound)
            allowed = ('ProtocolError', 'HeartbeatTimeout', 'ReadyTimeout') if truncated else ('ProtocolError',)
            require(bool(worker.error_kinds) and worker.error_kinds[0] in allowed, 'R120',
                    f'worker {worker_id} wrote {fault!r}: expected worker_error {allowed} within {bound}s, '
                    f'got {worker.error_kinds}')
            require(not model.destroy_complete_seen and model.phase == 'active', 'R120',
                    f'hostile bytes from worker {worker_id} stopped the cluster')
            self.rare('hostile_bytes_faulted')

    @precondition(lambda self: self.memory and self.usable())
    @rule(delay=st.sampled_from([0.5, 6.0]))
    def slow_boot(self, delay: float) -> None:
        """R125 slow_boot; beyond ready_timeout it is a ReadyTimeout (R87), a failed start (R126)."""
        self.step('slow_boot', delay=delay)
        self.model.pending_slow_boots.append(delay)

    @precondition(lambda self: self.memory and self.usable() and not (
        'R118-hung-worker-outlives-primary' in KNOWN_BUGS and any(
            (w.hung or w.held) and w.state != DEAD for w in self.model.workers.values())))
    @rule()
    def kill_primary(self) -> None:
        """R118, R125: the primary vanishes; every worker ends within its kill timer."""
        self.step('kill_primary')
        self.model.kill_primary()
        self.step('advance', seconds=WORKER_KILL_TIMER + 0.1)
        alive = [worker_id for worker_id in sorted(self.model.workers) if self.driver.alive(worker_id)]
        require(not alive, 'R118', f'workers {alive} outlived their primary by {WORKER_KILL_TIMER}s')

    # -- task queues (README "Task queues", R140-R146) -------------------------------------------

    def quiet_links(self) -> bool:
        """No fault is armed that the model ties to the next write of its own sends."""
        return not any(w.fail_to_worker or w.held or w.hung for w in self.model.workers.values())

    @precondition(lambda self: self.usable() and self.model.phase == 'active')
    @rule(tag=st.sampled_from(['', 'a']))
    def least_busy(self, tag: str) -> None:
        """R141: a ready worker with the fewest requests in flight, ties in round-robin order."""
        got, counts = self.step('least_busy', tag=tag)
        expected = self.model.least_busy(tag, counts)
        require(got == expected, 'R141', f'least_busy({tag!r}) picked {got}, the model says {expected} '
                f'(pool {self.model.pool()}, in flight {counts})')

    @precondition(lambda self: self.usable() and self.model.phase == 'active' and self.quiet_links())
    @rule(count=st.integers(1, 4))
    def request_least_busy(self, count: int) -> None:
        """R141: request() without `to` goes to least_busy(); no ready worker: InvalidDestinationError."""
        for got, counts, error in self.step('request', values=[self.next_seq() for _ in range(count)]):
            expected = self.model.least_busy('', counts)
            require(got == expected, 'R141', f'request() went to {got}, least_busy says {expected} (in flight {counts})')
            if expected is None:
                require(error == 'InvalidDestinationError', 'R141', f'request() with no ready worker: {error}')

    @precondition(lambda self: self.usable() and self.model.phase == 'active' and bool(self.model.pool())
                  and self.quiet_links())
    @rule(count=st.integers(0, 9), victim=st.one_of(st.none(), WORKER_INDEX), chunksize=st.sampled_from([1, 3]),
          max_in_flight=st.sampled_from([1, 2]), retries=st.sampled_from([0, 1, 3]))
    def map(self, count: int, victim: int | None, chunksize: int, max_in_flight: int, retries: int) -> None:
        """R142, R143: every message of a map is answered or failed exactly once, even when the
        worker named `victim` exits on the first message it is given, mid-map."""
        die_on = self.pick(victim, self.model.pool()) if victim is not None else None
        if die_on is not None:
            self.model.workers[die_on].may_exit_by_itself = True
        start = self.cursor
        bound = 60.0 if self.memory else 15.0
        result = self.step('map', count=count, die_on=die_on, chunksize=chunksize, max_in_flight=max_in_flight,
                           retries=retries, bound=bound)
        lost = sum(1 for stage, name, *_rest in self.driver.trace[start:] if stage == 'on' and name == 'worker_disconnect')
        event(f'map: {result[0]}' + (f' ({result[3]})' if result[0] == 'error' else '')
              + (', a worker lost' if lost else ''))
        expected = [2 * value for value in range(count)]
        replies = result[1]
        require(replies == expected[:len(replies)], 'R142', f'map yielded {replies}, expected a prefix of {expected}')
        if result[0] == 'done':
            require(replies == expected, 'R142', f'map ended after {len(replies)} of {count} replies')
        elif result[0] == 'error':
            _status, _replies, index, cause, kind = result
            require(kind == 'MapError' and index is not None and len(replies) <= index < count, 'R142',
                    f'map failed with {kind} index {index} after {len(replies)} replies')
            # Either the lost workers used up the retries (R143), or the cluster stopped under
            # the map (no worker left and none to come: no_workers shut it down), so nothing
            # can answer the rest: the map fails at once rather than waiting forever.
            stopped = cause is None and self.model.phase != 'active'
            require(stopped or (cause == 'WorkerLost' and lost >= retries + 1), 'R143',
                    f'map failed ({cause}) at message {index} with retries={retries} after {lost} workers '
                    f'were lost (primary {self.model.phase})')
        else:
            require(not self.model.pool() or not self.memory, 'R142',
                    f'map unfinished within {bound}s with ready workers {self.model.pool()}')

    @precondition(lambda self: self.usable() and self.model.phase == 'active' and bool(self.model.pool())
                  and self.quiet_links())
    @rule(count=st.integers(1, 9), victim=st.one_of(st.none(), WORKER_INDEX), chunksize=st.sampled_from([1, 2]),
          retries=st.sampled_from([0, 2]))
    def map_unordered(self, count: int, victim: int | None, chunksize: int, retries: int) -> None:
        """R142, R143 with `ordered=False`: no reply is yielded twice or left out, whatever order
        they come in, even when the worker named `victim` exits on the first message it is given."""
        die_on = self.pick(victim, self.model.pool()) if victim is not None else None
        if die_on is not None:
            self.model.workers[die_on].may_exit_by_itself = True
        start = self.cursor
        bound = 60.0 if self.memory else 15.0
        result = self.step('map_unordered', count=count, die_on=die_on, chunksize=chunksize, retries=retries,
                           bound=bound)
        lost = sum(1 for stage, name, *_rest in self.driver.trace[start:] if stage == 'on' and name == 'worker_disconnect')
        event(f'map_unordered: {result[0]}' + (', a worker lost' if lost else ''))
        replies = result[1]
        expected = {2 * value for value in range(count)}
        require(len(set(replies)) == len(replies) and set(replies) <= expected, 'R142',
                f'an unordered map of {count} tasks yielded {replies}: a reply twice or one never asked for')
        if result[0] == 'done':
            require(set(replies) == expected, 'R142', f'map ended after {len(replies)} of {count} replies')
        elif result[0] == 'error':
            _status, _replies, index, cause, kind = result
            require(kind == 'MapError' and index is not None and 0 <= index < count and 2 * index not in replies,
                    'R142', f'map failed with {kind} index {index} after yielding {sorted(replies)}')
            stopped = cause is None and self.model.phase != 'active'
            require(stopped or (cause == 'WorkerLost' and lost >= retries + 1), 'R143',
                    f'map failed ({cause}) at message {index} with retries={retries} after {lost} workers lost')
        else:
            require(not self.model.pool() or not self.memory, 'R142',
                    f'map unfinished within {bound}s with ready workers {self.model.pool()}')

    @invariant()
    def r141_requests_only_to_ready_workers(self) -> None:
        """R141: neither request() without `to` nor a map sends to a worker that is not ready
        (in the pool) when the request is written; the spec names no worker with `to`."""
        if self.driver is None:
            return
        targets, self.driver.request_targets = self.driver.request_targets, []
        for worker_id, state, in_pool in targets:
            require(state == 'ready' and in_pool, 'R141',
                    f'a request went to worker {worker_id} in state {state!r}, '
                    f'{"in" if in_pool else "out of"} the pool')

    @invariant()
    def r140_in_flight_counts(self) -> None:
        """R140: per worker, the requests in flight are never negative, none once it disconnected,
        and together they are the requests awaiting an answer."""
        if self.driver is None or self.model.phase == 'vanished':
            return
        counts = self.driver.in_flight()
        for worker_id, count in counts.items():
            require(count >= 0, 'R140', f'worker {worker_id} has {count} requests in flight')
            if self.model.workers[worker_id].state in (DISCONNECTED, DEAD):
                require(count == 0, 'R140', f'worker {worker_id} ({self.model.workers[worker_id].state}) '
                        f'still counts {count} requests in flight')
        pending = len(self.driver.primary._requests._pending)
        require(sum(counts.values()) == pending, 'R140', f'in-flight counts {counts} but {pending} requests pending')

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def r6_nothing_published_between_steps(self) -> None:
        """R6: publishes are synchronous; between steps none is left open."""
        if self.driver is not None:
            self.model.at_rest()

    @invariant()
    def r61_event_grammar_per_worker(self) -> None:
        """R61 (and R79): per worker, fork once; online at most once; ready at most once and after
        online; messages only between online and disconnect; error at most once before exit;
        disconnect exactly once; exit last, after disconnect."""
        if self.driver is None:
            return
        trace = self.driver.trace
        grammar = self.__dict__.setdefault('grammar', {})
        cursor = self.__dict__.get('grammar_cursor', 0)
        for stage, name, worker_id, _data, _when in trace[cursor:]:
            if stage != 'on' or worker_id is None or name in ('add_worker', 'remove_worker'):
                continue
            seen = grammar.setdefault(worker_id, [])
            done = set(seen)
            if name == 'worker_fork':
                require(not seen, 'R61', f'worker {worker_id}: worker_fork after {seen}')
            else:
                require('worker_fork' in done, 'R61', f'worker {worker_id}: {name} before worker_fork')
                require('worker_exit' not in done, 'R61', f'worker {worker_id}: {name} after worker_exit')
            if name == 'worker_online':
                require('worker_online' not in done and 'worker_disconnect' not in done, 'R61',
                        f'worker {worker_id}: worker_online after {seen}')
            elif name == 'worker_ready':
                require('worker_online' in done and 'worker_ready' not in done and 'worker_disconnect' not in done,
                        'R61', f'worker {worker_id}: worker_ready after {seen}')
            elif name in ('worker_message', 'worker_listening'):
                require('worker_online' in done and 'worker_disconnect' not in done, 'R61',
                        f'worker {worker_id}: {name} outside online..disconnect: {seen}')
            elif name == 'worker_error':
                require('worker_error' not in done, 'R85', f'worker {worker_id}: a second worker_error')
            elif name == 'worker_disconnect':
                require('worker_disconnect' not in done, 'R61', f'worker {worker_id}: a second worker_disconnect')
            elif name == 'worker_exit':
                require('worker_disconnect' in done, 'R79', f'worker {worker_id}: worker_exit before worker_disconnect')
            seen.append(name)
        self.grammar_cursor = len(trace)

    @invariant()
    def r65_pool_in_id_order(self) -> None:
        """R65: `workers` is the pool in ascending id order (the model's ready set); a fresh list;
        `worker_by_id` is a read-only snapshot of the same."""
        if self.driver is None or self.model.phase == 'vanished':
            return
        primary = self.driver.primary
        ids = [handle.id for handle in primary.workers]
        require(ids == self.model.pool(), 'R65', f'workers {ids}, the model says {self.model.pool()}')
        require(primary.workers is not primary.workers, 'R65', 'workers is not a new list')
        by_id = primary.worker_by_id
        require(sorted(by_id) == ids and all(by_id[i].id == i for i in ids), 'R65', f'worker_by_id {dict(by_id)}')

    @invariant()
    def r98_handle_states(self) -> None:
        """R98, R80: every handle's state is the model's; a dead handle carries its exit."""
        if self.driver is None or self.model.phase == 'vanished':
            return
        for worker_id, handle in self.driver.handles.items():
            expected = self.model.workers[worker_id].state
            require(handle.state == expected, 'R98', f'worker {worker_id} state {handle.state}, model {expected}')
            if handle.state != DEAD:
                require(handle.exit_code is None and handle.exit_signal is None, 'R80',
                        f'worker {worker_id} has exit fields before its exit')

    @invariant()
    def r91_no_shut_down_complete_while_live(self) -> None:
        """R91: shut_down_complete only after shut_down and after every worker's exit."""
        if self.driver is None:
            return
        forks = exits = 0
        shut_down = False
        for stage, name, _worker, _data, _when in self.driver.trace:
            if stage != 'on':
                continue
            forks += name == 'worker_fork'
            exits += name == 'worker_exit'
            shut_down = shut_down or name == 'shut_down'
            if name == 'shut_down_complete':
                require(shut_down and forks == exits and not self.model.expected_worker_forks, 'R91',
                        f'shut_down_complete with {forks - exits} workers live')

    @invariant()
    def r76_routing(self) -> None:
        """R76, R77: exactly the echo replies reached `_event_worker_message_echo_reply`, in order."""
        if self.driver is not None:
            routed = self.driver.primary.routed
            require(routed == self.model.routed_echo, 'R76', f'routed {routed}, expected {self.model.routed_echo}')

    @invariant()
    def r138_stats(self) -> None:
        """R138: stats() counts live and ready workers and every fork."""
        if self.driver is None or self.model.phase in ('vanished',):
            return
        stats = self.driver.primary.stats()
        require(stats['forked'] == self.model.next_id - 1, 'R138', f"forked {stats['forked']}")
        if self.model.phase != 'destroyed':
            require(stats['live'] == len(self.model.live()), 'R138', f"live {stats['live']}, model {self.model.live()}")
            require(stats['ready'] == len(self.model.pool()), 'R138', f"ready {stats['ready']}")

    # -- liveness, shutdown, determinism ------------------------------------------------------

    def run_until(self, predicate: Any, bound: float, real_bound: float = 20.0) -> bool:
        """Run the cluster until `predicate()` holds: at most `bound` virtual seconds on memory,
        `real_bound` real seconds elsewhere."""
        def checked() -> bool:
            self.sync()
            return predicate()
        reached, checks = self.driver.run_until(checked, bound if self.memory else real_bound)
        self.program.append(('run_until_check', {'checks': checks, 'reached': reached}))
        self.sync()
        return reached

    def slots_settled(self) -> bool:
        model = self.model
        if model.phase == 'vanished':
            return True
        if model.phase == 'shutting_down':
            return model.shut_down_complete_seen
        if model.phase != 'active':
            return True
        workers = model.workers.values()
        if any(w.state in (FORKED, ONLINE, DISCONNECTED) for w in workers) or model.expected_top_forks:
            return False
        if any(w.hostile and w.state != DEAD for w in workers):  # it is killed once its bytes arrive
            return False
        if model.heartbeat and any(w.hung and w.state != DEAD for w in workers):
            return False  # R131: its heartbeats find a hung worker out; it is killed and replaced
        if model.reload is not None or model.reloads_completed < model.reloads_started:
            return False
        return model.restart_limit_seen or len(model.pool()) == model.target

    def check_liveness(self) -> None:
        """After faults stop (holds released), within bounded virtual time every slot is ready
        again, or restart_limit was published (R82, R87, R127-R134); a shutdown completes."""
        model = self.model
        if model.phase == 'vanished':
            return
        for worker in model.workers.values():
            if worker.held:
                self.step('release', worker=worker.id)
                worker.held = False
        model.primary_may_have_written()
        # Slow boots queued by the faults still apply to the next workers started: each can
        # cost a ready timeout, a kill and a restart, so it extends the bound.
        bound = LIVENESS_BOUND + SLOW_BOOT_ALLOWANCE * len(model.pending_slow_boots)
        if not self.run_until(self.slots_settled, bound):
            states = {w.id: w.state for w in model.workers.values() if w.state != DEAD}
            raise SpecViolation(
                f'liveness: not settled within {bound}s after the faults stopped: phase {model.phase}, '
                f'target {model.target}, pool {model.pool()}, not dead {states}, reload {model.reload}, '
                f'reloads {model.reloads_started}/{model.reloads_completed}, restart_limit {model.restart_limit_seen}')
        if model.phase == 'active':
            self.step('advance', seconds=0.05)
            for worker in model.workers.values():
                if worker.state == READY and worker.process_alive and not (
                        worker.hung or worker.may_exit_by_itself or worker.fail_to_worker or worker.link_broken
                        or worker.hostile):
                    require(not worker.inflight, 'R115', f'worker {worker.id} never answered {list(worker.inflight)}')

    def teardown(self) -> None:
        driver = self.driver
        if driver is None:
            return
        try:
            note(f'replay: python3 -c "from specs.driver import replay; print(replay({self.seed}, '
                 f'{self.config!r}, {self.program!r}))"')
            model = self.model
            if self.failed:
                return  # a step already failed: the run is reported as it stands
            self.failed = True
            if model.phase != 'vanished':
                self.check_liveness()
                if model.phase == 'active':
                    self.step('shut_down')
                if model.phase == 'shutting_down':
                    require(self.run_until(lambda: model.shut_down_complete_seen, SHUTDOWN_BOUND), 'R89/R91',
                            f'shutdown not complete within {SHUTDOWN_BOUND}s: live {model.live()}')
                if model.phase != 'destroyed':
                    self.step('destroy')
                    require(model.destroy_complete_seen, 'R94', 'destroy() after shutdown did not destroy at once')
            if self.memory and STATS['memory_examples'] % REPLAY_EVERY == 0:
                STATS['replays'] += 1
                again = replay(self.seed, self.config, self.program)
                require(again == driver.trace_hash(), 'R121',
                        f'seed {self.seed}: the replayed program gave a different trace')
            self.failed = False
        finally:
            driver.close()
            key = 'memory' if self.memory else 'process'
            STATS[f'{key}_examples'] += 1
            STATS[f'{key}_seconds'] += time.monotonic() - self.started


class ProcessClusterMachine(ClusterMachine):
    """The same spec against real processes (memory-only rules are skipped by precondition)."""

    TRANSPORT = 'process'


_COMMON = dict(deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)

TestMemoryCluster = ClusterMachine.TestCase
TestMemoryCluster.settings = settings(max_examples=MEMORY_EXAMPLES, stateful_step_count=MEMORY_STEPS, **_COMMON)

# On real processes, timing decides some of the model's state after a step (a heartbeat
# missed, a restart limit reached before or after a crash), and with it which rules are
# enabled next. Hypothesis requires that the same choices always draw the same way and raises
# FlakyStrategyDefinition when a later example shares a prefix that drew differently, hiding
# any real failure (seen about once in ten `make spec` runs). So, as on Ray (spec_ray.py),
# each example is a Hypothesis run of its own: random seed, no shrinking, no database. A
# violation is reported with the steps as they ran; the checks are the model's, as on memory
# (where the full Hypothesis search, shrinking included, still runs). Two examples a run:
# Hypothesis's first is always the simplest program, the second a random one.
def one_example_per_run(steps: int) -> settings:
    """Settings for one Hypothesis run per example (random seed, no shrinking, no database).
    derandomize=False: with CI set, Hypothesis loads its 'ci' profile, which derandomizes, and
    every run would then be the same program (CI ran one Ray program 15 times)."""
    return settings(max_examples=2, stateful_step_count=steps, phases=[Phase.generate], database=None,
                    derandomize=False, **_COMMON)


PROCESS_SETTINGS = one_example_per_run(PROCESS_STEPS)

_unavailable = process_transport_unavailable()


@pytest.mark.skipif(_unavailable is not None, reason=_unavailable or '')
def test_process_cluster_spec() -> None:
    """The machine on real processes: PROCESS_EXAMPLES random programs (plus as many of the
    simplest), and a check that they really ran."""
    before = STATS['process_examples']
    for _ in range(PROCESS_EXAMPLES):
        run_state_machine_as_test(ProcessClusterMachine, settings=PROCESS_SETTINGS)
    assert STATS['process_examples'] - before >= 2 * PROCESS_EXAMPLES, STATS
