"""A large pickle message's last out-of-band buffer is read into memory of its own (issue 14):
a `bytes` payload is then that memory, not a copy of the frame's buffer made after the last
byte arrived. White-box: the split read must decode to exactly what the one-buffer read does,
for every buffer kind in last place, and must fall back to the one-buffer read whenever the
first piece does not show a consistent out-of-band head."""

from __future__ import annotations

from typing import Any

import pytest

from isocluster import protocol
from isocluster.errors import DecodeError
from isocluster.out_of_band import SplitBody, tail_size

SIZE = 1024 * 1024 + 3
CODEC = protocol.get_codec('pickle')
PATTERN = bytes(range(251)) * (SIZE // 251 + 2)


def _frame(message: Any) -> bytes:
    return protocol.encode_frame(protocol.MESSAGE, CODEC.encode(message))


def _read(frame: bytes, first: int, release: bool = False) -> tuple[Any, Any]:
    """As a link reads: `first` bytes through feed(), the rest straight into the gather
    target, in pieces. Returns the body and the last target: a link still holds it (unless
    released) while the frame is handled."""
    decoder = protocol.FrameDecoder()
    decoder.message_buffers = True
    view = memoryview(frame)
    frames = decoder.feed(view[:first])
    offset = first
    kept = None
    while offset < len(frame):
        target = decoder.gather_target()
        assert target is not None
        count = min(len(target), 300_000, len(frame) - offset)
        target[:count] = view[offset:offset + count]
        if release:
            target.release()
        kept = target
        frames += decoder.gathered(count)
        offset += count
    ((kind, body),) = frames
    assert kind == protocol.MESSAGE and kept is not None
    return body, kept


def _whole(frame: bytes) -> Any:
    """The reference: the same frame read whole into one buffer (no split)."""
    decoder = protocol.FrameDecoder()
    ((_, body),) = decoder.feed(frame)
    return CODEC.decode(body)


@pytest.mark.parametrize('release', [False, True])
def test_a_bytes_payload_is_the_memory_its_tail_was_read_into(release: bool) -> None:
    message = {'type': 'blob', 'data': PATTERN[:SIZE]}
    body, held = _read(_frame(message), 65536, release)
    assert type(body) is SplitBody
    decoded = CODEC.decode(body)
    assert decoded == message == _whole(_frame(message))
    # Not a copy: the bytes is the BytesIO's own buffer (a copy would be another object).
    assert decoded['data'] is body.tail.getvalue()
    del held


@pytest.mark.parametrize('kind', ['bytes', 'bytearray', 'memoryview'])
def test_every_kind_of_last_buffer_decodes_as_the_whole_read_does(kind: str) -> None:
    last = {'bytes': PATTERN[5:SIZE + 5], 'bytearray': bytearray(PATTERN[6:SIZE + 6]),
            'memoryview': memoryview(PATTERN[7:SIZE + 7])}[kind]
    message = {'first': PATTERN[:SIZE], 'nested': [{'deep': bytearray(PATTERN[1:SIZE + 1])}], 'last': last,
               'small': b'tiny'}
    frame = _frame(message)
    body, _ = _read(frame, 65536)
    assert type(body) is SplitBody and len(body) == len(frame) - 5 and bytes(body) == frame[5:]
    decoded, reference = CODEC.decode(body), _whole(frame)
    for key in ('first', 'nested', 'small'):
        assert decoded[key] == reference[key]
    assert type(decoded['last']) is type(reference['last']) is type(last)
    assert bytes(decoded['last']) == bytes(reference['last']) == bytes(last)
    if kind == 'memoryview':  # writable, as the one-buffer read's view of its bytearray
        assert not decoded['last'].readonly
        decoded['last'][:2] = b'ok'


def test_a_first_piece_without_the_whole_head_falls_back_to_one_buffer() -> None:
    message = {'type': 'blob', 'data': PATTERN[:SIZE]}
    frame = _frame(message)
    decoder = protocol.FrameDecoder()
    decoder.message_buffers = True
    for first in (6, 8, 12, 65536):  # the frame header and the body's first 1, 3, 7 bytes; then all of it
        ((_, body),) = decoder.feed(frame[:first]) + decoder.feed(frame[first:])
        assert type(body) is (SplitBody if first == 65536 else bytearray)
        assert CODEC.decode(body) == message


def test_tail_size_refuses_a_head_that_does_not_add_up() -> None:
    frame = _frame({'type': 'blob', 'data': PATTERN[:SIZE]})
    body = frame[5:]
    assert tail_size(body, len(body), 65536) == SIZE
    assert tail_size(body, len(body) + 1, 65536) == 0  # announced size and head disagree
    assert tail_size(body, len(body), SIZE + 1) == 0  # a tail too small to be worth it
    assert tail_size(body[:20], len(body), 65536) == 0  # the head is not all there
    assert tail_size(b'\x80\x05' + body[2:], len(body), 65536) == 0  # an in-band pickle stream
    no_buffers = b'\x80\xfe' + (0).to_bytes(4, 'big') + (len(body) - 14).to_bytes(8, 'big')
    assert tail_size(no_buffers, len(body), 65536) == 0


def test_a_hostile_tail_is_a_decode_error_not_a_crash() -> None:
    """A head consistent enough to split, whose pickle stream then lies about its buffers."""
    frame = bytearray(_frame({'type': 'blob', 'data': PATTERN[:SIZE]}))
    stream_at = 5 + 6 + 2 * 8
    frame[stream_at:stream_at + 2] = b'\x80\xff'  # an unknown protocol: the stream is refused
    body, _ = _read(bytes(frame), 65536)
    assert type(body) is SplitBody
    with pytest.raises(DecodeError):
        protocol.decode_message(CODEC, body, 3)
