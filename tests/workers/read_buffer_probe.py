"""Script worker: listens (as a server would), then reads the way asyncio's socket transports
do, `sock.recv(256 KiB)`, and tells the primary how many of the buffers those reads returned
glibc gave a memory mapping of their own (mallinfo's hblks), i.e. cost mmap/mremap/munmap."""

import asyncio
import ctypes
import socket

from isocluster import ClusterWorker
from isocluster.read_buffers import ASYNCIO_READ_SIZE

READS = 8


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        'arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks', 'uordblks', 'fordblks', 'keepcost')]


libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2


def mapped_blocks() -> int:
    return libc.mallinfo2().hblks


async def start(worker: ClusterWorker) -> None:
    listening = await worker.listen(('127.0.0.1', 0))
    # Whether a read fits in the free top of the heap depends on what ran before; returning that
    # top to the system makes it the case the HTTP bench's forked workers were in.
    libc.malloc_trim(0)
    left, right = socket.socketpair()
    before = mapped_blocks()
    kept = []  # alive together, so no read reuses another's buffer
    for _ in range(READS):
        left.send(b'GET / HTTP/1.1\r\n\r\n')
        kept.append(right.recv(ASYNCIO_READ_SIZE))
    mapped = mapped_blocks() - before
    left.close(), right.close(), listening.close()
    await worker.send({'mapped': mapped, 'reads': len(kept)})


def main() -> None:
    worker = ClusterWorker()
    task = asyncio.get_event_loop().create_task(start(worker))
    task.add_done_callback(lambda task: task.result())
    worker.run()


if __name__ == '__main__':
    main()
