"""A link reads each large frame into one buffer of the frame's size (issue 14). The buffer of
the previous large frame is read into again when nothing holds it any more, so a stream of large
messages does not pay fresh zero-filled pages for each; a buffer the application still holds (a
memoryview the pickle codec handed over, a frame waiting in a backlog) is never written over."""

from __future__ import annotations

import tracemalloc

from isocluster import protocol

SIZE = 4 * 1024 * 1024


def _frame(fill: int) -> bytes:
    header, body = protocol.frame_parts(protocol.MESSAGE, bytes([fill]) * SIZE)
    return header + body


def _read(decoder: protocol.FrameDecoder, frame: bytes) -> list[protocol.Frame]:
    """As a link reads: a first piece through feed(), the rest straight into the gather target."""
    frame = memoryview(frame)  # the test's own slices copy nothing
    frames = decoder.feed(frame[:65536])
    offset = 65536
    while offset < len(frame):
        target = decoder.gather_target()
        assert target is not None
        count = min(len(target), 1 << 20, len(frame) - offset)
        target[:count] = frame[offset:offset + count]
        target.release()
        frames += decoder.gathered(count)
        offset += count
    return frames


def _decoder() -> protocol.FrameDecoder:
    decoder = protocol.FrameDecoder()
    decoder.message_buffers = True  # as a link whose codec reads buffers (pickle)
    return decoder


def test_a_large_frame_still_held_is_never_written_over_by_the_next() -> None:
    decoder = _decoder()
    [(kind, first)] = _read(decoder, _frame(1))
    view = memoryview(first)[:16]  # what the application keeps (a pickled memoryview arrives so)
    del first
    [(_, second)] = _read(decoder, _frame(2))
    assert kind == protocol.MESSAGE and bytes(view) == b'\x01' * 16 and bytes(second[:16]) == b'\x02' * 16


def test_a_stream_of_large_frames_reuses_the_buffer_nothing_holds() -> None:
    decoder = _decoder()
    [(_, first)] = _read(decoder, _frame(1))
    del first  # the message was handled and dropped
    frame = _frame(2)
    tracemalloc.start()
    try:
        [(_, second)] = _read(decoder, frame)
        allocated = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert bytes(second[:16]) == b'\x02' * 16 and len(second) == SIZE
    assert allocated < SIZE // 4, f'a second large frame allocated {allocated} bytes'
