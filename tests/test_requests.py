"""Request/reply (issue 6): routed return values become replies, on both transports."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from isocluster import protocol
from isocluster import (
    ClusterPrimary, ClusterWorker, EncodeError, InvalidDestinationError, RemoteError, RequestTimeout, WorkerLost,
)
from tests.cluster_helpers import TRANSPORTS, ready_waiter, run_cluster


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
