"""A hostile worker on real processes (issue 13, Tests (b)).

One primary, run for the whole module on a loop driven example by example: an honest worker
holds a request open while a hostile worker writes Hypothesis-generated raw bytes to its own
link (random kinds, lengths and bytes, valid JSON of the wrong shape, deep nesting, forged
replies), ending with a frame no worker may send, a truncated frame and silence, or a
truncated frame and exit. After each example: the primary is up, the hostile worker got
worker_error (ProtocolError, or DecodeError for a body its codec cannot read) and was
replaced, no other worker got one, the honest worker's request settled with its own reply
and the replacement answers on its link.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isocluster import ClusterPrimary, ClusterWorker, DecodeError, ProtocolError, protocol
from isocluster.transport.process import ProcessTransport

FRAME_TIMEOUT = 0.5  # the deadline of a partial frame in this module: short, so silence is cheap
WAIT = 20.0  # a bound for each wait, far above any step here
EXAMPLES = 110  # at least 3 frames each (2 generated, 1 ending): over the 300 the issue asks for


class RawWriter(ClusterWorker):
    """A worker told `raw` writes the bytes it is given (hex) straight on its link, around the
    framing, then exits if told to: what a hostile or broken worker could write."""

    def _event_primary_message_raw(self, event: Any) -> None:
        message = event.data['message']
        sock = self._link._sock  # the worker's own end of its link: written around the framing
        sock.setblocking(True)
        sock.sendall(bytes.fromhex(message['data']))
        if message['then'] == 'exit':
            os._exit(0)


class Target(RawWriter):
    def __init__(self) -> None:
        super().__init__()
        self._released = asyncio.Event()

    async def _event_primary_message_hold(self, event: Any) -> Any:
        await self._released.wait()  # keeps the request open while the hostile worker writes
        self._released.clear()
        return {'nonce': event.data['message']['nonce'], 'worker': ClusterWorker.worker_id}

    def _event_primary_message_release(self, event: Any) -> None:
        self._released.set()

    def _event_primary_message_who(self, event: Any) -> Any:
        return ClusterWorker.worker_id


def target() -> None:
    Target()


# -- what a hostile worker writes ------------------------------------------------------------

REPLY_IDS = st.sampled_from(['honest', 'own', 'never', 'zero', 'huge'])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=8,
)
BAD_ADDRESSES = st.sampled_from([{}, [[1], 2], 5, None, [1, 'x'], ['127.0.0.1', 70000], ['a', 1, 2], '', True])


@st.composite
def deep(draw: Any) -> bytes:
    depth = draw(st.sampled_from([2000, 100_000]))
    opener = draw(st.sampled_from([b'[', b'{"a":']))
    closer = b']' if opener == b'[' else b'}'
    return opener * depth + b'1' + closer * depth


def framed(code: int, body: bytes) -> bytes:
    return struct.pack('>IB', len(body) + 1, code) + body


CODE = {kind: code for code, kind in enumerate(protocol.KINDS)}


@st.composite
def hostile_frame(draw: Any) -> tuple[str, Any]:
    """A frame as ('bytes', data) or ('reply', which id, ok, body): ids are known only when
    the example runs."""
    choice = draw(st.sampled_from([
        'random', 'random', 'control_json', 'listen', 'deep', 'reply', 'reply', 'request', 'message', 'bad_length',
    ]))
    if choice == 'random':
        return ('bytes', draw(st.binary(min_size=1, max_size=64)))
    if choice == 'control_json':
        kind = draw(st.sampled_from([protocol.ONLINE, protocol.READY, protocol.HEARTBEAT_ACK, protocol.LISTENING,
                                     protocol.DISCONNECT, protocol.HEARTBEAT]))
        return ('bytes', framed(CODE[kind], json.dumps(draw(JSON_VALUES)).encode()))
    if choice == 'listen':
        body = {'id': draw(st.integers(0, 5)), 'address': draw(BAD_ADDRESSES)} if draw(st.booleans()) else draw(JSON_VALUES)
        return ('bytes', framed(CODE[protocol.LISTEN], json.dumps(body).encode()))
    if choice == 'deep':
        kind = draw(st.sampled_from([protocol.READY, protocol.LISTEN, protocol.MESSAGE, protocol.REPLY]))
        prefix = struct.pack('>QB', 1, 0) if kind == protocol.REPLY else b''
        return ('bytes', framed(CODE[kind], prefix + draw(deep())))
    if choice == 'reply':
        ok = draw(st.booleans())
        body = draw(st.sampled_from([b'[]', b'{}', b'"x"', b'{"type":1}', b'\xff', b'', b'{"type":"E","message":[]}']))
        return ('reply', draw(REPLY_IDS), ok, body)
    if choice == 'request':
        return ('bytes', framed(CODE[protocol.REQUEST], draw(st.binary(max_size=12))))
    if choice == 'message':
        return ('bytes', framed(CODE[protocol.MESSAGE], draw(st.binary(max_size=16))))
    length = draw(st.sampled_from([0, 1, 2 ** 32 - 1, protocol.DEFAULT_MAX_FRAME_SIZE + 1]))
    return ('bytes', struct.pack('>I', length) + draw(st.binary(max_size=8)))


ENDINGS = st.sampled_from(['forbidden'] * 8 + ['silence', 'exit'])


def materialize(frame: tuple[str, Any], ids: dict[str, int]) -> bytes:
    if frame[0] == 'bytes':
        return frame[1]
    _, which, ok, body = frame
    request_id = {'honest': ids['honest'], 'own': ids['own'], 'never': ids['own'] + 1000, 'zero': 0,
                  'huge': 2 ** 64 - 1}[which]
    return framed(CODE[protocol.REPLY], struct.pack('>QB', request_id, ok) + body)


def ending_bytes(ending: str) -> bytes:
    if ending == 'forbidden':
        return framed(CODE[protocol.HEARTBEAT], b'')  # only the primary sends HEARTBEAT
    return struct.pack('>IB', 1000, CODE[protocol.MESSAGE]) + b'{"cut":'  # a frame cut short


# -- the cluster, driven example by example ----------------------------------------------------

class Cluster:
    def __init__(self) -> None:
        # Deep bodies are decoded at the recursion limit: earlier tests' garbage must not be
        # finalized (and warn) there, or pytest blames this test for it.
        gc.collect()
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.primary = ClusterPrimary(
            worker_target=target, transport=ProcessTransport(loop=self.loop, frame_timeout=FRAME_TIMEOUT),
            restart_intensity=None, restart_backoff=None,
        )
        self.pids: set[int] = set()
        self.errors: list[tuple[int, BaseException]] = []
        self.exits: list[int] = []
        self.changed = asyncio.Event()
        self.primary.after('worker_fork', lambda event: self.pids.add(event.data['worker'].pid))
        self.primary.on('worker_error', lambda event: self.errors.append((event.data['worker'].id, event.data['error'])))
        self.primary.on('worker_exit', lambda event: self.exits.append(event.data['worker'].id))
        for name in ('worker_exit', 'worker_ready', 'worker_error'):
            self.primary.after(name, lambda event: self.changed.set())
        self.nonce = 0
        self.requests_sent = 0  # request ids are sequential per primary, from 1
        self.primary.fork(2)
        self.run(self.until(lambda: len(self.primary.workers) == 2))

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coroutine, WAIT))

    async def until(self, condition: Any) -> None:
        while not condition():
            self.changed.clear()
            await self.changed.wait()

    def request(self, message: Any, to: Any) -> 'asyncio.Future[Any]':
        self.requests_sent += 1
        return self.primary.request(message, to=to)

    async def example(self, frames: list[tuple[str, Any]], ending: str) -> None:
        primary = self.primary
        honest, hostile = primary.workers[0], primary.workers[-1]
        self.errors.clear()
        self.exits.clear()
        self.nonce += 1
        honest_reply = self.request({'type': 'hold', 'nonce': self.nonce}, to=honest)
        own_reply = self.request({'type': 'hold', 'nonce': -self.nonce}, to=hostile)
        ids = {'honest': self.requests_sent - 1, 'own': self.requests_sent}
        data = b''.join(materialize(frame, ids) for frame in frames) + ending_bytes(ending)
        await primary.send({'type': 'raw', 'data': data.hex(), 'then': 'exit' if ending == 'exit' else 'stay'},
                           to=hostile)
        await self.until(lambda: hostile.id in self.exits and len(primary.workers) == 2)
        await primary.send({'type': 'release'}, to=honest)
        assert await honest_reply == {'nonce': self.nonce, 'worker': honest.id}
        await asyncio.wait([own_reply])  # settled one way or another (its value is the forger's business)
        if not own_reply.cancelled():
            own_reply.exception()
        assert [worker for worker, _ in self.errors] == [hostile.id], self.errors
        error = self.errors[0][1]
        assert isinstance(error, (ProtocolError, DecodeError)) and error.worker_id == hostile.id, error
        assert f'worker {hostile.id}' in str(error)
        assert self.exits == [hostile.id] and honest.state == 'ready' and not primary.closed
        replacement = primary.workers[-1]
        assert replacement.id > hostile.id
        assert await self.request({'type': 'who'}, to=replacement) == replacement.id

    def close(self) -> None:
        try:
            self.primary.destroy()
            self.run(self.primary.wait_closed())
        finally:
            for pid in self.pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
            asyncio.set_event_loop(None)
            self.loop.close()


@pytest.fixture(scope='module')
def cluster() -> Any:
    cluster = Cluster()
    yield cluster
    cluster.close()


def test_a_hostile_worker_harms_only_itself(cluster: Cluster) -> None:
    generated: list[int] = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(frames=st.lists(hostile_frame(), min_size=2, max_size=5), ending=ENDINGS)
    def example(frames: list[tuple[str, Any]], ending: str) -> None:
        cluster.run(cluster.example(frames, ending))
        generated.append(len(frames) + 1)

    example()
    assert sum(generated) >= 300, f'only {sum(generated)} hostile frames were generated'
