"""The seam between the cluster logic and the world of processes.

The core (`primary.py`, `worker.py`, ...) talks only to the interfaces below. A transport
moves frames, starts and stops workers and reports what happened to links; it knows
nothing of events, tags, routing or restart policy.

Frames are `(kind, payload)` pairs (see `protocol.py`); user messages arrive already
encoded as bytes, so a transport never sees a Python object it has to serialise.

Each end of a link has a `flow` (`flow.LinkFlow`): its transport reports the bytes it
queues and the bytes it writes (or throws away), and the core paces and caps sends with it.

Primary side
    `Transport.start_worker(spec, listener)` returns a `WorkerLink`. The transport then
    calls, always from its loop and never from inside a call the core made:
      `listener.link_frame(link, kind, payload)` for each frame, in order;
      `listener.link_error(link, error)` at most once, for a fault on the link
          (`ProtocolError`, `DecodeError` never: decoding is the core's; `TransportError`);
          after it nothing more is read from the link;
      `listener.link_closed(link)` exactly once, when the link closes (EOF), after every
          frame the worker wrote before dying was delivered;
      `listener.link_exit(link, code, signal)` exactly once, after `link_closed`, when the
          worker has ended and been reaped (`signal` is a `signal.Signals` or None).

Worker side
    The runtime of a worker (`runtime.py`, the same on every transport) writes ONLINE before
    any application code, sets the worker's `PrimaryLink` in `_current_link`, then runs the
    target (or the script). It ends the worker with exit code 0 when `PrimaryLink.finish()`
    is called, when the kill timer fires, or when the link closes while no receiver is
    attached (a worker that never built a ClusterWorker); with code 1 and a traceback on
    stderr when an exception escapes into its loop; with the code of a `SystemExit`.
"""

from __future__ import annotations

import abc
import asyncio
import contextvars
import signal as _signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

from ..errors import TransportError
from ..protocol import DEFAULT_MAX_FRAME_SIZE, Codec
from .flow import HIGH_WATER, LinkFlow

SIGTERM = _signal.Signals.SIGTERM
SIGKILL = _signal.Signals.SIGKILL
Signals = _signal.Signals

WORKER_ID_ENV = 'ISOCLUSTER_WORKER_ID'
WORKER_FD_ENV = 'ISOCLUSTER_WORKER_FD'
WORKER_CODEC_ENV = 'ISOCLUSTER_CODEC'
MAX_FRAME_ENV = 'ISOCLUSTER_MAX_FRAME_SIZE'
LOOP_ENV = 'ISOCLUSTER_LOOP'  # 'uvloop': a script worker runs its loop on uvloop (set by `isocluster run --uvloop`)

_current_link: contextvars.ContextVar['PrimaryLink | None'] = contextvars.ContextVar(
    'isocluster_current_link', default=None
)


# How a worker finds its link other than through the context: a real worker's link holds
# in every thread of its process, a script worker's is described by its environment. Each
# transport that has such workers registers a finder; this module knows none of them.
_link_finders: list[Callable[[], 'PrimaryLink | None']] = []


def add_link_finder(finder: Callable[[], 'PrimaryLink | None']) -> None:
    """Register `finder`, asked by `current_link()` when the context holds no link."""
    if finder not in _link_finders:
        _link_finders.append(finder)


def current_link() -> 'PrimaryLink | None':
    """The link of the worker whose code is running, or None outside a worker."""
    link = _current_link.get()
    if link is not None:
        return link
    for finder in _link_finders:
        link = finder()
        if link is not None:
            return link
    return None


def signal_of(value: 'int | Signals | None') -> 'Signals | None':
    """Normalise a signal number to a `signal.Signals` member (None stays None)."""
    if value is None:
        return None
    try:
        return _signal.Signals(value)
    except ValueError:
        raise ValueError(f'signal: {value!r} is not a signal number') from None


@dataclass(frozen=True)
class WorkerSpec:
    """What to start: the core fills it from the primary's options."""

    id: int
    codec: Codec
    target: Callable[[], Any] | None = None
    script: str | None = None
    args: tuple[str, ...] = ()
    silent: bool = False
    stdio: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


class LinkListener(Protocol):
    def link_frame(self, link: 'WorkerLink', kind: str, payload: Any) -> None: ...

    def link_error(self, link: 'WorkerLink', error: BaseException) -> None: ...

    def link_closed(self, link: 'WorkerLink') -> None: ...

    def link_exit(self, link: 'WorkerLink', code: int | None, signal: 'Signals | None') -> None: ...


class LinkReceiver(Protocol):
    """The worker-side consumer of a `PrimaryLink` (a ClusterWorker)."""

    def link_frame(self, kind: str, payload: Any) -> None: ...

    def link_closed(self) -> None: ...


class LinkEnd(abc.ABC):
    """What both ends of a link share: the flow control of what this end writes (see
    flow.py). The transport keeps it current; the core reads it to pace and cap sends."""

    flow: LinkFlow

    def pending_writes(self) -> int:
        """Bytes queued for the other end and not yet written (for backpressure)."""
        return self.flow.pending

    def congested(self) -> bool:
        """True while the write buffer is over its high-water mark: senders should wait."""
        return self.flow.congested()

    async def drain(self) -> None:
        """Wait until the write buffer is well below its high-water mark."""
        await self.flow.drain()


class WorkerLink(LinkEnd):
    """The primary's end of the link to one worker."""

    id: int
    pid: int | None = None

    @property
    @abc.abstractmethod
    def is_open(self) -> bool:
        """True until the primary's end is closed or the link broke."""

    @abc.abstractmethod
    def write(self, kind: str, payload: Any) -> None:
        """Queue one frame for the worker. Raises TransportError if the link is closed or the
        write failed; never raises anything else, never blocks."""

    @abc.abstractmethod
    def send_socket(self, sock: Any, payload: Any) -> None:
        """Write a LISTENING frame that carries a duplicate of `sock` to the worker."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the primary's end once what was written has been flushed."""

    @abc.abstractmethod
    def kill(self, signal: 'Signals') -> None:
        """Send `signal` to the worker; a no-op once it has ended (never a reused pid)."""

    def resident_bytes(self) -> int | None:
        """The worker's resident memory in bytes, or None where the transport cannot tell."""
        return None

    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds the worker has used, or None where the transport cannot tell."""
        return None

    def _describe(self) -> str:
        return f'the link to worker {self.id}'

    def closed_error(self) -> TransportError:
        """What a write to this link raises once it is closed (raised by the caller, so a
        send's hot path pays no call while the link is open)."""
        return TransportError(f'{self._describe()} is closed', worker_id=self.id)



class PrimaryLink(LinkEnd):
    """A worker's end of its link to the primary."""

    worker_id: int
    codec: Codec
    loop: asyncio.AbstractEventLoop
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    ready_sent: bool = False  # READY goes out at most once per worker process (R105)
    draining: bool = False  # the primary asked this worker to leave; it is finishing its work
    # How many reads this end has delivered, when it counts them: the frames it delivers during
    # one read are all written back when the read ends (see request_gate.RequestGate).
    reads: int | None = None

    @property
    @abc.abstractmethod
    def is_open(self) -> bool: ...

    @abc.abstractmethod
    def attach(self, receiver: LinkReceiver) -> None:
        """Start delivering frames to `receiver`. Frames that arrived before the first
        receiver attached are delivered to it, in order, on later loop turns."""

    @abc.abstractmethod
    def detach(self, receiver: LinkReceiver) -> None:
        """Stop delivering frames to `receiver`."""

    @abc.abstractmethod
    def write(self, kind: str, payload: Any) -> None:
        """Queue one frame for the primary. Raises TransportError when the link is closed."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flush what was written, then close this end (the primary sees EOF)."""

    @abc.abstractmethod
    def arm_kill_timer(self, seconds: float) -> None:
        """End the worker with code 0 after `seconds`, even if its loop is blocked. Arming it
        again can only bring the deadline closer."""

    @abc.abstractmethod
    def finish(self) -> None:
        """The worker's ClusterWorker is destroyed: stop the worker's loop, let its tasks
        clean up, and end the worker with code 0 (script mode: `run()` returns)."""

    @abc.abstractmethod
    def run(self) -> None:
        """Script mode: drive the worker's loop until the worker ends."""


class Transport(abc.ABC):
    """Starts workers and gives the primary its loop."""

    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE

    @property
    @abc.abstractmethod
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @abc.abstractmethod
    def check_spec(self, spec: WorkerSpec) -> None:
        """Raise ValueError when this transport cannot start such a worker."""

    @abc.abstractmethod
    def start_worker(self, spec: WorkerSpec, listener: LinkListener) -> WorkerLink:
        """Start one worker. Raises TransportError when it cannot be started at all."""

    @abc.abstractmethod
    def bind(self, address: Any, reuse_port: bool = False) -> Any:
        """Bind and listen on `address` (a `(host, port)` tuple or a Unix path); returns the
        listening socket (with SO_REUSEPORT for `reuse_port`). Raises OSError."""

    def close_listening(self, sock: Any) -> None:
        """The cluster is shutting down: refuse new connections on a shared socket `bind()`
        returned, keep those queued for the workers still accepting, close this copy."""
        import socket

        from .sockets import refuse_new_connections

        if getattr(sock, 'family', None) in (socket.AF_INET, socket.AF_INET6):  # TCP: a Unix socket refuses no SYN
            refuse_new_connections(sock)
        sock.close()

    def random(self) -> float:
        """A uniform draw in [0, 1): seeded on the memory transport."""
        import random

        return random.random()

    def capture_fatal(self, error: BaseException) -> bool:
        """A fatal exception reached the primary. Return True when the transport takes it
        (the memory transport stops its simulation and re-raises it); False lets the
        primary shut down (SPEC R34)."""
        return False

    def install_signal_handlers(self, handlers: Mapping['Signals', Callable[[], None]]) -> Callable[[], None]:
        """Install handlers that only wake the loop; returns a function that restores the
        previous ones. Transports without signals install nothing."""
        return lambda: None

    def notify(self, state: str) -> None:
        """Tell the service manager `state` ('READY=1', 'WATCHDOG=1', ...); most transports have none."""

    def watchdog_interval(self) -> float | None:
        """Seconds between the primary's WATCHDOG=1, or None when no watchdog expects them."""
        return None

    def close(self) -> None:
        """Release what the transport holds. Called by a primary that created it."""


class RealLoopTransport(Transport):
    """A transport on a real asyncio loop: the running loop when first used inside one, else a
    new loop that `primary.run()` drives, with signal handlers that only wake that loop."""

    _loop: asyncio.AbstractEventLoop | None = None
    _owns_loop = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                self._loop = asyncio.new_event_loop()
                self._owns_loop = True
        return self._loop

    def install_signal_handlers(self, handlers: Mapping['Signals', Callable[[], None]]) -> Callable[[], None]:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        loop = self.loop
        previous = {sig: _signal.getsignal(sig) for sig in handlers}
        for sig, handler in handlers.items():
            loop.add_signal_handler(sig, handler)

        def restore() -> None:
            for sig, old in previous.items():
                loop.remove_signal_handler(sig)
                if old is not None:
                    _signal.signal(sig, old)

        return restore

    def notify(self, state: str) -> None:
        from . import systemd

        if state.startswith('RELOADING=1'):  # systemd's Type=notify-reload asks for the time too
            state += f'\nMONOTONIC_USEC={time.monotonic_ns() // 1000}'
        systemd.notify(state)

    def watchdog_interval(self) -> float | None:
        from . import systemd

        return systemd.watchdog_interval()

    def _close_owned_loop(self) -> None:
        loop = self._loop
        if self._owns_loop and loop is not None and not loop.is_running() and not loop.is_closed():
            loop.close()
