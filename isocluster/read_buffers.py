"""Why a worker that serves sockets makes its reads cheap before it serves (issue 16).

asyncio's socket transports read with `sock.recv(256 KiB)`: every read allocates a 256 KiB
buffer and shrinks it to what arrived. glibc's malloc gives a block at or above its mmap
threshold (128 KiB at start) its own mapping: each read then costs mmap, mremap and munmap
plus a page fault on the fresh page, about 40 % of the worker CPU of a keep-alive
hello-world request (benchmarks/README.md). glibc raises the threshold by itself each time the process frees a
mapped block larger than it (the dynamic M_MMAP_THRESHOLD), so whether reads pay depended on
what the process happened to free before: the primary's imports (typing, inspect) leave it at
~200 KiB, just below, and the rest is how much free memory the heap's top kept.

Freeing one block twice the read size once, when the worker first listens, sets the threshold
above the read size for good: read buffers then come from the heap, and the top of the heap
may keep up to about twice the block (1 MiB) before it is returned to the system. On another
allocator this is one short-lived allocation and nothing else.
"""

from __future__ import annotations

ASYNCIO_READ_SIZE = 256 * 1024  # asyncio.selector_events._SelectorSocketTransport.max_size
_prepared = False


def prepare_for_socket_reads() -> None:
    """Once per process: allocate and free a 512 KiB block (bytes(n) is calloc'd, so its
    pages are never touched)."""
    global _prepared
    if not _prepared:
        _prepared = True
        bytes(2 * ASYNCIO_READ_SIZE)
