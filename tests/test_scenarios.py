"""The 20 acceptance scenarios of SPEC §8, on both transports.

Every scenario from 4 on is a `build(ctx)` function run by the `run_scenario` fixture on the
memory transport (several seeds) and on the process transport (see conftest.py). Traces use
the block shorthand of SPEC §8.1; `expand()` turns it into entries.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import signal

import pytest

import scenario_workers as sw
from isocluster.errors import ClusterError, InvalidDestinationError, NotAWorkerError
from isocluster.primary import ClusterPrimary
from isocluster.worker import ClusterWorker

# -- SPEC §8.1: event sets and blocks -----------------------------------------------------------

S1 = ('fork', 'shut_down', 'shut_down_complete', 'worker_disconnect', 'worker_fork', 'worker_online')
S2 = S1 + ('add_worker', 'remove_worker', 'worker_message', 'worker_ready')
S2X = S2 + ('worker_exit',)

BLOCKS = {
    'F': ['on fork', 'after fork'],
    'WF': ['on worker_fork', 'after worker_fork'],
    'ON': ['on worker_online', 'after worker_online'],
    'RDY': ['on worker_ready', 'on add_worker', 'after add_worker', 'after worker_ready'],
    'MSG': ['on worker_message', 'after worker_message'],
    'LST': ['on worker_listening', 'after worker_listening'],
    'ERR': ['on worker_error', 'after worker_error'],
    'SD': ['on shut_down', 'after shut_down'],
    'DIS': ['on worker_disconnect', 'on remove_worker', 'after remove_worker', 'after worker_disconnect'],
    'DIS1': ['on worker_disconnect', 'after worker_disconnect'],
    'EX': ['on worker_exit', 'after worker_exit'],
    'EXF': ['on worker_exit', 'on fork', 'after fork', 'after worker_exit'],
    'SDC': ['on shut_down_complete', 'after shut_down_complete'],
}

KILL_TIMER = 6.765  # the worker's kill timer (R111, R112)


def expand(*parts: str) -> list[str]:
    """Block shorthand to trace entries. A part that starts with 'on ' or 'after ' is one
    literal entry; any other part is a space-separated list of blocks, where '+X' is a new
    block (kept) and '-X' / '−X' a block of the original that is gone (dropped)."""
    entries: list[str] = []
    for part in parts:
        if part.startswith(('on ', 'after ')):
            entries.append(part)
            continue
        for token in part.split():
            if token[0] in '-−':
                continue
            entries.extend(BLOCKS[token.lstrip('+')])
    return entries


def assert_clean(run) -> None:
    assert run.problems == [], run.describe()


def block_span(run, name: str, worker: int | None, occurrence: int = 0) -> tuple[int, int]:
    """(first, last) index in `run.entries` of the `occurrence`-th block `name` of `worker`,
    following that worker's entries (the projection of a block is contiguous)."""
    texts = BLOCKS[name]
    starts = [i for i, e in enumerate(run.entries) if e.text == texts[0] and e.worker == worker]
    assert len(starts) > occurrence, f'no block {name} #{occurrence} for worker {worker}\n{run.describe()}'
    first = index = starts[occurrence]
    for text in texts[1:]:
        index = next(
            i for i in range(index + 1, len(run.entries))
            if run.entries[i].text == text and run.entries[i].worker == worker
        )
    return first, index


def exit_signal(run, worker_id: int):
    return next((sig for wid, _, sig in run.exits if wid == worker_id), 'no exit')


# -- 8.2 ClusterWorker outside a worker ---------------------------------------------------------


def _construct_and_destroy_worker_object(cls: type) -> None:
    worker = cls(initialize=False)
    assert isinstance(worker, ClusterWorker)
    assert isinstance(worker, cls)
    published = []
    worker.on('destroy_complete', lambda event: published.append(event.name))
    worker.destroy()  # raises nothing, does not end the process
    assert published == ['destroy_complete']
    assert worker.destroyed is True
    assert ClusterWorker.worker_id is None
    assert ClusterWorker.is_worker() is False


def _in_context(context: str, body) -> None:
    if context == 'without a loop':
        body()
        return

    async def main() -> None:
        errors = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, data: errors.append(data))
        body()
        for _ in range(20):  # the test process keeps running: nothing fatal was scheduled
            await asyncio.sleep(0)
        assert errors == []

    asyncio.run(main())


@pytest.mark.parametrize('context', ['without a loop', 'in a running loop'])
def test_scenario_1_construct_a_worker_object(context):
    _in_context(context, lambda: _construct_and_destroy_worker_object(ClusterWorker))


@pytest.mark.parametrize('context', ['without a loop', 'in a running loop'])
def test_scenario_2_subclass_as_factory(context):
    class W(ClusterWorker):
        pass

    _in_context(context, lambda: _construct_and_destroy_worker_object(W))


def test_scenario_3_fail_to_initialize_outside_a_worker():
    async def main() -> None:
        loop_errors = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, data: loop_errors.append(data))
        calls = []

        def h(event) -> None:
            calls.append(event.data['error'])
            event.prevent()

        worker = ClusterWorker()
        worker.on('initialize_error', h)
        assert calls == [], 'initialize_error must not be published during the constructor (R42)'
        for _ in range(50):
            if calls:
                break
            await asyncio.sleep(0)
        for _ in range(50):
            if calls:
                break
            await asyncio.sleep(0.01)
        assert len(calls) == 1
        assert isinstance(calls[0], NotAWorkerError)
        assert worker.initialized is False
        for _ in range(20):  # nothing is fatal afterwards
            await asyncio.sleep(0)
        assert len(calls) == 1
        assert loop_errors == []

    asyncio.run(main())


# -- 8.3 ClusterPrimary -------------------------------------------------------------------------


def _construct_a_primary(run_scenario, cls: type) -> None:
    def build(ctx) -> None:
        # ClusterPrimary() on the process transport, ClusterPrimary(transport=sim) on memory.
        p = ctx.primary(cls, default_transport=True)
        ctx.check(isinstance(p, ClusterPrimary) and isinstance(p, cls), f'not a {cls.__name__}: {p!r}')
        ctx.check(p.initialized is True, 'the primary is not initialized after construction (R57)')
        order = ctx.notes['order'] = []

        def on_worker_fork(event) -> None:
            order.append('worker_fork')

        def on_shut_down_complete(event) -> None:
            order.append('shut_down_complete')

        def h(event) -> None:
            order.append(('h', event.data))

        p.on('worker_fork', on_worker_fork)
        p.on('shut_down_complete', on_shut_down_complete)
        p.on('destroy_complete', h)
        p.destroy()
        order.append('destroy() returned')

    run = run_scenario(build)
    assert_clean(run)
    assert run.notes['order'] == [
        'destroy() returned',
        'shut_down_complete',
        ('h', {'args': (), 'kwargs': {}}),
    ]


def test_scenario_4_construct_a_primary(run_scenario):
    _construct_a_primary(run_scenario, ClusterPrimary)


def test_scenario_5_subclass_as_factory(run_scenario):
    class P(ClusterPrimary):
        pass

    _construct_a_primary(run_scenario, P)


def _fork_a_worker(ctx, **options) -> None:
    p = ctx.primary(**options)
    ctx.record(p, S1)

    def after_online(event) -> None:
        ctx.timer_d(p)
        ctx.last_expected(p)

    p.after('worker_online', after_online)
    p.fork()


def test_scenario_6_fork_a_worker(run_scenario):
    run = run_scenario(lambda ctx: _fork_a_worker(ctx, worker_target=sw.idle))
    assert_clean(run)
    assert run.trace == expand('F WF ON SD DIS1 SDC')
    assert run.exits == [(1, 0, None)]  # idle: code 0 when disconnected (R102)


def test_scenario_7_fork_a_silent_worker(run_scenario, transport, capfd):
    run = run_scenario(lambda ctx: _fork_a_worker(ctx, worker_target=sw.idle_printing, worker_silent=True))
    assert_clean(run)
    assert run.trace == expand('F WF ON SD DIS1 SDC')
    assert run.exits == [(1, 0, None)]
    if transport.name == 'process':
        out, err = capfd.readouterr()
        assert sw.STDOUT_MARKER not in out + err
        assert sw.STDERR_MARKER not in out + err


def test_scenario_7_control_a_worker_that_is_not_silent_is_heard(run_scenario, process_only, capfd):
    # Shows that the capture of scenario 7 would see the worker's output if it got through.
    run = run_scenario(lambda ctx: _fork_a_worker(ctx, worker_target=sw.idle_printing))
    assert_clean(run)
    out, err = capfd.readouterr()
    assert sw.STDOUT_MARKER in out
    assert sw.STDERR_MARKER in err


def test_scenario_8_no_fork_after_shut_down(run_scenario):
    def build(ctx) -> None:
        p = ctx.primary(worker_target=sw.idle)
        ctx.record(p, S1)
        p.shut_down().fork()
        ctx.timer_d(p)
        ctx.last_expected(p)

    run = run_scenario(build)
    assert_clean(run)
    assert run.trace == expand('SD SDC')
    assert run.handles == {}  # no worker is started


def test_scenario_9_worker_error(run_scenario):
    def build(ctx) -> None:
        p = ctx.primary(worker_target=sw.idle)
        ctx.record(p, S1 + ('worker_error',))
        onlines = []

        def after_online(event) -> None:
            onlines.append(event.data['worker'])
            if len(onlines) == 1:
                p._publish('worker_error', {'worker': event.data['worker'], 'error': ClusterError('injected')})
                ctx.timer_d(p)
            elif len(onlines) == 2:
                ctx.last_expected(p)

        p.after('worker_online', after_online)
        p.fork()

    run = run_scenario(build)
    assert_clean(run)
    assert run.trace == expand('F WF ON ERR +DIS1 +F +WF +ON SD DIS1 SDC')
    # R86: the worker_error default action kills the worker (SIGTERM); its replacement is the
    # worker shut down at the end, an idle worker ending with code 0 (R102).
    assert run.exits == [(1, None, signal.SIGTERM), (2, 0, None)]
    assert [run.handles[i].exited_after_disconnect for i in (1, 2)] == [False, True]  # R81


def test_scenario_10_communicate_with_a_worker(run_scenario, transport):
    def build(ctx) -> None:
        sw.SAD_CHECKS.clear()
        p = ctx.primary(worker_target=sw.communicate_sad)
        ctx.record(p, S2)
        wm = ctx.notes['wm'] = []

        def after_online(event) -> None:
            ctx.timer_d(p)

        def after_ready(event) -> None:
            p.send({'count': 0}, to=event.data['worker'])

        def after_message(event) -> None:
            message = event.data['message']
            wm.append(message)
            if not (isinstance(message, dict) and isinstance(message.get('count'), int)):
                ctx.check(False, f'unexpected worker message {message!r}')
            elif message['count'] < 5:
                p.send({'count': message['count'] + 1}, to=event.data['worker'])
            else:
                ctx.last_expected(p)

        p.after('worker_online', after_online)
        p.after('worker_ready', after_ready)
        p.after('worker_message', after_message)
        p.fork()

    run = run_scenario(build)
    assert_clean(run)
    assert run.trace == expand('F WF ON -MSG RDY MSG MSG MSG SD DIS SDC')
    assert run.notes['wm'] == [{'count': 1}, {'count': 3}, {'count': 5}]
    # communicate-sad: the send after primary_disconnect was already rejected with SendError;
    # a worker that found otherwise raised, which would have made it exit with code 1.
    assert run.exits == [(1, 0, None)]
    if transport.name == 'memory':
        assert sw.SAD_CHECKS == [True]


class RoutingPrimary(ClusterPrimary):
    """Scenario 11: routes the typed worker's x, y, z messages (R76)."""

    scenario_wm: list | None = None

    def _event_worker_message_x(self, event) -> None:
        self.send(
            {'b': 'b', 'message': event.data['message'], 'type': 'b', 'worker_messages': self.scenario_wm},
            to=event.data['worker'],
        )

    def _event_worker_message_y(self, event) -> None:
        self.send(
            {'c': 'c', 'message': event.data['message'], 'type': 'c', 'worker_messages': self.scenario_wm},
            to=event.data['worker'],
        )

    def _event_worker_message_z(self, event) -> None:
        self.destroy()


def _snap(value):
    """The codec round trip at send time (SPEC §8.3, scenario 11)."""
    return json.loads(json.dumps(value))


def test_scenario_11_route_by_type(run_scenario):
    def build(ctx) -> None:
        p = ctx.primary(RoutingPrimary, worker_target=sw.typed)
        ctx.record(p, S2)
        wm = ctx.notes['wm'] = p.scenario_wm = []

        def on_message(event) -> None:
            wm.append(event.data['message'])

        def after_ready(event) -> None:
            p.send({'a': 'a', 'type': 'a', 'worker_messages': wm}, to=event.data['worker'])

        p.on('worker_message', on_message)
        p.after('worker_ready', after_ready)
        p.fork()

    run = run_scenario(build)
    assert_clean(run)
    assert run.trace == expand(
        'F WF ON -MSG RDY MSG MSG', 'on worker_message', 'SD', 'after worker_message', 'DIS SDC'
    )
    wm, pm = [], []
    a = _snap({'a': 'a', 'type': 'a', 'worker_messages': wm})
    pm.append(a)
    x = _snap({'message': a, 'primary_messages': pm, 'type': 'x', 'x': 'x'})
    wm.append(x)
    b = _snap({'b': 'b', 'message': x, 'type': 'b', 'worker_messages': wm})
    pm.append(b)
    y = _snap({'message': b, 'primary_messages': pm, 'type': 'y', 'y': 'y'})
    wm.append(y)
    c = _snap({'c': 'c', 'message': y, 'type': 'c', 'worker_messages': wm})
    pm.append(c)
    z = _snap({'message': c, 'primary_messages': pm, 'type': 'z', 'z': 'z'})
    assert run.notes['wm'] == [x, y, z]
    assert run.exits == [(1, 0, None)]


def test_scenario_12_ignore_untyped_and_unknown_messages(run_scenario):
    def build(ctx) -> None:
        p = ctx.primary(worker_target=sw.typed)
        ctx.record(p, S2)
        wm = ctx.notes['wm'] = []

        def on_message(event) -> None:
            wm.append(event.data['message'])

        def after_message(event) -> None:
            ctx.last_expected(p)

        async def send_three(worker) -> None:
            await p.send('untyped message', to=worker)
            await p.send({'type': 'unknown', 'worker_messages': wm}, to=worker)
            await p.send({'type': 'reply_unknown', 'worker_messages': wm}, to=worker)
            ctx.timer_d(p)

        def after_ready(event) -> None:
            ctx.start_task(send_three(event.data['worker']))

        p.on('worker_message', on_message)
        p.after('worker_message', after_message)
        p.after('worker_ready', after_ready)
        p.fork()

    run = run_scenario(build)
    assert_clean(run)
    assert run.trace == expand('F WF ON -MSG RDY MSG SD DIS SDC')
    assert run.notes['wm'] == [{
        'message': {'type': 'reply_unknown', 'worker_messages': []},
        'primary_messages': [
            'untyped message',
            {'type': 'unknown', 'worker_messages': []},
            {'type': 'reply_unknown', 'worker_messages': []},
        ],
        'type': 'unknown',
    }]
    assert run.exits == [(1, 0, None)]


def test_scenario_13_send_by_worker_id(run_scenario):
    def build(ctx) -> None:
        p = ctx.primary(worker_target=sw.identify)
        ctx.record(p, S2)
        wm = ctx.notes['wm'] = []

        def after_online(event) -> None:
            ctx.timer_d(p)

        def after_message(event) -> None:
            message, worker = event.data['message'], event.data['worker']
            if not isinstance(message, dict):
                ctx.check(False, f'unexpected worker message {message!r}')
                return
            wm.append(message.get('worker_id') == worker.id)
            wm.append(message.get('worker_property') is True)
            ctx.last_expected(p)

        def after_ready(event) -> None:
            worker = event.data['worker']
            ctx.check(p.worker_by_id[worker.id] is worker, 'p.worker_by_id[worker.id] is not the handle')
            p.send('identify', to=worker.id)

        p.after('worker_online', after_online)
        p.after('worker_message', after_message)
        p.after('worker_ready', after_ready)
        p.fork()

    run = run_scenario(build)
    assert_clean(run)
    assert run.trace == expand('F WF ON -MSG RDY MSG SD DIS SDC')
    assert run.notes['wm'] == [True, True]


def test_scenario_14_reject_invalid_destinations(run_scenario):
    def build(ctx) -> None:
        p = ctx.primary(worker_target=sw.communicate)
        ctx.record(p, S2)
        wm = ctx.notes['wm'] = []
        caught = ctx.notes['caught'] = []

        def after_message(event) -> None:
            wm.append(event.data['message'])

        def after_online(event) -> None:
            ctx.timer_d(p)  # by then the primary is shut down: destroyed at once

        def after_ready(event) -> None:
            p.shut_down()

        async def send_to_invalid(worker) -> None:
            for to in (-0.123, {}, worker):  # the handle is now 'disconnected'
                try:
                    await p.send('message', to=to)
                except Exception as error:
                    caught.append(error)
                else:
                    caught.append(f'send to {to!r} resolved')
            ctx.last_expected(p)

        def after_disconnect(event) -> None:
            ctx.start_task(send_to_invalid(event.data['worker']))

        p.after('worker_message', after_message)
        p.after('worker_online', after_online)
        p.after('worker_ready', after_ready)
        p.after('worker_disconnect', after_disconnect)
        p.fork()

    run = run_scenario(build)
    assert_clean(run)
    assert run.trace == expand('F WF ON -MSG RDY SD DIS SDC')
    assert run.notes['wm'] == []
    caught = run.notes['caught']
    assert len(caught) == 3, caught
    assert all(isinstance(error, InvalidDestinationError) for error in caught), caught


def test_scenario_15_no_readiness_before_ready(run_scenario):
    def build(ctx) -> None:
        p = ctx.primary(worker_target=sw.early_send)
        ctx.record(p, S2)
        wm = ctx.notes['wm'] = []

        def after_message(event) -> None:
            wm.append(event.data['message'])

        def after_online(event) -> None:
            ctx.timer_d(p)

        def after_ready(event) -> None:
            ctx.last_expected(p)

        p.after('worker_message', after_message)
        p.after('worker_online', after_online)
        p.after('worker_ready', after_ready)
        p.fork()

    run = run_scenario(build)
    assert_clean(run)
    assert run.trace == expand('F WF ON MSG -MSG RDY SD DIS SDC')
    assert run.notes['wm'] == ['not ready']


# -- scenario 16 --------------------------------------------------------------------------------


def build_scenario_16(ctx) -> None:
    p = ctx.primary(worker_target=sw.communicate)
    ctx.record(p, S2)
    wm = ctx.notes['wm'] = []
    started = []

    def after_message(event) -> None:
        wm.append(event.data['message'])

    def expect(worker, count):
        future = ctx.loop.create_future()

        def handler(event) -> None:
            if event.data['worker'] is worker and event.data['message'] == {'count': count}:
                event.unsubscribe()
                if not future.done():
                    future.set_result(None)

        p.after('worker_message', handler)
        return future

    async def exchange() -> None:
        for i, worker in enumerate(p.workers):  # (a)
            reply = expect(worker, i + 1)
            p.send({'count': i}, to=worker)
            await reply
        replies = [expect(worker, 1) for worker in p.workers]  # (b)
        p.send({'count': 0})
        await asyncio.gather(*replies)
        p.destroy()  # (c)

    def after_ready(event) -> None:
        if len(p.workers) == 3 and not started:
            started.append(True)
            ctx.start_task(exchange())

    p.after('worker_message', after_message)
    p.after('worker_ready', after_ready)
    p.fork(worker_count=3)


def check_scenario_16(run) -> None:
    assert_clean(run)
    entries = run.entries
    for worker in (1, 2, 3):
        assert run.projection(worker) == expand('WF ON RDY MSG MSG DIS'), (worker, run.describe())
    assert run.projection(None) == expand('F SD SDC'), run.describe()
    assert {e.worker for e in entries} == {None, 1, 2, 3}
    # F is followed at once by WF of 1, 2, 3 in that order
    f_last = block_span(run, 'F', None)[1]
    assert [(e.text, e.worker) for e in entries[f_last + 1:f_last + 7]] == [
        (text, worker) for worker in (1, 2, 3) for text in BLOCKS['WF']
    ], run.describe()
    # every RDY precedes the first MSG; the first three MSG come from workers 1, 2, 3
    messages = sorted(block_span(run, 'MSG', worker, k) for worker in (1, 2, 3) for k in (0, 1))
    assert max(block_span(run, 'RDY', worker)[1] for worker in (1, 2, 3)) < messages[0][0], run.describe()
    assert [entries[first].worker for first, _ in messages[:3]] == [1, 2, 3], run.describe()
    # every MSG precedes SD; SD precedes every DIS; every DIS precedes SDC
    sd = block_span(run, 'SD', None)
    assert messages[-1][1] < sd[0], run.describe()
    disconnects = [block_span(run, 'DIS', worker) for worker in (1, 2, 3)]
    assert sd[1] < min(first for first, _ in disconnects), run.describe()
    assert max(last for _, last in disconnects) < block_span(run, 'SDC', None)[0], run.describe()
    # the canonical trace is one admissible order: same entries, some order
    canonical = expand('F WF WF WF ON ON ON RDY RDY RDY MSG MSG MSG MSG MSG MSG SD DIS DIS DIS SDC')
    assert collections.Counter(run.trace) == collections.Counter(canonical)
    assert run.notes['wm'] == [{'count': 1}, {'count': 2}, {'count': 3}, {'count': 1}, {'count': 1}, {'count': 1}]


def test_scenario_16_several_workers(run_scenario):
    check_scenario_16(run_scenario(build_scenario_16))


def test_scenario_17_observe_listening(run_scenario):
    def build(ctx) -> None:
        p = ctx.primary(worker_target=sw.server)
        ctx.record(p, S2 + ('worker_listening',))
        wm = ctx.notes['wm'] = []
        addresses = ctx.notes['addresses'] = []

        def after_message(event) -> None:
            wm.append(event.data['message'])

        def after_online(event) -> None:
            ctx.timer_d(p)

        def after_listening(event) -> None:
            addresses.append(event.data['address'])
            ctx.last_expected(p)

        p.after('worker_message', after_message)
        p.after('worker_online', after_online)
        p.after('worker_listening', after_listening)
        p.fork()

    run = run_scenario(build)
    assert_clean(run)
    assert run.trace == expand('F WF ON -MSG RDY LST SD DIS SDC')
    assert run.notes['wm'] == []
    [address] = run.notes['addresses']
    assert isinstance(address, tuple) and len(address) == 2, address
    assert isinstance(address[1], int) and address[1] > 0, address
    assert run.exits == [(1, 0, None)]


def test_scenario_18_replace_dead_workers(run_scenario):
    def build(ctx) -> None:
        p = ctx.primary(worker_target=sw.replace)
        ctx.record(p, S2X)
        exits = ctx.notes['exits'] = []
        wm = ctx.notes['wm'] = []
        ready = []
        times = ctx.notes['times'] = {}

        def after_exit(event) -> None:
            exits.append({'code': event.data['code'], 'signal': event.data['signal']})
            times.setdefault(('exit', event.data['worker'].id), ctx.loop.time())

        def after_message(event) -> None:
            wm.append(event.data['message'])

        def after_ready(event) -> None:
            worker = event.data['worker']
            ready.append(worker)
            if len(ready) == 1:
                times['destroy sent'] = ctx.loop.time()
                p.send('destroy', to=worker)
            elif len(ready) == 2:
                p.send('exit', to=worker)
            elif len(ready) == 3:
                p.send('throw', to=worker)
            elif len(ready) == 4:
                p.destroy()

        p.after('worker_exit', after_exit)
        p.after('worker_message', after_message)
        p.after('worker_ready', after_ready)
        p.fork()

    run = run_scenario(build)
    assert_clean(run)
    assert run.trace == expand(
        'F WF ON -MSG RDY DIS EXF WF ON -MSG RDY DIS EXF WF ON -MSG RDY DIS EXF WF ON -MSG RDY'
        ' SD DIS +EX SDC'
    )
    assert run.notes['exits'] == [
        {'code': 0, 'signal': None},
        {'code': 0, 'signal': None},
        {'code': 1, 'signal': None},
        {'code': 0, 'signal': None},
    ]
    assert run.notes['wm'] == []
    assert sorted(run.handles) == [1, 2, 3, 4]
    assert [run.handles[i].exited_after_disconnect for i in (1, 2, 3, 4)] == [True, False, False, True]
    # the first worker exits as soon as its destroy() is done, not when its kill timer fires
    times = run.notes['times']
    assert times[('exit', 1)] - times['destroy sent'] < KILL_TIMER, times


def test_scenario_19_no_replacement_after_shut_down(run_scenario):
    def build(ctx) -> None:
        p = ctx.primary(worker_target=sw.replace)
        ctx.record(p, S2X)
        exits = ctx.notes['exits'] = []
        wm = ctx.notes['wm'] = []
        ready = []

        def after_exit(event) -> None:
            exits.append({'code': event.data['code'], 'signal': event.data['signal']})

        def after_message(event) -> None:
            wm.append(event.data['message'])

        def after_ready(event) -> None:
            ready.append(event.data['worker'])
            if len(ready) in (1, 2):
                p.send('destroy', to=event.data['worker'])

        def on_exit(event) -> None:
            if len(ready) == 2:
                p.shut_down()

        def after_shut_down_complete(event) -> None:
            p.destroy()

        p.after('worker_exit', after_exit)
        p.after('worker_message', after_message)
        p.after('worker_ready', after_ready)
        p.on('worker_exit', on_exit)
        p.after('shut_down_complete', after_shut_down_complete)
        p.fork()

    run = run_scenario(build)
    assert_clean(run)
    assert run.trace == expand(
        'F WF ON -MSG RDY DIS EXF WF ON -MSG RDY DIS', 'on worker_exit', 'SD', 'after worker_exit', 'SDC'
    )
    assert run.notes['exits'] == [{'code': 0, 'signal': None}, {'code': 0, 'signal': None}]
    assert run.notes['wm'] == []


# -- scenario 20 --------------------------------------------------------------------------------


def test_scenario_20_select_a_worker_for_a_task(run_scenario):
    def build(ctx) -> None:
        p = ctx.primary(worker_target=sw.replace)
        ctx.record(p, S2X)
        notes = ctx.notes
        ready = []

        def kill_by_id(worker_id: int) -> None:
            p.worker_by_id[worker_id].kill()

        def kill_on_next_disconnect(worker_id: int) -> None:
            def handler(event) -> None:
                kill_by_id(worker_id)

            p.once_after('worker_disconnect', handler)

        def after_ready(event) -> None:
            ready.append(event.data['worker'])
            if len(ready) == 3:
                notes['pool at 3'] = [w.id for w in p.workers]
                notes['picks at 3'] = [p.round_robin().id for _ in range(8)]
                kill_by_id(1)
                kill_on_next_disconnect(2)
            elif len(ready) == 5:
                pool = notes['pool at 5'] = [w.id for w in p.workers]
                notes['picks at 5'] = [p.round_robin().id for _ in range(8)]
                a, b = sorted(set(pool) - {3})[:2] if len(set(pool) - {3}) >= 2 else (None, None)
                if a is None:
                    ctx.check(False, f'pool at 5 is {pool}, not 3 and two replacements')
                    return
                kill_by_id(a)
                kill_on_next_disconnect(b)
            elif len(ready) == 7:
                notes['pool at 7'] = [w.id for w in p.workers]
                notes['picks at 7'] = [p.round_robin().id for _ in range(3)]
                notes['custom picks at 7'] = [p.round_robin(tag='custom_task').id for _ in range(3)]
                p.destroy()

        p.after('worker_ready', after_ready)
        p.fork(worker_count=3)

    run = run_scenario(build)
    assert_clean(run)
    notes = run.notes
    a, b, c, d = 4, 5, 6, 7
    # round_robin (R67-R69)
    assert notes['pool at 3'] == [1, 2, 3]
    assert notes['picks at 3'] == [1, 2, 3, 1, 2, 3, 1, 2]
    assert notes['pool at 5'] == [3, a, b]
    assert notes['picks at 5'] == [a, b, 3, a, b, 3, a, b]
    counts = collections.Counter(notes['picks at 3'] + notes['picks at 5'])
    assert counts == {1: 3, 2: 3, 3: 4, a: 3, b: 3}
    assert notes['pool at 7'] == [3, c, d]
    assert notes['picks at 7'] == [c, d, 3]
    assert notes['custom picks at 7'] == [3, c, d]

    # trace: per-worker projections and the cross-worker constraints of SPEC §8.3
    entries = run.entries
    for worker in (1, 2, a, b):
        assert run.projection(worker) == expand('WF ON -MSG RDY DIS EXF'), (worker, run.describe())
    for worker in (3, c, d):
        assert run.projection(worker) == expand('WF ON -MSG RDY DIS +EX'), (worker, run.describe())
    assert run.projection(None) == expand('F SD SDC'), run.describe()
    assert {e.worker for e in entries} == {None, 1, 2, 3, a, b, c, d}
    f_last = block_span(run, 'F', None)[1]
    assert [(e.text, e.worker) for e in entries[f_last + 1:f_last + 7]] == [
        (text, worker) for worker in (1, 2, 3) for text in BLOCKS['WF']
    ], run.describe()
    dis = {worker: block_span(run, 'DIS', worker) for worker in (1, 2, 3, a, b, c, d)}
    rdy = {worker: block_span(run, 'RDY', worker) for worker in (1, 2, 3, a, b, c, d)}
    assert max(rdy[w][1] for w in (1, 2, 3)) < dis[1][0] and dis[1][1] < dis[2][0], run.describe()
    exf = sorted((block_span(run, 'EXF', worker), worker) for worker in (1, 2, a, b))
    assert {w for _, w in exf[:2]} == {1, 2} and {w for _, w in exf[2:]} == {a, b}, run.describe()
    for k, ((_, exf_last), _) in enumerate(exf):  # replacement ids increase in EXF order
        assert block_span(run, 'WF', 4 + k)[0] > exf_last, (4 + k, run.describe())
    assert max(rdy[a][1], rdy[b][1]) < dis[a][0] and dis[a][1] < dis[b][0], run.describe()
    sd = block_span(run, 'SD', None)
    assert max(rdy[c][1], rdy[d][1]) < sd[0], run.describe()
    sdc = block_span(run, 'SDC', None)
    for worker in (3, c, d):
        ex = block_span(run, 'EX', worker)
        assert sd[1] < dis[worker][0] and dis[worker][1] < sdc[0], (worker, run.describe())
        assert sd[1] < ex[0] and ex[1] < sdc[0], (worker, run.describe())
    canonical = expand(
        'F WF WF WF ON ON ON -MSG RDY -MSG RDY -MSG RDY DIS EXF WF DIS EXF WF ON ON -MSG RDY -MSG RDY'
        ' DIS EXF WF DIS EXF WF ON ON -MSG RDY -MSG RDY SD DIS +EX DIS +EX DIS +EX SDC'
    )
    assert collections.Counter(run.trace) == collections.Counter(canonical)
    # the killed workers died by SIGTERM (handle.kill() default)
    assert [exit_signal(run, w) for w in (1, 2, a, b)] == [signal.SIGTERM] * 4


# -- determinism of the memory transport (R121) -------------------------------------------------


def _fingerprint(run) -> str:
    full = [(e.text, e.worker, e.time) for e in run.entries]
    return hashlib.sha256(repr((full, run.exits, run.notes['wm'])).encode()).hexdigest()


def test_memory_transport_is_deterministic(scenario_runner):
    interleavings = set()
    for seed in range(50):
        first = scenario_runner('memory', build_scenario_16, seed=seed)
        second = scenario_runner('memory', build_scenario_16, seed=seed)
        assert first.problems == [] and second.problems == [], (seed, first.describe(), second.describe())
        assert _fingerprint(first) == _fingerprint(second), (seed, first.describe(), second.describe())
        interleavings.add(tuple((e.text, e.worker) for e in first.entries))
    assert len(interleavings) >= 2, 'every seed gave the same interleaving of the three workers'
