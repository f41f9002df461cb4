"""Codecs: how a user message becomes bytes and back, and the errors that say why it could
not. Pure functions and small classes, no I/O; `protocol` frames what they produce."""

from __future__ import annotations

import json
import json.encoder
from typing import Any, Protocol, runtime_checkable

from .errors import DecodeError, EncodeError

try:
    from _json import make_encoder as _c_make_encoder
except ImportError:  # pragma: no cover - not CPython
    _c_make_encoder = None


@runtime_checkable
class Codec(Protocol):
    """Turns user messages into bytes and back. `name` travels to exec-mode workers."""

    name: str

    def encode(self, message: Any) -> bytes: ...

    def decode(self, data: bytes) -> Any: ...


class JsonCodec:
    """Data only (the default): a compromised worker cannot run code in the primary."""

    name = 'json'

    def __init__(self) -> None:
        # The C encoder and scanner, built once: json.dumps/loads rebuild or re-check them on
        # every call, which is most of the cost of a small message.
        self._encoder = json.JSONEncoder(separators=(',', ':'), ensure_ascii=False, allow_nan=True)
        self._iterencode = _c_make_encoder(
            None, self._encoder.default, json.encoder.encode_basestring, None, ':', ',', False, False, True,
        ) if _c_make_encoder is not None else None
        self._decoder = json.JSONDecoder()
        self._scan_once = self._decoder.scan_once
        self.decode = _json_decode(self._scan_once, self._decoder)  # type: ignore[method-assign]

    def encode(self, message: Any) -> bytes:
        if self._iterencode is None:  # pragma: no cover - CPython always has _json
            return self._encoder.encode(message).encode('utf-8')
        return ''.join(self._iterencode(message, 0)).encode('utf-8')

    def decode(self, data: bytes) -> Any:  # replaced per instance by _json_decode's closure
        raise NotImplementedError


def _json_decode(scan_once: Any, decoder: json.JSONDecoder) -> Any:
    """JsonCodec's decode: a function of its own, not a method reading the scanner from its
    instance, and bytes.decode() without arguments (~100 ns of ~800 a small message)."""
    def decode(data: bytes) -> Any:
        try:
            text = data.decode()  # bytes or bytearray: UTF-8, strict
        except AttributeError:  # any other buffer
            text = bytes(data).decode()
        try:
            value, end = scan_once(text, 0)
        except StopIteration:
            end = -1
        if end != len(text):  # whitespace or trailing data: let the full decoder judge it
            return decoder.decode(text)
        return value

    return decode


class PickleCodec:
    """Any picklable object. Only for workers you trust: unpickling runs code."""

    name = 'pickle'
    reads_buffers = True  # decode() takes a bytearray: see out_of_band.reads_buffers

    def __init__(self) -> None:
        # Imported here: a worker that never uses pickle does not pay its import at start-up.
        from . import pickle_buffers  # large buffers travel beside the stream, uncopied

        self.encode = pickle_buffers.dumps  # type: ignore[method-assign]
        self.decode = pickle_buffers.loads  # type: ignore[method-assign]

    def encode(self, message: Any) -> bytes:  # replaced per instance by pickle_buffers.dumps
        raise NotImplementedError

    def decode(self, data: bytes) -> Any:  # replaced per instance by pickle_buffers.loads
        raise NotImplementedError


class MsgpackCodec:
    """Compact and fast; needs the optional `msgpack` package (`isocluster[msgpack]`)."""

    name = 'msgpack'

    def __init__(self) -> None:
        try:
            import msgpack
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ValueError(
                "codec='msgpack' needs the msgpack package: pip install 'isocluster[msgpack]'"
            ) from exc
        self._packb = msgpack.packb
        self._unpackb = msgpack.unpackb

    def encode(self, message: Any) -> bytes:
        return self._packb(message, use_bin_type=True)

    def decode(self, data: bytes) -> Any:
        return self._unpackb(data, raw=False)


class OrjsonCodec:
    """JSON (data only, like the default) through the optional `orjson` package: about twice
    as fast. Differences from 'json': non-str dict keys and NaN are rejected on encode."""

    name = 'orjson'

    def __init__(self) -> None:
        try:
            import orjson
        except ImportError as exc:
            raise ValueError("codec='orjson' needs the orjson package: pip install 'isocluster[orjson]'") from exc
        self.encode = orjson.dumps  # type: ignore[method-assign]
        self.decode = orjson.loads  # type: ignore[method-assign]

    def encode(self, message: Any) -> bytes:  # replaced per instance by orjson.dumps
        raise NotImplementedError

    def decode(self, data: bytes) -> Any:  # replaced per instance by orjson.loads
        raise NotImplementedError


_CODECS = {'json': JsonCodec, 'pickle': PickleCodec, 'msgpack': MsgpackCodec, 'orjson': OrjsonCodec}


def get_codec(codec: 'str | Codec') -> Codec:
    """Resolve the `codec` option; raises ValueError/TypeError naming it."""
    if isinstance(codec, str):
        try:
            factory = _CODECS[codec]
        except KeyError:
            raise ValueError(
                f"codec: unknown codec {codec!r}; use one of {sorted(_CODECS)} or a codec object"
            ) from None
        return factory()
    if isinstance(codec, Codec) and isinstance(getattr(codec, 'name', None), str):
        return codec
    raise TypeError(
        f'codec: expected a codec name or an object with name, encode() and decode(), got {codec!r}'
    )


def decode_message(codec: Codec, data: bytes, worker_id: int | None = None) -> Any:
    """Decode a user message, turning any codec failure into DecodeError."""
    try:
        return codec.decode(data)
    except Exception as exc:
        raise decode_error(codec, exc, worker_id) from exc


def decode_error(codec: Codec, exc: Exception, worker_id: int | None = None) -> DecodeError:
    concerned = f'worker {worker_id}: ' if worker_id is not None else ''
    error = DecodeError(f'{concerned}could not decode a message with the {codec.name!r} codec: {exc!r}', worker_id=worker_id)
    error.__cause__ = exc
    return error


def encode_message(codec: Codec, message: Any, max_frame_size: int, worker_id: int | None = None,
                   overhead: int = 0) -> bytes:
    """Encode a user message once, or raise EncodeError (codec failure or frame too large).
    `overhead`: what its frame adds besides the kind byte (REQUEST_OVERHEAD, REPLY_OVERHEAD)."""
    try:
        data = codec.encode(message)
    except Exception as exc:
        raise encode_failure(codec, exc, worker_id) from exc
    if len(data) + 1 + overhead > max_frame_size:
        raise oversized(len(data), max_frame_size, worker_id, overhead)
    return data


def encode_failure(codec: Codec, exc: Exception, worker_id: int | None = None) -> EncodeError:
    """The EncodeError of a codec that raised `exc` (for a sender that calls the codec itself)."""
    error = EncodeError(
        f'could not encode the message with the {codec.name!r} codec: {exc!r}; nothing was sent',
        worker_id=worker_id,
    )
    error.__cause__ = exc
    return error


def oversized(size: int, max_frame_size: int, worker_id: int | None = None, overhead: int = 0) -> EncodeError:
    """The EncodeError of an encoded message of `size` bytes too large for one frame."""
    return EncodeError(
        f'the encoded message is {size} bytes, over the maximum frame size of {max_frame_size} '
        f'bytes{" with its request header" if overhead else ""}; nothing was sent', worker_id=worker_id,
    )
