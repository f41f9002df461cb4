"""Frames, codecs and framing (SPEC §6.1, R71, R120, R123): the pure functions of protocol.py."""

from __future__ import annotations

import json
import struct
import sys

import pytest

from isocluster import protocol
from isocluster.errors import DecodeError, EncodeError, ProtocolError


# -- framing --------------------------------------------------------------------------------

def test_every_frame_kind_round_trips_through_the_decoder() -> None:
    frames = [
        (protocol.MESSAGE, b'{"a":1}'),
        (protocol.ONLINE, None),
        (protocol.LISTEN, {'id': 1, 'address': ['127.0.0.1', 0]}),
        (protocol.REQUEST, (7, b'"q"')),
        (protocol.REPLY, (7, True, b'"a"')),
        (protocol.REPLY, (8, False, b'{}')),
    ]
    wire = b''.join(protocol.encode_frame(kind, payload) for kind, payload in frames)
    assert protocol.FrameDecoder().feed(wire) == frames


def test_frames_split_at_any_byte_are_reassembled_in_order() -> None:
    wire = protocol.encode_frame(protocol.MESSAGE, b'hello') + protocol.encode_frame(protocol.READY, None)
    decoder = protocol.FrameDecoder()
    got = []
    for i in range(len(wire)):
        got += decoder.feed(wire[i:i + 1])
    assert got == [(protocol.MESSAGE, b'hello'), (protocol.READY, None)]
    assert decoder.pending == 0 and decoder.error is None


def test_frame_size_counts_the_kind_byte_and_body() -> None:
    assert protocol.frame_size(protocol.MESSAGE, b'abc') == 4
    assert protocol.frame_size(protocol.REQUEST, (1, b'abc')) == 1 + 8 + 3
    assert protocol.frame_size(protocol.READY, None) == 1


def test_oversized_frame_is_a_protocol_error() -> None:
    decoder = protocol.FrameDecoder(max_frame_size=4)
    with pytest.raises(ProtocolError, match='exceeds the maximum frame size of 4 bytes'):
        decoder.feed(protocol.encode_frame(protocol.MESSAGE, b'12345'))
    assert isinstance(decoder.error, ProtocolError)


def test_frame_within_the_maximum_size_is_accepted() -> None:
    decoder = protocol.FrameDecoder(max_frame_size=4)
    assert decoder.feed(protocol.encode_frame(protocol.MESSAGE, b'123')) == [(protocol.MESSAGE, b'123')]


def test_empty_frame_without_kind_byte_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match='empty frame'):
        protocol.FrameDecoder().feed(b'\x00\x00\x00\x00')


def test_unknown_kind_code_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match='unknown frame kind code 200'):
        protocol.FrameDecoder().feed(b'\x00\x00\x00\x01\xc8')


def test_good_frames_before_a_fault_are_returned_and_the_fault_raised_next() -> None:
    decoder = protocol.FrameDecoder()
    wire = protocol.encode_frame(protocol.ONLINE, None) + protocol.encode_frame(protocol.READY, None) + b'\x00\x00\x00\x01\xff'
    assert decoder.feed(wire) == [(protocol.ONLINE, None), (protocol.READY, None)]
    assert isinstance(decoder.error, ProtocolError) and decoder.pending == 0
    with pytest.raises(ProtocolError) as caught:
        decoder.feed(protocol.encode_frame(protocol.READY, None))
    assert caught.value is decoder.error  # the stream stays unusable: no resynchronisation


def test_malformed_control_body_is_a_protocol_error() -> None:
    body = b'{not json'
    wire = len(body + b'x').to_bytes(4, 'big') + bytes([protocol.KINDS.index(protocol.LISTEN)]) + body
    with pytest.raises(ProtocolError, match='malformed control frame body'):
        protocol.FrameDecoder().feed(wire)


@pytest.mark.parametrize('kind, body', [(protocol.REQUEST, b'1234567'), (protocol.REPLY, b'12345678')])
def test_truncated_request_and_reply_bodies_are_protocol_errors(kind: str, body: bytes) -> None:
    with pytest.raises(ProtocolError, match=f'truncated {kind.upper()} frame'):
        protocol.decode_body(kind, body)


def test_request_and_reply_bodies_carry_id_flag_and_bytes() -> None:
    assert protocol.decode_body(protocol.REQUEST, protocol.encode_body(protocol.REQUEST, (2**40, b'x'))) == (2**40, b'x')
    assert protocol.decode_body(protocol.REPLY, protocol.encode_body(protocol.REPLY, (3, 'truthy', b''))) == (3, True, b'')
    assert protocol.decode_body(protocol.REPLY, protocol.encode_body(protocol.REPLY, (3, 0, b'e'))) == (3, False, b'e')


def test_message_body_is_passed_through_as_raw_bytes():
    assert protocol.encode_body(protocol.MESSAGE, b'\x00raw') == b'\x00raw'
    assert protocol.decode_body(protocol.MESSAGE, b'\x00raw') == b'\x00raw'


def test_control_payload_none_travels_as_an_empty_body() -> None:
    assert protocol.encode_control(None) == b''
    assert protocol.decode_control(b'') is None
    assert protocol.decode_control(memoryview(b'{"id":1}')) == {'id': 1}


def test_user_message_bytes_are_never_read_as_control_frames() -> None:
    # A user message that looks like a control payload stays raw message bytes.
    data = protocol.encode_control({'id': 1})
    assert protocol.FrameDecoder().feed(protocol.encode_frame(protocol.MESSAGE, data)) == [(protocol.MESSAGE, data)]


# -- codecs ---------------------------------------------------------------------------------

def test_json_codec_round_trips_and_accepts_whitespace_and_memoryview() -> None:
    codec = protocol.JsonCodec()
    assert codec.decode(codec.encode({'a': [1, 'é', None]})) == {'a': [1, 'é', None]}
    assert codec.decode(b'  {"a": 1}  ') == {'a': 1}
    assert codec.decode(memoryview(b'[1]')) == [1]


@pytest.mark.parametrize('data', [b'', b'{"a": 1} trailing', b'nope'])
def test_json_codec_rejects_invalid_documents(data: bytes) -> None:
    with pytest.raises(ValueError):
        protocol.JsonCodec().decode(data)


def test_pickle_codec_round_trips_arbitrary_objects() -> None:
    codec = protocol.get_codec('pickle')
    assert codec.name == 'pickle'
    assert codec.decode(codec.encode({1, 2, (3,)})) == {1, 2, (3,)}


def test_msgpack_codec_round_trips_when_the_package_is_present() -> None:
    pytest.importorskip('msgpack')
    codec = protocol.get_codec('msgpack')
    assert codec.name == 'msgpack'
    assert codec.decode(codec.encode({'a': [1, b'raw', 'text']})) == {'a': [1, b'raw', 'text']}


def test_msgpack_codec_without_the_package_raises_value_error_naming_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, 'msgpack', None)  # import msgpack -> ImportError
    with pytest.raises(ValueError, match=r"isocluster\[msgpack\]") as caught:
        protocol.get_codec('msgpack')
    assert isinstance(caught.value.__cause__, ImportError)


def test_get_codec_unknown_name_raises_value_error_naming_the_option() -> None:
    with pytest.raises(ValueError, match=r"codec: unknown codec 'yaml'"):
        protocol.get_codec('yaml')


class _Upper:
    name = 'upper'

    def encode(self, message):
        return str(message).upper().encode()

    def decode(self, data):
        return data.decode()


class _Nameless:
    name = 42

    def encode(self, message):
        return b''

    def decode(self, data):
        return None


@pytest.mark.parametrize('bad', [42, object(), _Nameless()])
def test_get_codec_rejects_non_codec_objects_with_type_error(bad) -> None:
    with pytest.raises(TypeError, match='codec: expected a codec name'):
        protocol.get_codec(bad)


def test_get_codec_returns_a_codec_object_unchanged() -> None:
    codec = _Upper()
    assert protocol.get_codec(codec) is codec


# -- encode_message / decode_message --------------------------------------------------------

def test_encode_message_wraps_codec_failures_in_encode_error() -> None:
    with pytest.raises(EncodeError, match="'json' codec.*nothing was sent") as caught:
        protocol.encode_message(protocol.JsonCodec(), {'x': object()}, 1024, worker_id=3)
    assert caught.value.worker_id == 3 and isinstance(caught.value.__cause__, TypeError)


def test_encode_message_rejects_a_frame_over_the_maximum_size() -> None:
    codec = protocol.JsonCodec()
    assert protocol.encode_message(codec, 'ab', 5) == b'"ab"'  # 4 bytes + kind byte == 5
    with pytest.raises(EncodeError, match='over the maximum frame size of 4 bytes'):
        protocol.encode_message(codec, 'ab', 4)


def test_decode_message_wraps_codec_failures_in_decode_error() -> None:
    with pytest.raises(DecodeError, match="'json' codec") as caught:
        protocol.decode_message(protocol.JsonCodec(), b'\xff', worker_id=9)
    assert caught.value.worker_id == 9


def test_r120_frame_size_limit_is_the_same_for_encoder_and_decoder():
    """The maximum counts the kind byte and the body on both sides of a link."""
    from isocluster.errors import EncodeError, ProtocolError
    from isocluster.protocol import MESSAGE, FrameDecoder, JsonCodec, encode_frame, encode_message

    limit = 64
    codec = JsonCodec()
    fits = encode_message(codec, 'x' * (limit - 3), limit)  # '"xxx"': limit - 1 bytes of body
    assert FrameDecoder(limit).feed(encode_frame(MESSAGE, fits)) == [(MESSAGE, fits)]
    with pytest.raises(EncodeError):
        encode_message(codec, 'x' * (limit - 2), limit)
    with pytest.raises(ProtocolError):
        FrameDecoder(limit).feed(encode_frame(MESSAGE, fits + b' '))


def test_orjson_codec_round_trips_when_installed():
    orjson = pytest.importorskip('orjson')
    from isocluster.protocol import get_codec

    codec = get_codec('orjson')
    message = {'type': 'task', 'id': 1, 'payload': 'é' * 3, 'values': [1, 2.5, None, True]}
    assert codec.name == 'orjson' and codec.decode(codec.encode(message)) == message
    assert codec.encode(message) == orjson.dumps(message)


def test_orjson_codec_names_the_extra_when_missing(monkeypatch):
    import builtins

    from isocluster.protocol import get_codec

    real_import = builtins.__import__

    def no_orjson(name, *args, **kwargs):
        if name == 'orjson':
            raise ImportError('no orjson here')
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, '__import__', no_orjson)
    with pytest.raises(ValueError, match=r'isocluster\[orjson\]'):
        get_codec('orjson')


@pytest.mark.parametrize('direct', [False, True], ids=['fed', 'read-into'])
def test_a_malformed_large_control_frame_ends_the_stream_as_a_protocol_error(direct: bool) -> None:
    """A control frame over the large-frame threshold is gathered in a buffer of its own; a
    body that does not decode is still its sender's fault (never dropped silently, never a
    jam), exactly as for a small frame."""
    body = b'{' * 2 + b'x' * (2 * 1024 * 1024)  # not JSON
    data = struct.pack('>IB', len(body) + 1, protocol.KINDS.index(protocol.LISTEN)) + body
    decoder = protocol.FrameDecoder()
    head, rest = data[:4096], data[4096:]
    assert decoder.feed(head) == []
    with pytest.raises(protocol.ProtocolError):
        if direct:
            target = decoder.gather_target()
            target[:len(rest)] = rest
            decoder.gathered(len(rest))
        else:
            decoder.feed(rest)
    assert decoder.error is not None and decoder.error.frame_kind == protocol.LISTEN
    with pytest.raises(protocol.ProtocolError):
        decoder.feed(b'\x00\x00\x00\x01\x00')  # the stream stays ended, not jammed


@pytest.mark.parametrize('data', [
    b'{"a":[1,"\xc3\xa9",null]}', bytearray(b'{"a":1}'), memoryview(b'[1]'), b'  {"a": 1}  ', b'{"a": 1} trailing',
    b'', b'nope', b'\xff{}', b'NaN', b'"s"', b'{"a":', '{"a":1}', 3,
])
def test_json_codec_decodes_as_the_full_json_decoder_does(data: object) -> None:
    """JsonCodec.decode's fast path (the C scanner called straight) against the full decoder of
    the UTF-8 text: the same value, or the same error."""
    def outcome(decode: object) -> object:
        try:
            return ('value', decode(data))  # type: ignore[operator]
        except Exception as error:
            return ('error', type(error), str(error))

    full = outcome(lambda data: json.JSONDecoder().decode(bytes(data).decode('utf-8')))
    assert outcome(protocol.JsonCodec().decode) == full
