"""FrameDecoder.feed cuts a read's run of whole MESSAGE frames with one unpack and one slice each
(protocol.py); everything else takes its general loop, which judges one frame at a time. The
run must cut exactly what the general loop cuts, and leave every hostile frame to be judged
as before (same frames returned before the fault, same ProtocolError text), however the
stream is split into reads."""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest

from isocluster import protocol


def _stream(rng: random.Random) -> bytes:
    frames = []
    for _ in range(rng.randrange(1, 40)):
        roll = rng.random()
        if roll < 0.7:
            frames.append(protocol.encode_frame(protocol.MESSAGE, rng.randbytes(rng.choice([0, 1, 3, 40, 300]))))
        elif roll < 0.8:
            frames.append(protocol.encode_frame(protocol.REQUEST, (rng.randrange(1 << 40), rng.randbytes(5))))
        elif roll < 0.9:
            frames.append(protocol.encode_frame(protocol.REPLY, (rng.randrange(9), rng.random() < 0.5, b'ok')))
        else:
            frames.append(protocol.encode_frame(protocol.HEARTBEAT, {'n': rng.randrange(9)}))
    return b''.join(frames)


_HOSTILE = {
    'oversize': struct.pack('>IB', 1001, 0) + b'x' * 20,
    'empty': struct.pack('>I', 0) + b'\x00' * 8,  # a zero length followed by what looks like MESSAGE
    'unknown kind': struct.pack('>IB', 3, 200) + b'ab',
    'truncated request': struct.pack('>IB', 3, protocol.KINDS.index(protocol.REQUEST)) + b'ab',
    'bad control': struct.pack('>IB', 3, protocol.KINDS.index(protocol.HEARTBEAT)) + b'{x',
}


def _decode(stream: bytes, cuts: list[int], kind: Any, bare: bool = False) -> Any:
    decoder = protocol.FrameDecoder(1000)
    decoder.bare_messages = bare
    frames: list[Any] = []
    points = [0, *cuts, len(stream)]
    try:
        for a, b in zip(points, points[1:]):
            frames.extend(decoder.feed(kind(stream[a:b])))
        frames.extend(decoder.feed(b''))  # a fault found above is raised by the next call
    except protocol.ProtocolError as error:
        return frames, str(error), decoder.pending
    return frames, None, decoder.pending


def _framed(frames: list[Any]) -> list[Any]:
    """A bare decoder's frames as (kind, payload) tuples: each bare item is a MESSAGE's bytes."""
    assert all(type(frame) is bytes for frame in frames if type(frame) is not tuple)
    return [frame if type(frame) is tuple else (protocol.MESSAGE, frame) for frame in frames]


@pytest.mark.parametrize('seed', range(40))
@pytest.mark.parametrize('hostile', [None, *_HOSTILE])
def test_the_message_run_cuts_what_the_general_loop_cuts(seed: int, hostile: str | None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    stream = _stream(rng) + (_HOSTILE[hostile] if hostile else b'') + _stream(rng)
    stream += b'\x00\x00'[:rng.randrange(3)]  # sometimes a partial length at the end
    cuts = sorted(rng.sample(range(1, len(stream)), min(rng.randrange(0, 6), len(stream) - 1)))
    kind = rng.choice([bytes, bytearray, memoryview])
    fast = _decode(stream, cuts, kind)
    frames, error, pending = _decode(stream, cuts, kind, bare=True)
    assert (_framed(frames), error, pending) == fast
    monkeypatch.setattr(protocol, '_CUT_FROM_COPY', -1)  # no read is cut from a copy: the general loop only
    general = _decode(stream, cuts, kind)
    assert fast == general
    assert (fast[1] is not None) == (hostile is not None)
    if hostile is None:
        assert fast[0] and all(type(frame) is tuple for frame in fast[0])
