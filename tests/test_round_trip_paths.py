"""The round trip's direct paths of the process transport (issue 14): the primary's first
MESSAGE of a turn sent straight from `write`, and a worker's read of one whole MESSAGE frame
handed straight to its receiver. Each must leave the link as the general path does."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import types
from typing import Any, Iterator

from isocluster import protocol
from isocluster.message_codecs import get_codec
from isocluster.transport.process.link import _WorkerLink
from isocluster.transport.process.writer import _Batch
from tests.test_worker_link import Replier, child_link


class _Listener:
    def link_frame(self, link: Any, kind: str, payload: Any) -> None:
        pass


class _Taker(_Listener):
    """A listener that takes frames in batches (as the primary does): it records what it is given."""

    def __init__(self) -> None:
        self.taken: list[Any] = []
        self.one_by_one: list[Any] = []

    def link_frame(self, link: Any, kind: str, payload: Any) -> None:
        self.one_by_one.append((kind, payload))

    def link_frames(self, link: Any, inbox: Any, count: int) -> None:
        while count and inbox:
            count -= 1
            self.taken.append(inbox.popleft())


@contextlib.contextmanager
def primary_link(listener: Any = None) -> Iterator[tuple[asyncio.AbstractEventLoop, _WorkerLink, socket.socket]]:
    """A primary's link to a worker over a socketpair, on a loop and a transport batch of its
    own (the pidfd is a pipe nobody writes to)."""
    loop = asyncio.new_event_loop()
    buffer = bytearray(256 * 1024)
    transport = types.SimpleNamespace(loop=loop, _batch=_Batch(), max_frame_size=protocol.DEFAULT_MAX_FRAME_SIZE,
                                      frame_timeout=30.0, _read_buffer=buffer, _read_view=memoryview(buffer))
    pidfd, other = os.pipe()
    ours, theirs = socket.socketpair()
    link = _WorkerLink(transport, types.SimpleNamespace(id=1, codec=get_codec('json')),  # type: ignore[arg-type]
                       os.getpid(), ours, pidfd, listener or _Listener())
    try:
        yield loop, link, theirs
    finally:
        link._stop_writing()
        loop.remove_reader(ours.fileno())
        loop.remove_reader(pidfd)
        for fd in (pidfd, other):
            os.close(fd)
        ours.close()
        theirs.close()
        loop.close()


def _fill(sock: socket.socket) -> int:
    """Send until the socket takes nothing more; the bytes sent."""
    sock.setblocking(False)
    sent = 0
    try:
        while True:
            sent += sock.send(b'\0' * 4096)
    except BlockingIOError:
        pass
    return sent


def _state(link: _WorkerLink) -> tuple[Any, ...]:
    batch = link._batch
    return (batch.active, batch.sent, len(link._queue), link._writing, link._corked, link.flow.pending)


def _drain(loop: asyncio.AbstractEventLoop, theirs: socket.socket, total: int) -> bytes:
    """Run the loop (the link's writer) while reading `total` bytes from the peer."""
    theirs.setblocking(False)
    data = bytearray()

    async def read() -> None:
        while len(data) < total:
            data.extend(await loop.sock_recv(theirs, 1 << 20))

    loop.run_until_complete(asyncio.wait_for(read(), 30))
    return bytes(data)


# Each scenario prepares the link before one turn's writes; it returns the bytes it sent itself.
_BODIES = [b'"first"', b'"second"', b'"third"']


def _idle(link: _WorkerLink) -> int:
    return 0


def _after_a_read(link: _WorkerLink) -> int:
    link._batch.sent = True  # a write of an earlier turn went out at once; then a read began and ended
    link._batch.begin()
    link._batch.end()
    return 0


def _socket_full(link: _WorkerLink) -> int:
    return _fill(link._sock)


def _sent_at_once_this_turn(link: _WorkerLink) -> int:
    link._batch.sent = True
    return 0


def _during_a_read(link: _WorkerLink) -> int:
    link._batch.begin()  # a read callback's handler writes: held to the end of the read
    link._loop.call_soon(link._batch.end)
    return 0


def test_the_primary_s_first_message_of_a_turn_leaves_the_link_as_the_general_write_does() -> None:
    frames = b''.join(protocol.encode_frame('message', body) for body in _BODIES)
    for before in (_idle, _after_a_read, _socket_full, _sent_at_once_this_turn, _during_a_read):
        outcomes = []
        for write in ('write', '_write_frame'):  # the direct path, then the general one
            with primary_link() as (loop, link, theirs):
                filler = before(link)
                states = []
                for body in _BODIES:
                    getattr(link, write)(protocol.MESSAGE, body)
                    states.append(_state(link))
                data = _drain(loop, theirs, filler + len(frames))
                assert data[:filler] == bytes(filler)
                outcomes.append((states, data[filler:], _state(link)))
        assert outcomes[0] == outcomes[1], before.__name__
        assert outcomes[0][1] == frames, before.__name__


def test_a_lone_message_read_after_a_deferred_disconnect_reaches_the_worker_after_it() -> None:
    """DISCONNECT reaches the worker one loop pass late (the process transport defers it); a
    MESSAGE read meanwhile, alone in its read, must wait behind it, not go straight through."""
    with child_link() as (loop, link, theirs):
        replier = Replier(link, lambda payload: [])
        link.attach(replier)
        theirs.sendall(protocol.encode_frame('disconnect', None))
        link._on_readable()  # the DISCONNECT: deferred
        theirs.sendall(protocol.encode_frame('message', b'"late"'))
        link._on_readable()  # one whole MESSAGE frame in this read
        loop.run_until_complete(asyncio.wait_for(replier.disconnected, 30))
        loop.run_until_complete(asyncio.sleep(0))
        assert replier.received == ['disconnect', b'"late"']


def test_a_lone_message_read_while_nobody_is_attached_waits_for_the_receiver() -> None:
    with child_link() as (loop, link, theirs):
        theirs.sendall(protocol.encode_frame('message', b'"early"'))
        link._on_readable()  # one whole MESSAGE frame, no receiver yet
        replier = Replier(link, lambda payload: [payload])
        link.attach(replier)
        loop.run_until_complete(asyncio.sleep(0))
        assert replier.received == [b'"early"']
        theirs.settimeout(30)
        assert theirs.recv(1024) == protocol.encode_frame('message', b'"early"')


def test_a_batch_listener_is_given_a_stream_s_messages_as_payloads_and_everything_else_as_frames() -> None:
    """The primary's link cuts a read's MESSAGE frames as their payloads alone for a listener
    that takes frames in batches (no tuple a message); control frames stay (kind, payload), and
    a frame finished by a read of its own still reaches link_frame as (MESSAGE, payload)."""
    taker = _Taker()
    with primary_link(taker) as (loop, link, theirs):
        bodies = [b'{"n": %d}' % n for n in range(50)]
        wire = b''.join(protocol.encode_frame('message', body) for body in bodies)
        wire += protocol.encode_frame(protocol.HEARTBEAT_ACK, {'seq': 1})
        theirs.sendall(wire)
        link._on_readable()
        assert taker.taken[:-1] == bodies and all(type(payload) is bytes for payload in taker.taken[:-1])
        assert taker.taken[-1] == (protocol.HEARTBEAT_ACK, {'seq': 1}) and taker.one_by_one == []
        last = protocol.encode_frame('message', b'"split"')
        theirs.sendall(last[:3])
        link._on_readable()  # a partial frame: nothing yet
        theirs.sendall(last[3:])
        link._on_readable()  # the rest: one frame, straight to link_frame
        assert taker.one_by_one == [(protocol.MESSAGE, b'"split"')] and len(taker.taken) == 51
