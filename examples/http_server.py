"""HTTP server with worker processes sharing one listening port.

The primary runs `http_worker.py` in each worker (fork + exec, like the seed's
`workerScript: 'worker.js'`). Every worker asks for the same address with
`await worker.listen(('127.0.0.1', 0))`: the primary binds it once (port 0 picks one free
port, shared by all workers) and hands the socket to each worker, which serves it with
`asyncio.start_server(sock=...)`.

The seed's server runs until SIGTERM; this one, once every worker listens, sends itself
REQUESTS requests on 127.0.0.1, prints who answered and shuts down. SIGTERM (or Ctrl-C)
still shuts it down at any time: `primary.run()` handles it.

    python examples/http_server.py
"""

import asyncio
import os
from pathlib import Path

from isocluster import ClusterPrimary

REQUESTS = 20
WORKER_COUNT = min(os.cpu_count() or 1, 4)  # the seed uses the CPU count; capped to stay quick


async def fetch(host: str, port: int) -> str:
    """GET / on the cluster's port; the response body."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b'GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n')
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    return response.split(b'\r\n\r\n', 1)[1].decode()


def main() -> None:
    primary = ClusterPrimary(worker_script=str(Path(__file__).with_name('http_worker.py')), worker_args=[])
    listening: set[int] = set()

    # Log worker activity.
    def on_worker_exit(event):
        worker = event.data['worker']
        print(f"Worker {worker.id} exited with code {event.data['code']} and signal {event.data['signal']}", flush=True)

    def on_worker_ready(event):
        worker = event.data['worker']
        print(f'Worker {worker.id} (pid {worker.pid}) is ready to handle connections', flush=True)

    async def on_worker_listening(event):
        worker, (host, port) = event.data['worker'], event.data['address']
        print(f'Worker {worker.id} listening on {host}:{port}', flush=True)
        listening.add(worker.id)
        if len(listening) == WORKER_COUNT:
            await serve_some_requests(host, port)

    async def serve_some_requests(host: str, port: int) -> None:
        answers = await asyncio.gather(*(fetch(host, port) for _ in range(REQUESTS)))
        for answer in answers:
            print(f'GET http://{host}:{port}/ -> {answer}', flush=True)
        print(f'{REQUESTS} requests answered by {len(set(answers))} worker(s)', flush=True)
        print('Shutting down server', flush=True)
        primary.shut_down()

    primary.on({
        'worker_exit': on_worker_exit,
        'worker_ready': on_worker_ready,
        'worker_listening': on_worker_listening,
        'shut_down_complete': lambda event: print('Server shut down', flush=True),
    })

    # Start workers based on CPU count.
    print(f'Starting {WORKER_COUNT} workers', flush=True)
    primary.fork(worker_count=WORKER_COUNT)

    # Runs until shut down; SIGTERM and SIGINT shut down gracefully.
    primary.run()


if __name__ == '__main__':
    main()
