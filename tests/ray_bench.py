"""Round trip and streaming on RayTransport next to ProcessTransport, in one run (issue 8).

    .venv/bin/python tests/ray_bench.py [--reps 5] [--rtt 1000] [--stream 20000] [--nodes 2]

Same scenarios as `benchmarks/` (rtt: one ~100-byte message to an echo worker and back, one
at a time; stream_p2w / stream_w2p: N such messages one way, yielding to the loop every 256),
with a fresh cluster of one worker per repetition. The process transport runs first: forking
after Ray has started its threads in this process would not be safe. Prints medians.
Ray runs on 127.0.0.1 only (`isocluster.transport.ray_local`): a local instance, or with
`--nodes 2` a head (the primary) and a second node that hosts the worker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from isocluster import ClusterPrimary, ClusterWorker

YIELD_EVERY = 256
PAYLOAD = 'x' * 24


def message(i: int) -> dict[str, Any]:
    return {'type': 'task', 'id': i, 'method': 'echo', 'payload': PAYLOAD}


class BenchWorker(ClusterWorker):
    expected = -1
    count = 0

    def _event_primary_message_task(self, event: Any) -> None:
        if self.expected < 0:
            self.send(event.data['message'])  # echo (rtt)
            return
        self.count += 1
        if self.count == self.expected:
            self.send({'type': 'done', 'count': self.count})

    def _event_primary_message_expect(self, event: Any) -> None:
        self.expected = event.data['message']['n']
        self.count = 0

    async def _event_primary_message_produce(self, event: Any) -> None:
        send = self.send
        for i in range(event.data['message']['n']):
            send(message(i))
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)


def bench_target() -> None:
    BenchWorker()


async def _cluster(make_transport: Any) -> tuple[ClusterPrimary, Any]:
    primary = ClusterPrimary(worker_target=bench_target, transport=make_transport(), restart='never')
    ready = asyncio.get_running_loop().create_future()
    primary.on('worker_ready', lambda e: ready.done() or ready.set_result(e.data['worker']))
    primary.fork(1)
    return primary, await asyncio.wait_for(ready, 120)


async def _close(primary: ClusterPrimary) -> None:
    primary.destroy()
    await asyncio.wait_for(primary.wait_closed(), 60)
    primary.transport.close()


async def rtt(make_transport: Any, n: int) -> float:
    primary, worker = await _cluster(make_transport)
    loop = asyncio.get_running_loop()
    box: list[Any] = [None]
    primary.on('worker_message', lambda e: box[0].set_result(None))
    warm = max(n // 10, 10)
    start = 0.0
    for i in range(warm + n):
        if i == warm:
            start = time.perf_counter()
        box[0] = loop.create_future()
        primary.send(message(i), to=worker)
        await box[0]
    elapsed = time.perf_counter() - start
    await _close(primary)
    return elapsed / n * 1e6  # us


async def stream_p2w(make_transport: Any, n: int) -> float:
    primary, worker = await _cluster(make_transport)
    done = asyncio.get_running_loop().create_future()
    primary.on('worker_message', lambda e: done.done() or done.set_result(None))
    await primary.send({'type': 'expect', 'n': n}, to=worker)
    start = time.perf_counter()
    for i in range(n):
        primary.send(message(i), to=worker)
        if i % YIELD_EVERY == YIELD_EVERY - 1:
            await asyncio.sleep(0)
    await asyncio.wait_for(done, 300)
    elapsed = time.perf_counter() - start
    await _close(primary)
    return n / elapsed  # msg/s


async def stream_w2p(make_transport: Any, n: int) -> float:
    primary, worker = await _cluster(make_transport)
    done = asyncio.get_running_loop().create_future()
    count = 0

    def on_message(event: Any) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set_result(None)

    primary.on('worker_message', on_message)
    start = time.perf_counter()
    primary.send({'type': 'produce', 'n': n}, to=worker)
    await asyncio.wait_for(done, 300)
    elapsed = time.perf_counter() - start
    await _close(primary)
    return n / elapsed  # msg/s


def measure(name: str, make_transport: Any, reps: int, n_rtt: int, n_stream: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {'rtt_us': [], 'stream_p2w_msg_s': [], 'stream_w2p_msg_s': []}
    for _ in range(reps):
        samples['rtt_us'].append(asyncio.run(rtt(make_transport, n_rtt)))
        samples['stream_p2w_msg_s'].append(asyncio.run(stream_p2w(make_transport, n_stream)))
        samples['stream_w2p_msg_s'].append(asyncio.run(stream_w2p(make_transport, n_stream)))
    medians = {key: statistics.median(values) for key, values in samples.items()}
    print(json.dumps({'transport': name, 'median': medians, 'samples': samples}), flush=True)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--reps', type=int, default=5)
    parser.add_argument('--rtt', type=int, default=1000)
    parser.add_argument('--stream', type=int, default=20000)
    parser.add_argument('--nodes', type=int, choices=(1, 2), default=1)
    args = parser.parse_args()

    from isocluster.transport.process import ProcessTransport

    results = {'process': measure('process', ProcessTransport, args.reps, args.rtt, args.stream)}

    from pathlib import Path

    from isocluster.transport import ray_local
    from isocluster.transport.ray import RayTransport

    paths = [str(Path(__file__).resolve().parent)]
    if args.nodes == 1:
        ray_local.start_local(paths=paths)
        make_transport, stop = RayTransport, None
    else:
        cluster = ray_local.start_cluster({'bench_remote': {'bench_remote': 100}}, paths=paths)
        options = {'num_cpus': 0, 'resources': {'bench_remote': 1}}
        make_transport, stop = (lambda: RayTransport(worker_options=options)), cluster
    import ray

    try:
        results['ray'] = measure(f'ray ({args.nodes} node{"s" if args.nodes > 1 else ""})', make_transport,
                                 args.reps, args.rtt, args.stream)
    finally:
        ray_local.stop_cluster(stop) if stop is not None else ray.shutdown()

    print(f"\nmedians of {args.reps} runs (1 worker; rtt over {args.rtt} messages, streams of {args.stream})")
    print(f"{'':18}{'process':>14}{'ray':>14}{'ray/process':>14}")
    for key, unit in (('rtt_us', 'us'), ('stream_p2w_msg_s', 'msg/s'), ('stream_w2p_msg_s', 'msg/s')):
        p, r = results['process'][key], results['ray'][key]
        print(f'{key:18}{p:>14,.1f}{r:>14,.1f}{r / p:>13.2f}x  ({unit})')


if __name__ == '__main__':
    main()
