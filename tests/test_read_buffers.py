"""A worker that listens reads its sockets without a memory mapping per read (issue 16):
asyncio reads with `recv(256 KiB)`, and glibc used to map (mmap, then mremap and munmap) every
such buffer in a worker, a third of a keep-alive request's CPU (benchmarks/README.md)."""

from __future__ import annotations

import ctypes
import platform
import sys
from pathlib import Path
from typing import Any

import pytest

from cluster_helpers import run_cluster

ROOT = Path(__file__).resolve().parent
PROBE = {'worker_script': str(ROOT / 'workers' / 'read_buffer_probe.py'), 'worker_args': []}

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith('linux') or platform.libc_ver()[0] != 'glibc'
    or not hasattr(ctypes.CDLL(None), 'mallinfo2'),
    reason="glibc's allocator (mallinfo2, glibc >= 2.33)",
)


def test_asyncio_sized_reads_in_a_listening_worker_are_not_memory_mapped() -> None:
    async def scenario(primary: Any) -> Any:
        answer = primary.transport.loop.create_future()
        primary.on('worker_message', lambda event: answer.done() or answer.set_result(event.data['message']))
        primary.fork(1)
        return await answer

    # A fresh interpreter (fork + exec), so the allocator's state is a worker's own, not the test process's.
    result = run_cluster('process', scenario, **PROBE)
    assert result == {'mapped': 0, 'reads': 8}
