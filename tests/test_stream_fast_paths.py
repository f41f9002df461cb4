"""The primary's stream paths (issue 14): a congested link hands a dropped send's future out
again instead of making one per send, but never one its caller still holds, and every future
resolves in send order; a worker's frames are taken 64 at a time (`link_frames`), each handled
exactly as `link_frame` handles it (order, counting, faults, the rest left in the inbox, an
override of link_frame seeing every frame)."""

from __future__ import annotations

import asyncio
import collections
import gc
from typing import Any

import pytest

from isocluster import ClusterPrimary, ClusterWorker, DecodeError, protocol
from isocluster.transport import flow as flow_module
from isocluster.transport.flow import BUCKET, HIGH_WATER, LinkFlow
from isocluster.transport.memory import MemoryTransport

SENDS = 10_000
FRAME = 100  # bytes a send queues


class _Counted(flow_module._Completion):
    made = 0

    def __init__(self, *, loop: Any) -> None:
        super().__init__(loop=loop)
        type(self).made += 1


@pytest.fixture
def counted(monkeypatch: Any) -> type[_Counted]:
    _Counted.made = 0
    monkeypatch.setattr(flow_module, '_Completion', _Counted)
    return _Counted


def congested_flow(loop: asyncio.AbstractEventLoop) -> LinkFlow:
    flow = LinkFlow(loop)
    flow.queued(HIGH_WATER + 1)
    return flow


def test_a_congested_stream_of_dropped_futures_makes_about_one_future_per_bucket(counted: Any) -> None:
    loop = asyncio.new_event_loop()
    try:
        flow = congested_flow(loop)
        for _ in range(SENDS):
            flow.queued(FRAME)
            flow.completion()  # dropped, as a fire-and-forget caller does
        sent = None
        for _ in range(SENDS):
            flow.queued(FRAME)
            sent = flow.completion()  # kept in a variable until the next send returns
        del sent
        buckets = 2 * SENDS * FRAME // BUCKET + 1
        assert counted.made <= 2 * buckets + 4, counted.made
    finally:
        loop.close()


def test_a_future_its_caller_holds_is_never_handed_out_again_and_all_resolve_in_send_order() -> None:
    loop = asyncio.new_event_loop()
    try:
        flow = congested_flow(loop)
        held: list[asyncio.Future[None]] = []
        order: list[int] = []
        for i in range(SENDS):
            flow.queued(FRAME)
            future = flow.completion()
            if i % 3 == 0:
                held.append(future)
                future.add_done_callback(lambda _, i=i: order.append(i))
            elif i % 3 == 1:
                future.cancel()  # a cancelled future is done: never handed out again either
            del future
            gc.collect(0) if i % 1000 == 0 else None
        assert len({id(future) for future in held}) == len(held)
        assert not any(future.done() for future in held)
        flow.flushed(flow.pending)
        loop.run_until_complete(asyncio.sleep(0))
        assert all(future.done() and not future.cancelled() for future in held)
        assert order == sorted(order) == list(range(0, SENDS, 3))
    finally:
        loop.close()


# -- link_frames --------------------------------------------------------------------------


class QuietWorker(ClusterWorker):
    pass


def quiet_worker() -> None:
    QuietWorker()


def frames_of(*messages: Any) -> collections.deque[Any]:
    codec = protocol.get_codec('json')
    return collections.deque((protocol.MESSAGE, codec.encode(m)) for m in messages)


def ready_primary(primary_class: type[ClusterPrimary] = ClusterPrimary) -> tuple[Any, ClusterPrimary, Any]:
    sim = MemoryTransport(seed=1)
    primary = primary_class(transport=sim, worker_target=quiet_worker)
    primary.fork(1)
    sim.run_until(lambda: any(h.state == 'ready' for h in primary._live.values()), timeout=60)
    (handle,) = primary._live.values()
    return sim, primary, handle


def close(sim: Any, primary: ClusterPrimary) -> None:
    primary.destroy()
    sim.run_until(lambda: primary.closed, timeout=600)


def test_link_frames_takes_count_frames_in_order_and_counts_each() -> None:
    sim, primary, handle = ready_primary()
    seen: list[Any] = []
    primary.on('worker_message', lambda event: seen.append((event.data['worker'], event.data['message']['n'])))
    inbox = frames_of(*({'type': 'n', 'n': n} for n in range(100)))
    inbox.insert(10, (protocol.HEARTBEAT_ACK, None))  # a control frame among them: the general way
    before = primary.stats()['messages_in']
    primary.link_frames(handle.life.link, inbox, 64)
    assert seen == [(handle, n) for n in range(63)]
    assert len(inbox) == 101 - 64 and inbox[0] == frames_of({'type': 'n', 'n': 63})[0]
    primary.link_frames(handle.life.link, inbox, 64)
    assert seen == [(handle, n) for n in range(100)] and not inbox
    assert primary.stats()['messages_in'] - before == 100
    assert handle.state == 'ready' and handle.life.error is None
    close(sim, primary)


def test_link_frames_an_undecodable_message_faults_the_worker_and_drops_what_follows() -> None:
    sim, primary, handle = ready_primary()
    seen: list[Any] = []
    errors: list[BaseException] = []
    primary.on('worker_message', lambda event: seen.append(event.data['message']['n']))
    primary.on('worker_error', lambda event: errors.append(event.data['error']))
    inbox = frames_of({'type': 'n', 'n': 0}, {'type': 'n', 'n': 1})
    inbox.append((protocol.MESSAGE, b'{not json'))
    inbox.extend(frames_of({'type': 'n', 'n': 3}))
    primary.link_frames(handle.life.link, inbox, 64)
    assert seen == [0, 1] and not inbox
    assert len(errors) == 1 and isinstance(errors[0], DecodeError) and errors[0].worker_id == handle.id
    close(sim, primary)


def test_link_frames_leaves_what_a_raising_handler_did_not_reach_in_the_inbox() -> None:
    sim, primary, handle = ready_primary()
    seen: list[int] = []

    def on_message(event: Any) -> None:
        seen.append(event.data['message']['n'])
        if event.data['message']['n'] == 4:
            raise KeyboardInterrupt  # not an Exception: the primary does not catch it

    primary.on('worker_message', on_message)
    inbox = frames_of(*({'type': 'n', 'n': n} for n in range(10)))
    with pytest.raises(KeyboardInterrupt):
        primary.link_frames(handle.life.link, inbox, 64)
    assert seen == [0, 1, 2, 3, 4] and len(inbox) == 5
    primary.link_frames(handle.life.link, inbox, 64)
    assert seen == list(range(10))
    close(sim, primary)


class SeesEveryFrame(ClusterPrimary):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.frames: list[str] = []

    def link_frame(self, link: Any, kind: str, payload: Any) -> None:
        self.frames.append(kind)
        super().link_frame(link, kind, payload)


def test_link_frames_gives_an_override_of_link_frame_every_frame() -> None:
    sim, primary, handle = ready_primary(SeesEveryFrame)
    assert isinstance(primary, SeesEveryFrame)
    primary.frames.clear()
    inbox = frames_of(*({'type': 'n', 'n': n} for n in range(5)))
    primary.link_frames(handle.life.link, inbox, 3)
    assert primary.frames == [protocol.MESSAGE] * 3 and len(inbox) == 2
    close(sim, primary)


def bare(inbox: collections.deque[Any], every: int = 1) -> collections.deque[Any]:
    """`inbox` with every `every`-th MESSAGE frame as its payload alone, as a link's decoder
    with `bare_messages` cuts a stream's read."""
    return collections.deque(frame[1] if frame[0] == protocol.MESSAGE and i % every == 0 else frame
                             for i, frame in enumerate(inbox))


@pytest.mark.parametrize('every', [1, 2])
def test_link_frames_takes_message_payloads_alone_as_it_takes_message_frames(every: int) -> None:
    sim, primary, handle = ready_primary()
    seen: list[Any] = []
    primary.on('worker_message', lambda event: seen.append(event.data['message']['n']))
    inbox = bare(frames_of(*({'type': 'n', 'n': n} for n in range(100))), every)
    inbox.insert(10, (protocol.HEARTBEAT_ACK, None))  # a control frame among them: the general way
    before = primary.stats()['messages_in']
    while inbox:
        primary.link_frames(handle.life.link, inbox, 64)
    assert seen == list(range(100)) and primary.stats()['messages_in'] == before + 100
    close(sim, primary)


def test_link_frames_gives_an_override_a_payload_alone_as_a_message_frame() -> None:
    sim, primary, handle = ready_primary(SeesEveryFrame)
    seen: list[Any] = []
    primary.on('worker_message', lambda event: seen.append(event.data['message']['n']))
    primary.frames.clear()
    inbox = bare(frames_of(*({'type': 'n', 'n': n} for n in range(4))), 2)
    primary.link_frames(handle.life.link, inbox, 64)
    assert primary.frames == [protocol.MESSAGE] * 4 and seen == [0, 1, 2, 3] and not inbox
    close(sim, primary)


# -- the decoder cuts a read's messages from one copy of it ---------------------------------


@pytest.mark.parametrize('read_size', [1000, 256 * 1024, protocol._CUT_FROM_COPY + 4096])
def test_a_read_of_many_small_frames_is_cut_into_the_same_messages_at_any_read_size(read_size: int) -> None:
    codec = protocol.get_codec('json')
    bodies = [codec.encode({'type': 'n', 'n': n, 'pad': 'x' * (n % 50)}) for n in range(30_000)]
    wire = b''.join(protocol.message_header(len(body)) + body for body in bodies)
    wire += protocol.encode_frame(protocol.HEARTBEAT_ACK, {'seq': 1})  # a control frame after them
    decoder = protocol.FrameDecoder()
    frames: list[Any] = []
    buffer = bytearray(read_size)  # reused for every read, as the links' shared read buffer is
    for offset in range(0, len(wire), read_size):
        piece = wire[offset:offset + read_size]
        buffer[:len(piece)] = piece
        frames.extend(decoder.feed(memoryview(buffer)[:len(piece)]))
    assert frames[:-1] == [(protocol.MESSAGE, body) for body in bodies]
    assert all(type(payload) is bytes for _, payload in frames[:-1])
    assert frames[-1] == (protocol.HEARTBEAT_ACK, {'seq': 1}) and decoder.pending == 0
