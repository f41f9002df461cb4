"""Request/reply (issue 6): routed return values become replies, on both transports."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from isocluster import protocol
from isocluster import (
    ClusterPrimary, ClusterWorker, EncodeError, InvalidDestinationError, RemoteError, RequestTimeout, WorkerLost,
)
from isocluster.errors import DecodeError, SendError, TransportError
from isocluster.routing import PendingRequests, Request
from isocluster.transport.base import current_link
from isocluster.transport.memory import MemoryTransport
from tests.cluster_helpers import TRANSPORTS, ready_waiter, run_cluster
from memory_helpers import close, make, note, seen, started


class Calculator(ClusterWorker):
    def _event_primary_message_square(self, event: Any) -> int:
        return event.data['message']['value'] ** 2

    async def _event_primary_message_slow_square(self, event: Any) -> int:
        await asyncio.sleep(0.01)
        return event.data['message']['value'] ** 2

    def _event_primary_message_explicit(self, event: Any) -> None:
        event.reply({'explicit': True, 'worker_id': ClusterWorker.worker_id})

    def _event_primary_message_fail(self, event: Any) -> None:
        raise KeyError('no such thing')

    def _event_primary_message_never(self, event: Any) -> Any:
        return asyncio.get_running_loop().create_future()  # never resolves

    def _event_primary_message_die(self, event: Any) -> None:
        raise SystemExit(5)

    def _event_primary_message_echo_size(self, event: Any) -> str:
        return 'y' * event.data['message']['size']

    def _event_primary_message_ask_primary(self, event: Any) -> Any:
        return self.request({'type': 'lookup', 'key': event.data['message']['key']}, timeout=5)


def calculator() -> None:
    Calculator()


class LookupPrimary(ClusterPrimary):
    def _event_worker_message_lookup(self, event: Any) -> str:
        return f"value-of-{event.data['message']['key']}"


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_routed_return_value_is_the_reply(transport: str) -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(2)
        await ready_waiter(primary, 2)
        first, second = primary.workers
        return (
            await primary.request({'type': 'square', 'value': 7}, to=first),
            await primary.request({'type': 'slow_square', 'value': 3}, to=second.id),
            await primary.request({'type': 'explicit'}, to=second),
        )

    assert run_cluster(transport, scenario, worker_target=calculator) == (
        49, 9, {'explicit': True, 'worker_id': 2},
    )


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_handler_error_goes_back_as_remote_error_and_worker_lives(transport: str) -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        worker = primary.workers[0]
        with pytest.raises(RemoteError) as caught:
            await primary.request({'type': 'fail'}, to=worker)
        with pytest.raises(RemoteError) as unrouted:
            await primary.request({'type': 'nobody_handles_this'}, to=worker)
        still = await primary.request({'type': 'square', 'value': 2}, to=worker)
        return caught.value, unrouted.value, still, worker.state

    error, unrouted, still, state = run_cluster(transport, scenario, worker_target=calculator)
    assert error.remote_type == 'KeyError' and 'no such thing' in error.remote_message
    assert 'Traceback' in error.remote_traceback
    assert unrouted.remote_type == 'LookupError'
    assert still == 4 and state == 'ready'


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_request_to_a_dying_worker_settles_with_worker_lost(transport: str) -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        worker = primary.workers[0]
        exited = asyncio.get_running_loop().create_future()
        primary.once_after('worker_exit', lambda event: exited.set_result(event.data['code']))
        pending = primary.request({'type': 'never'}, to=worker)
        dying = primary.request({'type': 'die'}, to=worker)
        results = await asyncio.gather(pending, dying, return_exceptions=True)
        return results, await exited

    (pending, dying), code = run_cluster(transport, scenario, worker_target=calculator)
    assert isinstance(pending, WorkerLost) and pending.worker_id == 1
    assert isinstance(dying, WorkerLost)
    assert code == 5


def test_request_timeout_in_virtual_time() -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(RequestTimeout):
            await primary.request({'type': 'never'}, to=primary.workers[0], timeout=30)
        return loop.time() - started

    elapsed = run_cluster('memory', scenario, worker_target=calculator)
    assert 30 <= elapsed < 30.1


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_worker_requests_the_primary(transport: str) -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        return await primary.request({'type': 'ask_primary', 'key': 'k'}, to=primary.workers[0])

    assert run_cluster(transport, scenario, LookupPrimary, worker_target=calculator) == 'value-of-k'


def test_bad_requests_reject_clearly() -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        errors = []
        for message, to in (({'type': 'square'}, [1]), ({'type': 'square'}, 99), ({'type': object()}, 1)):
            try:
                await primary.request(message, to=to)
            except Exception as error:
                errors.append(type(error))
        with pytest.raises(ValueError):
            primary.request({'type': 'square'}, to=1, timeout=-1)
        return errors

    assert run_cluster('memory', scenario, worker_target=calculator) == [
        InvalidDestinationError, InvalidDestinationError, EncodeError,
    ]


@pytest.mark.parametrize('codec', ['json', 'pickle', 'msgpack', 'orjson'])
def test_every_codec_carries_requests_on_real_processes(codec: str) -> None:
    if codec in ('msgpack', 'orjson'):
        pytest.importorskip(codec)

    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        return await primary.request({'type': 'square', 'value': 12}, to=primary.workers[0])

    assert run_cluster('process', scenario, worker_target=calculator, codec=codec) == 144


LIMIT = 200


def _encoded_size(message: Any) -> int:
    return len(protocol.get_codec('json').encode(message))


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_requests_and_replies_respect_the_frame_limit_with_their_headers(transport: str) -> None:
    """A request frame carries an 8-byte id and a reply 9 bytes of id and flag besides the
    kind byte (R120). A message that fits as a plain message but not as a request is an
    EncodeError at once; a reply too large to send fails the request with RemoteError; the
    worker lives on either way."""
    pad = {'type': 'square', 'value': 1, 'pad': ''}
    pad['pad'] = 'p' * (LIMIT - 1 - _encoded_size(pad) - 3)  # fits as a message, not as a request

    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        worker = primary.workers[0]
        sent = await primary.send({'type': 'noop', 'pad': pad['pad']}, to=worker)  # as a message: fits
        with pytest.raises(EncodeError, match='request header'):
            await primary.request(pad, to=worker)
        with pytest.raises(RemoteError) as too_big:
            await primary.request({'type': 'echo_size', 'size': LIMIT}, to=worker)
        still = await primary.request({'type': 'square', 'value': 3}, to=worker)
        return sent, too_big.value, still, worker.state

    sent, error, still, state = run_cluster(transport, scenario, worker_target=calculator, max_frame_size=LIMIT)
    assert sent is None
    assert error.remote_type == 'EncodeError' and error.remote_message.startswith('the reply could not be sent: ')
    assert still == 9 and state == 'ready'


class Answering(ClusterWorker):
    def _event_primary_message_echo(self, event):
        return event.data['message']['value']


def answering():
    Answering()


def test_request_whose_write_fails_rejects_with_send_error_and_leaves_nothing_pending():
    sim, p, rec = started(1, answering)
    sim.fail_next_send(1)
    future = p.request({'type': 'echo', 'value': 1}, to=1, timeout=5)
    assert isinstance(future.exception(), SendError)
    assert isinstance(future.exception().__cause__, TransportError)
    assert p.workers[0].stats()['in_flight'] == 0  # counted beside the pending requests
    close(sim, p)


def test_request_to_a_list_rejects_with_invalid_destination():
    sim, p, rec = started(1, answering)
    for to in ([1], (1,)):
        future = p.request({'type': 'echo', 'value': 1}, to=to)
        assert 'to must name one worker' in str(future.exception())
    # to=None is the least busy ready worker (issue 15, R141), not an error any more
    future = p.request({'type': 'echo', 'value': 1}, to=None)
    sim.run_until(future.done)
    assert future.exception() is None
    close(sim, p)


# == requests from a worker served by the primary =================================================

class RaisingPrimary(ClusterPrimary):
    def _event_worker_message_fail(self, event):
        raise KeyError('nope')


def requester(message):
    def target():
        worker = ClusterWorker()

        async def ask():
            try:
                note('reply', await worker.request(message, timeout=10))
            except Exception as error:
                note('reply', error)
        return ask()
    return target


def test_request_handler_error_on_the_primary_goes_back_as_remote_error():
    sim, p, rec = make(requester({'type': 'fail'}), cls=RaisingPrimary)
    p.fork(1)
    sim.run_until(lambda: seen.get('reply'), timeout=10)
    error = seen['reply'][0]
    assert isinstance(error, RemoteError) and error.remote_type == 'KeyError'
    assert p.workers[0].state == 'ready'
    close(sim, p)


def test_request_handler_that_replied_then_raised_is_fatal_to_the_primary():
    sim, p, rec = make(requester({'type': 'x'}))
    failure = RuntimeError('after reply')

    def reply_then_raise(event):
        event.reply('ok')
        raise failure
    p.on('worker_message', reply_then_raise)
    p.fork(1)
    with pytest.raises(RuntimeError) as caught:
        sim.run_until(lambda: False, timeout=10)
    assert caught.value is failure
    sim.run_until(lambda: seen.get('reply'), timeout=10)
    assert seen['reply'] == ['ok']


def chatty():
    worker = ClusterWorker()
    worker.on('primary_message', lambda event: worker.send('m'))  # a plain message, no request


def test_event_reply_on_an_event_without_a_request_raises_type_error():
    sim, p, rec = started(1, chatty)
    caught = []

    def reply(event):
        try:
            event.reply(1)
        except TypeError as error:
            caught.append(str(error))
    p.on('worker_message', reply)
    p.send('go')
    sim.run_until(lambda: caught, timeout=1)
    assert "carries no request" in caught[0]
    close(sim, p)


def rogue_request_target():
    ClusterWorker()
    current_link().write(protocol.REQUEST, (1, b'\xff not json'))


def test_r85_undecodable_request_from_a_worker_is_a_decode_error():
    sim, p, rec = make(rogue_request_target)
    p.fork(1)
    sim.run_until(lambda: rec.count('worker_error') == 1, timeout=10)
    assert isinstance(rec.of('worker_error')[0]['error'], DecodeError)
    close(sim, p)


class _Wire:
    """The write side of a Request: records replies, or fails like a broken link."""

    def __init__(self, broken=False):
        self.frames = []
        self.broken = broken

    def __call__(self, reply):
        if self.broken:
            raise TransportError('gone')
        self.frames.append(reply)


def _request(wire, spawned=None):
    return Request(5, wire, protocol.JsonCodec(), (spawned.append if spawned is not None else None))


def test_request_answers_exactly_once():
    wire = _Wire()
    request = _request(wire)
    request.reply({'a': 1})
    with pytest.raises(RuntimeError, match='request 5 has already been answered'):
        request.reply(2)
    with pytest.raises(RuntimeError, match='already been answered'):
        request.fail(ValueError('late'))
    request.answer_with(3)  # a routed return value after an explicit reply is ignored
    request.settle_unanswered('x')
    assert wire.frames == [(5, True, b'{"a":1}')]


def test_request_reply_that_cannot_be_encoded_fails_the_request_with_encode_error():
    wire = _Wire()
    _request(wire).reply(object())
    (request_id, ok, data), = wire.frames
    assert ok is False and b'EncodeError' in data


def test_request_reply_to_a_gone_requester_is_dropped_silently():
    request = _request(_Wire(broken=True))
    request.reply('x')
    assert request.answered


def _run(coro):
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def test_awaited_answer_replies_with_the_value_or_fails_with_the_error():
    async def value():
        return 'v'

    async def error():
        raise KeyError('k')

    wire = _Wire()
    spawned = []
    _request(wire, spawned).answer_with(value())
    _request(wire, spawned).answer_with(error())
    for coro in spawned:
        _run(coro)
    assert wire.frames[0] == (5, True, b'"v"')
    assert wire.frames[1][1] is False and b'KeyError' in wire.frames[1][2]


def test_awaited_answer_after_an_explicit_reply_sends_nothing_more():
    wire = _Wire()
    spawned = []
    request = _request(wire, spawned)

    async def replies_itself(outcome):
        request.reply('explicit')
        if outcome == 'raise':
            raise ValueError('after reply')
        return 'ignored'

    request.answer_with(replies_itself('return'))
    assert request.pending
    _run(spawned.pop())
    second = _request(wire, spawned)
    request = second
    second.answer_with(replies_itself('raise'))
    _run(spawned.pop())
    assert wire.frames == [(5, True, b'"explicit"'), (5, True, b'"explicit"')]


def test_cancelled_answer_fails_the_request_unless_already_answered():
    wire = _Wire()
    spawned = []

    async def forever():
        await asyncio.get_running_loop().create_future()

    async def scenario(request):
        task = asyncio.ensure_future(spawned.pop())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    first = _request(wire, spawned)
    first.answer_with(forever())
    _run(scenario(first))
    assert wire.frames[0][1] is False and b'cancelled' in wire.frames[0][2]

    second = _request(wire, spawned)
    second.answer_with(forever())
    second.reply('done first')
    _run(scenario(second))
    assert wire.frames[1:] == [(5, True, b'"done first"')]


def test_pending_requests_settle_late_duplicate_and_malformed_replies():
    loop = asyncio.new_event_loop()
    try:
        codec = protocol.JsonCodec()
        pending = PendingRequests()
        rid, future = pending.open(loop, 'peer', 10.0, 'the request')
        pending.settle((rid, True, b'"ok"'), codec, 1)
        assert future.result() == 'ok'
        pending.settle((rid, True, b'"duplicate"'), codec, 1)  # already settled: dropped
        pending.settle((999, True, b'"unknown"'), codec, 1)  # never sent: dropped

        rid, future = pending.open(loop, 'peer', None, 'the request')
        pending.settle((rid, True, b'\xff'), codec, 1)
        assert isinstance(future.exception(), DecodeError)

        rid, future = pending.open(loop, 'peer', None, 'the request')
        pending.settle((rid, False, b'not json at all'), codec, 4)
        error = future.exception()
        assert isinstance(error, RemoteError) and error.remote_type == 'unknown' and error.worker_id == 4
        assert 'not json' in error.remote_message

        rid, future = pending.open(loop, 'peer', None, 'the request')
        future.cancel()  # the caller gave up: a reply changes nothing
        pending.settle((rid, True, b'1'), codec, 1)
        assert future.cancelled()
    finally:
        loop.close()


def test_pending_requests_time_out_lose_and_cancel_per_peer():
    loop = asyncio.new_event_loop()
    try:
        pending = PendingRequests()
        a_id, a = pending.open(loop, 'a', 1.0, 'the request to a')
        b_id, b = pending.open(loop, 'b', None, 'the request to b')
        c_id, c = pending.open(loop, 'c', 5.0, 'the request to c')
        c.cancel()
        pending.lose('b', lambda: WorkerLost('b left'))
        assert isinstance(b.exception(), WorkerLost) and not a.done()
        pending.lose('c', lambda: WorkerLost('c left'))  # done already: untouched
        assert c.cancelled()
        pending.cancel(a_id)
        pending.cancel(a_id)  # twice: nothing left to cancel
        pending._time_out(a_id, 1.0, 'the request to a')  # a timer firing after its request settled
        assert not a.done()
        a.cancel()
    finally:
        loop.close()
    sim = MemoryTransport(seed=1)  # virtual time: the timeout fires without waiting
    _, d = pending.open(sim.loop, 'd', 0.5, 'the request to d')
    sim.advance(0.6)
    assert isinstance(d.exception(), RequestTimeout) and 'the request to d got no reply within 0.5s' in str(d.exception())
