"""The system side of the executable spec: one primary on one transport, driven by a program.

A program is a list of `(op, kwargs)` steps with plain-data arguments. `Driver.apply` runs
one step and returns a plain-data result; everything the primary publishes is recorded in
`trace` (stage, event, worker id, data summary, loop time), and so is every step with its
result. On the memory transport the same seed and the same program give the same trace,
byte for byte (SPEC R121), which `replay()` checks.

The worker target and the primary subclass live here, at module level, so that the process
transport can fork them and Ray actors can import them (`specs.driver` on the actors'
PYTHONPATH, see `start_ray`).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal as signal_module
import struct
import time
from typing import Any, Callable

from isocluster import ClusterPrimary, ClusterWorker, protocol

PRIMARY_EVENTS = (
    'fork', 'worker_fork', 'worker_online', 'worker_ready', 'add_worker', 'remove_worker',
    'worker_message', 'worker_listening', 'worker_disconnect', 'worker_error', 'worker_exit',
    'shut_down', 'shut_down_complete', 'restart_limit', 'reload', 'reload_complete',
    'destroy', 'destroy_complete', 'no_workers',
)

READY_TIMEOUT = 5.0
SHUTDOWN_TIMEOUT = 2.0
KILL_TIMEOUT = 1.0
WORKER_KILL_TIMER = 6.765  # R111
RAY_WORKER_OPTIONS: dict[str, Any] | None = None  # spec_ray spreads the actors over its nodes
RAY_READY_TIMEOUT = 30.0  # a Ray worker is a new actor process: its start is slower than a fork
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_ray() -> bool:
    """Start the local Ray instance the spec's Ray workers run on (127.0.0.1 only, through
    `ray_local`, as the tests); True if this call started it (the caller then owns
    `ray.shutdown()`). The actors import `specs.driver.spec_worker_main` (and isocluster) by name."""
    from isocluster.transport import ray_local

    return ray_local.start_local(paths=[ROOT])


# -- the worker every spec cluster runs -------------------------------------------------------

class SpecWorker(ClusterWorker):
    """Answers every message it gets, in order, so the primary can check per-link FIFO (R115).

    `{'type': 'echo'}` is routed here (R108) and answered with `echo_reply`, which the primary
    routes (R76); `{'type': 'mystery'}` has no method, so the `after` handler answers it with
    `unrouted_reply` and whether anything was routed; a list `[seq]` is untyped. `exit`,
    `raise` and `leave` end the worker (SystemExit, an exception: R33, ClusterWorker.destroy).
    """

    routed_seq: Any = None

    def _event_primary_message_echo(self, event: Any) -> None:
        self.routed_seq = event.data['message']['seq']
        self.send({'type': 'echo_reply', 'seq': self.routed_seq, 'worker': ClusterWorker.worker_id})

    def _event_primary_message_exit(self, event: Any) -> None:
        raise SystemExit(event.data['message']['code'])

    def _event_primary_message_raise(self, event: Any) -> None:
        raise RuntimeError('spec worker: raising on purpose (SPEC R33)')

    def _event_primary_message_leave(self, event: Any) -> None:
        self.destroy()

    def _event_primary_message_hang(self, event: Any) -> None:
        """The process transport's hang (MemoryTransport.hang): the loop blocks for good, so
        nothing is answered any more, heartbeats included; SIGTERM ends it unless ignored."""
        if event.data['message']['ignore_sigterm']:
            signal_module.signal(signal_module.SIGTERM, signal_module.SIG_IGN)
        while True:
            time.sleep(60)

    def _event_primary_message_task(self, event: Any) -> int:
        """A map's task (R142): twice its value; the worker `die_on` names exits instead."""
        message = event.data['message']
        if message.get('die_on') == ClusterWorker.worker_id:
            raise SystemExit(1)
        return 2 * message['value']


def spec_worker_main() -> None:
    worker = SpecWorker()

    def answer_unrouted(event: Any) -> None:
        message = event.data['message']
        if isinstance(message, dict) and message.get('type') == 'mystery':
            worker.send({'type': 'unrouted_reply', 'seq': message['seq'], 'worker': ClusterWorker.worker_id,
                         'routed': worker.routed_seq == message['seq']})
        elif isinstance(message, list):
            worker.send(['plain', message[0], ClusterWorker.worker_id])

    worker.after('primary_message', answer_unrouted)


class SpecPrimary(ClusterPrimary):
    def __init__(self, **options: Any) -> None:
        self.routed: list[int] = []
        super().__init__(**options)

    def _event_worker_message_echo_reply(self, event: Any) -> None:
        self.routed.append(event.data['message']['seq'])


# -- the driver -----------------------------------------------------------------------------

def _summary(name: str, data: dict[str, Any]) -> dict[str, Any]:
    if name == 'worker_exit':
        signal = data['signal']
        return {'code': data['code'], 'signal': int(signal) if signal is not None else None,
                'exited_after_disconnect': data['worker'].exited_after_disconnect}
    if name == 'worker_error':
        return {'error': type(data['error']).__name__}
    if name == 'worker_message':
        return {'message': data['message']}
    if name in ('fork', 'restart_limit'):
        return {'worker_count': data['worker_count']}
    if name == 'reload':
        return {'worker_count': data['worker_count']}
    if name == 'no_workers':
        return {'reason': data['reason'], 'error': type(data['error']).__name__}
    if name == 'reload_complete':
        return {'worker_count': data['worker_count'], 'aborted': data['aborted']}
    return {}


def _frame(kind: str, body: bytes) -> bytes:
    return struct.pack('>IB', len(body) + 1, protocol.KINDS.index(kind)) + body


# What a hostile or broken worker writes (issue 13). Each breaks the protocol: the worker gets
# worker_error(ProtocolError), at once, or for 'truncated' once frame_timeout has passed.
HOSTILE_BYTES = {
    'reply_to_nothing': _frame(protocol.REPLY, struct.pack('>QB', 2 ** 64 - 1, 0) + b'[]'),
    'deep_ready': _frame(protocol.READY, b'[' * 100_000 + b']' * 100_000),
    'listen_object': _frame(protocol.LISTEN, b'{"id":1,"address":{}}'),
    'unknown_kind': struct.pack('>IB', 1, 255),
    'oversized': struct.pack('>I', protocol.DEFAULT_MAX_FRAME_SIZE + 1),
    'truncated': struct.pack('>IB', 1000, protocol.KINDS.index(protocol.MESSAGE)) + b'{"cut":',
}


class Driver:
    """One primary on `transport` ('memory', 'process' or 'ray'), recording everything.

    'ray' uses the running Ray instance, or starts one with `start_ray()` (left running for
    the next driver; the test module shuts it down).
    """

    def __init__(self, transport: str, seed: int, config: dict[str, Any]) -> None:
        self.kind = transport
        self.seed = seed
        self.config = dict(config)
        self.trace: list[tuple[Any, ...]] = []
        self.handles: dict[int, Any] = {}
        self.sim: Any = None
        if transport == 'memory':
            from isocluster.transport.memory import MemoryTransport

            self.sim = MemoryTransport(seed=seed)
            chosen = self.sim
        elif transport == 'process':
            from isocluster.transport.process import ProcessTransport

            chosen = ProcessTransport(loop=asyncio.new_event_loop())
        elif transport == 'ray':
            from isocluster.transport.ray import RayTransport

            start_ray()
            chosen = RayTransport(loop=asyncio.new_event_loop(), worker_options=RAY_WORKER_OPTIONS)
        else:
            raise ValueError(f"transport: expected 'memory', 'process' or 'ray', got {transport!r}")
        self.transport = chosen
        self.loop = chosen.loop
        self.primary = SpecPrimary(
            worker_target=spec_worker_main, transport=chosen,
            restart_intensity=config['intensity'], restart_period=config['period'], restart_backoff=None,
            ready_timeout=RAY_READY_TIMEOUT if transport == 'ray' else READY_TIMEOUT,
            shutdown_timeout=SHUTDOWN_TIMEOUT, kill_timeout=KILL_TIMEOUT,
            heartbeat_interval=config['heartbeat'], heartbeat_timeout=config.get('heartbeat_timeout'),
        )
        for name in PRIMARY_EVENTS:
            self.primary.on(name, self._recorder('on', name))
            self.primary.after(name, self._recorder('after', name))
        self.pids: set[int] = set()
        self.request_targets: list[tuple[int, str, bool]] = []
        self._record_request_targets()

    def _record_request_targets(self) -> None:
        """Every request the primary opens (request() or a map), with its worker's state and
        whether it was in the pool then (R141): the spec sends no request with `to`."""
        requests = self.primary._requests
        open_request = requests.open
        registry = self.primary._registry

        def recording_open(loop: Any, peer: Any, *args: Any, **kwargs: Any) -> Any:
            self.request_targets.append((peer.id, peer.state, peer.id in registry.pool_ids))
            return open_request(loop, peer, *args, **kwargs)

        requests.open = recording_open

    def _recorder(self, stage: str, name: str) -> Callable[[Any], None]:
        def record(event: Any) -> None:
            worker = event.data.get('worker')
            if worker is not None:
                self.handles.setdefault(worker.id, worker)
                if worker.pid is not None:
                    self.pids.add(worker.pid)
            self.trace.append((stage, name, worker.id if worker is not None else None,
                               _summary(name, event.data), self.loop.time()))
        return record

    def trace_hash(self) -> str:
        return hashlib.sha256(repr(self.trace).encode()).hexdigest()

    # -- steps --------------------------------------------------------------------------

    def apply(self, op: str, **kwargs: Any) -> Any:
        result = getattr(self, 'op_' + op)(**kwargs)
        self.trace.append(('call', op, tuple(sorted(kwargs.items())), result,
                           self.loop.time() if self.kind == 'memory' else None))
        return result

    def op_fork(self, count: int) -> None:
        self.primary.fork(count)

    def op_scale(self, count: int) -> None:
        self.primary.scale(count)

    def op_reload(self) -> None:
        self.primary.reload()

    def op_round_robin(self, tag: str) -> int | None:
        picked = self.primary.round_robin(tag)
        return picked.id if picked is not None else None

    def _destination(self, spec: tuple[Any, ...]) -> Any:
        kind, value = spec
        if kind == 'id':
            return value
        if kind == 'handle':
            return self.handle(value)
        return {'str': '1', 'float': 1.0, 'dict': {}, 'bool': True, 'neg': -1, 'unknown_id': 10_000}[value]

    def op_send(self, to: Any, message: Any) -> tuple[Any, ...]:
        """Returns (resolved_now, destination ids or None, per-destination outcome, top-level error)."""
        if to == 'all':
            destinations = [handle for handle in self.primary.workers if not handle.leaving]  # R147
            future = self.primary.send(message)
            labels = [('handle', handle.id) for handle in destinations]
        else:
            specs = to if isinstance(to, list) else [to]
            destinations = [self._destination(tuple(spec)) for spec in specs]
            future = self.primary.send(message, to=destinations if isinstance(to, list) else destinations[0])
            labels = [tuple(spec) for spec in specs]
        if not future.done():
            return ('pending', labels, None, None)
        error = future.exception()
        if error is None:
            return ('ok', labels, ['ok'] * len(labels), None)
        failures = list(getattr(error, 'failures', None) or []) if len(destinations) > 1 else [(destinations[0], error)]
        outcomes = []
        index = 0
        for destination in destinations:
            if index < len(failures) and failures[index][0] is destination:
                failure = failures[index][1]
                cause = type(failure.__cause__).__name__ if failure.__cause__ is not None else None
                outcomes.append((type(failure).__name__, cause))
                index += 1
            else:
                outcomes.append('ok')
        return ('error', labels, outcomes, type(error).__name__, index == len(failures))

    # -- task queues (R140-R146) -------------------------------------------------------------

    def in_flight(self) -> dict[int, int]:
        """Requests in flight per known worker, as the primary counts them (R140)."""
        handles = {**self.handles, **self.primary._live}
        return {worker_id: self.primary.in_flight(handle) for worker_id, handle in sorted(handles.items())}

    def op_least_busy(self, tag: str) -> tuple[int | None, dict[int, int]]:
        """The pick and the in-flight counts of the ready workers just before it (R141)."""
        counts = {handle.id: self.primary.in_flight(handle) for handle in self.primary.workers}
        picked = self.primary.least_busy(tag)
        return (picked.id if picked is not None else None, counts)

    def op_request(self, values: list[int]) -> list[tuple[Any, ...]]:
        """request() without `to`, once per value, back to back and not awaited: each sees the
        requests before it in flight. Per request: (the worker picked, the in-flight counts of
        the ready workers just before, the error it was rejected with at once or None)."""
        results = []
        for value in values:
            counts = {handle.id: self.primary.in_flight(handle) for handle in self.primary.workers}
            before = dict(self.primary._round_robin_history.get('', {}))
            future = self.primary.request({'type': 'task', 'value': value})
            future.add_done_callback(lambda done: done.cancelled() or done.exception())
            after = self.primary._round_robin_history.get('', {})
            picked = [worker_id for worker_id, when in after.items() if before.get(worker_id) != when]
            results.append((picked[0] if picked else None, counts,
                            type(future.exception()).__name__ if future.done() else None))
        return results

    def op_map(self, count: int, die_on: int | None, chunksize: int, max_in_flight: int, retries: int,
               bound: float) -> tuple[Any, ...]:
        """One map of `count` tasks, run until it ends or `bound` seconds pass; then
        ('done', replies) | ('error', replies, index, cause, kind) | ('unfinished', replies)."""
        return self._run_map(count, die_on, bound, chunksize=chunksize, max_in_flight=max_in_flight, retries=retries)

    def op_map_unordered(self, count: int, die_on: int | None, chunksize: int, retries: int,
                         bound: float) -> tuple[Any, ...]:
        """One `ordered=False` map of `count` tasks (at most one request on a worker), the same
        outcomes as op_map, the replies in the order they were yielded."""
        return self._run_map(count, die_on, bound, ordered=False, chunksize=chunksize, max_in_flight=1, retries=retries)

    def _run_map(self, count: int, die_on: int | None, bound: float, **options: Any) -> tuple[Any, ...]:
        tasks = [{'type': 'task', 'value': value, 'die_on': die_on} for value in range(count)]
        replies: list[Any] = []
        outcome: list[Any] = []

        async def consume() -> None:
            try:
                async for reply in self.primary.map(tasks, **options):
                    replies.append(reply)
            except Exception as error:
                cause = type(error.__cause__).__name__ if error.__cause__ is not None else None
                outcome.append(('error', getattr(error, 'index', None), cause, type(error).__name__))
            else:
                outcome.append(('done',))

        task = self.loop.create_task(consume())
        self.run_until(task.done, bound)
        if not task.done():
            task.cancel()
            self.run_until(task.done, 1.0)
            return ('unfinished', replies)
        if outcome[0][0] == 'done':
            return ('done', replies)
        return ('error', replies, *outcome[0][1:])

    def alive(self, worker_id: int) -> bool:
        if self.sim is not None:
            return self.sim.alive(worker_id)
        handle = self.handles.get(worker_id) or self.primary._live.get(worker_id)
        return handle is not None and handle.state != 'dead'

    def op_crash(self, worker: int, code: int | None = None, signal: int | None = None) -> bool:
        alive = self.alive(worker)
        if self.sim is not None:
            self.sim.crash(worker, code=code, signal=signal)
        else:
            self.handle(worker).kill(signal)
        return alive

    def handle(self, worker_id: int) -> Any:
        # A worker whose worker_fork is not yet published has no public handle; peek at the primary.
        return self.handles.get(worker_id) or self.primary._live[worker_id]

    def op_kill(self, worker: int, signal: int) -> bool:
        alive = self.alive(worker)
        self.handle(worker).kill(signal)
        return alive

    def op_hang(self, worker: int, ignore_sigterm: bool) -> bool:
        if self.sim is None:  # a real worker blocks its own loop once the message arrives
            alive = self.alive(worker)
            self.handle(worker).send({'type': 'hang', 'ignore_sigterm': ignore_sigterm}).add_done_callback(
                lambda done: done.cancelled() or done.exception())
            return alive
        alive = self.sim.alive(worker)
        self.sim.hang(worker, ignore_sigterm=ignore_sigterm)
        return alive

    def op_hold(self, worker: int) -> None:
        self.sim.hold(worker)

    def op_release(self, worker: int) -> None:
        self.sim.release(worker)

    def op_fail_next_send(self, worker: int, direction: str) -> None:
        self.sim.fail_next_send(worker, direction=direction)

    def op_inject_bytes(self, worker: int, fault: str) -> bool:
        """Raw bytes on the worker's link as if it wrote them; False when its link is gone."""
        try:
            self.sim.inject_bytes(worker, HOSTILE_BYTES[fault])
        except ValueError:
            return False
        return True

    def op_slow_boot(self, delay: float) -> None:
        self.sim.slow_boot(delay)

    def op_kill_primary(self) -> None:
        self.sim.kill_primary()

    def op_shut_down(self) -> str:
        try:
            self.primary.shut_down()
        except Exception as error:
            return type(error).__name__
        return 'ok'

    def op_destroy(self) -> None:
        self.primary.destroy()

    def op_advance(self, seconds: float) -> None:
        if self.sim is not None:
            self.sim.advance(seconds)
        else:
            self.loop.run_until_complete(asyncio.sleep(min(seconds, 0.2)))

    def op_run_until_check(self, checks: int, reached: bool) -> bool:
        """Replay form of `run_until`: stop at the same predicate evaluation (memory only)."""
        counter = iter(range(checks - 1))
        from isocluster.transport.memory import SimulationDeadlock

        try:
            self.sim.run_until(lambda: next(counter, None) is None, timeout=3600.0)
        except (TimeoutError, SimulationDeadlock):
            pass
        return reached

    def run_until(self, predicate: Callable[[], bool], timeout: float) -> tuple[bool, int]:
        """Run until `predicate()`; (reached, predicate evaluations). Timeout in virtual seconds,
        or wall seconds for processes. The caller records `run_until_check` for replay."""
        if self.sim is not None:
            checks = 0

            def counted() -> bool:
                nonlocal checks
                checks += 1
                return predicate()
            from isocluster.transport.memory import SimulationDeadlock

            try:
                self.sim.run_until(counted, timeout=timeout)
                reached = True
            except (TimeoutError, SimulationDeadlock):  # idle: the condition can no longer become true
                reached = False
            self.trace.append(('call', 'run_until_check', (('checks', checks), ('reached', reached)), reached,
                               self.loop.time()))
            return reached, checks
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False, 0
            self.loop.run_until_complete(asyncio.sleep(0.01))
        return True, 0

    def close(self) -> None:
        """Leave nothing behind: on the process transport every child is killed and reaped; on
        Ray every actor still alive is `ray.kill`ed by `RayTransport.close()`."""
        if self.kind in ('process', 'ray'):
            try:
                if not self.primary.destroyed:
                    self.primary.destroy()
                    deadline = time.monotonic() + (30 if self.kind == 'ray' else 10)
                    while not self.primary.closed and time.monotonic() < deadline:
                        self.loop.run_until_complete(asyncio.sleep(0.01))
            finally:
                for pid in self.pids if self.kind == 'process' else ():
                    try:
                        os.kill(pid, signal_module.SIGKILL)
                        os.waitpid(pid, 0)
                    except (ProcessLookupError, ChildProcessError):
                        pass
                self.transport.close()
                self.loop.close()


def replay(seed: int, config: dict[str, Any], program: list[tuple[str, dict[str, Any]]]) -> str:
    """Run `program` on a fresh memory-transport primary; returns its trace hash.

    Used by the determinism check (R121) and printed with every failure so it can be re-run:
    python3 -c "from specs.driver import replay; print(replay(SEED, CONFIG, PROGRAM))"
    """
    driver = Driver('memory', seed, config)
    for op, kwargs in program:
        driver.apply(op, **kwargs)
    return driver.trace_hash()


__all__ = ['Driver', 'replay', 'SpecWorker', 'SpecPrimary', 'spec_worker_main']
