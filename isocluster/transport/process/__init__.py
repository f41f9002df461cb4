"""The process transport: each worker is a real child made with `os.fork()`, linked to the
primary by a `socket.socketpair()`, both ends driven by asyncio.

| module | what it decides |
| --- | --- |
| `spawn` | `ProcessTransport`: forking a worker (socketpair, stdio, a loop built before the fork), the fds it owns |
| `child` | a forked worker from the fork to `os._exit`: fds and signals let go of, stdio, then the target or the exec |
| `link` | the primary's end: reading and cutting frames, delivery in time slices, reaping through a pidfd |
| `worker_end` | the worker's end: the shared worker runtime over the socket, passed listening sockets |
| `writer` | write batching for both ends: one send per link per loop turn, large bodies without a copy |
| `output` | captured worker stdout/stderr into the `isocluster.worker` logger |
| `parent_death` | what a worker does when its primary dies (R118) |
| `script`, `bootstrap` | a `worker_script`: ONLINE before the script runs, its link found in the environment |
| `fork_safety` | letting go of the parent's fds in a child without touching shared epoll registrations |
| `registry` | what this process holds: its transports and, in a worker, its own link |
"""

from __future__ import annotations

from ..runtime import PARENT_DEATH_WATCHDOG
from .registry import worker_link
from .script import _new_script_loop, link_from_environment
from .spawn import ProcessTransport
from .writer import _COPY_LIMIT

__all__ = ['PARENT_DEATH_WATCHDOG', 'ProcessTransport', 'link_from_environment', 'worker_link',
           '_COPY_LIMIT', '_new_script_loop']
