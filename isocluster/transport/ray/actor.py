"""The worker's side of the Ray transport, in the actor's process: the worker runs on a thread
of its own with a new loop (the shared worker runtime, `runtime.WorkerEnd`), while Ray's
actor loop serves `deliver` and `pull` and stays responsive when the worker's loop blocks."""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from typing import Any, Callable

from ... import protocol
from ...errors import NotSupportedError, TransportError
from .. import base
from ..flow import LinkFlow
from ..runtime import WorkerEnd, flush_stdio, run_guarded
from .link import _ALTERNATIVE


class _RayPrimaryLink(WorkerEnd):
    """The worker's end; lives on the worker's loop thread, fed by the actor's loop."""

    def __init__(self, runtime: '_Runtime', worker_id: int, codec: protocol.Codec,
                 loop: asyncio.AbstractEventLoop, max_frame_size: int) -> None:
        self.worker_id = worker_id
        self.codec = codec
        self.loop = loop
        self.max_frame_size = max_frame_size  # the transport's, so a worker's send rejects what the primary would
        self._runtime = runtime
        self._decoder = protocol.FrameDecoder(max_frame_size)
        self._closed = False
        self._init_end()
        # Counts the runtime's outbox: bytes are queued when pushed and flushed once this
        # loop hears that the primary pulled them (`_Runtime.pull`), so backpressure and
        # max_queued_bytes hold on this side too.
        self.flow = LinkFlow(loop)

    def _describe(self) -> str:
        return f'link of worker {self.worker_id} to its primary'

    @property
    def is_open(self) -> bool:
        return not (self._closed or self._eof or self._runtime.code is not None)

    def ended(self) -> bool:
        return self._runtime.code is not None

    # receiving

    def _receive(self, blob: bytes, eof: bool, ack: Any) -> None:
        """A batch from the primary, on the worker's loop (scheduled by `_Runtime.deliver`)."""
        try:
            if self._closed or self._eof:
                return  # this end is closed: what arrives now is discarded (R109)
            self.reads += 1  # one batch from the primary is one read (request_gate.py)
            if blob:
                # A ProtocolError here is fatal to the worker (R120): it reaches the loop's handler.
                for kind, payload in self._decoder.feed(blob):
                    self._accept(kind, payload)
                if self._decoder.error is not None:
                    raise self._decoder.error
            if eof:
                self._end_of_input()
        finally:
            self._runtime.acknowledge(ack)

    # writing

    def write(self, kind: str, payload: Any) -> None:
        if kind == protocol.LISTEN:
            raise NotSupportedError(
                f'worker {self.worker_id}: listen() is not supported on the Ray transport (workers may run on '
                f'different hosts, so they cannot share a listening socket); {_ALTERNATIVE}',
                worker_id=self.worker_id,
            )
        if not self.is_open:
            raise TransportError(f'{self._describe()} is closed', worker_id=self.worker_id)
        self._runtime.push(protocol.encode_frame(kind, payload))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._runtime.close_link()

    # ending

    def _end_now(self, code: int) -> None:
        self._runtime.end(code)

    def run(self) -> None:
        raise NotSupportedError('the Ray transport runs only worker_target workers: there is no script to run')


class _Runtime:
    """One worker inside its actor: the worker's thread and loop, and the outbox the primary
    pulls. `lock` guards the outbox, `eof`, `code` and the pull waiter, which the worker's
    thread, a kill-timer thread and the actor's loop all touch."""

    def __init__(self, worker_id: int, codec: protocol.Codec, target: Callable[[], Any],
                 max_frame_size: int = protocol.DEFAULT_MAX_FRAME_SIZE) -> None:
        self.worker_id = worker_id
        self.target = target
        self.lock = threading.Lock()
        self.outbox: list[bytes] = []
        self.eof = False  # the worker closed its end
        self.eof_pulled = False
        self.code: int | None = None  # set once, when the worker has ended
        self.actor_loop: asyncio.AbstractEventLoop | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.wake_scheduled = False
        self.acks: set[asyncio.Future[None]] = set()
        self.loop = asyncio.new_event_loop()
        self.link = _RayPrimaryLink(self, worker_id, codec, self.loop, max_frame_size)
        # The worker's context: the link is bound in it, for the thread and for every
        # callback the actor's loop schedules on the worker's loop.
        self.context = contextvars.Context()
        self.context.run(base._current_link.set, self.link)
        self.thread = threading.Thread(
            target=self.context.copy().run, args=(self._main,), name=f'isocluster-worker-{worker_id}', daemon=True,
        )

    # the worker's thread

    def _main(self) -> None:
        self.end(run_guarded(self._run, quiet=lambda: self.code is not None))

    def _run(self) -> int:
        self.push(protocol.encode_frame(protocol.ONLINE, None))
        return self.link.run_target(self.target)

    # frames to the primary (any thread)

    def push(self, data: bytes) -> None:
        with self.lock:
            if self.eof or self.code is not None:
                raise TransportError(f'worker {self.worker_id}: the link to the primary is closed',
                                     worker_id=self.worker_id)
            self.outbox.append(data)
            self._wake_locked()
        # Only the worker's thread pushes, so this runs before the `flushed` of these bytes,
        # which `pull` schedules on the worker's loop.
        self.link.flow.queued(len(data))

    def close_link(self) -> None:
        with self.lock:
            if not self.eof:
                self.eof = True
                self._wake_locked()

    def end(self, code: int) -> None:
        """The worker has ended with `code` (the first call wins): EOF and the exit go to the
        primary with the frames already written; nothing is accepted from the worker after."""
        with self.lock:
            if self.code is not None:
                return
            self.code = code
            self.eof = True
            self._wake_locked()
            actor_loop = self.actor_loop
        if actor_loop is not None:
            try:
                actor_loop.call_soon_threadsafe(self._acknowledge_all)
            except RuntimeError:
                pass

    def _wake_locked(self) -> None:
        if self.waiter is not None and not self.wake_scheduled and self.actor_loop is not None:
            self.wake_scheduled = True
            self.actor_loop.call_soon_threadsafe(self._wake)

    # the actor's loop

    def _bind_actor_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self.actor_loop is None:
            with self.lock:
                self.actor_loop = loop
        return loop

    def _wake(self) -> None:
        with self.lock:
            waiter, self.waiter = self.waiter, None
            self.wake_scheduled = False
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def pull(self) -> tuple[bytes, bool, int | None]:
        loop = self._bind_actor_loop()
        while True:
            with self.lock:
                if self.outbox or (self.eof and not self.eof_pulled) or self.code is not None:
                    outbox = self.outbox
                    blob = outbox[0] if len(outbox) == 1 else b''.join(outbox)
                    outbox.clear()
                    if self.eof:
                        self.eof_pulled = True
                    if blob:
                        self._report_pulled(len(blob))
                    return blob, self.eof, self.code
                waiter = self.waiter = loop.create_future()
            await waiter

    def _report_pulled(self, size: int) -> None:
        """The primary has taken `size` bytes of the outbox: the worker's flow (owned by its
        loop) learns it on that loop."""
        try:
            self.loop.call_soon_threadsafe(self.link.flow.flushed, size)
        except RuntimeError:
            pass  # the worker's loop is closed: nobody waits on its sends any more

    async def deliver(self, blob: bytes, eof: bool) -> None:
        loop = self._bind_actor_loop()
        if self.code is not None:
            return  # the worker has ended: the frames are lost (R116)
        ack = loop.create_future()
        self.acks.add(ack)
        try:
            self.loop.call_soon_threadsafe(self.link._receive, blob, eof, ack, context=self.context)
        except RuntimeError:
            self.acks.discard(ack)
            return
        await ack

    def acknowledge(self, ack: 'asyncio.Future[None]') -> None:
        """From the worker's loop: the batch of `ack` has been dispatched."""
        actor_loop = self.actor_loop
        if actor_loop is not None:
            try:
                actor_loop.call_soon_threadsafe(self._settle, ack)
            except RuntimeError:
                pass

    def _settle(self, ack: 'asyncio.Future[None]') -> None:
        self.acks.discard(ack)
        if not ack.done():
            ack.set_result(None)

    def _acknowledge_all(self) -> None:
        acks, self.acks = self.acks, set()
        for ack in acks:
            if not ack.done():
                ack.set_result(None)


class _WorkerActor:
    """The Ray actor of one worker (an async actor: `deliver` and `pull` run on Ray's loop,
    the worker on its own loop in its own thread)."""

    def __init__(self, worker_id: int, codec: Any, target: Callable[[], Any], discard: tuple[str, ...],
                 max_frame_size: int = protocol.DEFAULT_MAX_FRAME_SIZE) -> None:
        import ray

        if discard:
            flush_stdio()
            devnull = os.open(os.devnull, os.O_WRONLY)
            for name in discard:
                os.dup2(devnull, 1 if name == 'stdout' else 2)
            os.close(devnull)
        self._pid = os.getpid()
        try:
            self._node_id = ray.get_runtime_context().get_node_id()
        except Exception:
            self._node_id = None
        codec = protocol.get_codec(codec) if isinstance(codec, str) else codec
        self._runtime = _Runtime(worker_id, codec, target, max_frame_size)
        self._runtime.thread.start()

    async def deliver(self, blob: bytes, eof: bool) -> None:
        await self._runtime.deliver(blob, eof)

    async def pull(self) -> tuple[bytes, bool, int | None, int, str | None]:
        blob, eof, code = await self._runtime.pull()
        return blob, eof, code, self._pid, self._node_id
