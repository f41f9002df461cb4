"""A deterministic in-memory transport: virtual time, a seeded scheduler, fault injection.

Every simulated worker is a set of callbacks on one asyncio loop, tagged with the
simulated process they belong to through a ContextVar. The loop wraps each callback so
that a dead or hung process runs nothing, an exception escaping a worker's callback ends
that worker with code 1 (SPEC R33), and one escaping the primary's stops the simulation
(R35). Time is virtual: the selector never waits, it moves the clock to the next timer.

| module | what it decides |
| --- | --- |
| `transport` | `MemoryTransport`: starting simulated workers, driving the simulation, fault injection |
| `links` | the two ends of a simulated link, frame by frame after seeded latencies |
| `loop` | the virtual-time loop and which simulated process each callback belongs to |
"""

from __future__ import annotations

from .links import MemoryPrimaryLink, MemoryWorkerLink
from .loop import SimulationDeadlock, VirtualLoop
from .transport import MemoryTransport

__all__ = ['MemoryPrimaryLink', 'MemoryTransport', 'MemoryWorkerLink', 'SimulationDeadlock', 'VirtualLoop']
