"""A worker the primary asks to leave (retired, recycled, reloaded, shut down, disconnected)
gets no new work, and answers the requests it already has before DISCONNECT closes its link
(R147). Before, DISCONNECT went at once: the worker closed its link (R109) and the replies of
its requests in flight were lost, so a map failed (retries=0) or ran them twice (retries>0)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from isocluster import ClusterPrimary, ClusterWorker, WorkerLost
from tests.cluster_helpers import TRANSPORTS, ready_waiter, run_cluster

TASK_SECONDS = 0.2  # one request's work: well inside DRAIN_TIMEOUT
DRAIN_TIMEOUT = 2.0
SHUTDOWN_TIMEOUT = 4.0  # > DRAIN_TIMEOUT, as options require


class AnsweringWorker(ClusterWorker):
    async def _event_primary_message_wait(self, event: Any) -> Any:
        await asyncio.sleep(event.data['message']['seconds'])
        return [ClusterWorker.worker_id, event.data['message']['value']]

    def _event_primary_message_hang(self, event: Any) -> Any:
        return asyncio.get_running_loop().create_future()  # never answered

    def _event_primary_message_who(self, event: Any) -> Any:
        return ClusterWorker.worker_id


def answering_worker() -> None:
    AnsweringWorker()


def leave(primary: ClusterPrimary, handle: Any, how: str) -> None:
    if how == 'stop_worker':
        primary.stop_worker(handle, replace=False)
    elif how == 'recycle':
        primary.stop_worker(handle, replace=True)  # a reload step: its successor first, then it leaves
    elif how == 'disconnect':
        handle.disconnect()
    else:
        primary.shut_down()


def exits_of(primary: ClusterPrimary) -> dict[int, Any]:
    exits: dict[int, Any] = {}
    primary.after('worker_exit', lambda event: exits.setdefault(event.data['worker'].id,
                                                                event.data['worker'].exited_after_disconnect))
    return exits


@pytest.mark.parametrize('transport', TRANSPORTS)
@pytest.mark.parametrize('how', ['stop_worker', 'recycle', 'disconnect', 'shut_down'])
def test_a_leaving_worker_answers_its_requests_in_flight(transport: str, how: str) -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(2)
        await ready_waiter(primary, 2)
        first = primary.workers[0]
        exits = exits_of(primary)
        replies = [primary.request({'type': 'wait', 'seconds': TASK_SECONDS, 'value': value}, to=first)
                   for value in range(3)]
        leave(primary, first, how)
        answers = await asyncio.gather(*replies)
        gone = primary.transport.loop.create_future()
        primary.after('worker_exit', lambda event: event.data['worker'] is first and not gone.done()
                      and gone.set_result(None))
        if first.id not in exits:
            await gone
        return first.id, answers, exits[first.id]

    worker_id, answers, after_disconnect = run_cluster(
        transport, scenario, worker_target=answering_worker, drain_timeout=DRAIN_TIMEOUT,
        shutdown_timeout=SHUTDOWN_TIMEOUT)
    assert answers == [[worker_id, value] for value in range(3)]
    assert after_disconnect


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_no_new_work_goes_to_a_leaving_worker(transport: str) -> None:
    """While its DISCONNECT waits for its answers, the leaving worker is still in
    `primary.workers`, but round_robin(), least_busy(), request() without `to` and a broadcast
    skip it: work sent there now would be discarded once DISCONNECT arrives (R109)."""
    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(2)
        await ready_waiter(primary, 2)
        first, second = primary.workers
        held = primary.request({'type': 'wait', 'seconds': TASK_SECONDS, 'value': 0}, to=first)
        primary.stop_worker(first, replace=False)
        still_listed = first in primary.workers and first.leaving and not second.leaving
        picks = [primary.round_robin() for _ in range(3)] + [primary.least_busy() for _ in range(3)]
        served_by = [await primary.request({'type': 'who'}) for _ in range(3)]
        await held
        return still_listed, [pick.id for pick in picks], served_by, second.id

    still_listed, picks, served_by, second = run_cluster(
        transport, scenario, worker_target=answering_worker, drain_timeout=DRAIN_TIMEOUT,
        shutdown_timeout=SHUTDOWN_TIMEOUT)
    assert still_listed
    assert picks == [second] * 6
    assert served_by == [second] * 3


def test_an_unanswered_request_holds_disconnect_at_most_drain_timeout() -> None:
    """Virtual time: DISCONNECT goes drain_timeout after the leave, not before, and the worker
    is gone before shutdown_timeout's SIGTERM; the unanswered request fails with WorkerLost."""
    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        loop = primary.transport.loop
        (worker,) = primary.workers
        disconnected = loop.create_future()
        primary.after('worker_disconnect', lambda event: disconnected.done() or disconnected.set_result(loop.time()))
        hung = primary.request({'type': 'hang'}, to=worker)
        left_at = loop.time()
        primary.stop_worker(worker, replace=False)
        with pytest.raises(WorkerLost):
            await hung
        return await disconnected - left_at, primary.stats()['killed_by_timeout']

    held_for, killed_by_timeout = run_cluster(
        'memory', scenario, worker_target=answering_worker, drain_timeout=DRAIN_TIMEOUT,
        shutdown_timeout=SHUTDOWN_TIMEOUT)
    assert DRAIN_TIMEOUT <= held_for < SHUTDOWN_TIMEOUT
    assert killed_by_timeout == 0


def test_drain_timeout_zero_disconnects_at_once() -> None:
    """drain_timeout=0 keeps the old behaviour: DISCONNECT at once, the request is lost."""
    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        (worker,) = primary.workers
        reply = primary.request({'type': 'wait', 'seconds': TASK_SECONDS, 'value': 0}, to=worker)
        primary.stop_worker(worker, replace=False)
        with pytest.raises(WorkerLost):
            await reply
        return True

    assert run_cluster('memory', scenario, worker_target=answering_worker, drain_timeout=0,
                       shutdown_timeout=SHUTDOWN_TIMEOUT)
