"""The worker script of `http_server.py` (the seed's worker.js): an HTTP server on the
listening socket shared by every worker. Not meant to be run on its own."""

import asyncio

from isocluster import ClusterWorker


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b'\r\n\r\n')  # GET with no body: the headers are the whole request
    body = f'Hello from worker {ClusterWorker.worker_id}'.encode()
    writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n'
                 b'Connection: close\r\n\r\n%s' % (len(body), body))
    await writer.drain()
    writer.close()


async def start(worker: ClusterWorker) -> None:
    # Start listening on the shared port (the primary binds it once for every worker).
    sock = await worker.listen(('127.0.0.1', 0))
    server = await asyncio.start_server(handle, sock=sock)
    host, port = sock.getsockname()
    print(f'Worker {ClusterWorker.worker_id} listening on port {port}', flush=True)

    # Handle shutdown: stop accepting; the default action then ends the worker.
    def on_primary_disconnect(event):
        print(f'Primary asked worker {ClusterWorker.worker_id} to disconnect, closing server', flush=True)
        server.close()

    worker.on('primary_disconnect', on_primary_disconnect)


def main() -> None:
    worker = ClusterWorker()
    task = asyncio.get_event_loop().create_task(start(worker))
    task.add_done_callback(lambda task: task.result())  # a failure to listen is fatal
    worker.run()


if __name__ == '__main__':
    main()
