"""The primary's send paths (issue 14), each fast path against the general one it stands for:
pickle_buffers.dumps with its kept pickler encodes every message as looking for large
buffers first does (the same bytes, the same out-of-band parts, the same errors), and keeps
nothing of a message alive."""

from __future__ import annotations

import gc
import pickle
import weakref
from typing import Any

import pytest

from isocluster import pickle_buffers
from isocluster.out_of_band import OutOfBand

LARGE = pickle_buffers.MIN_OUT_OF_BAND
_SHARED = ['shared'] * 3  # the same object in consecutive messages: a memo left over would show


def _messages() -> list[Any]:
    blob = bytes(range(256)) * (LARGE // 256 + 1)
    return [
        {'type': 'task', 'id': 1, 'method': 'echo', 'payload': 'x' * 40},
        {'type': 'task', 'refs': _SHARED},
        {'type': 'task', 'refs': _SHARED, 'again': _SHARED},
        [1, 2.5, None, True, 'text'],
        'x' * 5000,  # more than the kept pickler's first buffer
        {'many': [str(i) for i in range(20_000)]},  # a stream of many 64 KiB frames, no buffer
        blob[:LARGE - 1],  # just under the mark: in band
        blob[:LARGE],  # at the mark: out of band
        {'type': 'blob', 'data': blob[:LARGE + 7], 'small': b'tiny'},
        {'type': 'blob', 'data': bytearray(blob[:LARGE + 3])},
        {'type': 'blob', 'data': memoryview(blob[:LARGE + 1])},
        {'type': 'blob', 'nested': [{'deep': blob[:LARGE + 5]}]},  # not at the top: in band
        {'type': 'text', 'big': 's' * (3 * LARGE)},
        {'type': 'task', 'id': 2, 'method': 'echo', 'payload': 'y' * 40},
    ]


def _encoded(result: Any) -> tuple[str, bytes]:
    return type(result).__name__, bytes(result)


def test_dumps_gives_what_looking_first_gives_for_every_kind_of_message_in_any_order() -> None:
    messages = _messages()
    for order in (messages, messages[::-1], messages + messages):
        for message in order:
            assert _encoded(pickle_buffers.dumps(message)) == _encoded(pickle_buffers._dumps_looking_first(message))
    # and what reaches the receiver is the message
    for message in messages:
        encoded = pickle_buffers.dumps(message)
        decoded = pickle_buffers.loads(bytes(encoded) if type(encoded) is OutOfBand else encoded)
        assert decoded == message
    assert len(pickle_buffers._idle) == 1


def test_a_small_message_is_what_pickle_dumps_makes() -> None:
    for message in _messages()[:4]:
        assert pickle_buffers.dumps(message) == pickle.dumps(message, pickle.HIGHEST_PROTOCOL)


class _Unpicklable:
    def __reduce__(self) -> Any:
        raise RuntimeError('not picklable on purpose')


def test_a_failure_raises_as_looking_first_does_and_leaves_the_next_message_whole() -> None:
    for bad in ({'type': 'x', 'view': memoryview(b'small')}, {'type': 'x', 'value': _Unpicklable()}, {'f': lambda: 0}):
        with pytest.raises(Exception) as fast:
            pickle_buffers.dumps(bad)
        with pytest.raises(Exception) as general:
            pickle_buffers._dumps_looking_first(bad)
        assert (type(fast.value), str(fast.value)) == (type(general.value), str(general.value))
        message = {'type': 'task', 'refs': _SHARED}
        assert pickle_buffers.dumps(message) == pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    assert len(pickle_buffers._idle) == 1


class _SendsWhilePickled:
    """An object whose pickling encodes another message (the kept pickler is then in use)."""

    inner: Any = None

    def __reduce__(self) -> Any:
        type(self).inner = pickle_buffers.dumps({'type': 'inner', 'refs': _SHARED})
        return (str, ('outer',))


def test_a_dumps_inside_a_dumps_takes_the_general_path_and_both_are_whole() -> None:
    message = {'type': 'outer', 'refs': _SHARED, 'value': _SendsWhilePickled()}
    encoded = pickle_buffers.dumps(message)
    assert pickle.loads(encoded) == {'type': 'outer', 'refs': _SHARED, 'value': 'outer'}
    assert pickle.loads(_SendsWhilePickled.inner) == {'type': 'inner', 'refs': _SHARED}
    assert len(pickle_buffers._idle) == 1


class _Payload:
    pass


def test_the_kept_pickler_keeps_nothing_of_a_message_alive() -> None:
    payload = _Payload()
    gone = weakref.ref(payload)
    pickle_buffers.dumps({'type': 'task', 'payload': payload})
    del payload
    gc.collect()
    assert gone() is None
