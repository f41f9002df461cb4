"""The primary's end of the link to one worker actor: frames go out in batches with one
`deliver` call in flight, come back through a long poll (`pull`), and the actor's death is
reported as the worker's exit once Ray confirms it."""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING, Any, Callable

from ... import protocol
from ...errors import NotSupportedError, ProtocolError, TransportError
from .. import base
from ..flow import LinkFlow

if TYPE_CHECKING:
    from .transport import RayTransport

_CONFIRM_DEATH_TIMEOUT = 10.0  # seconds to wait for Ray to confirm a killed actor is gone
_ALTERNATIVE = (
    'use ProcessTransport (isocluster.transport.ProcessTransport), which shares listening sockets '
    'between the workers of one machine'
)


class RayWorkerLink(base.WorkerLink):
    """The primary's end of the link to one worker actor."""

    def __init__(self, transport: 'RayTransport', spec: base.WorkerSpec, actor: Any,
                 listener: base.LinkListener) -> None:
        self.id = spec.id
        self.pid: int | None = None
        self.node_id: str | None = None
        self.actor = actor
        self._transport = transport
        self._ray = transport._ray
        self._loop = transport.loop
        self._listener = listener
        self._decoder = protocol.FrameDecoder(transport.max_frame_size)
        # writing
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._in_flight = 0
        self._sending = False
        self._flush_scheduled = False
        self._closing = False  # close() was called: EOF goes after what was written
        self._eof_sent = False
        self._broken = False  # the actor is gone: writes fail
        self.flow = LinkFlow(self._loop)
        # reading and ending
        self._inbox: collections.deque[protocol.Frame] = collections.deque()
        self._reading = True
        self._pending_error: BaseException | None = None
        self._eof = False
        self._closed_reported = False
        self._exit_status: tuple[int | None, base.Signals | None] | None = None
        self._exit_reported = False
        self._killed_with: base.Signals | None = None
        self._terminating = False
        self._terminate_deadline = 0.0
        self._dead = False

    def __repr__(self) -> str:
        return f'<RayWorkerLink id={self.id} pid={self.pid} open={self.is_open}>'

    def _describe(self) -> str:
        return f'link to worker {self.id} (Ray actor, pid {self.pid})'

    @property
    def is_open(self) -> bool:
        return not (self._closing or self._eof or self._broken)

    # -- writing ---------------------------------------------------------------------------

    def write(self, kind: str, payload: Any) -> None:
        if not self.is_open:
            raise self.closed_error()
        data = protocol.encode_frame(kind, payload)
        self._out.append(data)
        self._out_bytes += len(data)
        self.flow.queued(len(data))
        self._schedule_flush()

    def send_socket(self, sock: Any, payload: Any) -> None:
        raise NotSupportedError(
            f'worker {self.id}: the Ray transport cannot pass sockets to workers; {_ALTERNATIVE}', worker_id=self.id,
        )

    def close(self) -> None:
        if self._closing or self._eof:
            return
        self._closing = True
        if not self._broken:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        # Frames of one loop turn go in one batch; while a batch is in flight the next one grows.
        if not self._sending and not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._sending or self._broken:
            return
        eof = self._closing and not self._eof_sent
        if not self._out and not eof:
            return
        blob = b''.join(self._out) if len(self._out) != 1 else self._out[0]
        self._out.clear()
        self._out_bytes = 0
        self._in_flight = len(blob)
        self._eof_sent = self._eof_sent or eof
        self._sending = True
        try:
            ref = self.actor.deliver.remote(blob, eof)
        except Exception:
            self._delivery_failed()
            return
        self._transport._watch(ref, self._delivered)

    def _delivered(self, future: Any) -> None:
        self._sending = False
        delivered, self._in_flight = self._in_flight, 0
        try:
            future.result()
        except Exception:
            # The actor is gone (the pull reports its death) or unreachable: what was in
            # flight is lost, which a resolved send allows (R116).
            self._delivery_failed()
            return
        self.flow.flushed(delivered)
        if self._out or (self._closing and not self._eof_sent):
            self._flush()

    def _delivery_failed(self) -> None:
        self._sending = False
        self._broken = True
        self._out.clear()
        self._out_bytes = 0
        self._in_flight = 0
        self.flow.discarded()

    # -- killing ---------------------------------------------------------------------------

    def kill(self, signal: base.Signals) -> None:
        if self._dead or self._exit_status is not None or int(signal) == 0:
            return  # ended (or ending: its actor is being killed already)
        if self._killed_with is None:
            self._killed_with = base.Signals(signal)
        self._kill_actor()

    def _kill_actor(self) -> None:
        try:
            self._ray.kill(self.actor, no_restart=True)
        except Exception:
            pass  # already gone, or Ray is shutting down

    # -- reading ---------------------------------------------------------------------------

    def _start(self) -> None:
        self._pull()

    def _pull(self) -> None:
        try:
            ref = self.actor.pull.remote()
        except Exception as exc:
            self._on_death(exc)
            return
        self._transport._watch(ref, self._pulled)

    def _pulled(self, future: Any) -> None:
        if self._dead:
            return
        try:
            blob, eof, code, pid, node_id = future.result()
        except self._ray.exceptions.RayActorError as exc:
            self._on_death(exc)
            return
        except Exception as exc:  # not a death: a failure of the transport itself
            if self._pending_error is None and self._reading:
                self._pending_error = TransportError(f'{self._describe()}: {exc!r}', worker_id=self.id)
            self._on_ended((1, None))
            return
        if self.pid is None:
            self.pid, self.node_id = pid, node_id
        if self._terminating:
            self._confirm_later()
            return
        if blob and self._reading:
            try:
                frames = self._decoder.feed(blob)
            except ProtocolError:
                frames = []
            self._inbox.extend(frames)
            error = self._decoder.error
            if error is not None and self._pending_error is None:
                if error.worker_id is None:
                    error.worker_id = self.id
                self._pending_error = error
        if eof:
            self._eof = True
        if code is not None:
            self._on_ended((code, None))
        else:
            self._pull()
        self._process()

    def _on_ended(self, status: tuple[int | None, base.Signals | None]) -> None:
        """The worker has ended: end its actor and report the exit once Ray confirms it."""
        self._eof = True
        if self._exit_status is None:
            self._exit_status = status
        self._terminating = True
        self._terminate_deadline = time.monotonic() + _CONFIRM_DEATH_TIMEOUT
        self._kill_actor()
        self._pull()  # fails with RayActorError once the actor is gone

    def _confirm_later(self) -> None:
        if time.monotonic() > self._terminate_deadline:
            self._on_death(None)  # Ray never confirmed; the actor was killed: report anyway
            return
        self._loop.call_later(0.01, self._pull)

    def _on_death(self, error: BaseException | None) -> None:
        if self._dead:
            return
        self._dead = True
        self._eof = True
        self._delivery_failed()
        if self._exit_status is None:
            self._exit_status = self._death_status(error)
        self._transport._links.discard(self)
        self._process()

    def _death_status(self, error: BaseException | None) -> tuple[int | None, base.Signals | None]:
        if self._killed_with is not None:
            return (None, self._killed_with)
        if getattr(error, 'actor_init_failed', False):
            return (1, None)  # the actor's __init__ raised: the worker never ran
        return (None, base.SIGKILL)

    def _process(self) -> None:
        """Deliver what arrived, then the fault, EOF and exit, in that order. A listener
        call that raises leaves the rest for a later loop turn."""
        inbox = self._inbox
        listener = self._listener
        while inbox and self._reading:
            kind, payload = inbox.popleft()
            self._guarded(listener.link_frame, self, kind, payload)
        inbox.clear()
        if self._pending_error is not None and self._reading:
            self._reading = False
            error, self._pending_error = self._pending_error, None
            self._guarded(listener.link_error, self, error)
        if self._eof and not self._closed_reported:
            self._closed_reported = True
            self._guarded(listener.link_closed, self)
        if self._closed_reported and self._dead and not self._exit_reported:
            self._exit_reported = True
            listener.link_exit(self, *self._exit_status)  # type: ignore[misc]

    def _guarded(self, call: Callable[..., None], *args: Any) -> None:
        try:
            call(*args)
        except BaseException:
            self._loop.call_soon(self._process)
            raise

    def _abandon(self) -> None:
        """Transport closing: kill the actor now, report nothing more."""
        self._dead = True
        self._broken = True
        self._out.clear()
        self.flow.discarded()
        if not self._exit_reported:
            self._kill_actor()
