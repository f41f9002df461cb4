"""Reading a large pickle message so that its payload is the memory the socket was read into.

A read into the link's buffer takes whatever is queued: the head of a 1 MB frame and the first
256 KiB of its payload, which then have to be copied into the memory the payload ends in, and
that memory zero-filled first (io.BytesIO has no uninitialised growth). After a large frame
with an out-of-band tail (`FrameDecoder.split_next`), the link looks at the next frame's head
first (MSG_PEEK): when it is another such frame and the whole frame is queued (FIONREAD), it
reads the bytes before the tail, then the tail with one `recv` of its size, whose `bytes` is
the payload the application gets, with no copy in user space. When the frame is still
arriving, the tail is read in place into memory of its own as it comes (`read_split`), still
without the copy of a first read: what is queued of it is read at once, until the socket is
empty, rather than one loop pass later (the sender's one sendmsg wakes this side at its first
bytes, and the rest keeps coming while the head is read). Any other frame, or any doubt, is
read as usual.
"""

from __future__ import annotations

import array
import fcntl
import socket
import termios
from typing import Any

from ... import protocol

# Enough for the frame header, an out-of-band head of up to 64 buffers and a small pickle stream.
PEEK_SIZE = 4096


def queued(sock: socket.socket) -> int:
    """Bytes waiting in the socket's receive queue."""
    count = array.array('i', [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, count)
    return count[0]


def read_split(sock: socket.socket, decoder: protocol.FrameDecoder, scratch: Any) -> list[protocol.Frame] | None:
    """The frames of one read as `decoder.split_read` / `read_split` see it, or None: nothing
    was read, and the link reads as usual (an EOF, an error and EAGAIN are met there)."""
    try:
        peeked = sock.recv_into(scratch, min(PEEK_SIZE, len(scratch)), socket.MSG_PEEK)
        prefix, tail = decoder.split_read(memoryview(scratch)[:peeked])
        whole = bool(tail) and queued(sock) >= prefix + tail
    except OSError:
        return None
    if not tail:
        return None
    head = bytearray(prefix)
    try:
        count = sock.recv_into(head)  # peeked, so queued: all of it
    except OSError:
        return None
    if count < prefix:  # pragma: no cover - a stream socket returns what was peeked
        return decoder.feed(memoryview(head)[:count])
    piece = b''
    if whole:
        try:
            piece = sock.recv(tail)  # the payload's own bytes: nothing copies them again
        except OSError:
            pass  # the rest is read, or the fault met, as a large frame's body is
    frames = decoder.read_split(head, piece, tail)
    # The sender is still writing the tail (its sendmsg wakes this side at its first bytes):
    # what has arrived since is read now, into the tail, not after another loop pass.
    while not frames:
        target = decoder.gather_target()
        if target is None:  # pragma: no cover - read_split left the tail to gather
            break
        try:
            count = sock.recv_into(target)
        except OSError:
            break  # EAGAIN: the rest comes with the next readability; a fault is met there
        if not count:
            break  # EOF: the link's next read meets it, with the frame left unfinished
        frames = decoder.gathered(count)
    return frames
