"""`make bench`: isocluster against its baselines, measured in the same run.

Every scenario runs each of its variants (isocluster and the baselines) REPS times,
interleaved (rep 1: A B C, rep 2: B C A, ...), each measurement in a fresh process
(`benchmarks/cases.py`, or `node benchmarks/node_baseline.js`) with a timeout; a process
that overruns is killed with its whole process group (its own pid as the group id).
Prints medians, min-max, the ratio of each isocluster variant to each baseline and the
PERFORMANCE.md targets with PASS/MISS; writes everything to benchmarks/results/latest.json.

    python benchmarks/run.py                 # full run (about 5-6 minutes on 2 cores)
    python benchmarks/run.py --quick         # tiny sizes, 1 repetition (smoke test)
    python benchmarks/run.py --only rtt,crash --reps 7

The round-trip and streaming scenarios have a Ray column ('isocluster json on Ray': the
same cases on `RayTransport`, in a local Ray instance each measurement starts) when `ray` is
importable (`pip install 'isocluster[ray]'`), else the row says skipped. It is measured
after every other scenario (so it cannot eat their time budget), with smaller sizes and
RAY_REPS repetitions, one process (one `ray.init`, ~5 s) per repetition for all three;
its figures join those scenarios in the JSON and are printed in a block of their own.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))

from _common import codec_available, ray_available, uvloop_available  # noqa: E402

NODE = shutil.which('node')
RAY_NAME = 'isocluster json on Ray'
RAY_TWO_NODES_NAME = 'isocluster json on Ray, 2 nodes'
RAY_SCENARIOS = ('rtt', 'stream_p2w', 'stream_w2p')
RAY_REPS = 2  # one repetition (all three figures) costs ~15 s: `make bench` stays near 6 minutes
RAY_DEADLINE = 275.0  # seconds since the start: no second Ray repetition after it
RAY_UNAVAILABLE = "ray is not installed (pip install 'isocluster[ray]')"
PYCACHE = os.path.join(tempfile.gettempdir(), f'isocluster-bench-pycache-{os.getuid()}')


@dataclass
class Variant:
    name: str
    case: str  # cases.py case, or 'node:<case>'
    full: dict
    quick: dict
    baseline: bool = True
    produces: tuple[str, ...] = ()  # names of the samples a multi-variant case returns
    needs: str | None = None  # 'node', 'uvloop', 'codec:<name>', 'ray', or several joined by '+'


@dataclass
class Target:
    label: str
    num: str
    den: str | None
    op: str  # '<=' or '>=', or 'ratio': shown, no bound (informational)
    bound: float
    note: str = ''


@dataclass
class Scenario:
    key: str
    title: str
    unit: str
    better: str  # 'lower' | 'higher'
    variants: list[Variant]
    targets: list[Target] = field(default_factory=list)
    timeout: float = 90.0


def iso(name, case, full, quick, **kw):
    return Variant(name, case, full, quick, baseline=False, **kw)


def base(name, case, full, quick, **kw):
    return Variant(name, case, full, quick, baseline=True, **kw)


def build_scenarios() -> list[Scenario]:
    S = []
    codecs = ('json', 'pickle', 'msgpack', 'orjson')

    def need(codec):
        return None if codec in ('json', 'pickle') else f'codec:{codec}'

    # -- round trip
    rtt = [iso(f'isocluster {c}', 'iso_rtt', {'n': 5000, 'codec': c}, {'n': 50, 'codec': c}, needs=need(c))
           for c in codecs]
    rtt.append(iso('isocluster pickle+uvloop', 'iso_rtt', {'n': 5000, 'codec': 'pickle', 'loop': 'uvloop'},
                   {'n': 50, 'codec': 'pickle', 'loop': 'uvloop'}, needs='uvloop'))
    rtt.append(iso('isocluster orjson+uvloop', 'iso_rtt', {'n': 5000, 'codec': 'orjson', 'loop': 'uvloop'},
                   {'n': 50, 'codec': 'orjson', 'loop': 'uvloop'}, needs='uvloop+codec:orjson'))
    rtt += [base(f'raw fork+socketpair {c}', 'raw_rtt', {'n': 5000, 'codec': c}, {'n': 50, 'codec': c},
                 needs=need(c)) for c in ('json', 'pickle', 'orjson')]
    rtt += [base(f'raw asyncio both ends {c}', 'aio_rtt', {'n': 5000, 'codec': c}, {'n': 50, 'codec': c})
            for c in ('json', 'pickle')]
    # The floor of the orjson+uvloop variant: the same bare loops, on uvloop, with orjson.
    rtt.append(base('raw asyncio both ends orjson+uvloop', 'aio_rtt', {'n': 5000, 'codec': 'orjson', 'loop': 'uvloop'},
                    {'n': 50, 'codec': 'orjson', 'loop': 'uvloop'}, needs='uvloop+codec:orjson'))
    rtt += [
        base('multiprocessing.Pipe', 'mp_rtt', {'n': 5000}, {'n': 50}),
        base('ProcessPoolExecutor', 'ppe_rtt', {'n': 1000}, {'n': 20}),
        base('node cluster (json)', 'node:rtt', {'n': 5000}, {'n': 50}, needs='node'),
    ]
    S.append(Scenario('rtt', 'round trip primary<->worker, one ~100-byte message', 'us', 'lower', rtt, [
        Target('default codec (json) <= 1.1 x multiprocessing.Pipe', 'isocluster json', 'multiprocessing.Pipe', '<=', 1.1),
        Target('pickle codec <= 1.0 x multiprocessing.Pipe', 'isocluster pickle', 'multiprocessing.Pipe', '<=', 1.0),
        Target('pickle + uvloop <= 0.8 x multiprocessing.Pipe', 'isocluster pickle+uvloop', 'multiprocessing.Pipe', '<=', 0.8),
        Target('json <= 1.1 x the asyncio floor (raw asyncio both ends)',
               'isocluster json', 'raw asyncio both ends json', '<=', 1.1),
        Target('orjson + uvloop <= 1.0 x multiprocessing.Pipe', 'isocluster orjson+uvloop', 'multiprocessing.Pipe', '<=', 1.0),
        # Pipe blocks in recv at both ends; an event loop pays an epoll wake-up per message:
        # the nearest sound target is against the same design's own floor, measured here.
        Target('orjson + uvloop <= 1.1 x its floor (raw asyncio orjson+uvloop)',
               'isocluster orjson+uvloop', 'raw asyncio both ends orjson+uvloop', '<=', 1.1, note='info'),
        Target('floor itself: raw asyncio orjson+uvloop <= 1.0 x Pipe',
               'raw asyncio both ends orjson+uvloop', 'multiprocessing.Pipe', '<=', 1.0, note='info'),
        Target('floor itself: raw asyncio pickle (Pipe\'s codec) / Pipe',
               'raw asyncio both ends pickle', 'multiprocessing.Pipe', 'ratio', 0.0, note='info'),
        Target('floor itself: raw asyncio json / Pipe',
               'raw asyncio both ends json', 'multiprocessing.Pipe', 'ratio', 0.0, note='info'),
    ]))

    # -- streaming, both directions
    for key, direction, case in (('stream_p2w', 'primary->worker', 'stream_p2w'),
                                 ('stream_w2p', 'worker->primary', 'stream_w2p')):
        full_n, quick_n = 200_000, 500
        vs = [iso(f'isocluster {c}', f'iso_{case}', {'n': full_n, 'codec': c}, {'n': quick_n, 'codec': c},
                  needs=need(c)) for c in codecs]
        vs.append(iso('isocluster pickle+uvloop', f'iso_{case}', {'n': full_n, 'codec': 'pickle', 'loop': 'uvloop'},
                      {'n': quick_n, 'codec': 'pickle', 'loop': 'uvloop'}, needs='uvloop'))
        # Fire and forget: no send() future awaited, as most users send (the others await
        # the futures that are not already resolved: backpressure honoured).
        vs += [iso(f'isocluster {c} fire-and-forget', f'iso_{case}', {'n': full_n, 'codec': c, 'pattern': 'fire'},
                   {'n': quick_n, 'codec': c, 'pattern': 'fire'}) for c in ('json', 'pickle')]
        vs += [base(f'raw fork+socketpair {c}', f'raw_{case}', {'n': full_n, 'codec': c}, {'n': quick_n, 'codec': c},
                    needs=need(c)) for c in ('json', 'pickle', 'orjson')]
        # The floor of an event-loop design: bare asyncio at both ends, the same codec and
        # framing, one write per loop turn, dispatch on 'type' (cases.aio_stream_*).
        vs += [base(f'raw asyncio both ends {c}', f'aio_{case}', {'n': full_n, 'codec': c},
                    {'n': quick_n, 'codec': c}) for c in ('json', 'pickle')]
        vs += [
            base('multiprocessing.Pipe', f'mp_{case}', {'n': full_n}, {'n': quick_n}),
            base('node cluster (json)', f'node:{case}', {'n': full_n}, {'n': quick_n}, needs='node'),
        ]
        S.append(Scenario(key, f'streaming {direction}, 200k ~100-byte messages', 'msg/s', 'higher', vs, [
            Target('default codec >= 1.5 x multiprocessing.Pipe', 'isocluster json', 'multiprocessing.Pipe', '>=', 1.5),
            Target('default codec >= 1.5 x node cluster (json)', 'isocluster json', 'node cluster (json)', '>=', 1.5),
            Target('pickle codec >= 3 x multiprocessing.Pipe', 'isocluster pickle', 'multiprocessing.Pipe', '>=', 3.0),
            Target('fire-and-forget >= 0.9 x backpressure honoured (json)', 'isocluster json fire-and-forget',
                   'isocluster json', '>=', 0.9),
            Target('fire-and-forget json >= 1.5 x multiprocessing.Pipe', 'isocluster json fire-and-forget',
                   'multiprocessing.Pipe', '>=', 1.5),
            Target('fire-and-forget pickle >= 2.5 x multiprocessing.Pipe', 'isocluster pickle fire-and-forget',
                   'multiprocessing.Pipe', '>=', 2.5),
        ] + [
            target for c, bound in (('json', 1.5), ('pickle', 2.5)) for target in (
                Target(f'floor itself: raw asyncio both ends {c} >= {bound} x Pipe',
                       f'raw asyncio both ends {c}', 'multiprocessing.Pipe', '>=', bound, note='info'),
                Target(f'fire-and-forget {c} / its floor (raw asyncio both ends {c})',
                       f'isocluster {c} fire-and-forget', f'raw asyncio both ends {c}', 'ratio', 0.0, note='info'),
            )
        ]))

    # -- a fire-and-forget flood against a slow consumer, then shut_down()
    flood = {'codec': 'json', 'shutdown_timeout': 1.0, 'kill_timeout': 2.0}
    S.append(Scenario('flood', 'fire-and-forget flood for 3 s into a 1 ms/message consumer, then shut_down(): '
                      'seconds until the worker is gone', 's', 'lower', [
        iso(f'isocluster flood {label}', 'iso_flood', {**flood, 'seconds': 3.0, 'direction': direction},
            {**flood, 'seconds': 0.3, 'direction': direction})
        for direction, label in (('p2w', 'primary->worker'), ('w2p', 'worker->primary'))
    ], [
        Target(f'flood {label}: worker gone <= shutdown_timeout + kill_timeout (3 s)',
               f'isocluster flood {label}', 'value', '<=', 3.0)
        for label in ('primary->worker', 'worker->primary')
    ] + [
        Target(f'flood {label}: sender RSS growth <= 2 x queued bytes (+ its RSS before)',
               f'isocluster flood {label}', 'extra:sender_growth_per_queued_byte', '<=', 2.0)
        for label in ('primary->worker', 'worker->primary')
    ], timeout=60))

    # -- large messages, each way, against the raw socketpair's bandwidth in the same run
    large = []
    # Each measurement: the median of `reps` payloads after one warm-up, in a fresh process. At
    # 1 MB the first payloads of a process run 1.5-2 x slower for every contender (raw too):
    # 30 of them measure the wire's bandwidth, not the process's warm-up (~10 ms a measurement).
    for size, label, reps in ((1_000_000, '1 MB', 30), (16_000_000, '16 MB', 2), (60_000_000, '60 MB', 1)):
        for codec, what in (('pickle', 'bytes'), ('json', 'list of str')):
            for direction, arrow in (('p2w', 'primary->worker'), ('w2p', 'worker->primary')):
                large.append(iso(f'isocluster {label} {codec} {what} {arrow}', 'iso_large',
                                 {'size': size, 'reps': reps, 'codec': codec, 'direction': direction},
                                 {'size': 100_000, 'reps': 1, 'codec': codec, 'direction': direction}))
        large.append(base(f'raw socketpair {label}', 'raw_large', {'size': size, 'reps': reps},
                          {'size': 100_000, 'reps': 1}))
        if size == 1_000_000:  # the event-loop floor: the same transfer with a loop at both ends
            large.append(base(f'raw asyncio both ends {label}', 'aio_large', {'size': size, 'reps': reps},
                              {'size': 100_000, 'reps': 1}))
    S.append(Scenario('large', 'one large message at a time (MB/s of payload)', 'MB/s', 'higher', large, [
        Target(f'{label} pickle bytes {arrow} >= 0.5 x raw socketpair', f'isocluster {label} pickle bytes {arrow}',
               f'raw socketpair {label}', '>=', 0.5)
        for label in ('1 MB', '16 MB', '60 MB') for arrow in ('primary->worker', 'worker->primary')
    ] + [
        Target('floor itself: raw asyncio both ends 1 MB / raw socketpair 1 MB', 'raw asyncio both ends 1 MB',
               'raw socketpair 1 MB', 'ratio', 0.0, note='info'),
    ] + [
        Target(f'1 MB pickle bytes {arrow} / its floor (raw asyncio 1 MB)',
               f'isocluster 1 MB pickle bytes {arrow}', 'raw asyncio both ends 1 MB', 'ratio', 0.0, note='info')
        for arrow in ('primary->worker', 'worker->primary')
    ], timeout=120))

    # -- pipelined request/response over 2 workers
    S.append(Scenario('pipeline', 'pipelined request/response over 2 workers (64 in flight)', 'req/s', 'higher', [
        iso('isocluster json (send/echo)', 'iso_pipeline', {'n': 20000, 'codec': 'json'}, {'n': 200, 'codec': 'json'}),
        iso('isocluster json (request())', 'iso_pipeline', {'n': 20000, 'codec': 'json', 'api': 'request'},
            {'n': 200, 'codec': 'json', 'api': 'request'}),
        iso('isocluster pickle (send/echo)', 'iso_pipeline', {'n': 20000, 'codec': 'pickle'}, {'n': 200, 'codec': 'pickle'}),
        base('ProcessPoolExecutor', 'ppe_pipeline', {'n': 3000}, {'n': 100}),
        base('node cluster (json)', 'node:pipeline', {'n': 20000}, {'n': 200}, needs='node'),
    ], [
        Target('>= 2.5 x node cluster (json)', 'isocluster json (send/echo)', 'node cluster (json)', '>=', 2.5),
        Target('>= 25 x ProcessPoolExecutor', 'isocluster json (send/echo)', 'ProcessPoolExecutor', '>=', 25.0),
    ]))

    # -- broadcast to 64 workers (both variants in one cluster, order alternated per rep)
    names = ('isocluster broadcast (primary CPU)', 'isocluster single send (primary CPU)',
             'isocluster broadcast (wall)', 'isocluster single send (wall)')
    S.append(Scenario('broadcast', 'broadcast to 64 workers vs single sends, per delivered message', 'us/msg', 'lower', [
        iso('isocluster broadcast+single', 'iso_broadcast', {'workers': 64, 'm': 500, 'codec': 'json'},
            {'workers': 4, 'm': 20, 'codec': 'json'}, produces=names),
    ], [
        Target('per-worker cost of a broadcast <= 1.2 x a single send (primary CPU)',
               'isocluster broadcast (primary CPU)', 'isocluster single send (primary CPU)', '<=', 1.2),
        Target('same, end to end (wall, 64 workers on 2 cores; informational)',
               'isocluster broadcast (wall)', 'isocluster single send (wall)', '<=', 1.2, note='info'),
        Target('message encoded once per broadcast', 'encodes_per_broadcast', None, '<=', 1.0),
    ], timeout=120))

    # -- start-up to READY
    S.append(Scenario('startup_fork', 'worker start-up to READY, fork mode (worker_target)', 'ms', 'lower', [
        iso('isocluster fork', 'iso_startup', {'k': 10, 'mode': 'fork'}, {'k': 2, 'mode': 'fork'}),
        base('raw os.fork + ready frame', 'raw_startup', {'k': 10}, {'k': 2}),
        base("multiprocessing 'fork'", 'mp_startup', {'k': 10}, {'k': 2}),
    ], [
        Target('<= 2 x raw os.fork + ready frame', 'isocluster fork', 'raw os.fork + ready frame', '<=', 2.0),
    ]))
    S.append(Scenario('startup_exec', 'worker start-up to READY, exec mode (worker_script)', 'ms', 'lower', [
        iso('isocluster exec', 'iso_startup', {'k': 3, 'mode': 'exec'}, {'k': 1, 'mode': 'exec'}),
        base("python -c 'import asyncio'", 'raw_exec_startup', {'k': 3}, {'k': 1}),
        base("multiprocessing 'spawn'", 'mp_startup', {'k': 2, 'method': 'spawn'}, {'k': 1, 'method': 'spawn'}),
        base('node cluster.fork', 'node:startup', {'k': 3}, {'k': 1}, needs='node'),
    ], [
        Target("<= 1.2 x python -c 'import asyncio' start-up", 'isocluster exec', "python -c 'import asyncio'", '<=', 1.2),
    ]))

    # -- crash -> replacement ready
    S.append(Scenario('crash', 'SIGKILL a ready worker -> replacement ready (fork mode)', 'ms', 'lower', [
        iso('isocluster fork', 'iso_crash', {'k': 10}, {'k': 2}),
        base('raw fork respawn', 'raw_crash', {'k': 10}, {'k': 2}),
        base("multiprocessing 'fork' respawn", 'mp_crash', {'k': 10}, {'k': 2}),
        base('node cluster (exit -> fork)', 'node:crash', {'k': 5}, {'k': 1}, needs='node'),
    ], [
        Target('<= 2 x raw fork respawn', 'isocluster fork', 'raw fork respawn', '<=', 2.0),
        Target('>= 20 x faster than node cluster', 'isocluster fork', 'node cluster (exit -> fork)', '<=', 0.05),
    ]))

    # -- many workers
    S.append(Scenario('many', 'N workers forked, all ready, shut down (time, memory)', 'ms', 'lower', [
        iso('isocluster 256', 'iso_many', {'workers': 256}, {'workers': 8}),
        iso('isocluster 64', 'iso_many', {'workers': 64}, {'workers': 2}),
        base('raw fork 256', 'raw_many', {'workers': 256}, {'workers': 8}),
        base('raw fork 64', 'raw_many', {'workers': 64}, {'workers': 2}),
    ], [
        Target('256 workers: completes (every repetition)', 'isocluster 256', None, '>=', 0.0),
    ], timeout=150))
    S.extend(task_queue_scenarios())
    return S


def task_queue_scenarios() -> list[Scenario]:
    """Issue 15's four workloads over 2 workers: primary.map() (round trips: request() with
    no `to`) against multiprocessing.Pool and ProcessPoolExecutor at their best settings."""
    S = []
    pool, ppe = 'multiprocessing.Pool', 'ProcessPoolExecutor'
    S.append(Scenario('tq_uneven', 'task queue: 68 tasks alternating ~15 ms and ~0.4 ms CPU', 'ms', 'lower', [
        iso('isocluster map max_in_flight=1', 'iso_task_queue', {'work': 'uneven', 'n': 68, 'max_in_flight': 1},
            {'work': 'uneven', 'n': 6, 'max_in_flight': 1}),
        iso('isocluster map (default max_in_flight=2)', 'iso_task_queue', {'work': 'uneven', 'n': 68},
            {'work': 'uneven', 'n': 6}),
        base(f'{pool} chunksize=1', 'pool_task_queue', {'work': 'uneven', 'n': 68, 'chunksize': 1},
             {'work': 'uneven', 'n': 6, 'chunksize': 1}),
        base(f'{ppe} chunksize=1', 'ppe_task_queue', {'work': 'uneven', 'n': 68, 'chunksize': 1},
             {'work': 'uneven', 'n': 6, 'chunksize': 1}),
    ], [Target(f'<= 1.05 x {pool}(chunksize=1)', 'isocluster map max_in_flight=1', f'{pool} chunksize=1', '<=', 1.05)]))
    S.append(Scenario('tq_tiny', 'task queue: 10,000 tiny tasks (sum of a small list)', 'ms', 'lower', [
        iso('isocluster map json chunksize=1250', 'iso_task_queue', {'work': 'tiny', 'n': 10000, 'chunksize': 1250},
            {'work': 'tiny', 'n': 100, 'chunksize': 13}),
        iso('isocluster map pickle chunksize=1250', 'iso_task_queue',
            {'work': 'tiny', 'n': 10000, 'chunksize': 1250, 'codec': 'pickle'},
            {'work': 'tiny', 'n': 100, 'chunksize': 13, 'codec': 'pickle'}),
        base(f'{pool} default chunking', 'pool_task_queue', {'work': 'tiny', 'n': 10000}, {'work': 'tiny', 'n': 100}),
        base(f'{ppe} chunksize=1250', 'ppe_task_queue', {'work': 'tiny', 'n': 10000, 'chunksize': 1250},
             {'work': 'tiny', 'n': 100, 'chunksize': 13}),
    ], [
        Target(f'pickle (as Pool) <= 2 x {pool} default chunking', 'isocluster map pickle chunksize=1250',
               f'{pool} default chunking', '<=', 2.0),
        Target(f'default codec json <= 2 x {pool} default chunking (informational: Pool pickles)',
               'isocluster map json chunksize=1250', f'{pool} default chunking', '<=', 2.0, note='info'),
    ]))
    S.append(Scenario('tq_even', 'task queue: 200 tasks of ~7 ms CPU', 'ms', 'lower', [
        iso('isocluster map', 'iso_task_queue', {'work': 'even', 'n': 200}, {'work': 'even', 'n': 6}),
        base(f'{pool} default chunking', 'pool_task_queue', {'work': 'even', 'n': 200}, {'work': 'even', 'n': 6}),
        base(f'{pool} chunksize=1', 'pool_task_queue', {'work': 'even', 'n': 200, 'chunksize': 1},
             {'work': 'even', 'n': 6, 'chunksize': 1}),
        base(f'{ppe} default chunking', 'ppe_task_queue', {'work': 'even', 'n': 200}, {'work': 'even', 'n': 6}),
    ], [
        Target(f'<= 1.05 x {pool} chunksize=1 (its best setting here)', 'isocluster map', f'{pool} chunksize=1', '<=', 1.05),
        Target(f'<= 1.05 x {pool} default chunking', 'isocluster map', f'{pool} default chunking', '<=', 1.05),
    ]))
    S.append(Scenario('tq_rtt', 'task queue: 2,000 one-at-a-time round trips (request() to the least busy)', 'ms',
                      'lower', [
        iso('isocluster request()', 'iso_task_queue', {'work': 'rtt', 'n': 2000}, {'work': 'rtt', 'n': 20}),
        base(f'{ppe} submit().result()', 'ppe_task_queue', {'work': 'rtt', 'n': 2000}, {'work': 'rtt', 'n': 20}),
        base(f'{pool} apply()', 'pool_task_queue', {'work': 'rtt', 'n': 2000}, {'work': 'rtt', 'n': 20}),
    ], [Target(f'>= 2 x faster than {ppe}', 'isocluster request()', f'{ppe} submit().result()', '<=', 0.5)]))
    return S


RAY = Variant(RAY_NAME, 'ray_all', {'rtt_n': 1000, 'stream_n': 50_000, 'codec': 'json'},
              {'rtt_n': 20, 'stream_n': 500, 'codec': 'json'}, baseline=False, produces=RAY_SCENARIOS, needs='ray')
# The same on a two-node Ray test cluster on this machine: the workers on the node that is
# not the primary's (every message crosses raylets, as between hosts, minus the network).
RAY_TWO_NODES = Variant(RAY_TWO_NODES_NAME, 'ray_all', {**RAY.full, 'nodes': 2}, {**RAY.quick, 'nodes': 2},
                        baseline=False, produces=RAY_SCENARIOS, needs='ray')


# ---------------------------------------------------------------------------------------


def available(variant: Variant) -> tuple[bool, str]:
    for need in (variant.needs or '').split('+'):  # 'uvloop+codec:orjson': every one of them
        ok, why = _available(need)
        if not ok:
            return ok, why
    return (True, '')


def _available(need: str) -> tuple[bool, str]:
    if need == 'node':
        return (NODE is not None, 'node is not installed')
    if need == 'uvloop':
        return (uvloop_available(), 'uvloop is not installed (pip install isocluster[uvloop])')
    if need == 'ray':
        return (ray_available(), "ray is not installed (pip install 'isocluster[ray]')")
    if need.startswith('codec:'):
        codec = need.split(':', 1)[1]
        return (codec_available(codec), f'{codec} is not installed')
    return (True, '')


def run_one(variant: Variant, params: dict, timeout: float, python: str, prefix: tuple[str, ...] = ()) -> dict:
    """One measurement in a fresh process; its process group is killed on timeout or error.
    `prefix` runs it under another command (placement.py: `taskset -c 0`)."""
    if variant.case.startswith('node:'):
        cmd = [*prefix, NODE, str(HERE / 'node_baseline.js'), variant.case[5:], json.dumps(params)]
    else:
        cmd = [*prefix, python, str(HERE / 'cases.py'), variant.case, json.dumps(params)]
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(ROOT), env.get('PYTHONPATH')]))
    env.pop('ISOCLUSTER_BENCH_PROFILE', None)
    # Bytecode caches as in a deployment (this machine sets PYTHONDONTWRITEBYTECODE, which
    # would make every exec'd worker recompile isocluster): written outside the tree.
    env.pop('PYTHONDONTWRITEBYTECODE', None)
    env['PYTHONPYCACHEPREFIX'] = PYCACHE
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env=env, cwd=str(ROOT), start_new_session=True, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        out, err = proc.communicate()
        return {'error': f'timed out after {timeout:.0f}s', 'stderr': err[-2000:]}
    finally:
        if proc.poll() is None:
            _kill_group(proc.pid)
            proc.wait()
        # Anything the case left behind in its group (it should have killed its children).
        _kill_group(proc.pid)
    for line in out.splitlines():
        if line.startswith('RESULT '):
            result = json.loads(line[7:])
            result['seconds'] = time.perf_counter() - started
            return result
    return {'error': f'exit code {proc.returncode}, no RESULT line', 'stderr': err[-2000:]}


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stats(values: list[float]) -> dict:
    if not values:
        return {'median': None, 'min': None, 'max': None, 'runs': 0}
    return {'median': statistics.median(values), 'min': min(values), 'max': max(values), 'runs': len(values)}


def fmt(value, unit='') -> str:
    if value is None:
        return '-'
    if unit == 'msg/s' or unit == 'req/s' or abs(value) >= 10000:
        return f'{value / 1000:.1f}k' if abs(value) >= 1000 else f'{value:.0f}'
    if abs(value) >= 100:
        return f'{value:.0f}'
    if abs(value) >= 10:
        return f'{value:.1f}'
    return f'{value:.2f}'


def run_scenario(sc: Scenario, reps: int, quick: bool, python: str, deadline: float, log) -> dict:
    todo, skipped = [], {}
    for v in sc.variants:
        ok, why = available(v)
        if ok:
            todo.append(v)
        else:
            skipped[v.name] = why
    samples: dict[str, list[float]] = {}
    extras: dict[str, list[dict]] = {}
    errors: dict[str, list[str]] = {}
    reps_done = 0
    for rep in range(reps):
        if time.monotonic() > deadline and rep >= 1:
            log(f'  time budget reached: {sc.key} stopped after {rep} repetitions')
            break
        order = todo[rep % len(todo):] + todo[:rep % len(todo)] if todo else []
        for v in order:
            params = dict(v.quick if quick else v.full)
            params['rep'] = rep
            result = run_one(v, params, sc.timeout, python)
            if 'error' in result:
                errors.setdefault(v.name, []).append(result['error'] + ': ' + result.get('stderr', '')[-600:])
                log(f'  {v.name}: ERROR {result["error"]}\n{result.get("stderr", "")[-600:]}')
                continue
            if 'samples' in result:
                for name, value in result['samples'].items():
                    samples.setdefault(name, []).append(value)
            else:
                samples.setdefault(v.name, []).append(result['value'])
            extra = {k: val for k, val in result.items() if k not in ('value', 'samples', 'unit', 'all_ms')}
            extras.setdefault(v.name, []).append(extra)
        reps_done += 1
        log(f'  [{sc.key}] repetition {rep + 1}/{reps} done')
    is_iso = {}
    for v in sc.variants:
        for name in (v.produces or (v.name,)):
            is_iso[name] = not v.baseline
    variants = {}
    for name in [n for v in sc.variants for n in (v.produces or (v.name,))]:
        if name in samples:
            variants[name] = {**stats(samples[name]), 'samples': samples[name], 'isocluster': is_iso[name],
                              'extras': extras.get(name, [])}
    # ratios of each isocluster variant to each baseline, medians of this run
    ratios: dict[str, dict[str, float]] = {}
    for name, info in variants.items():
        if not info['isocluster']:
            continue
        ratios[name] = {b: info['median'] / binfo['median'] for b, binfo in variants.items()
                        if not binfo['isocluster'] and binfo['median']}
    targets = [evaluate(sc, t, variants, extras, reps, errors) for t in sc.targets]
    derived = derive(sc, variants)
    deferred = {}
    if sc.key in RAY_SCENARIOS:
        if available(RAY)[0]:
            deferred[RAY_NAME] = 'measured after every scenario: see the Ray column at the end'
        else:
            skipped[RAY_NAME] = RAY_UNAVAILABLE
    return {'title': sc.title, 'unit': sc.unit, 'better': sc.better, 'repetitions': reps_done,
            'variants': variants, 'ratios': ratios, 'targets': targets, 'skipped': skipped,
            'errors': errors, 'derived': derived, 'deferred': deferred}


def run_ray_column(results: dict, quick: bool, python: str, deadline: float, log,
                   variant: Variant = RAY) -> dict | None:
    """The Ray column: RAY_REPS runs of `cases.py ray_all`; each scenario of RAY_SCENARIOS that
    ran gets the `isocluster json on Ray` variant, its ratios and `derived['ray']` (with
    `variant=RAY_TWO_NODES`: the two-node variant and `derived['ray_two_nodes']`)."""
    keys = [key for key in RAY_SCENARIOS if key in results]
    if not keys or not available(variant)[0]:
        return None
    log(f'running {variant.name} ({", ".join(keys)})')
    samples: dict[str, list[float]] = {key: [] for key in keys}
    errors: list[str] = []
    reps = 1 if quick else RAY_REPS
    for rep in range(reps):
        if rep >= 1 and time.monotonic() > deadline:
            log(f'  time budget reached: the Ray column stopped after {rep} repetitions')
            break
        params = dict(variant.quick if quick else variant.full, rep=rep)
        result = run_one(variant, params, 180.0, python)
        if 'error' in result:
            errors.append(result['error'] + ': ' + result.get('stderr', '')[-600:])
            log(f'  {variant.name}: ERROR {result["error"]}\n{result.get("stderr", "")[-600:]}')
            continue
        for key in keys:
            samples[key].append(result['samples'][key])
        log(f'  [ray] repetition {rep + 1}/{reps} done')
    params = variant.quick if quick else variant.full
    column = {'repetitions': len(samples[keys[0]]), 'rtt_n': params['rtt_n'], 'stream_n': params['stream_n'],
              'nodes': params.get('nodes', 1), 'scenarios': {}}
    for key in keys:
        res = results[key]
        res['deferred'] = {}
        if errors:
            res['errors'][variant.name] = errors
        if not samples[key]:
            continue
        info = {**stats(samples[key]), 'samples': samples[key], 'isocluster': True, 'extras': []}
        res['variants'][variant.name] = info
        res['ratios'][variant.name] = {b: info['median'] / binfo['median'] for b, binfo in res['variants'].items()
                                   if not binfo['isocluster'] and binfo['median']}
        process = res['variants'].get('isocluster json')
        if process and process['median']:
            res['derived']['ray' if variant is RAY else 'ray_two_nodes'] = {'ray_over_process_json': info['median'] / process['median']}
        column['scenarios'][key] = {'unit': res['unit'], 'ray': info,
                                    'process_json': process['median'] if process else None}
    return column


def print_ray_column(column: dict, out) -> None:
    where = ('a local Ray instance' if column.get('nodes', 1) == 1
             else 'a 2-node Ray test cluster, the worker on the node that is not the primary\'s')
    print(f"\n== Ray column: the same scenarios on RayTransport (1 worker, {where}; rtt over "
          f"{column['rtt_n']} messages, streams of {column['stream_n']}; {column['repetitions']} repetitions) ==",
          file=out)
    print(f"  {'scenario':<12} {'unit':<6} {'process (json)':>15} {'Ray (json)':>12} {'min - max':>19} "
          f"{'Ray / process':>14}", file=out)
    for key, row in column['scenarios'].items():
        unit, ray, process = row['unit'], row['ray'], row['process_json']
        ratio = f"{ray['median'] / process:.2f}" if process else '-'
        rng = f"{fmt(ray['min'], unit)} - {fmt(ray['max'], unit)}"
        print(f"  {key:<12} {unit:<6} {fmt(process, unit):>15} {fmt(ray['median'], unit):>12} {rng:>19} "
              f"{ratio:>14}", file=out)


def evaluate(sc, t: Target, variants, extras, reps, errors) -> dict:
    out = {'target': t.label, 'numerator': t.num, 'denominator': t.den, 'op': t.op, 'bound': t.bound,
           'ratio': None, 'status': 'SKIP', 'note': t.note}
    if t.num == 'encodes_per_broadcast':
        counts = [e.get('encodes_per_broadcast') for es in extras.values() for e in es if 'encodes_per_broadcast' in e]
        if counts:
            out['ratio'] = max(counts)
            out['status'] = 'PASS' if max(counts) <= t.bound else 'MISS'
        return _info(out)
    if t.den and t.den.startswith('extra:'):  # a bound on the median of a figure the case reports
        key = t.den[len('extra:'):]
        found = [e[key] for e in extras.get(t.num, []) if key in e]
        if found:
            out['ratio'] = statistics.median(found)
            ok = out['ratio'] <= t.bound if t.op == '<=' else out['ratio'] >= t.bound
            out['status'] = 'PASS' if ok else 'MISS'
        return out
    if t.den == 'value':  # an absolute bound on the median itself
        if t.num in variants:
            out['ratio'] = variants[t.num]['median']
            ok = out['ratio'] <= t.bound if t.op == '<=' else out['ratio'] >= t.bound
            out['status'] = 'PASS' if ok else 'MISS'
        return out
    if t.den is None:  # completes
        ok = t.num in variants and variants[t.num]['runs'] > 0 and not errors.get(t.num)
        out['ratio'] = variants[t.num]['runs'] if t.num in variants else 0
        out['status'] = 'PASS' if ok else 'MISS'
        return out
    if t.num not in variants or t.den not in variants:
        missing = [n for n in (t.num, t.den) if n not in variants]
        out['note'] = (out['note'] + ' ' if out['note'] else '') + f'not measured: {", ".join(missing)}'
        return out
    ratio = variants[t.num]['median'] / variants[t.den]['median']
    out['ratio'] = ratio
    if t.op == 'ratio':  # a ratio shown for what it says, with no bound to pass
        out['status'] = 'info'
        return out
    ok = ratio <= t.bound if t.op == '<=' else ratio >= t.bound
    out['status'] = 'PASS' if ok else 'MISS'
    return _info(out)


def _info(out):
    if out.get('note') == 'info' and out['status'] in ('PASS', 'MISS'):
        out['status'] = f"({out['status']})"
    return out


def derive(sc: Scenario, variants) -> dict:
    if sc.key == 'flood':
        return {name: {'text': _flood_text(info['extras'])} for name, info in variants.items() if info['extras']}
    if sc.key != 'many':
        return {}
    out = {}
    for who in ('isocluster', 'raw fork'):
        big, small = variants.get(f'{who} 256'), variants.get(f'{who} 64')
        if big and small:
            slope = (big['median'] - small['median']) / 192
            out[who] = {
                'slope_ms_per_worker': slope,
                'ms_per_worker_at_64': small['median'] / 64, 'ms_per_worker_at_256': big['median'] / 256,
                'primary_peak_rss_kib_256': statistics.median(e['primary_peak_rss_kib'] for e in big['extras']),
                'primary_kib_per_worker_256': statistics.median(e['primary_kib_per_worker'] for e in big['extras']),
                'worker_private_kib': statistics.median(e['worker_private_kib'] or 0 for e in big['extras']),
                'ready_ms_256': statistics.median(e['ready_ms'] for e in big['extras']),
                'shutdown_ms_256': statistics.median(e['shutdown_ms'] for e in big['extras']),
            }
    return out


def _flood_text(extras) -> str:
    def med(key):
        return statistics.median(e[key] for e in extras)

    return (f"sent {med('sent'):.0f}, refused {med('refused'):.0f}, queued {med('queued_mib'):.1f} MiB, "
            f"tasks {med('tasks'):.0f}; shut_down_complete after {med('shutdown_s'):.2f} s; sender RSS {med('sender_rss_before_kib') / 1024:.0f} MiB before, "
            f"+{med('sender_growth_per_queued_byte'):.2f} bytes per queued byte; peak RSS primary "
            f"{med('primary_peak_rss_kib') / 1024:.0f} MiB, worker {med('worker_peak_rss_kib') / 1024:.0f} MiB")


def print_scenario(sc_key: str, res: dict, out) -> None:
    unit = res['unit']
    arrow = 'lower is better' if res['better'] == 'lower' else 'higher is better'
    print(f"\n== {sc_key}: {res['title']} [{unit}, {arrow}; {res['repetitions']} interleaved repetitions] ==", file=out)
    width = max([len(n) for n in res['variants']] + [20])
    print(f"  {'variant':<{width}}  {'median':>9}  {'min - max':>19}  runs", file=out)
    for name, info in res['variants'].items():
        mark = '*' if info['isocluster'] else ' '
        rng = f"{fmt(info['min'], unit)} - {fmt(info['max'], unit)}"
        print(f"{mark} {name:<{width}}  {fmt(info['median'], unit):>9}  {rng:>19}  {info['runs']}", file=out)
    for name, why in res['skipped'].items():
        print(f"  {name:<{width}}  skipped: {why}", file=out)
    for name, why in res.get('deferred', {}).items():
        print(f"  {name:<{width}}  {why}", file=out)
    for name, errs in res['errors'].items():
        print(f"  {name:<{width}}  {len(errs)} failed run(s): {errs[0][:120]}", file=out)
    baselines = [n for n, i in res['variants'].items() if not i['isocluster']]
    if baselines and res['ratios']:
        print('  ratio isocluster / baseline (same run):', file=out)
        for name, rs in res['ratios'].items():
            parts = '  '.join(f'{b}={r:.2f}' for b, r in rs.items())
            print(f'    {name}: {parts}', file=out)
    for name, d in res.get('derived', {}).items():
        if name == 'ray':
            print(f"  Ray / process transport (json, medians of this run): {d['ray_over_process_json']:.2f}", file=out)
            continue
        if 'text' in d:
            print(f"  {name}: {d['text']}", file=out)
            continue
        print(f"  {name}: slope {d['slope_ms_per_worker']:.2f} ms/worker (64->256), "
              f"{d['ms_per_worker_at_64']:.2f} ms/worker at 64, {d['ms_per_worker_at_256']:.2f} at 256; "
              f"ready {d['ready_ms_256']:.0f} ms + shutdown {d['shutdown_ms_256']:.0f} ms; primary peak RSS "
              f"{d['primary_peak_rss_kib_256'] / 1024:.1f} MiB, +{d['primary_kib_per_worker_256']:.0f} KiB/worker; "
              f"worker private {d['worker_private_kib']:.0f} KiB", file=out)
    for t in res['targets']:
        ratio = '-' if t['ratio'] is None else f"{t['ratio']:.2f}"
        note = f"  ({t['note']})" if t['note'] and t['note'] != 'info' else ''
        print(f"  target: {t['target']:<64} {ratio:>7}  {t['status']}{note}", file=out)


def print_summary(results: dict, out) -> None:
    print('\n== targets (PERFORMANCE.md), ratios measured in this run ==', file=out)
    print(f"  {'scenario':<13} {'target':<66} {'ratio':>7}  status", file=out)
    for key, res in results.items():
        for t in res['targets']:
            ratio = '-' if t['ratio'] is None else f"{t['ratio']:.2f}"
            print(f"  {key:<13} {t['target']:<66} {ratio:>7}  {t['status']}", file=out)


def machine_info() -> dict:
    info = {'python': platform.python_version(), 'implementation': platform.python_implementation(),
            'platform': platform.platform(), 'cpus': os.cpu_count(), 'node': None}
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    info['cpu'] = line.split(':', 1)[1].strip()
                    break
        with open('/proc/meminfo') as f:
            info['memory_kib'] = int(f.readline().split()[1])
    except OSError:
        pass
    if NODE:
        try:
            info['node'] = subprocess.run([NODE, '--version'], capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            pass
    try:
        info['commit'] = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True,
                                        cwd=str(ROOT), timeout=10).stdout.strip() or None
    except Exception:
        info['commit'] = None
    info['optional'] = {'uvloop': uvloop_available(), 'msgpack': codec_available('msgpack'),
                        'orjson': codec_available('orjson'), 'ray': ray_available()}
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', help='tiny sizes, 1 repetition: checks the harness only')
    parser.add_argument('--reps', type=int, default=None, help='repetitions per scenario (default 5; quick 1)')
    parser.add_argument('--only', default='', help='comma-separated scenario keys')
    parser.add_argument('--out', default=str(HERE / 'results' / 'latest.json'))
    parser.add_argument('--budget', type=float, default=480.0,
                        help='seconds; past it, scenarios stop after their current repetition (>= 1 each)')
    parser.add_argument('--python', default=sys.executable, help='interpreter for the cases')
    args = parser.parse_args(argv)
    reps = args.reps or (1 if args.quick else 5)
    scenarios = build_scenarios()
    if args.only:
        wanted = set(args.only.split(','))
        unknown = wanted - {s.key for s in scenarios}
        if unknown:
            parser.error(f'unknown scenario(s): {sorted(unknown)}; have {[s.key for s in scenarios]}')
        scenarios = [s for s in scenarios if s.key in wanted]

    def log(text):
        print(text, file=sys.stderr, flush=True)

    started = time.monotonic()
    deadline = started + args.budget
    meta = {'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
            'quick': args.quick, 'reps': reps, 'machine': machine_info()}
    warm = run_one(Variant('warm-up', 'raw_startup', {}, {}), {'k': 1}, 60, args.python)  # fills the pycache
    if 'error' in warm:
        log(f'warm-up failed: {warm}')
    if NODE is None:
        log('note: node is not installed: the Node.js cluster baselines are skipped')
    results = {}
    for sc in scenarios:
        log(f'running {sc.key}: {sc.title}')
        results[sc.key] = run_scenario(sc, reps, args.quick, args.python, deadline, log)
        print_scenario(sc.key, results[sc.key], sys.stdout)
        sys.stdout.flush()
    column = run_ray_column(results, args.quick, args.python, started + RAY_DEADLINE, log)
    if column is not None:
        meta['ray_column'] = column
        print_ray_column(column, sys.stdout)
    column = run_ray_column(results, args.quick, args.python, started + RAY_DEADLINE, log, RAY_TWO_NODES)
    if column is not None:
        meta['ray_column_two_nodes'] = column
        print_ray_column(column, sys.stdout)
    meta['elapsed_s'] = time.monotonic() - started
    print_summary(results, sys.stdout)
    m = meta['machine']
    print(f"\nmachine: {m.get('cpu')} x{m['cpus']}, Python {m['python']}, node {m['node']}, "
          f"optional {m['optional']}; {meta['elapsed_s']:.0f} s", file=sys.stdout)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix('.tmp')
    tmp.write_text(json.dumps({'meta': meta, 'scenarios': results}, indent=1))
    tmp.replace(out)
    print(f'results: {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
