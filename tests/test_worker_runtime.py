"""The worker runtime is one for every transport (transport/runtime.py): a target that
returns any awaitable is awaited, and an exception it ends with ends the worker with code 1
(R33). The memory transport used to await only coroutines and futures."""

from __future__ import annotations

import asyncio
from typing import Any

from isocluster import ClusterPrimary, ClusterWorker
from isocluster.transport.memory import MemoryTransport

READY_TIMEOUT = 5.0  # virtual seconds


class _Awaited:
    """An awaitable that is neither a coroutine nor a future."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def __await__(self) -> Any:
        yield from asyncio.sleep(0).__await__()
        if self.fail:
            raise RuntimeError('the awaited target failed')
        ClusterWorker()


def awaitable_target() -> _Awaited:
    return _Awaited(fail=False)


def failing_awaitable_target() -> _Awaited:
    return _Awaited(fail=True)


def _primary(target: Any) -> tuple[ClusterPrimary, MemoryTransport]:
    sim = MemoryTransport(seed=3)
    primary = ClusterPrimary(worker_target=target, transport=sim, restart='never', ready_timeout=READY_TIMEOUT)
    primary.on('no_workers', lambda event: event.prevent())
    return primary, sim


def test_a_target_returning_an_awaitable_is_awaited():
    primary, sim = _primary(awaitable_target)
    primary.fork(1)
    sim.run_until(lambda: len(primary.workers) == 1, timeout=READY_TIMEOUT / 2)
    assert primary.workers[0].state == 'ready'


def test_an_awaitable_target_that_fails_ends_the_worker_with_code_1(capsys):
    primary, sim = _primary(failing_awaitable_target)
    primary.fork(1)
    sim.run_until(lambda: 1 in sim.exits, timeout=READY_TIMEOUT / 2)
    assert sim.exits[1] == (1, None)
    assert 'the awaited target failed' in capsys.readouterr().err
