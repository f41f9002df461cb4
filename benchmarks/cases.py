"""One benchmark measurement per process: `python benchmarks/cases.py CASE 'JSON-PARAMS'`.

Prints one line `RESULT {json}` with at least `value` (the scenario's metric) or
`samples` ({variant: value}, for cases that interleave two variants internally), and
extra figures. `run.py` starts this once per repetition and variant, with a timeout,
and kills the process group if it overruns; this process kills every child it started,
by pid, before it exits (see `_common.kill_children`).

isocluster cases use only the public API (ClusterPrimary / ClusterWorker); baselines are
raw `os.fork` + `socketpair` (blocking, length-prefixed frames, the same codec objects),
`multiprocessing.Pipe` and `concurrent.futures.ProcessPoolExecutor` ('fork' context).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import struct
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if str(HERE.parent) not in sys.path:
    sys.path.insert(1, str(HERE.parent))

from _common import (  # noqa: E402
    CHILDREN, current_rss_kib, die_with_parent, emit, get_codec, kill_children, message, now, peak_rss_kib,
    read_frame, reap, smaps_rollup_kib, track, write_frame,
)
from isocluster import ClusterPrimary, ClusterWorker  # noqa: E402

YIELD_EVERY = 256  # a streaming sender yields to its loop every this many messages
WINDOW = 64  # pipelined requests in flight (over all workers)


# =====================================================================================
# isocluster workers (fork mode: the target runs in the forked child)


class EchoWorker(ClusterWorker):
    def _event_primary_message_task(self, event):
        self.send(event.data['message'])


class ReplyWorker(ClusterWorker):
    """For primary.request(): the routed handler's return value is the reply."""

    def _event_primary_message_task(self, event):
        return event.data['message']


class CountWorker(ClusterWorker):
    """Counts `task` messages; answers `done` when it has the number announced by `expect`."""

    expected = -1
    count = 0

    profiler = None

    def _event_primary_message_expect(self, event):
        self.expected = event.data['message']['n']
        self.count = 0
        if os.environ.get('ISOCLUSTER_BENCH_WORKER_PROFILE'):  # the receiver's side of a profile
            import cProfile

            self.profiler = cProfile.Profile()
            self.profiler.enable()

    def _event_primary_message_task(self, event):
        self.count += 1
        if self.count == self.expected:
            if self.profiler is not None:
                self.profiler.disable()
                self.profiler.dump_stats(os.environ['ISOCLUSTER_BENCH_WORKER_PROFILE'])
            self.send({'type': 'done', 'count': self.count})


class ProducerWorker(ClusterWorker):
    """On `produce` [n], sends n task messages as fast as it can (yielding now and then)."""

    async def _event_primary_message_produce(self, event):
        n = event.data['message']['n']
        fire = event.data['message'].get('fire', False)
        send = self.send
        for i in range(n):
            sent = send(message(i))
            if not fire and not sent.done():  # backpressure: the link is over its high-water mark
                await sent
            elif i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)


class SlowWorker(ClusterWorker):
    """The slow consumer of the flood: `delay` seconds per task message; or, told to flood,
    the producer that sends fire-and-forget for `seconds` and notes its figures in `report`."""

    delay = 0.001

    def _event_primary_message_task(self, event):
        time.sleep(self.delay)

    async def _event_primary_message_flood(self, event):
        spec = event.data['message']
        send, end, i, refused = self.send, now() + spec['seconds'], 0, 0
        while now() < end:
            for _ in range(YIELD_EVERY):
                sent = send(message(i))
                i += 1
                if sent.done() and sent.exception() is not None:
                    refused += 1
            await asyncio.sleep(0)
        link = self._link
        with open(spec['report'], 'w') as f:
            json.dump({'sent': i, 'refused': refused, 'queued_bytes': link.pending_writes(),
                       'tasks': len(asyncio.all_tasks()), 'rss_kib': current_rss_kib()}, f)


def slow_target():
    SlowWorker()


def large_payload(codec_name, size):
    """`size` bytes of payload: bytes for pickle, a list of 1000-character strings for json."""
    if codec_name == 'pickle':
        return os.urandom(1024) * (size // 1024)  # ~size: a multiple of 1 KiB
    return ['x' * 1000] * (size // 1000)


class LargeWorker(ClusterWorker):
    """Acknowledges each blob; on `produce_blob` [size, codec] sends one blob back."""

    def _event_primary_message_blob(self, event):
        self.send({'type': 'ack'})

    def _event_primary_message_produce_blob(self, event):
        spec = event.data['message']
        # Made once (the warm-up): the primary->worker case times a payload made beforehand too.
        key = (spec['codec'], spec['size'])
        if key not in self._payloads:
            self._payloads[key] = large_payload(*key)
        self.send({'type': 'blob', 'data': self._payloads[key]})

    _payloads = {}


def large_target():
    LargeWorker()


def echo_target():
    EchoWorker()


def reply_target():
    ReplyWorker()


def count_target():
    CountWorker()


def producer_target():
    ProducerWorker()


class SwitchableCodec:
    """The json/pickle codec as plain attributes (no wrapper cost); `count_encodes()` swaps
    in a counting encode to check that a broadcast is encoded once."""

    def __init__(self, name):
        inner = get_codec(name)
        self.name = inner.name
        self._inner = inner
        self.encode = inner.encode
        self.decode = inner.decode
        self.encodes = 0

    def count_encodes(self, on):
        if on:
            inner_encode = self._inner.encode

            def encode(message):
                self.encodes += 1
                return inner_encode(message)

            self.encode = encode
        else:
            self.encode = self._inner.encode


class Cluster:
    """A ClusterPrimary in the running loop, with futures for ready/exit/messages."""

    def __init__(self, target=None, script=None, codec='json', transport=None, **options):
        self.loop = asyncio.get_running_loop()
        options.setdefault('restart', 'never')
        if transport == 'ray':
            from isocluster.transport.ray import RayTransport

            # on the Ray instance run_async started; on the other node in a two-node run
            options['transport'] = RayTransport(worker_options=_RAY_WORKER_OPTIONS)
        kwargs = dict(worker_target=target, codec=codec, **options)
        if script is not None:
            kwargs = dict(worker_script=script, worker_args=[], codec=codec, **options)
        self.primary = ClusterPrimary(**kwargs)
        self.handles = []
        self.ready_queue: asyncio.Queue = asyncio.Queue()
        self.exits: dict[int, asyncio.Future] = {}
        self.primary.on('worker_fork', self._on_fork)
        self.primary.on('worker_ready', lambda e: self.ready_queue.put_nowait(e.data['worker']))
        self.primary.on('worker_exit', self._on_exit)

    def _on_fork(self, event):
        handle = event.data['worker']
        self.handles.append(handle)
        self.exits[handle.id] = self.loop.create_future()

    def _on_exit(self, event):
        future = self.exits.get(event.data['worker'].id)
        if future is not None and not future.done():
            future.set_result(None)

    async def start(self, count, timeout=60.0):
        self.primary.fork(count)
        return [await asyncio.wait_for(self.ready_queue.get(), timeout) for _ in range(count)]

    async def close(self, timeout=15.0):
        primary = self.primary
        try:
            primary.destroy()
            await asyncio.wait_for(primary.wait_closed(), timeout)
        except Exception as error:  # the figures are already taken; report, then kill below
            print(f'cleanup: {error!r}', file=sys.stderr)
        finally:
            for handle in self.handles:
                if not handle.is_dead() and handle.pid:
                    try:
                        os.kill(handle.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            try:
                primary.transport.close()
            except Exception:
                pass


def run_async(coro_fn, params):
    loop_name = params.get('loop', 'asyncio')
    if loop_name == 'uvloop':
        import uvloop

        # The policy, so the workers' loops (built with new_event_loop) are uvloop too.
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if params.get('transport') == 'ray':
        return _with_local_ray(lambda: asyncio.run(coro_fn(params)))
    return asyncio.run(coro_fn(params))


_RAY_WORKER_OPTIONS = None  # a two-node run places the workers on the node that is not the primary's
REMOTE = 'bench_remote_node'


def _with_local_ray(run, nodes=1):
    """A Ray instance on 127.0.0.1 for one measurement (`isocluster.transport.ray_local`, as the
    tests): a local one, or (nodes=2) a head, where this process (the primary) runs, and a
    second node that hosts the workers. The actors import the targets of this file and
    `_common` by name: benchmarks/ and the root on their PYTHONPATH."""
    global _RAY_WORKER_OPTIONS
    from isocluster.transport import ray_local

    paths = [str(HERE), str(HERE.parent)]
    if nodes == 1:
        ray_local.start_local(paths=paths)
        import ray

        stop = ray.shutdown
    else:
        cluster = ray_local.start_cluster({REMOTE: {REMOTE: 100}}, paths=paths)
        _RAY_WORKER_OPTIONS = {'num_cpus': 0, 'resources': {REMOTE: 1}}
        stop = lambda: ray_local.stop_cluster(cluster)  # noqa: E731
    try:
        return run()
    finally:
        _RAY_WORKER_OPTIONS = None
        stop()


# --- isocluster cases ----------------------------------------------------------------


async def _iso_rtt(p):
    n, warm = p['n'], max(p['n'] // 10, 10)
    cluster = Cluster(echo_target, codec=p['codec'], transport=p.get('transport'))
    try:
        (handle,) = await cluster.start(1)
        loop = asyncio.get_running_loop()
        box = [None]
        cluster.primary.on('worker_message', lambda e: box[0].set_result(e.data['message']))
        send = cluster.primary.send
        start = 0.0
        for i in range(warm + n):
            if i == warm:
                start = now()
            box[0] = loop.create_future()
            send(message(i), to=handle)
            await box[0]
        elapsed = now() - start
    finally:
        await cluster.close()
    return {'value': elapsed / n * 1e6, 'unit': 'us', 'n': n}


async def _iso_stream_p2w(p):
    n = p['n']
    cluster = Cluster(count_target, codec=p['codec'], transport=p.get('transport'))
    try:
        (handle,) = await cluster.start(1)
        done = asyncio.get_running_loop().create_future()
        cluster.primary.on('worker_message', lambda e: done.done() or done.set_result(e.data['message']))
        send = cluster.primary.send
        await send({'type': 'expect', 'n': n}, to=handle)
        fire = p.get('pattern') == 'fire'  # fire and forget: no future awaited, as most users send
        start = now()
        for i in range(n):
            sent = send(message(i), to=handle)
            if not fire and not sent.done():  # backpressure: the link is over its high-water mark
                await sent
            elif i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
        send_done = now()
        await asyncio.wait_for(done, 120)
        elapsed = now() - start
    finally:
        await cluster.close()
    return {'value': n / elapsed, 'unit': 'msg/s', 'n': n, 'sender_s': send_done - start,
            'primary_peak_rss_kib': peak_rss_kib()}


async def _iso_stream_w2p(p):
    n = p['n']
    cluster = Cluster(producer_target, codec=p['codec'], transport=p.get('transport'))
    try:
        (handle,) = await cluster.start(1)
        done = asyncio.get_running_loop().create_future()
        count = 0

        def on_message(event):
            nonlocal count
            count += 1
            if count == n:
                done.set_result(None)

        cluster.primary.on('worker_message', on_message)
        start = now()
        cluster.primary.send({'type': 'produce', 'n': n, 'fire': p.get('pattern') == 'fire'}, to=handle)
        await asyncio.wait_for(done, 120)
        elapsed = now() - start
    finally:
        await cluster.close()
    return {'value': n / elapsed, 'unit': 'msg/s', 'n': n, 'primary_peak_rss_kib': peak_rss_kib()}


def _worker_peak_rss_kib(pid):
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1])
    return 0


async def _iso_flood(p):
    """A fire-and-forget flood against a consumer that takes `delay` s a message, for
    `seconds`; then shut_down(). value: seconds until the worker process is gone (R89 bounds
    it by shutdown_timeout + kill_timeout); shutdown_s: until shut_down_complete, which also
    waits for the primary's handlers of the frames the worker wrote before it ended (R117)."""
    seconds, direction = p['seconds'], p['direction']
    bound = p['shutdown_timeout'] + p['kill_timeout']
    cluster = Cluster(slow_target, codec=p['codec'], shutdown_timeout=p['shutdown_timeout'],
                      kill_timeout=p['kill_timeout'])
    primary = cluster.primary
    report_path = f'/tmp/isocluster-flood-{os.getpid()}.json'
    result = {}
    try:
        (handle,) = await cluster.start(1)
        pid = handle.pid
        sender_rss_before = current_rss_kib() if direction == 'p2w' else current_rss_kib(pid)
        if direction == 'p2w':
            send, end, i, refused = primary.send, now() + seconds, 0, 0
            while now() < end:
                for _ in range(YIELD_EVERY):
                    sent = send(message(i), to=handle)
                    i += 1
                    if sent.done() and sent.exception() is not None:
                        refused += 1
                await asyncio.sleep(0)
            result.update(sent=i, refused=refused, queued_bytes=handle.life.link.pending_writes(),
                          tasks=len(asyncio.all_tasks()))
        else:
            primary.on('worker_message', lambda event: time.sleep(SlowWorker.delay))  # the slow consumer
            primary.send({'type': 'flood', 'seconds': seconds, 'report': report_path}, to=handle)
            deadline = now() + seconds + 30
            while not os.path.exists(report_path) and now() < deadline:
                await asyncio.sleep(0.05)  # the primary's loop keeps reading, slowly, meanwhile
            await asyncio.sleep(0.1)
            with open(report_path) as f:
                result.update(json.load(f))
        result.update(primary_rss_kib=current_rss_kib(), primary_peak_rss_kib=peak_rss_kib(),
                      worker_peak_rss_kib=_worker_peak_rss_kib(pid))
        start = now()
        gone = [None]

        async def watch_worker():  # R89's bound is on the worker being gone
            while os.path.exists(f'/proc/{pid}'):
                await asyncio.sleep(0.01)
            gone[0] = now() - start

        watcher = asyncio.ensure_future(watch_worker())
        primary.shut_down()
        await asyncio.wait_for(primary.wait_closed(), bound + 30)
        await asyncio.wait_for(watcher, 5)
        result.update(shutdown_s=now() - start, worker_gone_s=gone[0], bound_s=bound)
    finally:
        await cluster.close()
        if os.path.exists(report_path):
            os.unlink(report_path)
    sender_peak = result['primary_peak_rss_kib'] if direction == 'p2w' else result['worker_peak_rss_kib']
    # What the flood cost the sender's memory, per byte it held queued (the fixed overhead is
    # its RSS before the flood).
    growth = (sender_peak - sender_rss_before) * 1024 / max(result['queued_bytes'], 1)
    result.update(value=result['worker_gone_s'], unit='s', queued_mib=result['queued_bytes'] / 2**20,
                  sender_rss_before_kib=sender_rss_before, sender_growth_per_queued_byte=growth)
    return result


async def _iso_large(p):
    """One payload of `size` bytes at a time, `reps` times: MB/s (10^6 bytes) primary→worker
    (until the worker's ack) or worker→primary (from the request to the blob's arrival)."""
    size, reps, codec = p['size'], p['reps'], p['codec']
    cluster = Cluster(large_target, codec=codec)
    try:
        (handle,) = await cluster.start(1)
        loop = asyncio.get_running_loop()
        box = [None]
        cluster.primary.on('worker_message', lambda e: box[0].set_result(None))
        payload = large_payload(codec, size) if p['direction'] == 'p2w' else None
        times = []
        for _ in range(reps + 1):  # the first warms up
            box[0] = loop.create_future()
            start = now()
            if payload is not None:
                cluster.primary.send({'type': 'blob', 'data': payload}, to=handle)
            else:
                cluster.primary.send({'type': 'produce_blob', 'size': size, 'codec': codec}, to=handle)
            await asyncio.wait_for(box[0], 60)
            times.append(now() - start)
    finally:
        await cluster.close()
    best = _median(times[1:])
    return {'value': size / best / 1e6, 'unit': 'MB/s', 'size': size, 'primary_peak_rss_kib': peak_rss_kib()}


async def _iso_pipeline(p):
    n = p['n']
    use_request = p.get('api') == 'request'
    cluster = Cluster(reply_target if use_request else echo_target, codec=p['codec'])
    try:
        handles = await cluster.start(2)
        primary = cluster.primary
        done = asyncio.get_running_loop().create_future()
        sent = completed = 0

        if use_request:
            def on_reply(future, handle):
                nonlocal sent, completed
                future.result()
                completed += 1
                if sent < n:
                    primary.request(message(sent), to=handle).add_done_callback(lambda f: on_reply(f, handle))
                    sent += 1
                elif completed == n:
                    done.set_result(None)

            start = now()
            for i in range(WINDOW):
                handle = handles[i % 2]
                primary.request(message(i), to=handle).add_done_callback(lambda f, h=handle: on_reply(f, h))
        else:
            def on_message(event):
                nonlocal sent, completed
                completed += 1
                if sent < n:
                    primary.send(message(sent), to=event.data['worker'])
                    sent += 1
                elif completed == n:
                    done.set_result(None)

            primary.on('worker_message', on_message)
            start = now()
            for i in range(WINDOW):
                primary.send(message(i), to=handles[i % 2])
        sent = WINDOW
        await asyncio.wait_for(done, 120)
        elapsed = now() - start
    finally:
        await cluster.close()
    return {'value': n / elapsed, 'unit': 'req/s', 'n': n, 'window': WINDOW}


async def _iso_broadcast(p):
    """Both variants in one cluster of N workers, order alternated by `rep`: M broadcasts
    (send with to=None) against M*N single sends to one worker; µs per delivered message."""
    workers, m, rep = p['workers'], p['m'], p.get('rep', 0)
    codec = SwitchableCodec(p['codec'])
    cluster = Cluster(count_target, codec=codec)
    try:
        handles = await cluster.start(workers)
        primary = cluster.primary
        loop = asyncio.get_running_loop()
        state = {'left': 0, 'done': None}

        def on_message(event):
            state['left'] -= 1
            if state['left'] == 0:
                state['done'].set_result(None)

        primary.on('worker_message', on_message)

        async def single():
            state['left'], state['done'] = 1, loop.create_future()
            total = m * workers
            await primary.send({'type': 'expect', 'n': total}, to=handles[0])
            await asyncio.sleep(0.01)
            cpu, start = time.process_time(), now()
            for i in range(total):
                primary.send(message(i), to=handles[0])
                if i % YIELD_EVERY == YIELD_EVERY - 1:
                    await asyncio.sleep(0)
            await asyncio.wait_for(state['done'], 120)
            return (now() - start) / total * 1e6, (time.process_time() - cpu) / total * 1e6

        async def broadcast():
            state['left'], state['done'] = workers, loop.create_future()
            await primary.send({'type': 'expect', 'n': m})
            await asyncio.sleep(0.01)
            every = max(1, YIELD_EVERY // workers)
            cpu, start = time.process_time(), now()
            for i in range(m):
                primary.send(message(i))
                if i % every == every - 1:
                    await asyncio.sleep(0)
            await asyncio.wait_for(state['done'], 120)
            return (now() - start) / (m * workers) * 1e6, (time.process_time() - cpu) / (m * workers) * 1e6

        order = [single, broadcast] if rep % 2 == 0 else [broadcast, single]
        figures = {}
        for fn in order:
            figures[fn.__name__] = await fn()
        # Encode-once check: one counted broadcast.
        codec.count_encodes(True)
        state['left'], state['done'] = workers, loop.create_future()
        await primary.send({'type': 'expect', 'n': 1})
        codec.encodes = 0
        primary.send(message(0))
        encodes = codec.encodes
        codec.count_encodes(False)
        await asyncio.wait_for(state['done'], 30)
    finally:
        await cluster.close()
    return {
        'samples': {
            'isocluster broadcast (wall)': figures['broadcast'][0],
            'isocluster single send (wall)': figures['single'][0],
            'isocluster broadcast (primary CPU)': figures['broadcast'][1],
            'isocluster single send (primary CPU)': figures['single'][1],
        },
        'unit': 'us/msg', 'workers': workers, 'm': m, 'encodes_per_broadcast': encodes,
    }


async def _iso_startup(p):
    k = p['k']
    script = str(HERE / 'iso_worker_script.py') if p['mode'] == 'exec' else None
    cluster = Cluster(None if script else echo_target, script=script, codec='json')
    times = []
    try:
        for _ in range(k):
            start = now()
            (handle,) = await cluster.start(1)
            times.append((now() - start) * 1e3)
            cluster.primary.stop_worker(handle)
            await asyncio.wait_for(cluster.exits[handle.id], 30)
    finally:
        await cluster.close()
    return {'value': _median(times), 'unit': 'ms', 'k': k, 'all_ms': times}


async def _iso_crash(p):
    k = p['k']
    cluster = Cluster(echo_target, codec='json', restart='always', restart_intensity=None)
    times = []
    try:
        (handle,) = await cluster.start(1)
        for _ in range(k):
            start = now()
            os.kill(handle.pid, signal.SIGKILL)
            handle = await asyncio.wait_for(cluster.ready_queue.get(), 30)
            times.append((now() - start) * 1e3)
    finally:
        await cluster.close()
    return {'value': _median(times), 'unit': 'ms', 'k': k, 'all_ms': times}


async def _iso_many(p):
    workers = p['workers']
    cluster = Cluster(echo_target, codec='json')
    try:
        rss_before = current_rss_kib()
        start = now()
        handles = await cluster.start(workers, timeout=120)
        ready = now()
        rss_ready = current_rss_kib()
        samples = [smaps_rollup_kib(h.pid) for h in handles[:: max(1, workers // 8)]]
        cluster.primary.shut_down()
        await asyncio.wait_for(cluster.primary.wait_closed(), 120)
        end = now()
    finally:
        await cluster.close()
    return _many_result(workers, start, ready, end, rss_before, rss_ready, samples)


def _many_result(workers, start, ready, end, rss_before, rss_ready, samples):
    samples = [s for s in samples if s]
    return {
        'value': (end - start) * 1e3, 'unit': 'ms', 'workers': workers,
        'ready_ms': (ready - start) * 1e3, 'shutdown_ms': (end - ready) * 1e3,
        'primary_peak_rss_kib': peak_rss_kib(), 'primary_rss_before_kib': rss_before,
        'primary_kib_per_worker': (rss_ready - rss_before) / workers,
        'worker_private_kib': _median([s['private'] for s in samples]) if samples else None,
        'worker_pss_kib': _median([s['pss'] for s in samples]) if samples else None,
    }


def _median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


# =====================================================================================
# Raw os.fork + socketpair, blocking sockets, length-prefixed frames, same codec


_RAW_PARENT_SOCKS: set = set()


def _raw_fork(child_main):
    """Fork a child running child_main(sock); returns (pid, parent_sock, reader)."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            die_with_parent()
            parent.close()
            for other in _RAW_PARENT_SOCKS:  # siblings' links: or they never see EOF
                other.close()
            child_main(child)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    track(pid)
    child.close()
    _RAW_PARENT_SOCKS.add(parent)
    return pid, parent, parent.makefile('rb')


def _raw_close(pid, sock, reader):
    reader.close()
    _RAW_PARENT_SOCKS.discard(sock)
    sock.close()
    reap(pid)


def raw_rtt(p):
    codec = get_codec(p['codec'])
    n, warm = p['n'], max(p['n'] // 10, 10)

    def child(sock):
        reader = sock.makefile('rb')
        while (body := read_frame(reader)) is not None:
            write_frame(sock, codec.encode(codec.decode(body)))

    pid, sock, reader = _raw_fork(child)
    start = 0.0
    for i in range(warm + n):
        if i == warm:
            start = now()
        write_frame(sock, codec.encode(message(i)))
        codec.decode(read_frame(reader))
    elapsed = now() - start
    _raw_close(pid, sock, reader)
    return {'value': elapsed / n * 1e6, 'unit': 'us', 'n': n}


def _floor_loop_policy(p):
    """uvloop at both ends when asked: set before the fork, so the child's new_event_loop()
    is a uvloop loop too (run_async sets it again for the parent; harmless)."""
    if p.get('loop') == 'uvloop':
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def aio_rtt(p):
    """The floor of any asyncio design: both ends run an asyncio loop reading the socket with
    add_reader into a preallocated buffer, the same codec and framing, and the sender awaits
    a future per round trip (as the isocluster case does). No supervision, no routing.
    `loop: uvloop` runs both ends on uvloop."""
    _floor_loop_policy(p)
    codec = get_codec(p['codec'])
    n, warm = p['n'], max(p['n'] // 10, 10)
    header = struct.Struct('>I')

    def reader_for(sock, on_body):
        buffer = bytearray(256 * 1024)
        view = memoryview(buffer)
        pending = bytearray()

        def on_readable():
            count = sock.recv_into(buffer)
            if count == 0:
                on_body(None)
                return
            pending.extend(view[:count])
            offset = 0
            while len(pending) - offset >= 4:
                (size,) = header.unpack_from(pending, offset)
                if len(pending) - offset - 4 < size:
                    break
                on_body(bytes(pending[offset + 4:offset + 4 + size]))
                offset += 4 + size
            del pending[:offset]
        return on_readable

    def child(sock):
        loop = asyncio.new_event_loop()
        sock.setblocking(False)

        def on_body(body):
            if body is None:
                loop.stop()
                return
            data = codec.encode(codec.decode(body))
            sock.send(header.pack(len(data)) + data)

        loop.add_reader(sock.fileno(), reader_for(sock, on_body))
        loop.run_forever()

    pid, sock, reader = _raw_fork(child)

    async def primary():
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        box = [None]
        loop.add_reader(sock.fileno(), reader_for(sock, lambda body: box[0].set_result(codec.decode(body))))
        start = 0.0
        for i in range(warm + n):
            if i == warm:
                start = now()
            box[0] = loop.create_future()
            data = codec.encode(message(i))
            sock.send(header.pack(len(data)) + data)
            await box[0]
        loop.remove_reader(sock.fileno())
        return now() - start

    elapsed = run_async(lambda params: primary(), p)
    _raw_close(pid, sock, reader)
    return {'value': elapsed / n * 1e6, 'unit': 'us', 'n': n}


# The send buffer isocluster's writer asks for while it writes a large body
# (transport/process/writer.py): the baselines' senders get it too, not to handicap them.
LARGE_SNDBUF = 4 * 1024 * 1024


def _large_sender(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, LARGE_SNDBUF)


# --- the floors of an event-loop design for streams and large payloads: both ends run a bare
# asyncio loop, with isocluster's codec objects and framing (4-byte length counting a kind
# byte, the kind byte, the body); no supervision, events or flow control beyond the socket's.

_FLOOR_FRAME = struct.Struct('>IB')
_FLOOR_MESSAGE = 0  # the kind byte of a message frame (protocol.KINDS[0])
_FLOOR_HIGH_WATER = 1024 * 1024  # isocluster's per-link high-water mark (transport/flow.py)


def _floor_frame(codec, msg):
    body = codec.encode(msg)
    return _FLOOR_FRAME.pack(len(body) + 1, _FLOOR_MESSAGE) + body


def _floor_reader(loop, sock, codec, handlers, on_eof):
    """Starts reading `sock` with add_reader: recv_into a preallocated 256 KiB buffer, frames
    cut straight out of it (only a partial frame at the end is kept), each decoded message
    dispatched on its 'type' to `handlers` (a dict lookup and a call)."""
    buffer = bytearray(256 * 1024)
    view = memoryview(buffer)
    pending = bytearray()
    decode = codec.decode
    unpack = _FLOOR_FRAME.unpack_from

    def on_readable():
        try:
            count = sock.recv_into(buffer)
        except (BlockingIOError, InterruptedError):
            return
        if count == 0:
            loop.remove_reader(sock.fileno())
            on_eof()
            return
        if pending:
            pending.extend(view[:count])
            data = bytes(pending)
            pending.clear()
        else:
            data = view[:count]
        offset, end = 0, len(data)
        while end - offset >= 5:
            length, _kind = unpack(data, offset)
            stop = offset + 4 + length
            if stop > end:
                break
            message = decode(bytes(data[offset + 5:stop]))
            handlers[message['type']](message)
            offset = stop
        if offset < end:
            pending.extend(data[offset:end])

    loop.add_reader(sock.fileno(), on_readable)


class _FloorWriter:
    """Non-blocking writes: what the socket does not take is kept and written when the loop
    says the socket is writable; `drain()` waits until at most LOW bytes are pending."""

    def __init__(self, loop, sock):
        self.loop, self.sock = loop, sock
        self.pending = bytearray()
        self.writing = False
        self.waiter = None

    def write(self, data):
        if self.writing:
            self.pending += data
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent < len(data):
            self.pending += memoryview(data)[sent:]
            self.writing = True
            self.loop.add_writer(self.sock.fileno(), self._on_writable)

    def _on_writable(self):
        try:
            sent = self.sock.send(self.pending)
        except (BlockingIOError, InterruptedError):
            return
        del self.pending[:sent]
        if not self.pending:
            self.writing = False
            self.loop.remove_writer(self.sock.fileno())
        if self.waiter is not None and len(self.pending) <= _FLOOR_HIGH_WATER // 4:
            self.waiter.set_result(None)
            self.waiter = None

    async def drain(self):
        if len(self.pending) > _FLOOR_HIGH_WATER // 4:
            self.waiter = self.loop.create_future()
            await self.waiter


async def _floor_stream(loop, writer, codec, n):
    """Sends n messages, yielding every YIELD_EVERY as isocluster's senders do; the frames of
    a loop turn are coalesced into one write (isocluster's per-turn batch). Waits for the
    socket only past isocluster's high-water mark."""
    encode, pack = codec.encode, _FLOOR_FRAME.pack
    chunk = bytearray()
    for i in range(n):
        body = encode(message(i))
        chunk += pack(len(body) + 1, _FLOOR_MESSAGE)
        chunk += body
        if i % YIELD_EVERY == YIELD_EVERY - 1:
            writer.write(chunk)
            chunk = bytearray()
            if len(writer.pending) > _FLOOR_HIGH_WATER:
                await writer.drain()
            else:
                await asyncio.sleep(0)
    if chunk:
        writer.write(chunk)


def _floor_child(body):
    """A forked child's main: a new loop (uvloop when the policy says so), `body(loop, sock)`
    sets it up; it runs until the parent closes the link."""
    def child(sock):
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        sock.setblocking(False)
        body(loop, sock)
        loop.run_forever()
    return child


def aio_stream_p2w(p):
    """The floor of an event-loop design for a stream primary->worker: n messages from an
    asyncio sender (one write per loop turn) to an asyncio receiver that dispatches each on
    its 'type'; timed until the receiver's 'done' arrives, as `iso_stream_p2w`."""
    _floor_loop_policy(p)
    codec, n = get_codec(p['codec']), p['n']

    def child_body(loop, sock):
        state = {'expected': -1, 'count': 0}

        def on_expect(msg):
            state['expected'], state['count'] = msg['n'], 0

        def on_task(msg):
            state['count'] += 1
            if state['count'] == state['expected']:
                sock.send(_floor_frame(codec, {'type': 'done', 'count': state['count']}))

        _floor_reader(loop, sock, codec, {'expect': on_expect, 'task': on_task}, loop.stop)

    pid, sock, reader = _raw_fork(_floor_child(child_body))

    async def primary(params):
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        done = loop.create_future()
        _floor_reader(loop, sock, codec, {'done': done.set_result}, lambda: None)
        writer = _FloorWriter(loop, sock)
        writer.write(_floor_frame(codec, {'type': 'expect', 'n': n}))
        start = now()
        await _floor_stream(loop, writer, codec, n)
        await asyncio.wait_for(done, 120)
        elapsed = now() - start
        loop.remove_reader(sock.fileno())
        return elapsed

    elapsed = run_async(primary, p)
    _raw_close(pid, sock, reader)
    return {'value': n / elapsed, 'unit': 'msg/s', 'n': n}


def aio_stream_w2p(p):
    """The floor for a stream worker->primary: the child's asyncio loop streams n messages on
    'produce' (one write per loop turn); the parent's dispatches each on its 'type' and counts."""
    _floor_loop_policy(p)
    codec, n = get_codec(p['codec']), p['n']

    def child_body(loop, sock):
        writer = _FloorWriter(loop, sock)

        def on_produce(msg):
            loop.create_task(_floor_stream(loop, writer, codec, msg['n']))

        _floor_reader(loop, sock, codec, {'produce': on_produce}, loop.stop)

    pid, sock, reader = _raw_fork(_floor_child(child_body))

    async def primary(params):
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        done = loop.create_future()
        count = 0

        def on_task(msg):
            nonlocal count
            count += 1
            if count == n:
                done.set_result(None)

        _floor_reader(loop, sock, codec, {'task': on_task}, lambda: None)
        start = now()
        sock.send(_floor_frame(codec, {'type': 'produce', 'n': n}))
        await asyncio.wait_for(done, 120)
        elapsed = now() - start
        loop.remove_reader(sock.fileno())
        return elapsed

    elapsed = run_async(primary, p)
    _raw_close(pid, sock, reader)
    return {'value': n / elapsed, 'unit': 'msg/s', 'n': n}


def aio_large(p):
    """The floor of an event-loop design for one `size`-byte payload (bytes, no codec), as
    `raw_large` but with an asyncio loop at both ends: the sender writes the non-blocking
    socket as the loop says it is writable, the receiver recv_into's a buffer of the payload's
    size from an add_reader callback (until EAGAIN), then answers a one-byte ack. The
    sender's SO_SNDBUF is isocluster's for a large body."""
    _floor_loop_policy(p)
    reps = p['reps']
    data = os.urandom(1024) * (p['size'] // 1024)
    size = len(data)

    def child_body(loop, sock):
        buffer = memoryview(bytearray(size))
        got = 0

        def on_readable():
            nonlocal got
            while got < size:
                try:
                    count = sock.recv_into(buffer[got:])
                except (BlockingIOError, InterruptedError):
                    return
                if count == 0:
                    loop.remove_reader(sock.fileno())
                    loop.stop()
                    return
                got += count
            got = 0
            sock.send(b'k')

        loop.add_reader(sock.fileno(), on_readable)

    pid, sock, reader = _raw_fork(_floor_child(child_body))
    _large_sender(sock)

    async def primary(params):
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        fd = sock.fileno()
        view = memoryview(data)
        times = []
        for _ in range(reps + 1):
            acked = loop.create_future()
            sent = 0

            def on_writable():
                nonlocal sent
                while sent < size:
                    try:
                        sent += sock.send(view[sent:])
                    except (BlockingIOError, InterruptedError):
                        return
                loop.remove_writer(fd)

            def on_ack():
                if sock.recv(1):
                    loop.remove_reader(fd)
                    acked.set_result(None)

            start = now()
            loop.add_reader(fd, on_ack)
            while sent < size:  # at once, then as the socket drains
                try:
                    sent += sock.send(view[sent:])
                except (BlockingIOError, InterruptedError):
                    loop.add_writer(fd, on_writable)
                    break
            await acked
            times.append(now() - start)
        return times

    times = run_async(primary, p)
    _raw_close(pid, sock, reader)
    return {'value': size / _median(times[1:]) / 1e6, 'unit': 'MB/s', 'size': size}


def raw_stream_p2w(p):
    codec, n = get_codec(p['codec']), p['n']

    def child(sock):
        reader = sock.makefile('rb')
        for _ in range(n):
            codec.decode(read_frame(reader))
        write_frame(sock, codec.encode({'type': 'done'}))
        read_frame(reader)

    pid, sock, reader = _raw_fork(child)
    start = now()
    for i in range(n):
        write_frame(sock, codec.encode(message(i)))
    read_frame(reader)
    elapsed = now() - start
    _raw_close(pid, sock, reader)
    return {'value': n / elapsed, 'unit': 'msg/s', 'n': n}


def raw_stream_w2p(p):
    codec, n = get_codec(p['codec']), p['n']

    def child(sock):
        reader = sock.makefile('rb')
        read_frame(reader)
        for i in range(n):
            write_frame(sock, codec.encode(message(i)))
        read_frame(reader)

    pid, sock, reader = _raw_fork(child)
    start = now()
    write_frame(sock, codec.encode({'type': 'produce', 'n': n}))
    for _ in range(n):
        codec.decode(read_frame(reader))
    elapsed = now() - start
    _raw_close(pid, sock, reader)
    return {'value': n / elapsed, 'unit': 'msg/s', 'n': n}


def raw_large(p):
    """The wire's bandwidth for one `size`-byte payload: sendall, recv_into a sized buffer,
    a one-byte ack (bytes, no codec); the sender's SO_SNDBUF as isocluster's for a large body."""
    reps = p['reps']
    data = os.urandom(1024) * (p['size'] // 1024)
    size = len(data)

    def receive(sock):
        buffer = memoryview(bytearray(size))
        got = 0
        while got < size:
            got += sock.recv_into(buffer[got:])

    def child(sock):
        for _ in range(reps + 1):
            receive(sock)
            sock.sendall(b'k')

    pid, sock, reader = _raw_fork(child)
    _large_sender(sock)
    times = []
    for _ in range(reps + 1):
        start = now()
        sock.sendall(data)
        sock.recv(1)
        times.append(now() - start)
    _raw_close(pid, sock, reader)
    return {'value': size / _median(times[1:]) / 1e6, 'unit': 'MB/s', 'size': size}


def _ready_child(sock):
    write_frame(sock, b'{"kind":"ready"}')
    sock.recv(1)  # EOF: the parent closed the link


def raw_startup(p):
    import asyncio as _  # noqa: F401  (the primary has asyncio loaded, as isocluster's does)

    times = []
    for _ in range(p['k']):
        start = now()
        pid, sock, reader = _raw_fork(_ready_child)
        read_frame(reader)
        times.append((now() - start) * 1e3)
        _raw_close(pid, sock, reader)
    return {'value': _median(times), 'unit': 'ms', 'k': p['k'], 'all_ms': times}


def raw_exec_startup(p):
    """fork+exec `python -c 'import asyncio'` that writes one byte when it is up."""
    code = 'import asyncio, os, sys; os.write(int(sys.argv[1]), b"r")'
    times = []
    for _ in range(p['k']):
        read_end, write_end = os.pipe()
        start = now()
        proc = subprocess.Popen([sys.executable, '-c', code, str(write_end)], pass_fds=[write_end])
        track(proc.pid)
        os.close(write_end)
        os.read(read_end, 1)
        times.append((now() - start) * 1e3)
        os.close(read_end)
        proc.wait()
        CHILDREN.discard(proc.pid)
    return {'value': _median(times), 'unit': 'ms', 'k': p['k'], 'all_ms': times}


def raw_crash(p):
    times = []
    pid, sock, reader = _raw_fork(_ready_child)
    read_frame(reader)
    for _ in range(p['k']):
        start = now()
        os.kill(pid, signal.SIGKILL)
        _raw_close(pid, sock, reader)
        pid, sock, reader = _raw_fork(_ready_child)
        read_frame(reader)
        times.append((now() - start) * 1e3)
    _raw_close(pid, sock, reader)
    return {'value': _median(times), 'unit': 'ms', 'k': p['k'], 'all_ms': times}


def raw_many(p):
    import asyncio as _  # noqa: F401

    workers = p['workers']
    rss_before = current_rss_kib()
    start = now()
    children = [_raw_fork(_ready_child) for _ in range(workers)]
    for _, _, reader in children:
        read_frame(reader)
    ready = now()
    rss_ready = current_rss_kib()
    samples = [smaps_rollup_kib(c[0]) for c in children[:: max(1, workers // 8)]]
    for _, sock, reader in children:
        reader.close()
        _RAW_PARENT_SOCKS.discard(sock)
        sock.close()
    for pid, _, _ in children:
        reap(pid)
    end = now()
    return _many_result(workers, start, ready, end, rss_before, rss_ready, samples)


# =====================================================================================
# multiprocessing.Pipe ('fork' context) and ProcessPoolExecutor


def _mp_echo(conn):
    # A sentinel ends it: the forked child also holds the parent's end, so no EOF comes.
    while (msg := conn.recv()) is not None:
        conn.send(msg)


def _mp_count(conn, n):
    for _ in range(n):
        conn.recv()
    conn.send('done')
    conn.recv()


def _mp_produce(conn, n):
    conn.recv()
    for i in range(n):
        conn.send(message(i))
    conn.recv()


def _mp_ready(conn):
    conn.send('ready')
    conn.recv()  # the sentinel, or SIGKILL


def _mp_start(target, *args, method='fork'):
    ctx = multiprocessing.get_context(method)
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(child, *args), daemon=True)
    proc.start()
    track(proc.pid)
    child.close()
    return proc, parent


def _mp_stop(proc, conn):
    try:
        conn.send(None)
    except OSError:
        pass
    conn.close()
    proc.join(10)
    if proc.is_alive():
        proc.kill()
        proc.join()
    CHILDREN.discard(proc.pid)


def mp_rtt(p):
    n, warm = p['n'], max(p['n'] // 10, 10)
    proc, conn = _mp_start(_mp_echo)
    start = 0.0
    for i in range(warm + n):
        if i == warm:
            start = now()
        conn.send(message(i))
        conn.recv()
    elapsed = now() - start
    _mp_stop(proc, conn)
    return {'value': elapsed / n * 1e6, 'unit': 'us', 'n': n}


def mp_stream_p2w(p):
    n = p['n']
    proc, conn = _mp_start(_mp_count, n)
    start = now()
    for i in range(n):
        conn.send(message(i))
    conn.recv()
    elapsed = now() - start
    _mp_stop(proc, conn)
    return {'value': n / elapsed, 'unit': 'msg/s', 'n': n}


def mp_stream_w2p(p):
    n = p['n']
    proc, conn = _mp_start(_mp_produce, n)
    start = now()
    conn.send('go')
    for _ in range(n):
        conn.recv()
    elapsed = now() - start
    _mp_stop(proc, conn)
    return {'value': n / elapsed, 'unit': 'msg/s', 'n': n}


def mp_startup(p):
    times = []
    for _ in range(p['k']):
        start = now()
        proc, conn = _mp_start(_mp_ready, method=p.get('method', 'fork'))
        conn.recv()
        times.append((now() - start) * 1e3)
        _mp_stop(proc, conn)
    return {'value': _median(times), 'unit': 'ms', 'k': p['k'], 'all_ms': times}


def mp_crash(p):
    times = []
    proc, conn = _mp_start(_mp_ready)
    conn.recv()
    for _ in range(p['k']):
        start = now()
        proc.kill()
        proc.join()
        CHILDREN.discard(proc.pid)
        conn.close()
        proc, conn = _mp_start(_mp_ready)
        conn.recv()
        times.append((now() - start) * 1e3)
    _mp_stop(proc, conn)
    return {'value': _median(times), 'unit': 'ms', 'k': p['k'], 'all_ms': times}


def _ppe_echo(msg):
    return msg


def _ppe(workers):
    executor = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context('fork'))
    for future in [executor.submit(_ppe_echo, i) for i in range(workers * 4)]:
        future.result()
    for pid in list(executor._processes or {}):  # to kill them if anything goes wrong
        track(pid)
    return executor


def _ppe_stop(executor):
    pids = list(executor._processes or {})
    executor.shutdown(wait=True, cancel_futures=True)
    for pid in pids:
        CHILDREN.discard(pid)


def ppe_rtt(p):
    n = p['n']
    executor = _ppe(1)
    start = now()
    for i in range(n):
        executor.submit(_ppe_echo, message(i)).result()
    elapsed = now() - start
    _ppe_stop(executor)
    return {'value': elapsed / n * 1e6, 'unit': 'us', 'n': n}


def ppe_pipeline(p):
    n = p['n']
    executor = _ppe(2)
    start = now()
    inflight = collections.deque(executor.submit(_ppe_echo, message(i)) for i in range(WINDOW))
    sent = WINDOW
    completed = 0
    while inflight:
        inflight.popleft().result()
        completed += 1
        if sent < n:
            inflight.append(executor.submit(_ppe_echo, message(sent)))
            sent += 1
    elapsed = now() - start
    _ppe_stop(executor)
    return {'value': n / elapsed, 'unit': 'req/s', 'n': n, 'window': WINDOW}


# --- task queues (issue 15): the same four workloads on isocluster, Pool and the executor ---

TASK_WORKERS = 2


def task_messages(work, n):
    """The workload's messages: plain dicts, so every contender gets the same input."""
    if work == 'tiny':
        return [{'type': 'run', 'op': 'sum', 'values': [i, 1, 2, 3, 4]} for i in range(n)]
    if work == 'even':
        return [{'type': 'run', 'op': 'spin', 'ms': 7.0} for _ in range(n)]
    if work == 'uneven':
        return [{'type': 'run', 'op': 'spin', 'ms': 15.0 if i % 2 == 0 else 0.4} for i in range(n)]
    if work == 'rtt':
        return [{'type': 'run', 'op': 'sum', 'values': [i]} for i in range(n)]
    raise ValueError(work)


def task_run(task):
    """The work itself, the same function in every contender (CPU spin: sleeping would let
    a worker take more than its share of the two cores)."""
    if task['op'] == 'sum':
        return sum(task['values'])
    end = time.perf_counter() + task['ms'] / 1000
    while time.perf_counter() < end:
        pass
    return task['ms']


class TaskQueueWorker(ClusterWorker):
    def _event_primary_message_run(self, event):
        return task_run(event.data['message'])


def task_queue_target():
    TaskQueueWorker(max_concurrency=1)


def _task_result(p, elapsed, results, tasks):
    expected = [task_run(task) if task['op'] == 'sum' else task['ms'] for task in tasks]
    if results != expected:
        raise AssertionError(f"{p['work']}: wrong results")
    return {'value': elapsed * 1e3, 'unit': 'ms', 'n': len(tasks), 'work': p['work']}


async def _iso_task_queue(p):
    tasks = task_messages(p['work'], p['n'])
    cluster = Cluster(task_queue_target, codec=p.get('codec', 'json'))
    try:
        await cluster.start(TASK_WORKERS)
        primary = cluster.primary
        await primary.request(tasks[0])  # warm both sides' code paths, as the pools are
        start = now()
        if p['work'] == 'rtt':
            results = [await primary.request(task) for task in tasks]
        else:
            results = [reply async for reply in primary.map(
                tasks, chunksize=p.get('chunksize', 1), max_in_flight=p.get('max_in_flight', 2))]
        elapsed = now() - start
    finally:
        await cluster.close()
    return _task_result(p, elapsed, results, tasks)


def _pool_chunksize(p, tasks):
    chunksize = p.get('chunksize')
    if chunksize is None:  # multiprocessing.Pool.map's own default
        chunksize, extra = divmod(len(tasks), TASK_WORKERS * 4)
        chunksize += bool(extra)
    return chunksize


def pool_task_queue(p):
    tasks = task_messages(p['work'], p['n'])
    pool = multiprocessing.get_context('fork').Pool(TASK_WORKERS)
    try:
        for pid in [worker.pid for worker in pool._pool]:
            track(pid)
        pool.map(task_run, tasks[:TASK_WORKERS * 2], chunksize=1)  # warm up
        start = now()
        if p['work'] == 'rtt':
            results = [pool.apply(task_run, (task,)) for task in tasks]
        else:
            results = pool.map(task_run, tasks, chunksize=_pool_chunksize(p, tasks))
        elapsed = now() - start
    finally:
        pool.terminate()
        pool.join()
    return _task_result(p, elapsed, results, tasks)


def ppe_task_queue(p):
    tasks = task_messages(p['work'], p['n'])
    executor = _ppe(TASK_WORKERS)
    try:
        start = now()
        if p['work'] == 'rtt':
            results = [executor.submit(task_run, task).result() for task in tasks]
        else:
            results = list(executor.map(task_run, tasks, chunksize=_pool_chunksize(p, tasks)))
        elapsed = now() - start
    finally:
        _ppe_stop(executor)
    return _task_result(p, elapsed, results, tasks)


# --- the Ray column (run.py's last pass) ------------------------------------------------


def ray_all(p):
    """rtt, stream_p2w and stream_w2p on RayTransport in one Ray instance (one `ray.init` per
    repetition instead of three: it costs seconds); `nodes`: 1 (local) or 2 (the workers on a
    node other than the primary's). Same cases as above."""
    def run():
        common = {'codec': p['codec'], 'transport': 'ray'}
        rtt = asyncio.run(_iso_rtt({**common, 'n': p['rtt_n']}))
        p2w = asyncio.run(_iso_stream_p2w({**common, 'n': p['stream_n']}))
        w2p = asyncio.run(_iso_stream_w2p({**common, 'n': p['stream_n']}))
        return {'samples': {'rtt': rtt['value'], 'stream_p2w': p2w['value'], 'stream_w2p': w2p['value']},
                'rtt_n': p['rtt_n'], 'stream_n': p['stream_n']}

    return _with_local_ray(run, p.get('nodes', 1))


# =====================================================================================

ASYNC_CASES = {
    'iso_rtt': _iso_rtt, 'iso_stream_p2w': _iso_stream_p2w, 'iso_stream_w2p': _iso_stream_w2p,
    'iso_pipeline': _iso_pipeline, 'iso_broadcast': _iso_broadcast, 'iso_startup': _iso_startup,
    'iso_crash': _iso_crash, 'iso_many': _iso_many, 'iso_task_queue': _iso_task_queue, 'iso_flood': _iso_flood,
    'iso_large': _iso_large,
}
SYNC_CASES = {
    'raw_rtt': raw_rtt, 'aio_rtt': aio_rtt, 'raw_stream_p2w': raw_stream_p2w, 'raw_stream_w2p': raw_stream_w2p,
    'raw_startup': raw_startup, 'raw_exec_startup': raw_exec_startup, 'raw_crash': raw_crash,
    'raw_many': raw_many, 'raw_large': raw_large, 'aio_stream_p2w': aio_stream_p2w, 'aio_stream_w2p': aio_stream_w2p,
    'aio_large': aio_large, 'mp_rtt': mp_rtt, 'mp_stream_p2w': mp_stream_p2w, 'mp_stream_w2p': mp_stream_w2p,
    'mp_startup': mp_startup, 'mp_crash': mp_crash, 'ppe_rtt': ppe_rtt, 'ppe_pipeline': ppe_pipeline,
    'ray_all': ray_all, 'pool_task_queue': pool_task_queue, 'ppe_task_queue': ppe_task_queue,
}


def run_case(name, params):
    if name in ASYNC_CASES:
        return run_async(ASYNC_CASES[name], params)
    return SYNC_CASES[name](params)


def main(argv):
    name, params = argv[1], json.loads(argv[2]) if len(argv) > 2 else {}
    profile = os.environ.get('ISOCLUSTER_BENCH_PROFILE')
    try:
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            result = profiler.runcall(run_case, name, params)
            profiler.dump_stats(profile)
        else:
            result = run_case(name, params)
    finally:
        kill_children()
    emit(result)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
