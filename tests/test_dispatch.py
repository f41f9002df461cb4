"""Work distribution (issue 15): least-busy requests, map with chunks and retries, in-flight
limits on both sides. Rules R140-R146 (README, "Task queues")."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from isocluster import (
    ClusterPrimary, ClusterWorker, InvalidDestinationError, MapError, ProtocolError, RemoteError, RequestTimeout,
    WorkerLost, protocol,
)
from isocluster.dispatch import least_busy_id
from tests.cluster_helpers import TRANSPORTS, ready_waiter, run_cluster


class TaskWorker(ClusterWorker):
    def _event_primary_message_square(self, event: Any) -> int:
        return event.data['message']['value'] ** 2

    async def _event_primary_message_wait(self, event: Any) -> list[Any]:
        message = event.data['message']
        await asyncio.sleep(message['seconds'])
        return [message.get('value'), ClusterWorker.worker_id]

    def _event_primary_message_never(self, event: Any) -> Any:
        return asyncio.get_running_loop().create_future()

    def _event_primary_message_fail(self, event: Any) -> None:
        raise KeyError(event.data['message'].get('value'))

    def _event_primary_message_die(self, event: Any) -> None:
        raise SystemExit(3)

    def _event_primary_message_die_once(self, event: Any) -> int:
        """Exits the first time any worker sees it (a marker file, so it works across processes);
        answers afterwards. Every run appends a line: the test counts the handler's runs."""
        message = event.data['message']
        with open(message['log'], 'a') as log:
            log.write(f"{message['value']}\n")
        if not os.path.exists(message['marker']):
            open(message['marker'], 'w').close()
            raise SystemExit(3)
        return message['value']


def task_worker() -> None:
    TaskWorker()


# Each worker records how many requests it served at once, at most (R145).
_busy: dict[int | None, list[int]] = {}


class CountingWorker(TaskWorker):
    async def _event_primary_message_wait(self, event: Any) -> list[Any]:
        record = _busy.setdefault(ClusterWorker.worker_id, [0, 0])
        record[0] += 1
        record[1] = max(record[1], record[0])
        try:
            return await super()._event_primary_message_wait(event)
        finally:
            record[0] -= 1


def one_at_a_time_worker() -> None:
    CountingWorker(max_concurrency=1)


def unlimited_counting_worker() -> None:
    CountingWorker()


def squares(count: int) -> list[dict[str, Any]]:
    return [{'type': 'square', 'value': value} for value in range(count)]


async def started(primary: ClusterPrimary, count: int) -> list[Any]:
    primary.fork(count)
    await ready_waiter(primary, count)
    return primary.workers


# -- least_busy and request() without `to` (R140, R141) -------------------------------------

def test_least_busy_choice_breaks_ties_in_round_robin_order() -> None:
    in_flight = {1: 2, 2: 0, 3: 0}.__getitem__
    assert least_busy_id([1, 2, 3], in_flight, {}) == 2  # never picked: lowest id
    assert least_busy_id([1, 2, 3], in_flight, {2: 5, 3: 4}) == 3  # least recently picked
    assert least_busy_id([1, 2, 3], {1: 1, 2: 1, 3: 1}.__getitem__, {}, limit=1) is None
    assert least_busy_id([], in_flight, {}) is None


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_request_without_to_goes_to_the_least_busy_worker(transport: str) -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        first, second = await started(primary, 2)
        hanging = primary.request({'type': 'never'}, to=first)
        counts = (primary.in_flight(first), primary.in_flight(second))
        chosen = [primary.least_busy().id for _ in range(3)]
        replies = [await primary.request({'type': 'wait', 'seconds': 0.001, 'value': n}) for n in range(3)]
        hanging.cancel()
        return counts, chosen, replies

    counts, chosen, replies = run_cluster(transport, scenario, worker_target=task_worker)
    assert counts == (1, 0)
    assert chosen == [2, 2, 2]
    assert [worker_id for _value, worker_id in replies] == [2, 2, 2]


def test_in_flight_counts_end_with_reply_failure_timeout_and_loss() -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        first, second = await started(primary, 2)
        seen = []
        for message, to in (({'type': 'square', 'value': 3}, first), ({'type': 'fail'}, first),
                            ({'type': 'never'}, second)):
            reply = primary.request(message, to=to, timeout=5)
            seen.append(primary.in_flight(to))
            await asyncio.gather(reply, return_exceptions=True)
            seen.append(primary.in_flight(to))
        lost = primary.request({'type': 'never'}, to=first)
        primary.request({'type': 'die'}, to=first)
        seen.append(primary.in_flight(first))
        outcome = await asyncio.gather(lost, return_exceptions=True)
        seen.append(primary.in_flight(first))
        return seen, outcome

    seen, outcome = run_cluster('memory', scenario, worker_target=task_worker)
    assert seen == [1, 0, 1, 0, 1, 0, 2, 0]
    assert isinstance(outcome[0], WorkerLost)


def test_request_without_to_and_no_ready_worker_says_so() -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        with pytest.raises(InvalidDestinationError, match='no ready worker'):
            await primary.request({'type': 'square', 'value': 1})
        return primary.least_busy()

    assert run_cluster('memory', scenario, worker_target=task_worker) is None


# -- map (R142, R143, R144) ---------------------------------------------------------------

@pytest.mark.parametrize('transport', TRANSPORTS)
@pytest.mark.parametrize('chunksize', [1, 3])
def test_map_yields_every_reply_in_input_order(transport: str, chunksize: int) -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        await started(primary, 2)
        ordered = [reply async for reply in primary.map(squares(20), chunksize=chunksize)]
        unordered = [reply async for reply in primary.map(squares(20), chunksize=chunksize, ordered=False)]
        empty = [reply async for reply in primary.map([])]
        return ordered, unordered, empty, primary.in_flight(1) + primary.in_flight(2)

    ordered, unordered, empty, in_flight = run_cluster(transport, scenario, worker_target=task_worker)
    assert ordered == [value ** 2 for value in range(20)]
    assert sorted(unordered) == ordered
    assert empty == [] and in_flight == 0


def test_map_with_uneven_tasks_keeps_both_workers_busy() -> None:
    """Round-robin at send time puts every slow task on one worker; least-busy does not."""
    tasks = [{'type': 'wait', 'seconds': 1.0 if index % 2 == 0 else 0.01, 'value': index} for index in range(20)]

    async def scenario(primary: ClusterPrimary) -> Any:
        await started(primary, 2)
        loop = primary.transport.loop
        start = loop.time()
        replies = [reply async for reply in primary.map(tasks, max_in_flight=1)]
        return replies, loop.time() - start

    replies, elapsed = run_cluster('memory', scenario, worker_target=task_worker)
    assert [value for value, _worker in replies] == list(range(20))
    slow_on = {worker for value, worker in replies if value % 2 == 0}
    assert slow_on == {1, 2}
    # 10 s of slow work over two workers: ~5 s; round-robin would take 10 s.
    assert elapsed < 7.5


@pytest.mark.parametrize('max_in_flight', [1, 3])
def test_map_keeps_at_most_max_in_flight_requests_per_worker(max_in_flight: int) -> None:
    _busy.clear()
    tasks = [{'type': 'wait', 'seconds': 0.5, 'value': index} for index in range(12)]

    async def scenario(primary: ClusterPrimary) -> Any:
        await started(primary, 2)
        return [reply async for reply in primary.map(tasks, max_in_flight=max_in_flight)]

    replies = run_cluster('memory', scenario, worker_target=unlimited_counting_worker)
    assert len(replies) == 12
    assert {worker_id: record[1] for worker_id, record in _busy.items()} == {1: max_in_flight, 2: max_in_flight}


def test_a_chunk_is_one_frame_and_its_messages_run_one_after_the_other() -> None:
    _busy.clear()
    tasks = [{'type': 'wait', 'seconds': 0.1, 'value': index} for index in range(8)]

    async def scenario(primary: ClusterPrimary) -> Any:
        await started(primary, 1)
        sent = primary.stats()['messages_out']
        replies = [reply async for reply in primary.map(tasks, chunksize=4, max_in_flight=1)]
        return replies, primary.stats()['messages_out'] - sent

    replies, frames = run_cluster('memory', scenario, worker_target=unlimited_counting_worker)
    assert [value for value, _worker in replies] == list(range(8))
    assert frames == 2
    assert _busy[1][1] == 1  # never two messages of a chunk at once


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_map_failure_names_the_message_index(transport: str) -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        await started(primary, 2)
        caught = []
        for chunksize in (1, 3):
            tasks = squares(10)
            tasks[7] = {'type': 'fail', 'value': 'seven'}
            with pytest.raises(MapError) as error:
                async for _reply in primary.map(tasks, chunksize=chunksize):
                    pass
            caught.append(error.value)
        with pytest.raises(MapError) as error:
            async for _reply in primary.map([{'type': 'square', 'value': 1}, {'type': 'square', 'value': object()}]):
                pass
        caught.append(error.value)
        with pytest.raises(MapError) as error:
            async for _reply in primary.map([{'type': 'never'}], timeout=0.5):
                pass
        caught.append(error.value)
        return caught

    remote, chunked, unencodable, timed_out = run_cluster(transport, scenario, worker_target=task_worker)
    for error in (remote, chunked):
        assert error.index == 7 and 'message 7' in str(error)
        assert isinstance(error.__cause__, RemoteError) and error.__cause__.remote_type == 'KeyError'
    assert unencodable.index == 1 and 'could not be sent' in str(unencodable)
    assert timed_out.index == 0 and isinstance(timed_out.__cause__, RequestTimeout)


@pytest.mark.parametrize('transport', TRANSPORTS)
@pytest.mark.parametrize('chunksize', [1, 4])
def test_a_worker_lost_mid_map_has_its_messages_resent_with_retries(transport: str, chunksize: int, tmp_path: Any) -> None:
    marker, log = str(tmp_path / 'died'), str(tmp_path / 'runs')
    tasks = squares(12)
    tasks[5] = {'type': 'die_once', 'value': 5, 'marker': marker, 'log': log}

    async def scenario(primary: ClusterPrimary) -> Any:
        await started(primary, 2)
        return [reply async for reply in primary.map(tasks, chunksize=chunksize, retries=1)]

    replies = run_cluster(transport, scenario, worker_target=task_worker)
    assert replies == [5 if index == 5 else index ** 2 for index in range(12)]
    with open(log) as runs:
        assert runs.read().split() == ['5', '5']  # at-least-once: its handler ran twice


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_a_worker_lost_mid_map_without_retries_fails_naming_the_message(transport: str, tmp_path: Any) -> None:
    tasks = squares(6)
    tasks[3] = {'type': 'die_once', 'value': 3, 'marker': str(tmp_path / 'died'), 'log': str(tmp_path / 'runs')}

    async def scenario(primary: ClusterPrimary) -> Any:
        await started(primary, 2)
        with pytest.raises(MapError) as error:
            async for _reply in primary.map(tasks, max_in_flight=1):
                pass
        return error.value

    error = run_cluster(transport, scenario, worker_target=task_worker)
    assert error.index == 3 and 'retries=0' in str(error)
    assert isinstance(error.__cause__, WorkerLost)


def test_map_waits_for_a_worker_and_fails_once_the_primary_shuts_down() -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)  # not ready yet: the map waits for it
        first = [reply async for reply in primary.map(squares(3))]
        primary.shut_down()
        await primary.wait_closed()
        with pytest.raises(MapError, match='no worker is left'):
            async for _reply in primary.map(squares(3)):
                pass
        return first

    assert run_cluster('memory', scenario, worker_target=task_worker) == [0, 1, 4]


def test_map_options_are_checked_when_called() -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        for options in ({'max_in_flight': 0}, {'chunksize': 0}, {'retries': -1}, {'chunksize': 1.5}):
            with pytest.raises(ValueError):
                primary.map([], **options)
        with pytest.raises(TypeError):
            primary.map('not a list of messages')

    run_cluster('memory', scenario, worker_target=task_worker)


# -- the worker side (R145) ------------------------------------------------------------

class WatchedWorker(TaskWorker):
    """Subscribed to primary_message: a chunk's messages must still be published to it."""

    def __init__(self) -> None:
        super().__init__()
        self.on('primary_message', self._seen)

    def _seen(self, event: Any) -> None:
        message = event.data['message']
        if message.get('type') == 'seen':
            event.reply(f"seen {message['value']} in stage {event.stage}")


def watched_worker() -> None:
    WatchedWorker()


def test_a_chunk_publishes_each_message_to_subscribers_and_routes_the_rest() -> None:
    tasks = [{'type': 'seen', 'value': 1}, {'type': 'square', 'value': 3}, {'type': ['unhashable']},
             {'type': 'seen', 'value': 2}]

    async def scenario(primary: ClusterPrimary) -> Any:
        await started(primary, 1)
        answered = [reply async for reply in primary.map(tasks[:2] + tasks[3:], chunksize=3)]
        with pytest.raises(MapError) as error:
            async for _reply in primary.map(tasks, chunksize=4):
                pass
        return answered, error.value

    answered, error = run_cluster('memory', scenario, worker_target=watched_worker)
    assert answered == ['seen 1 in stage on', 9, 'seen 2 in stage on']
    assert error.index == 2 and 'no handler answered' in str(error)

def test_max_concurrency_serves_requests_one_at_a_time_in_arrival_order() -> None:
    _busy.clear()

    async def scenario(primary: ClusterPrimary) -> Any:
        (worker,) = await started(primary, 1)
        replies = [primary.request({'type': 'wait', 'seconds': 0.2, 'value': index}, to=worker) for index in range(4)]
        loop = primary.transport.loop
        done_at = []
        for reply in replies:
            await reply
            done_at.append(round(loop.time(), 1))
        return done_at

    done_at = run_cluster('memory', scenario, worker_target=one_at_a_time_worker)
    assert _busy[1][1] == 1
    assert done_at == sorted(done_at) and done_at[-1] - done_at[0] >= 0.6 - 0.05  # one after the other


def test_without_max_concurrency_a_worker_serves_requests_at_once() -> None:
    _busy.clear()

    async def scenario(primary: ClusterPrimary) -> Any:
        (worker,) = await started(primary, 1)
        await asyncio.gather(*[primary.request({'type': 'wait', 'seconds': 0.2}, to=worker) for _ in range(4)])

    run_cluster('memory', scenario, worker_target=unlimited_counting_worker)
    assert _busy[1][1] == 4


def test_max_concurrency_is_checked() -> None:
    for value in (0, -1, 1.5, '2'):
        with pytest.raises(ValueError, match='max_concurrency'):
            ClusterWorker(initialize=False, max_concurrency=value)


# -- the frames -------------------------------------------------------------------------

@pytest.mark.parametrize('kind', [protocol.REQUEST_BATCH, protocol.REPLY_BATCH])
def test_batch_frames_round_trip_and_reject_truncation(kind: str) -> None:
    frame = protocol.encode_frame(kind, (7, b'[1,2,3]'))
    assert protocol.FrameDecoder().feed(frame) == [(kind, (7, b'[1,2,3]'))]
    truncated = frame[:4] + frame[4:5] + b'\x00\x01'
    truncated = (len(truncated) - 4).to_bytes(4, 'big') + truncated[4:]
    with pytest.raises(ProtocolError, match=f'truncated {kind.upper()}'):
        protocol.FrameDecoder().feed(truncated)


# -- map_sync (a script without its own loop) -------------------------------------------

def test_map_sync_runs_the_loop_until_every_reply_is_in() -> None:
    from isocluster.transport.memory import MemoryTransport

    sim = MemoryTransport(seed=3)
    primary = ClusterPrimary(worker_target=task_worker, transport=sim)
    primary.fork(2)
    assert primary.map_sync(squares(7), chunksize=2) == [value ** 2 for value in range(7)]
    primary.destroy()
    sim.run_until(lambda: primary.closed)


def test_a_chunk_message_nobody_routes_fails_clearly() -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        await started(primary, 1)
        with pytest.raises(MapError) as error:
            async for _reply in primary.map(squares(2) + [{'type': 'nobody_handles_this'}], chunksize=3):
                pass
        return error.value

    error = run_cluster('memory', scenario, worker_target=task_worker)
    assert error.index == 2 and "no handler answered the request (message type 'nobody_handles_this')" in str(error)


def recording_job(started: list[str], finish: dict[str, Any]) -> Any:
    """Gate jobs that note their start in `started` and leave their done callback in `finish`."""
    def job(name: str) -> Any:
        def start(done: Any) -> None:
            started.append(name)
            finish[name] = done
        return start
    return job


def test_after_a_request_finishes_the_next_starts_on_a_later_loop_turn() -> None:
    """A request that arrives in the same read as the one that just finished must not start
    at once: the finished one's reply would wait for its whole run (R145)."""
    from isocluster.request_gate import RequestGate

    turns: list[Any] = []
    gate = RequestGate(1, turns.append)
    started: list[str] = []
    finish: dict[str, Any] = {}
    job = recording_job(started, finish)

    gate.submit(job('first'))
    assert started == ['first']
    finish['first']()
    gate.submit(job('second'))  # in the same loop turn
    assert started == ['first'] and len(turns) == 1
    turns.pop()()  # the next loop turn
    assert started == ['first', 'second']


def test_a_request_arriving_in_a_later_read_starts_at_once() -> None:
    """When the link counts its reads, the gate tells a later read from the same one: a request
    that finished with nobody waiting costs no loop turn, the next one, arriving in a later
    read, starts at once, and one arriving in the same read still waits a turn (R145)."""
    from isocluster.request_gate import RequestGate

    reads = [1]
    turns: list[Any] = []
    gate = RequestGate(1, turns.append, lambda: reads[0])
    started: list[str] = []
    finish: dict[str, Any] = {}
    job = recording_job(started, finish)

    gate.submit(job('first'))
    finish['first']()
    assert turns == []
    reads[0] += 1
    gate.submit(job('second'))
    assert started == ['first', 'second'] and turns == []
    finish['second']()
    gate.submit(job('third'))  # in the read that delivered the second
    assert started == ['first', 'second'] and len(turns) == 1
    turns.pop()()
    assert started == ['first', 'second', 'third']
    gate.submit(job('fourth'))  # the limit is taken: it waits for the third, then a turn
    finish['third']()
    assert started == ['first', 'second', 'third'] and len(turns) == 1
    turns.pop()()
    assert started == ['first', 'second', 'third', 'fourth']
