"""The worker script of `http_server.py` (the seed's worker.js): an HTTP server on the
listening socket shared by every worker. Not meant to be run on its own.

Leaving loses no request: when the primary asks a worker to leave (shutdown, reload, scale
down), the worker stops accepting at once, and ends once the connections it accepted are
done (at most the primary's `drain_timeout`). A keep-alive connection is answered with
`Connection: close` from then on, so its client sends its next request to another worker.
"""

import asyncio

from isocluster import ClusterWorker

KEEP_ALIVE = 5.0  # seconds an idle keep-alive connection stays open


def wants_keep_alive(head: bytes) -> bool:
    request_line, _, headers = head.partition(b'\r\n')
    headers = headers.lower()
    if request_line.endswith(b'HTTP/1.0'):
        return b'connection: keep-alive' in headers
    return b'connection: close' not in headers


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:  # GET with no body: the headers are the whole request
                async with asyncio.timeout(KEEP_ALIVE):  # cheaper than wait_for(), which starts a task
                    head = await reader.readuntil(b'\r\n\r\n')
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                return  # the client closed, sent garbage, or stayed idle too long
            # A draining worker closes after this response: the client's next request goes elsewhere.
            keep_alive = wants_keep_alive(head) and not ClusterWorker.draining
            body = f'Hello from worker {ClusterWorker.worker_id}'.encode()
            writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n'
                         b'Connection: %s\r\n\r\n%s' % (len(body), b'keep-alive' if keep_alive else b'close', body))
            await writer.drain()
            if not keep_alive:
                return
    except ConnectionError:
        pass  # the client went away mid-response
    finally:
        writer.close()


async def start(worker: ClusterWorker) -> None:
    # Start listening on the shared port (the primary binds it once for every worker).
    sock = await worker.listen(('127.0.0.1', 0))
    await asyncio.start_server(handle, sock=sock)
    host, port = sock.getsockname()
    print(f'Worker {ClusterWorker.worker_id} listening on port {port}', flush=True)

    # Leaving: the worker itself stops accepting on `sock` and waits for its connections.
    def on_primary_disconnect(event):
        print(f'Primary asked worker {ClusterWorker.worker_id} to disconnect, draining its connections', flush=True)

    worker.on('primary_disconnect', on_primary_disconnect)


def main() -> None:
    worker = ClusterWorker()
    task = asyncio.get_event_loop().create_task(start(worker))
    task.add_done_callback(lambda task: task.result())  # a failure to listen is fatal
    worker.run()


if __name__ == '__main__':
    main()
