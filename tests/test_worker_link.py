"""The worker's end of a process link, driven directly over a socketpair: a message frame goes
straight to the attached worker, and what the worker writes while a read is delivered keeps
the link's order, whether it goes out at once or waits behind earlier writes."""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import threading
from typing import Any, Iterator

import pytest

from isocluster import protocol
from isocluster.message_codecs import get_codec
from isocluster.transport.process.worker_end import ChildLink

TIMEOUT = 30.0


class Replier:
    """A receiver that answers each message with the frames `replies(payload)` names."""

    def __init__(self, link: ChildLink, replies: Any) -> None:
        self.link, self.replies = link, replies
        self.received: list[Any] = []  # every frame delivered, in order
        self.disconnected: asyncio.Future[Any] = link.loop.create_future()

    def link_message(self, payload: Any) -> None:
        self.received.append(payload)
        for body in self.replies(payload):
            self.link.write(protocol.MESSAGE, body)

    def link_frame(self, kind: str, payload: Any) -> None:
        if kind == protocol.MESSAGE:
            self.link_message(payload)
            return
        self.received.append(kind)
        if kind == protocol.DISCONNECT:
            self.disconnected.set_result(kind)

    def link_closed(self) -> None:
        pass


@contextlib.contextmanager
def child_link(ours: socket.socket | None = None,
               theirs: socket.socket | None = None) -> Iterator[tuple[asyncio.AbstractEventLoop, ChildLink, socket.socket]]:
    """A worker's link over a socketpair (or the pair given), on a loop of its own; closed after."""
    loop = asyncio.new_event_loop()
    if ours is None or theirs is None:
        ours, theirs = socket.socketpair()
    link = ChildLink(1, get_codec('json'), ours, loop, exit_on_finish=False,
                     max_frame_size=protocol.DEFAULT_MAX_FRAME_SIZE)
    loop.set_exception_handler(None)  # a failure is the test's, not a worker's to die of
    try:
        yield loop, link, theirs
    finally:
        link.close()
        theirs.close()
        loop.close()


def _collect(sock: socket.socket, total: int, loop: asyncio.AbstractEventLoop, done: asyncio.Future[bytes],
             data: bytearray) -> None:
    sock.settimeout(TIMEOUT)
    while len(data) < total:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    loop.call_soon_threadsafe(done.set_result, bytes(data))


def test_what_a_read_pass_writes_waits_behind_a_write_the_socket_did_not_take() -> None:
    with child_link() as (loop, link, theirs):
        replier = Replier(link, lambda payload: [b'"first"', b'"second"'])
        link.attach(replier)
        link._start(write_online=False)
        large = b'"' + b'x' * (8 * 1024 * 1024) + b'"'  # far more than the socket takes at once
        link.write(protocol.MESSAGE, large)
        assert link.flow.pending > 0  # the rest waits for the socket
        # Room in the socket again, and a message to answer: the loop runs the read callback
        # before the write callback, so the answers are written while the rest still waits.
        head = bytearray()
        theirs.setblocking(False)
        try:
            while True:
                head += theirs.recv(1024 * 1024)
        except BlockingIOError:
            pass
        theirs.setblocking(True)
        theirs.sendall(protocol.encode_frame('message', b'"ping"'))
        expected = [large, b'"first"', b'"second"']
        total = sum(len(protocol.encode_frame('message', body)) for body in expected)
        done: asyncio.Future[bytes] = loop.create_future()
        reader = threading.Thread(target=_collect, args=(theirs, total, loop, done, head), daemon=True)
        reader.start()
        data = loop.run_until_complete(asyncio.wait_for(done, TIMEOUT))
        reader.join(TIMEOUT)
        assert replier.received == [b'"ping"']
        assert protocol.FrameDecoder(max_frame_size=len(large) + 1).feed(data) == [('message', body) for body in expected]


def test_every_answer_of_one_read_arrives_in_order() -> None:
    with child_link() as (loop, link, theirs):
        replier = Replier(link, lambda payload: [payload, payload + b' '])
        link.attach(replier)
        link._start(write_online=False)
        bodies = [f'"{i}"'.encode() for i in range(50)]
        expected = [body for payload in bodies for body in (payload, payload + b' ')]
        total = sum(len(protocol.encode_frame('message', body)) for body in expected)
        done: asyncio.Future[bytes] = loop.create_future()
        theirs.sendall(b''.join(protocol.encode_frame('message', body) for body in bodies))  # one read
        reader = threading.Thread(target=_collect, args=(theirs, total, loop, done, bytearray()), daemon=True)
        reader.start()
        data = loop.run_until_complete(asyncio.wait_for(done, TIMEOUT))
        reader.join(TIMEOUT)
        assert replier.received == bodies
        assert protocol.FrameDecoder().feed(data) == [('message', body) for body in expected]
        assert link.flow.pending == 0  # every byte the stream's appends counted has been written


def test_frames_after_a_disconnect_in_the_same_read_reach_the_worker_after_it() -> None:
    with child_link() as (loop, link, theirs):
        replier = Replier(link, lambda payload: [])
        link.attach(replier)
        link._start(write_online=False)
        theirs.sendall(protocol.encode_frame('message', b'"before"') + protocol.encode_frame('request', (1, b'"r1"'))
                       + protocol.encode_frame('disconnect', None) + protocol.encode_frame('request', (2, b'"r2"'))
                       + protocol.encode_frame('message', b'"after"'))
        loop.run_until_complete(asyncio.wait_for(replier.disconnected, TIMEOUT))
        # DISCONNECT is delivered a loop pass later (after accept callbacks): what follows it waits too.
        assert replier.received == [b'"before"', protocol.REQUEST, protocol.DISCONNECT, protocol.REQUEST, b'"after"']


class RunReplier(Replier):
    """A Replier that also takes a run of MESSAGE frames in one call (as a ClusterWorker does)."""

    def link_messages(self, frames: Any, link: ChildLink) -> Any:
        for kind, payload in frames:
            if kind != protocol.MESSAGE or link.receiver is not self:
                return kind, payload
            self.link_message(payload)
        return None


def handing_pair(loop: asyncio.AbstractEventLoop, link: ChildLink, first_kind: type[Replier],
                 second_kind: type[Replier]) -> tuple[Replier, Replier, 'asyncio.Future[None]']:
    """A receiver of `first_kind`, attached to `link`, that hands the link to one of
    `second_kind` on its second message ('"2"'), in the middle of whatever read brought it:
    (first, second, a future set once it has)."""
    second = second_kind(link, lambda payload: [])
    handed: asyncio.Future[None] = loop.create_future()

    class Handing(first_kind):  # type: ignore[valid-type, misc]
        def link_message(self, payload: Any) -> None:
            super().link_message(payload)
            if payload == b'"2"':
                link.detach(self)
                link.attach(second)
                handed.set_result(None)

    first = Handing(link, lambda payload: [])
    link.attach(first)
    return first, second, handed


def message_frames(numbers: Any) -> bytes:
    return b''.join(protocol.encode_frame('message', f'"{i}"'.encode()) for i in numbers)


@pytest.mark.parametrize('kind', [Replier, RunReplier])
def test_a_read_reaches_the_receiver_attached_when_each_frame_is_delivered(kind: type[Replier]) -> None:
    """The first receiver hands the link to a second one on its second message, in the middle of
    one read: the frames after it go to the second, in order, whether taken one by one or in runs."""
    with child_link() as (loop, link, theirs):
        first, second, handed = handing_pair(loop, link, kind, kind)
        link._start(write_online=False)
        theirs.sendall(message_frames(range(1, 4)) + protocol.encode_frame('heartbeat', None)
                       + message_frames(range(4, 6)))
        loop.run_until_complete(asyncio.wait_for(handed, TIMEOUT))
        assert first.received == [b'"1"', b'"2"']
        assert second.received == [b'"3"', protocol.HEARTBEAT, b'"4"', b'"5"']


class PayloadRunReplier(Replier):
    """A RunReplier whose run takes MESSAGE payloads alone (as a ClusterWorker's does: the
    link then has its decoder cut a run's MESSAGE frames bare, FrameDecoder.bare_messages)."""

    def link_messages(self, frames: Any, link: ChildLink) -> Any:
        for frame in frames:
            if type(frame) is tuple:
                if frame[0] != protocol.MESSAGE or link.receiver is not self:
                    return frame
                frame = frame[1]
            elif link.receiver is not self:
                return frame
            self.link_message(frame)
        return None

    link_messages.takes_payloads = True  # type: ignore[attr-defined]


@pytest.mark.parametrize('first_kind, second_kind', [
    (PayloadRunReplier, PayloadRunReplier), (PayloadRunReplier, RunReplier), (PayloadRunReplier, Replier),
    (RunReplier, PayloadRunReplier), (Replier, PayloadRunReplier),
])
def test_a_read_cut_for_one_receiver_reaches_the_next_as_it_takes_frames(first_kind: type[Replier],
                                                                         second_kind: type[Replier]) -> None:
    """A receiver that takes bare payloads hands the link, in the middle of one read, to one that
    takes (kind, payload) frames, or the other way round: every frame reaches the receiver
    attached when it is delivered, in order, each as a payload or a frame as that one takes it."""
    with child_link() as (loop, link, theirs):
        first, second, handed = handing_pair(loop, link, first_kind, second_kind)
        assert link._decoder.bare_messages is (first_kind is PayloadRunReplier)
        link._start(write_online=False)
        theirs.sendall(message_frames(range(1, 5)) + protocol.encode_frame('heartbeat', None)
                       + message_frames(range(5, 7)))
        loop.run_until_complete(asyncio.wait_for(handed, TIMEOUT))
        assert first.received == [b'"1"', b'"2"']
        assert second.received == [b'"3"', b'"4"', protocol.HEARTBEAT, b'"5"', b'"6"']
        assert link._decoder.bare_messages is (second_kind is PayloadRunReplier)


class CountingSocket(socket.socket):
    """Counts the link's sends: how its writes were grouped."""

    sends = 0

    def send(self, *args: Any) -> int:
        self.sends += 1
        return super().send(*args)

    def sendmsg(self, *args: Any) -> int:
        self.sends += 1
        return super().sendmsg(*args)


def test_the_answer_to_a_lone_frame_goes_out_at_once_and_a_pipeline_s_answers_together() -> None:
    plain, theirs = socket.socketpair()
    ours = CountingSocket(plain.family, plain.type, fileno=plain.detach())
    with child_link(ours, theirs) as (loop, link, theirs):
        run_lone_and_pipelined(loop, link, ours, theirs)


def run_lone_and_pipelined(loop: asyncio.AbstractEventLoop, link: ChildLink, ours: 'CountingSocket',
                           theirs: socket.socket) -> None:
    seen_by_peer: list[bool] = []  # was the answer already in the peer's socket when write() returned?
    expected, answered = 0, loop.create_future()

    class Answering(Replier):
        def link_message(self, payload: Any) -> None:
            super().link_message(payload)
            seen_by_peer.append(bool(select.select([theirs], [], [], 0)[0]))
            if len(seen_by_peer) == expected and not answered.done():
                answered.set_result(None)

    link.attach(Answering(link, lambda payload: [payload]))
    link._start(write_online=False)
    for bodies in ([b'"alone"'], [f'"{i}"'.encode() for i in range(50)], [b'"alone again"']):
        sends, seen_by_peer[:], expected = ours.sends, [], len(bodies)
        answered = loop.create_future()
        theirs.sendall(b''.join(protocol.encode_frame('message', body) for body in bodies))  # one read
        loop.run_until_complete(asyncio.wait_for(answered, TIMEOUT))
        # The read pass has ended: whatever it wrote is in the peer's socket (small: it all fits).
        total = sum(len(protocol.encode_frame('message', body)) for body in bodies)
        data = bytearray()
        while len(data) < total:
            data += theirs.recv(total - len(data))
        assert protocol.FrameDecoder().feed(data) == [('message', body) for body in bodies]
        assert ours.sends - sends == 1  # one send for the whole read
        # A lone frame's answer was sent before its handler returned; a pipeline's wait for the read's end.
        assert seen_by_peer == ([True] if len(bodies) == 1 else [False] * len(bodies))

