"""The primary's send paths (issue 14), each fast path against the general one it stands for:
pickle_buffers.dumps with its kept pickler encodes every message as looking for large
buffers first does (the same bytes, the same out-of-band parts, the same errors), and keeps
nothing of a message alive; a stream's appends go to the chunk the general path would append
to (the writer's `_tail`), so every frame arrives whole and in order whatever the mix of
writes, turns and partial sends, and a closed link still refuses them."""

from __future__ import annotations

import asyncio
import gc
import os
import pickle
import random
import signal
import socket
import weakref
from typing import Any

import pytest

from isocluster import ClusterPrimary, ClusterWorker, TransportError, pickle_buffers, protocol
from isocluster.out_of_band import OutOfBand
from isocluster.transport.process.writer import _CHUNK_SIZE, _COPY_LIMIT, _Batch, _FrameWriter
from tests.cluster_helpers import ready_waiter, run_cluster

LARGE = pickle_buffers.MIN_OUT_OF_BAND
_SHARED = ['shared'] * 3  # the same object in consecutive messages: a memo left over would show


def _messages() -> list[Any]:
    blob = bytes(range(256)) * (LARGE // 256 + 1)
    return [
        {'type': 'task', 'id': 1, 'method': 'echo', 'payload': 'x' * 40},
        {'type': 'task', 'refs': _SHARED},
        {'type': 'task', 'refs': _SHARED, 'again': _SHARED},
        [1, 2.5, None, True, 'text'],
        'x' * 5000,  # more than the kept pickler's first buffer
        {'many': [str(i) for i in range(20_000)]},  # a stream of many 64 KiB frames, no buffer
        blob[:LARGE - 1],  # just under the mark: in band
        blob[:LARGE],  # at the mark: out of band
        {'type': 'blob', 'data': blob[:LARGE + 7], 'small': b'tiny'},
        {'type': 'blob', 'data': bytearray(blob[:LARGE + 3])},
        {'type': 'blob', 'data': memoryview(blob[:LARGE + 1])},
        {'type': 'blob', 'nested': [{'deep': blob[:LARGE + 5]}]},  # not at the top: in band
        {'type': 'text', 'big': 's' * (3 * LARGE)},
        {'type': 'task', 'id': 2, 'method': 'echo', 'payload': 'y' * 40},
    ]


def _encoded(result: Any) -> tuple[str, bytes]:
    return type(result).__name__, bytes(result)


def test_dumps_gives_what_looking_first_gives_for_every_kind_of_message_in_any_order() -> None:
    messages = _messages()
    for order in (messages, messages[::-1], messages + messages):
        for message in order:
            assert _encoded(pickle_buffers.dumps(message)) == _encoded(pickle_buffers._dumps_looking_first(message))
    # and what reaches the receiver is the message
    for message in messages:
        encoded = pickle_buffers.dumps(message)
        decoded = pickle_buffers.loads(bytes(encoded) if type(encoded) is OutOfBand else encoded)
        assert decoded == message
    assert len(pickle_buffers._idle) == 1


def test_a_small_message_is_what_pickle_dumps_makes() -> None:
    for message in _messages()[:4]:
        assert pickle_buffers.dumps(message) == pickle.dumps(message, pickle.HIGHEST_PROTOCOL)


class _Unpicklable:
    def __reduce__(self) -> Any:
        raise RuntimeError('not picklable on purpose')


def test_a_failure_raises_as_looking_first_does_and_leaves_the_next_message_whole() -> None:
    for bad in ({'type': 'x', 'view': memoryview(b'small')}, {'type': 'x', 'value': _Unpicklable()}, {'f': lambda: 0}):
        with pytest.raises(Exception) as fast:
            pickle_buffers.dumps(bad)
        with pytest.raises(Exception) as general:
            pickle_buffers._dumps_looking_first(bad)
        assert (type(fast.value), str(fast.value)) == (type(general.value), str(general.value))
        message = {'type': 'task', 'refs': _SHARED}
        assert pickle_buffers.dumps(message) == pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    assert len(pickle_buffers._idle) == 1


class _SendsWhilePickled:
    """An object whose pickling encodes another message (the kept pickler is then in use)."""

    inner: Any = None

    def __reduce__(self) -> Any:
        type(self).inner = pickle_buffers.dumps({'type': 'inner', 'refs': _SHARED})
        return (str, ('outer',))


def test_a_dumps_inside_a_dumps_takes_the_general_path_and_both_are_whole() -> None:
    message = {'type': 'outer', 'refs': _SHARED, 'value': _SendsWhilePickled()}
    encoded = pickle_buffers.dumps(message)
    assert pickle.loads(encoded) == {'type': 'outer', 'refs': _SHARED, 'value': 'outer'}
    assert pickle.loads(_SendsWhilePickled.inner) == {'type': 'inner', 'refs': _SHARED}
    assert len(pickle_buffers._idle) == 1


class _Payload:
    pass


def test_the_kept_pickler_keeps_nothing_of_a_message_alive() -> None:
    payload = _Payload()
    gone = weakref.ref(payload)
    pickle_buffers.dumps({'type': 'task', 'payload': payload})
    del payload
    gc.collect()
    assert gone() is None


# -- a stream's appends go to the queue's last chunk, known without looking (writer._tail) -----

class _Pair(_FrameWriter):
    def __init__(self, loop: asyncio.AbstractEventLoop, sock: Any, batch: _Batch) -> None:
        self._loop, self._sock, self._batch = loop, sock, batch
        self._init_writer()

    def _describe(self) -> str:
        return 'test pair'


def _check_tail(writer: _Pair) -> None:
    """What the chunk the fast path appends to must be: what the general path would append to."""
    tail = writer._tail
    if tail is not None:
        assert writer._queue and writer._queue[-1] is tail
        assert type(tail) is bytearray and len(tail) < _CHUNK_SIZE
        assert writer._corked or writer._writing  # held: whatever is appended is sent with it


def _frames(data: bytes) -> list[bytes]:
    decoder = protocol.FrameDecoder(64 * 1024 * 1024)
    return [bytes(body) for _, body in decoder.feed(data)]


@pytest.mark.parametrize('seed', range(6))
def test_a_writer_under_any_mix_of_writes_turns_and_partial_sends_delivers_every_frame_in_order(seed: int) -> None:
    rng = random.Random(seed)

    async def main() -> tuple[list[bytes], list[bytes]]:
        ours, theirs = socket.socketpair()
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)  # partial sends often
        ours.setblocking(False)
        theirs.setblocking(False)
        received = bytearray()

        def read(limit: int) -> None:
            try:
                received.extend(theirs.recv(limit))
            except BlockingIOError:
                pass

        writer = _Pair(asyncio.get_running_loop(), ours, _Batch())
        sent: list[bytes] = []
        try:
            for step in range(1500):
                roll = rng.random()
                if roll < 0.9:
                    large = rng.random() < 0.1
                    size = rng.choice([_COPY_LIMIT + 1, 200_000] if large else [0, 1, 90, 4000, 30_000, _COPY_LIMIT])
                    body = bytes([step % 251]) * size + step.to_bytes(4, 'big')
                    writer._write_frame(protocol.MESSAGE, body)
                    sent.append(body)
                elif roll < 0.94:
                    await asyncio.sleep(0)  # the turn ends: held writes go out
                elif roll < 0.98:
                    read(rng.choice([100, 5000, 70_000]))
                else:
                    writer._batch.begin()  # a read batch, as a link's read does
                    writer._batch.end()
                _check_tail(writer)
            for _ in range(100_000):
                if not writer._queue:
                    break
                read(1 << 20)
                await asyncio.sleep(0)
                _check_tail(writer)
            read(1 << 22)
            while True:
                before = len(received)
                read(1 << 22)
                if len(received) == before:
                    break
        finally:
            ours.close()
            theirs.close()
        return sent, _frames(bytes(received))

    sent, arrived = asyncio.run(main())
    assert len(arrived) == len(sent)
    assert arrived == sent


def idle_worker() -> None:
    ClusterWorker()


def test_a_closed_link_refuses_a_write_while_its_held_chunk_still_drains() -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        link = primary.workers[0].life.link
        for i in range(300):  # held in one chunk until the end of the turn
            link.write(protocol.MESSAGE, b'{"type":"x","i":%d}' % i)
        assert link._tail is not None
        link.close()
        with pytest.raises(TransportError, match='closed'):
            link.write(protocol.MESSAGE, b'{"type":"x"}')
        return len(link._queue)

    assert run_cluster('process', scenario, worker_target=idle_worker) == 1


def test_a_link_that_ended_with_a_held_chunk_refuses_a_write() -> None:
    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        worker = primary.workers[0]
        link = worker.life.link
        exited = asyncio.get_running_loop().create_future()
        primary.on('worker_exit', lambda event: exited.done() or exited.set_result(None))
        primary.on('worker_exit', lambda event: event.prevent())  # no replacement
        os.kill(worker.pid, signal.SIGSTOP)  # it reads no more: the queue stays
        for turn in range(200):
            for i in range(300):
                link.write(protocol.MESSAGE, b'{"type":"x","i":%d}' % i)
            await asyncio.sleep(0)
            if link._writing and link._tail is not None:
                break
        held = link._tail is not None
        os.kill(worker.pid, signal.SIGKILL)
        await asyncio.wait_for(exited, 10)
        with pytest.raises(TransportError, match='closed'):
            link.write(protocol.MESSAGE, b'{"type":"x"}')
        return held

    assert run_cluster('process', scenario, worker_target=idle_worker) is True
