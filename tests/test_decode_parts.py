"""A worker's receive calls the codec's C decode itself in the common case (out_of_band.decode_parts:
`pickle.loads`, then `pickle_buffers.not_in_band` for what it refuses): every body must come
out as `codec.decode` makes it, the same message or the same DecodeError, out-of-band bodies
included, and nothing is unpickled twice."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from isocluster import pickle_buffers
from isocluster.errors import DecodeError
from isocluster.out_of_band import OutOfBand, SplitBody, decode_parts
from isocluster.pubsub import Publisher
from isocluster.routed_publish import routed_receiver
from isocluster.routing import route

BIG = bytes(range(256)) * 400  # past MIN_OUT_OF_BAND: travels out of band
effects: list[str] = []


def _effect_then_fail(text: str) -> None:
    effects.append(text)
    return int(text)  # a ValueError raised while unpickling, after a side effect


class _Failing:
    def __reduce__(self) -> Any:
        return (_effect_then_fail, ('not a number',))


class Receiver(Publisher):
    _pubsub = {'primary_message': {}}

    def __init__(self) -> None:
        super().__init__()
        self._disconnected = False
        self.seen: list[Any] = []

    def _event_primary_message(self, event: Any) -> None:
        route(self, '_event_primary_message_', event)

    def _event_primary_message_task(self, event: Any) -> None:
        message = event.data['message']
        self.seen.append({key: (type(value).__name__, bytes(value)) if key == 'payload' else value
                          for key, value in message.items()})


def _split(body: bytes, tail: int) -> SplitBody:
    return SplitBody(bytearray(body[:-tail]), body[-tail:], len(body))


def _bodies() -> list[Any]:
    small = pickle_buffers.dumps({'type': 'task', 'id': 1, 'payload': b'x' * 40})
    large = pickle_buffers.dumps({'type': 'task', 'id': 2, 'payload': BIG})
    assert type(small) is bytes and type(large) is OutOfBand
    whole = bytes(large)
    magic_bad = whole[:-1]  # its parts do not add up
    return [small, bytearray(small), large, whole, bytearray(whole), _split(whole, len(BIG)),
            SplitBody(bytearray(whole[:-10]), whole[-10:], len(whole)), magic_bad, b'bad',
            pickle.dumps({'type': 'task', 'id': 3, 'payload': _Failing()}), small[:-3], None, 'text']


def _outcome(decode: Any, body: Any) -> Any:
    receiver = Receiver()
    receive, _ = routed_receiver(receiver, 'primary_message', '_event_primary_message_',
                                 Receiver._event_primary_message, decode,
                                 lambda error: DecodeError(f'undecodable: {error!r}'))
    del effects[:]
    try:
        receive(body)
    except DecodeError as error:
        cause = error.__cause__
        return ('error', str(error), type(cause).__name__, str(cause), list(effects))
    return ('message', receiver.seen, list(effects))


def test_pickle_decode_has_parts_and_every_body_comes_out_as_the_codec_decodes_it() -> None:
    first, rest = decode_parts(pickle_buffers.loads)
    assert first is pickle.loads and rest is pickle_buffers.not_in_band
    outcomes = []
    for body in _bodies():
        fast = _outcome(pickle_buffers.loads, body)
        full = _outcome(lambda data: pickle_buffers.loads(data), body)  # no parts: the codec's decode whole
        assert fast == full, body
        outcomes.append(fast[0])
    assert outcomes == ['message'] * 6 + ['error'] * 7
    # The payload that fails after a side effect ran it once, not once more for the fallback.
    assert _outcome(pickle_buffers.loads, _bodies()[9])[-1] == ['not a number']


def test_a_decode_without_parts_is_called_as_it_is() -> None:
    calls: list[Any] = []

    def decode(data: Any) -> Any:
        calls.append(data)
        if data == b'no':
            raise ValueError('refused')
        return {'type': 'task', 'id': 7}

    assert decode_parts(decode) == (decode, None)
    assert _outcome(decode, b'yes') == ('message', [{'type': 'task', 'id': 7}], [])
    assert _outcome(decode, b'no') == ('error', "undecodable: ValueError('refused')", 'ValueError', 'refused', [])
    assert calls == [b'yes', b'no']


@pytest.mark.parametrize('body', [b'\x80\xfe', b'\x80\xfe\x00\x00\x00\x05' + b'\x00' * 8])
def test_a_truncated_out_of_band_head_fails_the_same_both_ways(body: bytes) -> None:
    assert _outcome(pickle_buffers.loads, body) == _outcome(lambda data: pickle_buffers.loads(data), body)
