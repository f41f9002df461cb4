"""HTTP load harness (issue 16): 4 workers serving the same hello-world on 127.0.0.1, loaded by
an asyncio client in this process; requests/s, failed requests while workers change, and the
per-worker share of connections.

    python benchmarks/http_load.py            # ~2 minutes (make bench-http)
    python benchmarks/http_load.py --quick    # short durations: checks the harness

Servers (each a process group of its own, SIGKILLed and reaped in a `finally`):
  isocluster   ClusterPrimary + 4 workers, one shared socket (or reuse_port=True), serving
               `handle` below with asyncio.start_server: the README's HTTP worker pattern
  baseline     4 forked processes, each with its own SO_REUSEPORT socket, the same `handle`
  gunicorn     `gunicorn -w 4` sync workers serving `app` below (same body)

Requests/s are measured twice: each server alone, interleaved (`rates`), and isocluster with
`reuse_port=True` and the baseline at the same time, each under an ab of its own (`side`), with
the workers' CPU seconds per 10,000 requests: on a shared host the load moves a lone server's
requests/s by 2x between consecutive runs, while a side-by-side pair sees the same load.

A request fails when its connection was made and no complete 200 answer came back; a connect
that is refused (a shutting-down server refuses new clients) is counted apart, as is a
connect that times out. Bounded: every run has a deadline and a request cap.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKERS = 4
CONCURRENCY = 50
MAX_REQUESTS = 2_000_000  # per run, a cap far above what 2 cores serve in a run
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 10.0
BODY = b'Hello from worker %s'
BACKLOG = 1024  # every server's listen backlog


# -- the app, served the same way by every server ---------------------------------------------

def make_handler(worker_id, draining, on_request=None):
    async def handle(reader, writer):
        try:
            while True:
                try:
                    async with asyncio.timeout(5.0):  # as the README's worker (wait_for() costs a task a request)
                        head = await reader.readuntil(b'\r\n\r\n')
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                    return
                lower = head.lower()  # HTTP/1.0 (ab without -k) closes unless asked to keep alive
                asked = b'connection: keep-alive' in lower if head.split(b'\r\n', 1)[0].endswith(b'1.0') \
                    else b'connection: close' not in lower
                keep_alive = asked and not draining()
                body = BODY % str(worker_id).encode()
                writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n'
                             b'Connection: %s\r\n\r\n%s' % (len(body), b'keep-alive' if keep_alive else b'close', body))
                await writer.drain()
                if on_request is not None:
                    on_request()
                if not keep_alive:
                    return
        except ConnectionError:
            pass
        finally:
            writer.close()

    return handle


def app(environ, start_response):  # gunicorn's WSGI app
    body = BODY % str(os.getpid()).encode()
    start_response('200 OK', [('Content-Type', 'text/plain'), ('Content-Length', str(len(body)))])
    return [body]


# -- servers (run as `http_load.py serve-iso|serve-baseline`) -----------------------------------

def _iso_worker(port, reuse_port, recycle_every):
    from isocluster import ClusterWorker

    worker = ClusterWorker()
    served = 0

    def on_request():
        nonlocal served
        served += 1
        if recycle_every and served == recycle_every:
            worker.send({'type': 'recycle_me', 'served': served})

    async def start():
        sock = await worker.listen(('127.0.0.1', port), reuse_port=reuse_port)
        await asyncio.start_server(make_handler(ClusterWorker.worker_id, lambda: ClusterWorker.draining,
                                                on_request if recycle_every else None),
                                   sock=sock, backlog=BACKLOG)

    asyncio.get_event_loop().create_task(start()).add_done_callback(lambda task: task.result())


def serve_iso(port, reuse_port, recycle_every):
    import functools

    from isocluster import ClusterPrimary

    primary = ClusterPrimary(worker_target=functools.partial(_iso_worker, port, reuse_port, recycle_every),
                             drain_timeout=3.0, shutdown_timeout=8.0)
    if not reuse_port:
        primary.bind(('127.0.0.1', port))
    say = lambda text: print(text, flush=True)
    primary.after('worker_listening', lambda event: say(f"LISTEN {event.data['worker'].id} {event.data['worker'].pid}"))
    primary.after('worker_exit', lambda event: say(f"EXIT {event.data['worker'].id}"))
    primary.after('reload_complete', lambda event: say('RELOADED'))
    # The same reload step a `worker_recycle` takes (max_requests counts the messages a worker
    # handles; HTTP requests are counted by the worker and reported here).
    primary.on('worker_message', lambda event: event.data['worker'].state == 'ready' and
               primary.stop_worker(event.data['worker'], replace=True))
    primary.fork(WORKERS)
    primary.run()


def serve_baseline(port, prepared=False):
    pids = []
    for _ in range(WORKERS):
        pid = os.fork()
        if pid == 0:
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind(('127.0.0.1', port))
                sock.listen(BACKLOG)
                if prepared:  # what isocluster's worker.listen() does (isocluster/read_buffers.py), nothing else
                    bytes(2 * 256 * 1024)
                loop = asyncio.new_event_loop()
                loop.run_until_complete(asyncio.start_server(make_handler(os.getpid(), lambda: False), sock=sock,
                                                             backlog=BACKLOG))
                os.write(1, f'LISTEN {len(pids) + 1} {os.getpid()}\n'.encode())  # one write: the pipe is shared
                loop.run_forever()
            finally:
                os._exit(0)
        pids.append(pid)
    signal.signal(signal.SIGTERM, lambda *_: [os.kill(pid, signal.SIGKILL) for pid in pids])
    for pid in pids:
        os.waitpid(pid, 0)


# -- the harness side ----------------------------------------------------------------------------

def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class Server:
    """One server's process group; `lines` its output, read by a thread."""

    def __init__(self, kind, port, reuse_port=False, recycle=0, prepared=False):
        import threading

        self.port = port
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')])))
        if kind == 'gunicorn':
            command = [str(Path(sys.executable).with_name('gunicorn')), '-w', str(WORKERS), '-k', 'sync',
                       '-b', f'127.0.0.1:{port}', '--backlog', str(BACKLOG), '--log-level', 'warning',
                       '--chdir', str(HERE), 'http_load:app']
        else:
            command = [sys.executable, __file__, f'serve-{kind}', str(port)]
            if kind == 'iso':
                command += ['--reuse-port'] * reuse_port + ['--recycle', str(recycle)]
            command += ['--prepared'] * prepared
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        self.lines = []
        self.live = {}  # worker id -> pid
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.kind = kind

    def _read(self):
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line.strip())
                words = line.split()
                if words and words[0] == 'LISTEN':
                    self.live[int(words[1])] = int(words[2])
                elif words and words[0] == 'EXIT':
                    self.live.pop(int(words[1]), None)
                self.changed.notify_all()

    def wait_for(self, predicate, timeout=30.0):
        with self.changed:
            if not self.changed.wait_for(lambda: predicate(self), timeout):
                raise TimeoutError(f'{self.kind}: not ready in {timeout}s; output: {self.lines[-5:]}')

    def ready(self):
        if self.kind == 'gunicorn':
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(('127.0.0.1', self.port), timeout=1).close()
                    time.sleep(0.5)  # let every sync worker boot
                    return self
                except OSError:
                    time.sleep(0.05)
            raise TimeoutError('gunicorn did not listen in 30 s')
        self.wait_for(lambda server: len(server.live) >= WORKERS)
        return self

    def close(self):
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(30)


class Tally:
    def __init__(self):
        self.ok = 0
        self.failed = 0
        self.refused = 0
        self.failures = collections.Counter()
        self.by_worker = collections.Counter()
        self.connections = 0


REQUEST_KEEP = b'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'
REQUEST_CLOSE = b'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n'


async def client(port, keep_alive, tally, stop, held):
    reader = writer = None
    me = object()
    while not stop.is_set() and tally.ok + tally.failed < MAX_REQUESTS:
        if writer is None:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection('127.0.0.1', port), CONNECT_TIMEOUT)
                tally.connections += 1
            except (ConnectionRefusedError, TimeoutError):
                tally.refused += 1
                await asyncio.sleep(0.01)
                continue
            except OSError as error:
                tally.refused += 1
                tally.failures[f'connect {type(error).__name__}'] += 1
                await asyncio.sleep(0.01)
                continue
        try:
            writer.write(REQUEST_KEEP if keep_alive else REQUEST_CLOSE)
            head = await asyncio.wait_for(reader.readuntil(b'\r\n\r\n'), READ_TIMEOUT)
            lower = head.lower()
            length = int(lower.split(b'content-length:')[1].split(b'\r\n')[0])
            body = await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT)
            if not head.startswith(b'HTTP/1.1 200') and not head.startswith(b'HTTP/1.0 200'):
                raise ValueError(head[:40])
        except Exception as error:
            tally.failed += 1
            tally.failures[type(error).__name__] += 1
            held.pop(me, None)
            writer.close()
            writer = None
            continue
        tally.ok += 1
        worker = body.rsplit(b' ', 1)[-1].decode()
        tally.by_worker[worker] += 1
        held[me] = worker
        if not keep_alive or b'connection: close' in lower:
            held.pop(me, None)
            writer.close()
            writer = None
    if writer is not None:
        writer.close()


async def load(port, keep_alive, seconds, during=None):
    """Run CONCURRENCY clients for `seconds` (while `during(held)` runs, if given)."""
    tally, stop, held = Tally(), asyncio.Event(), {}
    clients = [asyncio.create_task(client(port, keep_alive, tally, stop, held)) for _ in range(CONCURRENCY)]
    started = time.monotonic()
    extra = {}
    if during is not None:
        extra = await during(held) or {}
    await asyncio.sleep(max(0.0, seconds - (time.monotonic() - started)))
    stop.set()
    await asyncio.wait(clients, timeout=READ_TIMEOUT + CONNECT_TIMEOUT + 5)
    elapsed = time.monotonic() - started
    return {'ok': tally.ok, 'failed': tally.failed, 'refused': tally.refused, 'req_s': tally.ok / elapsed,
            'failures': dict(tally.failures), 'by_worker': dict(tally.by_worker), 'connections': tally.connections,
            **extra}


def ab(port, keep_alive, seconds):
    """ApacheBench (C, one thread): a load generator that is not the bottleneck on 2 cores."""
    command = ['ab', '-q', '-r', '-c', str(CONCURRENCY), '-t', str(seconds), '-n', str(MAX_REQUESTS), '-s', '10']
    output = subprocess.run(command + ['-k'] * keep_alive + [f'http://127.0.0.1:{port}/'], capture_output=True,
                            text=True, timeout=seconds + 60).stdout
    figures = {}
    for line in output.splitlines():
        name, _, value = line.partition(':')
        if name in ('Complete requests', 'Failed requests', 'Non-2xx responses', 'Requests per second'):
            figures[name] = float(value.split()[0])
    ok = figures.get('Complete requests', 0) - figures.get('Failed requests', 0)
    return {'ok': int(ok), 'failed': int(figures.get('Failed requests', 0)), 'refused': 0,
            'req_s': figures.get('Requests per second', 0.0), 'failures': {}, 'tool': 'ab'}


def measure(kind, keep_alive, seconds, reuse_port=False, tool='python'):
    server = Server(kind, free_port(), reuse_port=reuse_port).ready()
    try:
        if tool == 'ab':
            return ab(server.port, keep_alive, seconds)
        return asyncio.run(load(server.port, keep_alive, seconds))
    finally:
        server.close()


def cpu_seconds(pid):
    """User + system CPU seconds of `pid` so far (0.0 once it is gone), from /proc/<pid>/stat."""
    try:
        with open(f'/proc/{pid}/stat') as stat:
            fields = stat.read().rsplit(')', 1)[1].split()  # the name may hold spaces
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def side_by_side(keep_alive, seconds, reps, prepared=False):
    """isocluster (`reuse_port=True`) and the baseline served at the same time, each loaded by an
    ab of its own: a busy phase of this shared host slows both alike, so the ratio within a pair
    is far steadier than that of two runs a minute apart. Also per pair: each side's workers' CPU
    seconds per 10,000 requests (utime + stime), which depends on the host's load much less than
    requests/s does, and the isocluster primary's. `prepared`: the baseline's workers also free a
    512 KiB block before serving, as isocluster's `listen()` does (isocluster/read_buffers.py),
    so that both servers' reads come from the heap: what remains is isocluster's own cost."""
    import concurrent.futures
    import statistics

    pairs = []
    for _ in range(reps):
        servers = {}
        try:
            servers['iso'] = Server('iso', free_port(), reuse_port=True)
            servers['baseline'] = Server('baseline', free_port(), prepared=prepared)
            for server in servers.values():
                server.ready()
            workers = {kind: list(server.live.values()) for kind, server in servers.items()}
            primary = servers['iso'].process.pid
            before = {kind: sum(map(cpu_seconds, pids)) for kind, pids in workers.items()}
            primary_before = cpu_seconds(primary)
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                runs = dict(zip(servers, pool.map(lambda server: ab(server.port, keep_alive, seconds), servers.values())))
            per_10k = {kind: (sum(map(cpu_seconds, workers[kind])) - before[kind]) * 10_000 / max(1, runs[kind]['ok'])
                       for kind in servers}
            pairs.append({'req_s': {kind: runs[kind]['req_s'] for kind in servers},
                          'failed': {kind: runs[kind]['failed'] for kind in servers},
                          'ratio': runs['iso']['req_s'] / max(1e-9, runs['baseline']['req_s']),
                          'cpu_per_10k': per_10k, 'cpu_ratio': per_10k['iso'] / max(1e-9, per_10k['baseline']),
                          'primary_cpu_per_10k': (cpu_seconds(primary) - primary_before) * 10_000 / max(1, runs['iso']['ok'])})
        finally:
            for server in servers.values():
                server.close()
    median = lambda values: statistics.median(values)
    return {'pairs': pairs, 'ratio': median([pair['ratio'] for pair in pairs]),
            'cpu_ratio': median([pair['cpu_ratio'] for pair in pairs]),
            'cpu_per_10k': {kind: median([pair['cpu_per_10k'][kind] for pair in pairs]) for kind in ('iso', 'baseline')},
            'primary_cpu_per_10k': median([pair['primary_cpu_per_10k'] for pair in pairs]),
            'failed': sum(sum(pair['failed'].values()) for pair in pairs)}


def accepted_connections(pid):
    """How many TCP connections (not listening sockets) process `pid` has open: its fds'
    socket inodes found in /proc/net/tcp in a state other than LISTEN (0A)."""
    from isocluster.transport import procfs

    inodes = procfs.socket_inodes(pid)
    try:
        lines = Path('/proc/net/tcp').read_text().splitlines()[1:]
    except OSError:
        return 0
    return sum(1 for line in lines if (fields := line.split())[9] in inodes and fields[3] != '0A')


def event_run(event, keep_alive, seconds):
    """isocluster under load while `event` happens once (or, for kill, every second)."""
    server = Server('iso', free_port(), recycle=1000 if event == 'recycle' else 0).ready()

    async def during(held):
        loop = asyncio.get_running_loop()
        await asyncio.sleep(1.0)
        if event == 'kill':
            kills = []
            for _ in range(max(1, int(seconds) - 2)):
                with server.changed:
                    worker_id, pid = sorted(server.live.items())[0]
                # What the killed worker holds: the connections its clients know it served (a
                # keep-alive between requests), or, as the kernel sees it, every connection the
                # worker has accepted (a request in flight, whose client cannot know its worker yet).
                held_by_it = max(sum(1 for worker in held.values() if worker == str(worker_id)),
                                 accepted_connections(pid))
                os.kill(pid, signal.SIGKILL)
                kills.append(held_by_it)
                await asyncio.sleep(1.0)
            return {'kills': len(kills), 'held_at_kill': sum(kills)}
        if event == 'reload':
            server.process.send_signal(signal.SIGHUP)
            await loop.run_in_executor(None, server.wait_for, lambda s: 'RELOADED' in s.lines)
        elif event == 'scale_down':
            server.process.send_signal(signal.SIGTTOU)
            await loop.run_in_executor(None, server.wait_for, lambda s: len(s.live) == WORKERS - 1)
        elif event == 'shutdown':
            server.process.send_signal(signal.SIGTERM)
            code = await loop.run_in_executor(None, server.process.wait, 30)
            return {'exit': code}
        elif event == 'recycle':
            return {}
        return {}

    try:
        result = asyncio.run(load(server.port, keep_alive, seconds, during))
        if event == 'recycle':
            result['recycled'] = sum(1 for line in server.lines if line.startswith('EXIT'))
        return result
    finally:
        server.close()


def share(by_worker):
    counts = sorted(by_worker.values())
    if len(counts) < WORKERS:
        return float('inf')
    return counts[-1] / max(1, counts[0])


SECTIONS = ('rates', 'side', 'share', 'events')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', help='short runs: checks the harness')
    parser.add_argument('--reps', type=int, default=None, help='repetitions of each requests/s row (default 3; 1 with --quick)')
    parser.add_argument('--out', default=str(HERE / 'results' / 'http_latest.json'))
    parser.add_argument('--only', nargs='+', choices=SECTIONS, default=SECTIONS, help='run these parts only')
    arguments = parser.parse_args(argv)
    seconds = 2.0 if arguments.quick else 4.0
    arguments.reps = arguments.reps or (1 if arguments.quick else 3)
    results = {'meta': {'workers': WORKERS, 'concurrency': CONCURRENCY, 'seconds': seconds, 'cpus': os.cpu_count()}}

    def row(name, value):
        results[name] = value
        extra = {key: value[key] for key in ('kills', 'held_at_kill', 'recycled', 'exit', 'req_s_all') if key in value}
        print(f"{name:42s} {value['req_s']:9.0f} req/s  ok {value['ok']:7d}  failed {value['failed']:4d}  "
              f"refused {value['refused']:4d}  {value['failures'] or ''} {extra or ''}", flush=True)

    servers = (('iso', False, 'isocluster shared socket'), ('iso', True, 'isocluster reuse_port'),
               ('baseline', False, 'SO_REUSEPORT multiprocessing'), ('gunicorn', False, 'gunicorn sync'))
    if shutil.which('ab') is None:
        print('ab not found (apt-get install apache2-utils): requests/s rows are skipped', flush=True)
    if shutil.which('ab') is not None and 'rates' in arguments.only:
        # interleaved repetitions: a slow phase of this shared machine hits every server
        for keep_alive in (False, True):
            mode = 'keep-alive' if keep_alive else 'new connection'
            runs = collections.defaultdict(list)
            for repetition in range(arguments.reps):
                for kind, reuse_port, label in servers[repetition % 4:] + servers[:repetition % 4]:
                    runs[label].append(measure(kind, keep_alive, seconds, reuse_port, 'ab'))
            for label, measured in runs.items():
                median = sorted(measured, key=lambda run: run['req_s'])[len(measured) // 2]
                median['req_s_all'] = [round(run['req_s']) for run in measured]
                median['failed'] = sum(run['failed'] for run in measured)
                row(f'{label} / {mode} (ab, median of {len(measured)})', median)
    if shutil.which('ab') is not None and 'side' in arguments.only:
        for prepared, keep_alive in ((False, False), (False, True), (True, False), (True, True)):
            mode = 'keep-alive' if keep_alive else 'new connection'
            result = side_by_side(keep_alive, seconds, arguments.reps + 2, prepared)
            baseline = 'baseline with the same read buffers' if prepared else 'SO_REUSEPORT baseline'
            results[f"side by side{' (prepared baseline)' * prepared} / {mode}"] = result
            cpu = result['cpu_per_10k']
            target = '(informational)' if prepared else f"(target >= 0.9: {'PASS' if result['ratio'] >= 0.9 else 'MISS'})"
            print(f"isocluster reuse_port vs {baseline}, side by side / {mode} (ab, {len(result['pairs'])} pairs): "
                  f"req/s ratio {result['ratio']:.2f} {target} "
                  f"{[round(pair['ratio'], 2) for pair in result['pairs']]}; workers' CPU s per 10k requests "
                  f"{cpu['iso']:.3f} vs {cpu['baseline']:.3f} (ratio {result['cpu_ratio']:.2f}), isocluster primary "
                  f"{result['primary_cpu_per_10k']:.3f}; failed {result['failed']}", flush=True)
    for reuse_port in (False, True) if 'share' in arguments.only else ():
        result = measure('iso', False, seconds, reuse_port)
        row(f"isocluster {'reuse_port' if reuse_port else 'shared socket'} / new connection (python client)", result)
        print(f"  share of connections, max/min over {WORKERS} workers, reuse_port={reuse_port}: "
              f"{share(result['by_worker']):.2f} {sorted(result['by_worker'].values())}", flush=True)
        result['share'] = share(result['by_worker'])
    for event in ('kill', 'reload', 'scale_down', 'recycle', 'shutdown') if 'events' in arguments.only else ():
        for keep_alive in (False, True):
            longer = {'kill': 2.0, 'recycle': 4.0}.get(event, 0.0)  # kills every second; 1,000 requests a worker
            row(f"{event} / {'keep-alive' if keep_alive else 'new connection'}", event_run(event, keep_alive, seconds + longer))
    Path(arguments.out).parent.mkdir(parents=True, exist_ok=True)
    Path(arguments.out).write_text(json.dumps(results, indent=1, default=str))


if __name__ == '__main__':
    if len(sys.argv) > 1 and sys.argv[1] == 'serve-iso':
        serve_iso(int(sys.argv[2]), '--reuse-port' in sys.argv, int(sys.argv[sys.argv.index('--recycle') + 1]))
    elif len(sys.argv) > 1 and sys.argv[1] == 'serve-baseline':
        serve_baseline(int(sys.argv[2]), '--prepared' in sys.argv)
    else:
        main()
