"""The pickle codec's large buffers travel beside the pickle stream, not inside it.

`pickle.dumps` copies every `bytes` it meets into its stream, and `pickle.loads` copies it out
again: a 60 MB payload cost two copies and 120 MB of fresh pages before this module. Here a
`bytes`, `bytearray` or (1-D, unsigned-byte, contiguous) `memoryview` of at least
MIN_OUT_OF_BAND bytes found at the top of a message or among its first-level values makes
the whole message pickled with a `persistent_id` that sets every such buffer (at any depth)
aside: the encoded message is then an `OutOfBand`, a list of parts the process transport
writes with one `sendmsg` without joining them. A `bytes` (or a view of one) is sent from the
caller's object; a `bytearray` (or a view of one) is copied once at send(), which returns
before the link writes it. The receiver unpickles from views of the one buffer the frame was
read into: a `memoryview` comes back as a view of it (no copy), a `bytes` or `bytearray` as
one copy (they must own their memory). Except the body's last buffer, which a process link
reads into memory of its own (`out_of_band.SplitBody`): a `bytes` there is that memory, with
no copy (the payload of a large message is usually its last buffer).

Why not protocol 5's `buffer_callback`: it only sees `PickleBuffer`s, and `bytes` is pickled
in-band before any hook but `persistent_id` is consulted. Why only messages with such a
buffer near the top: `persistent_id` is a Python call per pickled object, which would double
the cost of every small message.

Layout of an out-of-band body: MAGIC, the number of buffers n (4 bytes), the stream's length
and each buffer's (8 bytes each), the pickle stream, then the buffers.
"""

from __future__ import annotations

import io
import pickle
import struct
from typing import Any

from .out_of_band import OutOfBand, SplitBody

# No pickle stream starts with PROTO 254 (every unpickler refuses it): an in-band stream and
# an out-of-band body cannot be confused.
MAGIC = b'\x80\xfe'
MIN_OUT_OF_BAND = 64 * 1024
_COUNT = struct.Struct('>I')
_LENGTH = struct.Struct('>Q')
_PROTOCOL = pickle.HIGHEST_PROTOCOL
_dumps = pickle.dumps
_loads = pickle.loads
_BYTES, _BYTEARRAY, _VIEW = 0, 1, 2
_BUFFER_TYPES = frozenset({bytes, bytearray, memoryview})
_BytesIO = io.BytesIO


def _buffer_kind(value: Any) -> int | None:
    kind = type(value)
    if kind is bytes:
        return _BYTES if len(value) >= MIN_OUT_OF_BAND else None
    if kind is bytearray:
        return _BYTEARRAY if len(value) >= MIN_OUT_OF_BAND else None
    if kind is memoryview and value.nbytes >= MIN_OUT_OF_BAND and value.ndim == 1 and value.format == 'B' \
            and value.c_contiguous:
        return _VIEW
    return None


def _has_large_buffer(message: Any) -> bool:
    kind = type(message)
    if kind is dict:
        values: Any = message.values()
    elif kind is list or kind is tuple:
        values = message
    else:
        return _buffer_kind(message) is not None
    # In C: a small message pays ~0.1-0.2 us here, not a Python loop over its values.
    if _BUFFER_TYPES.isdisjoint(map(type, values)):
        return False
    return any(_buffer_kind(value) is not None for value in values)


class _Pickler(pickle.Pickler):
    def __init__(self, file: Any, buffers: list[Any]) -> None:
        super().__init__(file, protocol=_PROTOCOL)
        self._buffers = buffers

    def persistent_id(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is bytes or kind is bytearray or kind is memoryview:
            buffer_kind = _buffer_kind(obj)
            if buffer_kind is not None:
                # send() returns before the link writes the buffer: one the caller may still
                # change (a bytearray, a view of one) is copied now; bytes never are.
                immutable = kind is bytes or (kind is memoryview and type(obj.obj) is bytes)
                self._buffers.append(obj if immutable else bytes(obj))
                return (buffer_kind, len(self._buffers) - 1)
        return None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: Any, buffers: list[memoryview]) -> None:
        super().__init__(file)
        self._buffers = buffers

    def persistent_load(self, pid: Any) -> Any:
        buffer_kind, index = pid
        view = self._buffers[index]
        kind = type(view)
        if kind is not memoryview:  # a body's last buffer, read into memory of its own (SplitBody)
            if buffer_kind == _BYTES:
                return view if kind is bytes else view.getvalue()  # that memory is the bytes: no copy
            if kind is bytes:  # a bytearray copies it, and so does a (writable) memoryview
                return bytearray(view) if buffer_kind == _BYTEARRAY else memoryview(bytearray(view))
            view = view.getbuffer()  # a bytearray copies it; a memoryview is a view of it
        if buffer_kind == _BYTES:
            return bytes(view)
        if buffer_kind == _BYTEARRAY:
            return bytearray(view)
        return view


class _Sink:
    """The file of a kept pickler: what it wrote, one chunk per write."""

    __slots__ = ('write', 'chunks')

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.write = self.chunks.append


# Why a kept pickler: looking for large buffers before pickling (a map over the message's
# values) cost a small message ~0.3 us, most of what pickling it costs. This one finds them
# while it pickles: C pickle writes every bytes-like of FRAME_SIZE_TARGET (64 KiB, =
# MIN_OUT_OF_BAND) or more with a write of its own, a `bytes` or `bytearray` as the object
# itself (no copy), so a message written in one chunk holds none. Same protocol and dispatch table as
# pickle.dumps: the same stream. Kept in a list so that taking it is atomic: another thread,
# or a __reduce__ that sends, finds the list empty and looks first, as before.
_idle: list[tuple[pickle.Pickler, list[bytes]]] = []
# A pickler's buffer grows to its largest message and is allocated at that size for every
# later one: one that wrote more than its initial 4 KiB (WRITE_BUF_SIZE) is not kept.
_KEEP_UP_TO = 4096


def _new_pickler() -> tuple[pickle.Pickler, list[bytes]]:
    sink = _Sink()
    return pickle.Pickler(sink, protocol=_PROTOCOL), sink.chunks


_idle.append(_new_pickler())


def dumps(message: Any) -> 'bytes | OutOfBand':
    try:
        kept = _idle.pop()
    except IndexError:  # in use
        return _dumps_looking_first(message)
    pickler, chunks = kept
    try:
        pickler.dump(message)
    except BaseException as exc:
        _idle.append(_new_pickler())  # whatever it holds of the message goes with it
        if type(exc) is TypeError and _has_large_buffer(message):  # a memoryview pickles only out of band
            return _out_of_band(message)
        raise
    if len(chunks) == 1:
        data = chunks.pop()
        if len(data) <= _KEEP_UP_TO:
            pickler.clear_memo()  # it keeps nothing of the message alive
            _idle.append(kept)
            return data
        _idle.append(_new_pickler())
        return data
    _idle.append(_new_pickler())
    # Something of 64 KiB or more was written on its own: a large buffer at the top goes out
    # of band (what was pickled so far is dropped: ~1.5 us a message, nothing was copied);
    # anything else goes as the stream those chunks make.
    if _has_large_buffer(message):
        return _out_of_band(message)
    return b''.join(chunks)


def _dumps_looking_first(message: Any) -> 'bytes | OutOfBand':
    if type(message) is dict and _BUFFER_TYPES.isdisjoint(map(type, message.values())):
        return _dumps(message, _PROTOCOL)  # the common small message: no Python loop, no call
    if not _has_large_buffer(message):
        return _dumps(message, _PROTOCOL)
    return _out_of_band(message)


def _out_of_band(message: Any) -> OutOfBand:
    buffers: list[Any] = []
    stream = io.BytesIO()
    _Pickler(stream, buffers).dump(message)
    pickled = stream.getvalue()  # small: the message without its large buffers
    lengths = [len(pickled)] + [buffer.nbytes if type(buffer) is memoryview else len(buffer) for buffer in buffers]
    head = MAGIC + _COUNT.pack(len(buffers)) + b''.join(_LENGTH.pack(length) for length in lengths)
    return OutOfBand([head + pickled, *buffers], len(head) + sum(lengths))


def loads(data: Any) -> Any:
    try:
        return _loads(data)  # the common case pays nothing for out-of-band bodies
    except (ValueError, TypeError) as error:
        return not_in_band(data, error)


def not_in_band(data: Any, error: Exception) -> Any:
    """What `loads` does once `pickle.loads(data)` raised `error`: an out-of-band body is
    unpickled from its parts; anything else raises `error` again. A receiver that calls
    `pickle.loads` itself (out_of_band.decode_parts) then calls this: nothing is unpickled twice."""
    if not isinstance(error, (ValueError, TypeError)):
        raise error
    tail = None
    if type(data) is SplitBody:  # a large frame as a link read it: its last buffer apart
        tail, tail_size, data = data.tail, data.size - len(data.head), data.head
    elif type(data) is OutOfBand:  # in memory (the simulated transport): as if it had crossed a socket
        data = bytes(data)
    elif data[:2] != MAGIC:
        raise error
    view = memoryview(data)
    offset = 2 + _COUNT.size
    count = _COUNT.unpack_from(view, 2)[0] if len(view) >= offset else 0
    if len(view) < offset + (count + 1) * _LENGTH.size:  # a head it cannot hold: a hostile peer's
        raise ValueError(f'an out-of-band pickle body of {len(view)} bytes too short for the head it announces')
    lengths = [_LENGTH.unpack_from(view, offset + i * _LENGTH.size)[0] for i in range(count + 1)]
    offset += (count + 1) * _LENGTH.size
    if tail is not None:
        if count < 1 or lengths[-1] != tail_size:
            raise ValueError(f'an out-of-band pickle body whose last buffer is not the {tail_size} bytes read apart')
        lengths.pop()  # the parts below are the head's; the tail comes last
    if offset + sum(lengths) != len(view):
        raise ValueError(f'an out-of-band pickle body of {len(view)} bytes whose parts add up to {offset + sum(lengths)}')
    parts: list[Any] = []
    for length in lengths:
        parts.append(view[offset:offset + length])
        offset += length
    if tail is not None:
        parts.append(tail)
    return _Unpickler(io.BytesIO(parts[0]), parts[1:]).load()


# The common case in one C call, for a receiver that takes it (out_of_band.decode_parts).
loads.parts = (_loads, not_in_band)  # type: ignore[attr-defined]
