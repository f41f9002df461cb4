"""The two ends of a simulated link: each direction a FIFO of frames delivered one at a time
after seeded latencies; control payloads cross as JSON, as on a real link."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from ... import protocol
from ...errors import ProtocolError, TransportError
from .. import base
from ..base import SIGTERM, LinkListener, Signals, WorkerLink, WorkerSpec
from ..flow import LinkFlow
from ..partial import PartialFrameDeadline
from ..runtime import BaseWorkerEnd, start_target
from .loop import _SimProcess

if TYPE_CHECKING:
    import contextvars

    from .transport import MemoryTransport

# Frames that carry user bytes, and so can exceed the maximum frame size (R120).
_SIZED_KINDS = frozenset({protocol.MESSAGE, protocol.REQUEST, protocol.REPLY, protocol.REQUEST_BATCH, protocol.REPLY_BATCH})

_FINISH_TURNS = 100  # loop turns a finishing worker's cancelled tasks get to clean up
_EOF = object()


class _RawBytes:
    """Bytes written to a link outside the framing: see MemoryTransport.inject_bytes."""

    __slots__ = ('data',)

    def __init__(self, data: bytes) -> None:
        self.data = data


class _Pipe:
    """One direction of a link: a FIFO delivered one frame at a time after seeded latencies."""

    def __init__(self, transport: 'MemoryTransport', deliver: Callable[[Any], None], context: contextvars.Context) -> None:
        self.transport = transport
        self.deliver = deliver
        self.context = context
        self.queue: deque[Any] = deque()
        self.held = False
        self.scheduled = False
        self.fail_next = False
        # A frame counts as queued until it is delivered: a held or slow link congests as a
        # socket would, so backpressure and the queued-bytes cap behave as on real links.
        self.flow = LinkFlow(transport.loop)

    def push(self, item: Any) -> None:
        self.queue.append(item)
        self.flow.queued(_frame_bytes(item))
        self.schedule()

    def clear(self) -> None:
        """The worker ended: what it never received is dropped, a passed socket closed."""
        _close_sockets(frame for frame in self.queue if frame is not _EOF and type(frame) is not _RawBytes)
        self.queue.clear()
        self.flow.discarded()

    def schedule(self) -> None:
        if self.scheduled or self.held or not self.queue:
            return
        self.scheduled = True
        loop = self.transport.loop
        loop.call_at(loop.time() + self.transport._latency(), self._deliver_one, context=self.context)

    def _deliver_one(self) -> None:
        self.scheduled = False
        if self.held or not self.queue:
            return
        item = self.queue.popleft()
        self.flow.flushed(_frame_bytes(item))
        self.schedule()
        self.deliver(item)


class MemoryWorkerLink(WorkerLink):
    """The primary's end of a simulated link."""

    def __init__(self, transport: 'MemoryTransport', spec: WorkerSpec, listener: LinkListener) -> None:
        self.id = spec.id
        self.pid = None
        self.transport = transport
        self.spec = spec
        self.listener = listener
        self.process = _SimProcess(transport, spec.id)
        self.primary_link = MemoryPrimaryLink(self)
        self.open = True  # the primary's end
        self.worker_open = True  # the worker's end
        self.faulted = False
        self.closed_reported = False
        self.exit_status: tuple[int | None, Signals | None] | None = None
        self.kill_deadline: asyncio.TimerHandle | None = None
        self.kill_deadline_at = float('inf')
        self.to_worker = _Pipe(transport, self.primary_link._receive, self.process.context)
        self.to_primary = _Pipe(transport, self._receive, transport._primary.context)
        self.decoder: protocol.FrameDecoder | None = None  # made by the first inject_bytes()
        self.partial_deadline = PartialFrameDeadline(transport.loop, transport.frame_timeout, self._partial_frame_expired)
        self.flow = self.to_worker.flow
        self.primary_link.flow = self.to_primary.flow
        self.resident: int | None = None  # set_resident_bytes(): a simulated worker has no real memory
        self.cpu: float | None = None

    def resident_bytes(self) -> int | None:
        return self.resident if self.process.alive else None

    def cpu_seconds(self) -> float | None:
        return self.cpu if self.process.alive else None

    @property
    def is_open(self) -> bool:
        return self.open and not self.faulted

    def write(self, kind: str, payload: Any) -> None:
        self._check_writable()
        if self.to_worker.fail_next:
            self._break(self.to_worker, 'the next send to the worker was made to fail (fail_next_send)')
        self.to_worker.push((kind, _roundtrip_control(kind, payload)))

    def send_socket(self, sock: Any, payload: Any) -> None:
        self._check_writable()
        frame_payload = dict(_roundtrip_control(protocol.LISTENING, payload))
        frame_payload['socket'] = sock.dup()  # the worker's own descriptor, as over SCM_RIGHTS
        self.to_worker.push((protocol.LISTENING, frame_payload))

    def _check_writable(self) -> None:
        if not self.open or self.faulted:
            raise self.closed_error()
        if not self.process.alive or not self.worker_open:
            raise TransportError(f'worker {self.id} is gone (broken pipe)', worker_id=self.id)

    def _break(self, pipe: _Pipe, why: str) -> None:
        pipe.fail_next = False
        error = TransportError(f'write to worker {self.id} failed: {why}', worker_id=self.id)
        self.faulted = True
        self.transport._primary_soon(self.listener.link_error, self, error)
        raise error

    def close(self) -> None:
        if self.open:
            self.open = False
            self.to_worker.push(_EOF)

    def kill(self, signal: Signals) -> None:
        process = self.process
        if not process.alive or signal == 0:
            return
        if signal == SIGTERM and process.hung and process.ignore_sigterm:
            return
        self.transport._end(self, None, Signals(signal))

    def _receive(self, frame: Any) -> None:
        """A frame (or EOF) from the worker arrives at the primary."""
        if type(frame) is _RawBytes or (self.decoder is not None and self.decoder.pending and frame is not _EOF):
            return self._receive_bytes(frame.data if type(frame) is _RawBytes else protocol.encode_frame(*frame))
        if frame is _EOF:
            if self.decoder is not None and self.decoder.pending and not self.faulted:
                self._protocol_fault(ProtocolError(
                    f'its link ended in the middle of a frame ({self.decoder.pending} bytes of it received)'))
            self.partial_deadline.cancel()
            self.closed_reported = True
            self.listener.link_closed(self)
            if self.exit_status is not None:
                self.transport._primary_soon(self.listener.link_exit, self, *self.exit_status)
            return
        if self.faulted:
            return
        kind, payload = frame
        if kind in _SIZED_KINDS and (size := protocol.frame_size(kind, payload)) > self.transport.max_frame_size:
            self.faulted = True
            self.listener.link_error(self, ProtocolError(
                f'frame of {size} bytes exceeds the maximum frame size of '
                f'{self.transport.max_frame_size} bytes', worker_id=self.id,
            ))
            return
        self.listener.link_frame(self, kind, payload)


    def _receive_bytes(self, data: bytes) -> None:
        """Raw bytes from the worker, cut into frames as the process transport cuts them."""
        if self.faulted:
            return
        decoder = self.decoder
        if decoder is None:
            decoder = self.decoder = protocol.FrameDecoder(self.transport.max_frame_size)
        try:
            frames = decoder.feed(data)
        except ProtocolError:
            frames = []
        for kind, payload in frames:
            if self.faulted:
                return
            self.listener.link_frame(self, kind, payload)
        if decoder.error is not None:
            self._protocol_fault(decoder.error)
        else:
            self.partial_deadline.update(decoder.pending if not self.faulted else 0, bool(frames))

    def _partial_frame_expired(self) -> None:
        if self.faulted or self.decoder is None:
            return
        pending = self.decoder.pending
        self.decoder.discard()
        self._protocol_fault(ProtocolError(
            f'began a frame and did not finish it within frame_timeout={self.transport.frame_timeout}s '
            f'({pending} bytes received)'))

    def _protocol_fault(self, error: ProtocolError) -> None:
        self.faulted = True
        self.partial_deadline.cancel()
        named = ProtocolError(
            f'worker {self.id} broke the link protocol: {error}; it is killed and replaced', worker_id=self.id,
        )
        named.frame_kind = error.frame_kind
        self.listener.link_error(self, named)


class MemoryPrimaryLink(BaseWorkerEnd):
    """A simulated worker's end of its link: the shared worker end (runtime.py), its kill
    timer and finish on virtual time."""

    def __init__(self, link: MemoryWorkerLink) -> None:
        self.worker_id = link.id
        self.codec = link.spec.codec
        self.loop = link.transport.loop
        self.max_frame_size = link.transport.max_frame_size
        self._link = link
        self._init_end()

    @property
    def is_open(self) -> bool:
        return self._link.worker_open

    def boot(self) -> None:
        """The simulated worker starts: ONLINE before any application code, then its target."""
        base._current_link.set(self)
        self.write(protocol.ONLINE, None)
        start_target(self._link.spec.target, self.loop, _reraise)  # type: ignore[arg-type]

    def write(self, kind: str, payload: Any) -> None:
        link = self._link
        if not link.worker_open:
            raise TransportError(f'worker {link.id}: the link to the primary is closed', worker_id=link.id)
        if link.to_primary.fail_next:
            link.to_primary.fail_next = False
            error = TransportError(f'worker {link.id}: write to the primary failed (fail_next_send)', worker_id=link.id)
            self._primary_lost()
            raise error
        link.to_primary.push((kind, _roundtrip_control(kind, payload)))

    def _primary_lost(self) -> None:
        """The link broke under the worker: it behaves as if its primary were gone."""
        self.loop.call_soon(self._receive, _EOF)

    def close(self) -> None:
        link = self._link
        if link.worker_open:
            link.worker_open = False
            link.to_primary.push(_EOF)

    def arm_kill_timer(self, seconds: float) -> None:
        link = self._link
        deadline = self.loop.time() + seconds
        if deadline >= link.kill_deadline_at or not link.process.alive:
            return
        if link.kill_deadline is not None:
            link.kill_deadline.cancel()
        link.kill_deadline_at = deadline
        # Scheduled outside the process, so it fires even when the worker hangs.
        link.kill_deadline = self.loop.call_at(deadline, link.transport._end, link, 0, None, context=link.transport._kernel)

    def kill_timer_armed(self) -> bool:
        return self._link.kill_deadline is not None

    def finish(self) -> None:
        link = self._link
        for task in list(link.process.tasks):
            task.cancel()
        link.transport._kernel.run(self.loop.call_soon, self._wind_down, _FINISH_TURNS)

    def _wind_down(self, turns: int) -> None:
        """The worker's cancelled tasks get `turns` loop turns to clean up; then it ends with 0."""
        link = self._link
        if not link.process.alive:
            return
        if turns > 0 and any(not task.done() for task in link.process.tasks):
            self.loop.call_soon(self._wind_down, turns - 1, context=link.transport._kernel)
            return
        link.transport._end(link, 0, None)

    def run(self) -> None:
        raise TransportError('the memory transport runs only worker_target workers; there is no script to run')

    def _receive(self, frame: Any) -> None:
        """A frame (or EOF) from the primary arrives at the worker: one read of its own."""
        self.reads += 1
        if frame is _EOF:
            self._end_of_input()
        else:
            self._accept(*frame)

    def discard_backlog(self) -> None:
        """The worker ended: the listening sockets it never received close with it."""
        _close_sockets(self._backlog)
        self._backlog.clear()


def _reraise(error: BaseException) -> None:
    raise error  # inside the worker's callback: the process guard ends it with code 1 (R33)


def _close_sockets(frames: Any) -> None:
    for kind, payload in frames:
        if kind == protocol.LISTENING and payload.get('socket') is not None:
            payload['socket'].close()


def _frame_bytes(item: Any) -> int:
    """What a frame would take in a socket's buffer (control frames: their header only, they
    are a few bytes and encoding them twice would cost every simulated write)."""
    if item is _EOF:
        return 0
    if type(item) is _RawBytes:
        return len(item.data)
    kind, payload = item
    if kind == protocol.MESSAGE:
        return protocol.HEADER_SIZE + len(payload)
    if kind in (protocol.REQUEST, protocol.REPLY, protocol.REQUEST_BATCH, protocol.REPLY_BATCH):
        return protocol.HEADER_SIZE + len(payload[-1])
    return protocol.HEADER_SIZE


def _roundtrip_control(kind: str, payload: Any) -> Any:
    # Control payloads cross a real link as JSON; doing the same here keeps tests honest.
    if kind == protocol.MESSAGE:
        return payload
    return protocol.decode_body(kind, protocol.encode_body(kind, payload))
