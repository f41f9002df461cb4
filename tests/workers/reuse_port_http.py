"""Script worker: the documented HTTP handler (examples/http_worker.py) on a SO_REUSEPORT
socket of the worker's own (`listen(..., reuse_port=True)`); it tells the primary which socket
it got."""

import asyncio
import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'examples'))

from http_worker import handle  # noqa: E402

from isocluster import ClusterWorker  # noqa: E402


async def start(worker: ClusterWorker) -> None:
    sock = await worker.listen(('127.0.0.1', 0), reuse_port=True)
    await worker.send({'inode': os.fstat(sock.fileno()).st_ino,
                       'reuse_port': sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)})
    await asyncio.start_server(handle, sock=sock)


def main() -> None:
    worker = ClusterWorker()
    task = asyncio.get_event_loop().create_task(start(worker))
    task.add_done_callback(lambda task: task.result())  # a failure to listen is fatal
    worker.run()


if __name__ == '__main__':
    main()
