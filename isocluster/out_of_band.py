"""An encoded message in parts that make its body when written one after the other, so a
large payload is never joined into one buffer to be sent (see pickle_buffers). Kept apart
from pickle_buffers: the transports check for it without importing pickle."""

from __future__ import annotations

import io
import struct
from typing import Any


class OutOfBand:
    """An encoded message as parts (a head with the pickle stream, then the buffers) that make
    its body when written one after the other. `bytes()` joins them, for transports that do
    not gather writes."""

    __slots__ = ('parts', 'size')

    def __init__(self, parts: list[Any], size: int) -> None:
        self.parts = parts
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return b''.join(self.parts)

    def __radd__(self, head: bytes) -> bytes:  # protocol.encode_frame: header + body
        return b''.join([head, *self.parts])

    def __repr__(self) -> str:
        return f'<OutOfBand {self.size} bytes, {len(self.parts) - 1} buffers>'


def reads_buffers(codec: Any) -> bool:
    """Whether `codec.decode` takes any buffer (a bytearray a large frame was read into), so
    the receiving link need not copy it to bytes first. Only the built-in pickle codec says so:
    a custom codec may expect bytes."""
    return getattr(codec, 'reads_buffers', False) is True


def decode_parts(decode: Any) -> tuple[Any, Any]:
    """`(first, rest)` of a codec's `decode` for a receiver on its hot path: `first(data)`
    decodes the common body in one call (the pickle codec's: `pickle.loads` itself, no
    wrapper) or raises, and then `rest(data, error)` decodes what it could not (an out-of-band
    body) or raises. `decode(data)` is `first(data)`, else `rest(data, error)`. A decode with
    no such parts: `(decode, None)`, and its error is the codec's."""
    return getattr(decode, 'parts', (decode, None))


# The out-of-band body's layout (pickle_buffers writes it; this reads only its lengths): 2
# bytes of magic, the number of buffers n (4 bytes), the stream's length and each buffer's (8
# bytes each), the stream, then the buffers.
_MAGIC = b'\x80\xfe'
_COUNT = struct.Struct('>I')
_LENGTH = struct.Struct('>Q')
# More buffers than this in one body: read as one buffer (the head must be in the first read).
_MAX_PARTS = 64


def tail_size(first: Any, body_size: int, minimum: int) -> int:
    """The size of an out-of-band body's last buffer, when `first` (the body's first bytes
    received) holds the whole head, the head accounts for exactly `body_size` bytes and that
    buffer is at least `minimum` bytes: the receiver can then read it into memory of its own
    (`SplitBody`), which the message's `bytes` takes over without a copy. Else 0."""
    if len(first) < 6 or first[:2] != _MAGIC:
        return 0
    (count,) = _COUNT.unpack_from(first, 2)
    head = 6 + (count + 1) * _LENGTH.size
    if count < 1 or count > _MAX_PARTS or len(first) < head:
        return 0
    lengths = [_LENGTH.unpack_from(first, 6 + i * _LENGTH.size)[0] for i in range(count + 1)]
    if head + sum(lengths) != body_size or lengths[-1] < minimum:
        return 0
    return lengths[-1]


class SplitBody:
    """An out-of-band body as a link read it: `head`, a bytearray with everything but the last
    buffer, and `tail`, that buffer read into memory of its own: a `bytes` (read whole at
    once), or an `io.BytesIO` (read in pieces) whose `getvalue()` is that memory. Either way
    a `bytes` payload is that memory, not a copy (see pickle_buffers.loads)."""

    __slots__ = ('head', 'tail', 'size')

    def __init__(self, head: bytearray, tail: 'bytes | io.BytesIO', size: int) -> None:
        self.head = head
        self.tail = tail
        self.size = size  # the whole body's

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:  # for a reader that wants the body whole (one copy)
        tail = self.tail
        return b''.join([self.head, tail if type(tail) is bytes else tail.getbuffer()])

    def __repr__(self) -> str:
        return f'<SplitBody {len(self)} bytes>'
