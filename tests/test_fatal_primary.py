"""R34 on real processes: a handler exception in the primary shuts the cluster down, and
wait_closed() raises it once every worker is gone, whichever event's handler raised."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from isocluster import ClusterPrimary, ClusterWorker
from tests.cluster_helpers import kill_and_reap, ready_waiter


def plain_worker() -> None:
    ClusterWorker()


def greeting_worker() -> None:
    ClusterWorker().send('hello')


class Boom(Exception):
    pass


def boom(event: Any) -> None:
    raise Boom(f'raised in {event.name}')


@pytest.mark.parametrize('event_name', ['worker_exit', 'shut_down_complete', 'worker_disconnect'])
def test_handler_exception_during_shutdown_still_closes_and_raises(event_name: str) -> None:
    async def main() -> Any:
        primary = ClusterPrimary(worker_target=plain_worker, shutdown_timeout=2, kill_timeout=1)
        pids: list[int] = []
        exits: list[int] = []
        primary.after('worker_fork', lambda event: pids.append(event.data['worker'].pid))
        primary.before('worker_exit', lambda event: exits.append(event.data['worker'].id))
        primary.on(event_name, boom)
        try:
            primary.fork(2)
            await ready_waiter(primary, 2)
            primary.shut_down()
            with pytest.raises(Boom):
                await asyncio.wait_for(primary.wait_closed(), 10)
            return sorted(exits), primary.closed
        finally:
            kill_and_reap(pids)

    exits, closed = asyncio.run(main())
    assert exits == [1, 2] and closed


def test_fatal_error_shuts_down_even_when_shut_down_handlers_raise() -> None:
    async def main() -> Any:
        primary = ClusterPrimary(worker_target=greeting_worker, shutdown_timeout=2, kill_timeout=1)
        pids: list[int] = []
        primary.after('worker_fork', lambda event: pids.append(event.data['worker'].pid))
        primary.on('worker_message', boom)  # fatal (R34) ...
        primary.on('shut_down', boom)  # ... and the shutdown it starts raises too
        try:
            primary.fork(1)
            with pytest.raises(Boom, match='worker_message') as caught:
                await asyncio.wait_for(primary.wait_closed(), 10)
            return caught.value, primary.closed, primary.stats()['live']
        finally:
            kill_and_reap(pids)

    error, closed, live = asyncio.run(main())
    assert closed and live == 0
    assert any('shut_down' in note for note in error.__notes__)
