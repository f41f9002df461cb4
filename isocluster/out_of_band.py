"""An encoded message in parts that make its body when written one after the other, so a
large payload is never joined into one buffer to be sent (see pickle_buffers). Kept apart
from pickle_buffers: the transports check for it without importing pickle."""

from __future__ import annotations

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
