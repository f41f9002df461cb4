"""A worker's receive, and the primary's stream path (link_frames), call the codec's C decode
itself in the common case (out_of_band.decode_parts: `pickle.loads`, then
`pickle_buffers.not_in_band` for what it refuses): every body must come out as `codec.decode`
makes it, the same message or the same DecodeError, out-of-band bodies included, and nothing
is unpickled twice."""

from __future__ import annotations

import collections
import pickle
from typing import Any

import pytest

from isocluster import ClusterPrimary, pickle_buffers, protocol
from isocluster.errors import DecodeError
from isocluster.out_of_band import OutOfBand, SplitBody, decode_parts
from isocluster.pubsub import Publisher
from isocluster.routed_publish import routed_receiver
from isocluster.routing import route
from isocluster.transport.memory import MemoryTransport
from tests.test_stream_fast_paths import close, quiet_worker

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


def _primary_outcome(body: Any) -> Any:
    """What a primary's link_frames makes of `body` between two good messages: the messages
    published, and the worker_error's text and cause when the body faulted its worker."""
    sim = MemoryTransport(seed=1)
    primary = ClusterPrimary(transport=sim, worker_target=quiet_worker, codec='pickle')
    primary.fork(1)
    sim.run_until(lambda: any(h.state == 'ready' for h in primary._live.values()), timeout=60)
    (handle,) = primary._live.values()
    seen: list[Any] = []
    primary.on('worker_message', lambda event: seen.append(event.data['message']))
    primary.on('worker_error', lambda event: seen.append(
        ('error', str(event.data['error']), type(event.data['error'].__cause__).__name__)))
    good = pickle_buffers.dumps({'type': 'task', 'id': 0})
    frames = [(protocol.MESSAGE, good), (protocol.MESSAGE, body), (protocol.MESSAGE, good)]
    del effects[:]
    primary.link_frames(handle.life.link, collections.deque(frames), 64)
    outcome = ([{key: bytes(value) if key == 'payload' else value for key, value in m.items()}
                if type(m) is dict else m for m in seen], list(effects), handle.id)
    close(sim, primary)
    return outcome


@pytest.mark.parametrize('index', range(len(_bodies())))
def test_the_primary_decodes_a_stream_s_bodies_as_the_codec_does(index: int) -> None:
    """ClusterPrimary.link_frames calls decode_parts' first part (pickle.loads) and the rest
    only for what it refuses: the same messages, or the same worker_error, as codec.decode."""
    body = _bodies()[index]
    seen, side_effects, worker_id = _primary_outcome(body)
    codec = protocol.get_codec('pickle')
    del effects[:]
    try:
        message = codec.decode(body)
    except Exception as error:
        fault = protocol.decode_error(codec, error, worker_id)
        expected = [{'type': 'task', 'id': 0}, ('error', str(fault), type(error).__name__)]
    else:
        expected = [{'type': 'task', 'id': 0},
                    {key: bytes(value) if key == 'payload' else value for key, value in message.items()},
                    {'type': 'task', 'id': 0}]
    assert seen == expected
    assert side_effects == effects  # unpickled once: a failing body's side effect happens once


@pytest.mark.parametrize('body', [
    pickle_buffers.MAGIC + b'\x00',  # no room for its count
    pickle_buffers.MAGIC + (10**9).to_bytes(4, 'big') + bytes(20),  # a billion buffers in 26 bytes
])
def test_an_out_of_band_head_larger_than_its_body_is_refused_as_such(body: bytes) -> None:
    """A hostile worker's head that announces more than its body holds: a ValueError that says
    so (what the primary's DecodeError then quotes), not struct's own error."""
    with pytest.raises(ValueError, match=f'an out-of-band pickle body of {len(body)} bytes too short'):
        pickle_buffers.loads(body)
