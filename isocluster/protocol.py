"""Frames and length-prefixed framing: pure functions, no I/O (the codecs: `message_codecs`).

A frame is `(kind, payload)`. User messages travel as kind `'message'` with the codec's
bytes as payload; `'request'` carries `(request_id, bytes)` and `'reply'` carries
`(request_id, ok, bytes)` (the codec's bytes when ok, else a JSON error description).
A chunk of a map is one `'request_batch'` `(request_id, bytes)`: the codec's bytes of the
list of its messages; the worker answers it with one `'reply_batch'` `(request_id, bytes)`:
the codec's bytes of `[results, failures]` (see `request_gate.py`). Both are laid out as a REQUEST.
Every other kind is a control frame whose payload is a small dict of plain data (or
None), always encoded with the standard `json` module whatever the user codec is, so no
user message can ever be read as a control frame.

On the wire a frame is a 4-byte big-endian length `n`, then `n` bytes: one kind byte and
the body.
"""

from __future__ import annotations

import io
import json
import struct
import sys
from typing import Any

from .errors import ProtocolError
from .out_of_band import SplitBody, tail_size
# The codecs and what turns a user message into a frame's bytes and back live there; they
# are part of this module's interface (protocol.get_codec, protocol.encode_message, ...).
from .message_codecs import (  # noqa: F401
    Codec, JsonCodec, MsgpackCodec, OrjsonCodec, PickleCodec, decode_error, decode_message, encode_failure, encode_message,
    get_codec, oversized,
)

MESSAGE = 'message'
ONLINE = 'online'
READY = 'ready'
EXITING = 'exiting'
LISTEN = 'listen'
LISTENING = 'listening'
DISCONNECT = 'disconnect'
HEARTBEAT = 'heartbeat'
HEARTBEAT_ACK = 'heartbeat_ack'
REQUEST = 'request'
REPLY = 'reply'
REQUEST_BATCH = 'request_batch'
REPLY_BATCH = 'reply_batch'

KINDS: tuple[str, ...] = (
    MESSAGE, ONLINE, READY, EXITING, LISTEN, LISTENING, DISCONNECT, HEARTBEAT, HEARTBEAT_ACK,
    REQUEST, REPLY, REQUEST_BATCH, REPLY_BATCH,
)
_KIND_CODE = {kind: code for code, kind in enumerate(KINDS)}
_MESSAGE_CODE = _KIND_CODE[MESSAGE]
assert _MESSAGE_CODE == 0  # FrameDecoder.feed's run of MESSAGE frames tests the code's truth
_REQUEST_CODE = _KIND_CODE[REQUEST]
_REPLY_CODE = _KIND_CODE[REPLY]
_ID_AND_BYTES = {REQUEST: _REQUEST_CODE, REQUEST_BATCH: _KIND_CODE[REQUEST_BATCH], REPLY_BATCH: _KIND_CODE[REPLY_BATCH]}

DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024

Frame = tuple[str, Any]

_HEADER = struct.Struct('>IB')
_LENGTH = struct.Struct('>I')
# A frame at least this large that arrives in pieces is gathered into a buffer of its exact
# size: appending its pieces to the decoder's buffer would reallocate (copy) it again and again.
_LARGE_FRAME = 64 * 1024
HEADER_SIZE = _HEADER.size
# A read up to this size is copied once to cut its messages from (FrameDecoder.feed): the
# primary's reads are 256 KiB, plus at most a partial frame under _LARGE_FRAME kept before it.
_CUT_FROM_COPY = 1024 * 1024


def message_header(body_size: int) -> bytes:
    """The header of a MESSAGE frame whose body is `body_size` bytes (what frame_parts puts
    first), for a writer that appends a stream's frames to its buffer itself."""
    return _HEADER.pack(body_size + 1, _MESSAGE_CODE)
_REQUEST_ID = struct.Struct('>Q')
_REPLY_ID = struct.Struct('>QB')
REQUEST_OVERHEAD = _REQUEST_ID.size  # a REQUEST frame's request id, besides the kind byte
REPLY_OVERHEAD = _REPLY_ID.size  # a REPLY frame's request id and ok flag
_REQUEST_HEADER = struct.Struct('>IBQ')
_REPLY_HEADER = struct.Struct('>IBQB')


def encode_control(payload: Any) -> bytes:
    return b'' if payload is None else json.dumps(payload, separators=(',', ':')).encode('utf-8')


# A control body is a small dict of plain data: more brackets than this (counted anywhere,
# strings included) is refused before parsing, so a hostile one never recurses to the limit.
_CONTROL_BRACKETS = 64


def decode_control(body: bytes | memoryview, kind: str = '') -> Any:
    if not body:
        return None
    body = bytes(body)
    if body.count(b'[') + body.count(b'{') > _CONTROL_BRACKETS:
        raise ProtocolError(f'control frame body{_of(kind)} nested too deeply (over {_CONTROL_BRACKETS} brackets)')
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ProtocolError(f'malformed control frame body{_of(kind)}: {exc}') from exc
    except RecursionError:  # CPython's scanner guards its recursion: hostile nesting ends here
        raise ProtocolError(f'control frame body{_of(kind)} nested too deeply') from None


def _of(kind: str) -> str:
    return f' of a {kind.upper()} frame' if kind else ''


def encode_body(kind: str, payload: Any) -> bytes:
    """A frame's body: what follows its length and kind byte (see `frame_parts`)."""
    header, body = frame_parts(kind, payload)
    return header[HEADER_SIZE:] + body


def decode_body(kind: str, body: bytes) -> Any:
    if kind == MESSAGE:
        return body
    if kind in _ID_AND_BYTES:
        if len(body) < _REQUEST_ID.size:
            raise ProtocolError(f'truncated {kind.upper()} frame')
        return (_REQUEST_ID.unpack_from(body)[0], body[_REQUEST_ID.size:])
    if kind == REPLY:
        if len(body) < _REPLY_ID.size:
            raise ProtocolError('truncated REPLY frame')
        request_id, ok = _REPLY_ID.unpack_from(body)
        return (request_id, bool(ok), body[_REPLY_ID.size:])
    return decode_control(body, kind)


def frame_parts(kind: str, payload: Any) -> tuple[bytes, bytes]:
    """One frame as (header, body): written one after the other they make the frame. A
    message's body is the caller's bytes, not a copy, so a large payload is never copied to
    be framed."""
    if kind == MESSAGE:
        return _HEADER.pack(len(payload) + 1, _MESSAGE_CODE), payload
    if kind in _ID_AND_BYTES:
        request_id, data = payload
        return _REQUEST_HEADER.pack(len(data) + 1 + _REQUEST_ID.size, _ID_AND_BYTES[kind], request_id), data
    if kind == REPLY:
        request_id, ok, data = payload
        return _REPLY_HEADER.pack(len(data) + 1 + _REPLY_ID.size, _REPLY_CODE, request_id, 1 if ok else 0), data
    body = encode_control(payload)
    return _HEADER.pack(len(body) + 1, _KIND_CODE[kind]), body


def encode_frame(kind: str, payload: Any) -> bytes:
    """One frame as bytes: length prefix, kind byte, body."""
    header, body = frame_parts(kind, payload)
    return header + body


def frame_size(kind: str, payload: Any) -> int:
    """What the frame's length prefix counts: the kind byte and the body."""
    header, body = frame_parts(kind, payload)
    return len(header) - 4 + len(body)


# The largest frame buffer a decoder keeps for the next large frame: one per link, idle.
SPARE_LIMIT = 64 * 1024 * 1024
# Where references are not counted (not CPython), a buffer is never known free: never reused.
_refcount = getattr(sys, 'getrefcount', lambda obj: -1)
# What `_large_buffer` hands feed(): the body's memory is chosen by `_gather` from its first
# piece (one buffer of its size, or a head and an out-of-band tail: `_choose_buffers`).
_UNCHOSEN = bytearray()
_SPLIT_LOOKS = 4  # looks at frames without a tail before a link stops looking (split_next)


def _one_frame(data: Any, limit: int) -> Frame | None:
    """`data` as the one whole message, request or reply frame it holds, else None (for
    `FrameDecoder.feed` to cut and judge). A round trip reads exactly one such frame per
    read: this skips the general loop's set-up, and copies the body once."""
    size = len(data) - 4
    if size < 1 or size > limit or _LENGTH.unpack_from(data)[0] != size:
        return None
    code = data[4]
    if code == _MESSAGE_CODE:
        return (MESSAGE, bytes(data[5:]))
    if code == _REQUEST_CODE and size > _REQUEST_ID.size:
        return (REQUEST, (_REQUEST_ID.unpack_from(data, 5)[0], bytes(data[5 + _REQUEST_ID.size:])))
    if code == _REPLY_CODE and size > _REPLY_ID.size:
        request_id, ok = _REPLY_ID.unpack_from(data, 5)
        return (REPLY, (request_id, bool(ok), bytes(data[5 + _REPLY_ID.size:])))
    return None


class FrameDecoder:
    """Feeds bytes in, takes frames out. Raises ProtocolError (and nothing else) on an
    oversized, unknown or malformed frame; after that the stream is unusable (there is no way to resynchronise a length-prefixed stream)."""

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._error: ProtocolError | None = None
        self._large: bytearray | None = None  # the body of a large frame being gathered
        self._large_code = 0
        self._large_filled = 0
        # A large MESSAGE's body is handed over as the bytearray it was read into, not copied
        # to bytes: set by the links whose codec reads any buffer (out_of_band.reads_buffers).
        self.message_buffers = False
        # feed() returns a run of MESSAGE frames as their payloads alone, not (MESSAGE,
        # payload) tuples (a tuple less a message): set by the worker's link while its receiver
        # takes them, and by the primary's for a listener that takes frames in batches. A frame
        # is then a tuple, or a MESSAGE payload alone (bytes).
        self.bare_messages = False
        self._spare: bytearray | None = None  # the last large frame's buffer, for the next one
        self._large_size = 0  # the large frame's body: `_large` and, when split, `_tail` after it
        self._tail: io.BytesIO | None = None  # an out-of-band body's last buffer (SplitBody)
        self._tail_view: memoryview | None = None  # the tail's writable view, while it is read into
        self._target: memoryview | None = None  # the last gather_target(), released once read into
        # While positive, a link looks at the next frame's head before reading it (split_read),
        # so that a large frame's out-of-band tail is read into its own bytes: set by such a
        # frame, counted down by each other frame found there (a small one between two large
        # ones keeps it; a stream of small ones pays a few looks, then none).
        self.split_next = 0

    @property
    def error(self) -> ProtocolError | None:
        """The fault that ended the stream, once one was found."""
        return self._error

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        if self._large is not None:
            return len(self._buffer) + 5 + self._large_filled
        return len(self._buffer)

    def discard(self) -> None:
        """Drop the partial frame held and end the stream (its sender is being cut off)."""
        if self._error is None:
            self._error = ProtocolError('the stream was abandoned')
        self._buffer = bytearray()
        self._large = self._tail = self._tail_view = self._target = None

    def whole_frame(self, data: bytes | bytearray | memoryview) -> Frame | None:
        """The one message, request or reply frame `data` is exactly, when nothing came before
        it unfinished (a round trip's read); else None, and `data` is for `feed`. Nothing is
        kept: after it the decoder is as idle as before."""
        if self._buffer or self._large is not None or self._error is not None:
            return None
        return _one_frame(data, self.max_frame_size)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Any]:
        """The whole frames received so far (with `bare_messages`, a MESSAGE frame may be its
        payload alone). A fault raises ProtocolError, but only after the good frames before
        it were returned: it is raised by the next call."""
        if self._error is not None:
            raise self._error
        if not self._buffer and self._large is None:
            frame = _one_frame(data, self.max_frame_size)
            if frame is not None:
                return [frame]
        frames: list[Any] = []
        if self._large is not None:
            used = self._gather(data, frames)
            if used == len(data):
                return frames
            data = memoryview(data)[used:]
        buffer = self._buffer
        # Frames are cut straight out of `data` (one copy each); only a partial frame at the
        # end is kept, so a large read is never copied whole into the buffer first.
        if buffer:
            buffer += data
            view = memoryview(buffer)
        else:
            view = memoryview(data)
        append = frames.append
        unpack_length = _LENGTH.unpack_from
        limit = self.max_frame_size
        kinds = KINDS
        offset = 0
        end = len(view)
        kind = None
        # A read of many small frames is copied to bytes once and each message cut from that
        # copy: a bytes slice is one allocation, where bytes(view[a:b]) builds a memoryview
        # first (most of the cost of cutting a small frame).
        cut = bytes(view) if end <= _CUT_FROM_COPY else None
        unpack_header = _HEADER.unpack_from
        bare = self.bare_messages
        last = end - HEADER_SIZE  # where the last header that fits in the read begins
        try:
            while end - offset >= 4:
                if cut is not None:
                    # A run of whole MESSAGE frames, each cut with one unpack of its length and
                    # kind (MESSAGE is code 0) and one slice. Anything else (another kind, a
                    # bad length, a frame not whole) leaves the run to be judged below.
                    if bare:  # the same loop, each payload alone (bare_messages)
                        while offset <= last:
                            length, code = unpack_header(cut, offset)
                            following = offset + 4 + length
                            if code or following > end or length > limit or not length:
                                break
                            append(cut[offset + HEADER_SIZE:following])
                            offset = following
                    else:
                        while offset <= last:
                            length, code = unpack_header(cut, offset)
                            following = offset + 4 + length
                            if code or following > end or length > limit or not length:
                                break
                            append((MESSAGE, cut[offset + HEADER_SIZE:following]))
                            offset = following
                    if end - offset < 4:
                        break
                (length,) = unpack_length(view, offset)
                # The size counts the kind byte and the body, as encode_message does.
                if length == 0 or length > limit:
                    raise ProtocolError(
                        f'frame of {length} bytes exceeds the maximum frame size of '
                        f'{limit} bytes' if length else 'empty frame (no kind byte)'
                    )
                start = offset + 4
                offset = start + length
                if offset > end:
                    if length > _LARGE_FRAME and end > start:
                        code = view[start]
                        if code >= len(kinds):
                            raise ProtocolError(f'unknown frame kind code {code}')
                        self._large = self._large_buffer(length - 1)
                        self._large_code = code
                        self._large_filled = 0
                        self._gather(view[start + 1:end], frames)
                        offset = end
                    else:
                        offset = start - 4
                    break
                code = view[start]
                if code == _MESSAGE_CODE:  # by far the commonest
                    append((MESSAGE, cut[start + 1:offset] if cut is not None else bytes(view[start + 1:offset])))
                    continue
                kind = None
                if code >= len(kinds):
                    raise ProtocolError(f'unknown frame kind code {code}')
                kind = kinds[code]
                append((kind, decode_body(kind, bytes(view[start + 1:offset]))))
        except Exception as failure:
            # Whatever the bytes make fail (RecursionError, MemoryError, ...) ends the stream
            # as a fault of its sender; the buffer is released, so the decoder is never jammed.
            if isinstance(failure, ProtocolError):
                error = failure
            else:
                error = ProtocolError(f'could not read {"a " + kind.upper() if kind else "a"} frame: {failure!r}')
            error.frame_kind = kind
            view.release()
            self._error = error
            buffer.clear()
            if not frames:
                raise error from None
            return frames
        if buffer:
            view.release()
            if offset:
                del buffer[:offset]
        elif offset < end:
            buffer += view[offset:]
            view.release()
        else:
            view.release()
        return frames

    def gather_target(self) -> memoryview | None:
        """Where the rest of a large frame can be read straight into (`recv_into`), skipping
        the read buffer; None when no large frame is being gathered. An out-of-band body's
        last buffer is read into memory of its own (see `_choose_buffers`)."""
        large = self._large
        if large is None or large is _UNCHOSEN:
            return None
        filled = self._large_filled
        head = len(large)
        tail = self._tail_view
        if filled < head or tail is None:
            target = memoryview(large)[filled:]
        else:
            target = tail[filled - head:]
        self._target = target
        return target

    def gathered(self, count: int) -> list[Frame]:
        """`count` bytes were read into `gather_target()`: the large frame, once it is whole."""
        large = self._large
        assert large is not None
        self._large_filled += count
        if self._large_filled < self._large_size:
            return []
        self._large = None
        return [self._large_frame(large)]

    def split_read(self, peeked: Any) -> tuple[int, int]:
        """`(prefix, tail)` when nothing is pending and `peeked`, the next bytes of the stream
        (looked at, not read), begin a MESSAGE frame whose body is a pickle out-of-band body
        with a tail (out_of_band.tail_size), and hold its `prefix` bytes before that tail:
        the link can then read the prefix, and the tail into a `bytes` of its own, for
        `read_split`. Else `(0, 0)`, and the link reads as usual."""
        if self._buffer or self._large is not None or self._error is not None or not self.message_buffers \
                or len(peeked) < 6 or peeked[4] != _MESSAGE_CODE:
            self.split_next = max(self.split_next - 1, 0)
            return 0, 0
        (length,) = _LENGTH.unpack_from(peeked)
        tail = 0
        if _LARGE_FRAME < length <= self.max_frame_size:
            tail = tail_size(peeked[5:], length - 1, _LARGE_FRAME)
        if not tail or 4 + length - tail > len(peeked):
            self.split_next = max(self.split_next - 1, 0)
            return 0, 0
        return 4 + length - tail, tail

    def read_split(self, prefix: bytearray, piece: bytes, tail: int) -> list[Frame]:
        """The frame `split_read` announced: its `prefix` was read, and `piece`, the first
        bytes of its `tail`. A whole tail is the frame at once; else the rest of it is
        gathered (`gather_target`) into memory of its own, after `piece`."""
        head = prefix[HEADER_SIZE:]
        size = len(head) + tail
        self.split_next = _SPLIT_LOOKS
        if len(piece) == tail:
            return [(MESSAGE, SplitBody(head, piece, size))]
        stream = io.BytesIO()
        stream.write(piece)
        stream.seek(tail - 1)
        stream.write(b'\0')  # sized once (zero-filled): read into in place, never regrown
        self._large_code = _MESSAGE_CODE
        self._large_size = size
        self._large_filled = len(head) + len(piece)
        self._tail = stream
        self._tail_view = stream.getbuffer()
        self._large = head
        return []

    def _large_buffer(self, size: int) -> bytearray:
        """Called by feed() when a large frame of `size` bytes of body begins: its memory is
        chosen by the first `_gather`, which sees the body's first bytes."""
        self._large_size = size
        self._tail = self._tail_view = None
        return _UNCHOSEN

    def _choose_buffers(self, first: Any) -> bytearray:
        """The memory for the large frame's body, from `first`, its first bytes received. A
        pickle out-of-band body (out_of_band.tail_size) gets its last buffer read into an
        `io.BytesIO` of that buffer's exact size: `getvalue()` then hands that memory over as
        the `bytes` the message holds, where a view of one body buffer had to be copied (1 MB:
        ~25 us, after the last byte arrived). The rest of the body goes to a bytearray."""
        size = self._large_size
        tail = 0
        if self._large_code == _MESSAGE_CODE and self.message_buffers:
            tail = tail_size(first, size, _LARGE_FRAME)
        if not tail:
            return self._full_buffer(size)
        stream = io.BytesIO()
        stream.seek(tail - 1)
        stream.write(b'\0')  # sized once (zero-filled): read into in place, never regrown
        self._tail = stream
        self._tail_view = stream.getbuffer()
        return bytearray(size - tail)

    def _full_buffer(self, size: int) -> bytearray:
        """A buffer for a large frame's body: the previous large frame's when nothing kept it
        (no message, view or backlog refers to it) and it is big enough, else a new one. A new
        bytearray is zero-filled, and its pages are fresh: that, not the socket, was most of
        the time a large frame took to arrive."""
        spare, self._spare = self._spare, None
        # 2: `spare` and getrefcount's own argument. A view of it (a memoryview the pickle
        # codec handed to the application) holds a reference too, so it is never written over.
        if spare is not None and size <= len(spare) < 2 * size and _refcount(spare) == 2:
            del spare[size:]  # in place: shrinking by less than half never reallocates
            return spare
        del spare
        return bytearray(size)

    def _large_frame(self, body_buffer: bytearray) -> Frame:
        kind = KINDS[self._large_code]
        target, self._target = self._target, None
        if target is not None:
            target.release()  # the link's view into the tail: getvalue() copies while one exists
        tail = self._tail
        if tail is not None:
            view, self._tail, self._tail_view = self._tail_view, None, None
            assert view is not None
            view.release()
            self.split_next = _SPLIT_LOOKS
            return (kind, SplitBody(body_buffer, tail, self._large_size))
        if len(body_buffer) <= SPARE_LIMIT:
            self._spare = body_buffer
        if kind == MESSAGE and self.message_buffers:
            return (kind, body_buffer)
        body = bytes(body_buffer)
        if kind == MESSAGE:
            return (kind, body)
        try:
            return (kind, decode_body(kind, body))
        except Exception as failure:  # the stream ends as its sender's fault, as in feed()
            error = failure if isinstance(failure, ProtocolError) else ProtocolError(
                f'could not read a {kind.upper()} frame: {failure!r}')
            error.frame_kind = kind
            self._error = error
            raise error from None

    def _gather(self, data: Any, frames: list[Frame]) -> int:
        """Copy the next piece of the large frame in, and append the frame to `frames` once
        it is whole; returns how many bytes of `data` it took."""
        large = self._large
        assert large is not None
        if large is _UNCHOSEN:
            large = self._large = self._choose_buffers(data)
        filled = self._large_filled
        size = self._large_size
        count = min(size - filled, len(data))
        piece = data[:count] if count < len(data) else data
        head = len(large)
        if filled < head:
            into_head = min(head - filled, count)
            large[filled:filled + into_head] = piece[:into_head] if into_head < count else piece
        if filled + count > head:
            tail = self._tail_view
            assert tail is not None
            skip = max(head - filled, 0)
            tail[filled + skip - head:filled + count - head] = piece[skip:] if skip else piece
        self._large_filled = filled + count
        if self._large_filled == size:
            self._large = None
            frames.append(self._large_frame(large))
        return count
