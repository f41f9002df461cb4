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
    The runtime of a worker (the code a transport runs in the child, or in a simulated
    process) writes ONLINE before any application code, sets the worker's `PrimaryLink` in
    `_current_link`, then runs the target (or the script). It ends the worker with exit
    code 0 when `PrimaryLink.finish()` is called, when the kill timer fires, or when the
    link closes while no receiver is attached (a worker that never built a ClusterWorker);
    with code 1 and a traceback on stderr when an exception escapes into its loop; with
    the code of a `SystemExit`.
"""

from __future__ import annotations

import abc
import asyncio
import contextvars
import os
import signal as _signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

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


def current_link() -> 'PrimaryLink | None':
    """The link of the worker whose code is running, or None outside a worker.

    An exec-mode worker (a script started by the process transport) finds its link in
    the environment the first time it asks.
    """
    link = _current_link.get()
    if link is not None:
        return link
    process = sys.modules.get('isocluster.transport.process')
    if process is not None:
        # A real worker's link holds in every thread and context of the process.
        link = process.worker_link()
        if link is not None:
            return link
    if WORKER_FD_ENV in os.environ:
        from .process import link_from_environment

        link = link_from_environment()
    return link


def signal_of(value: 'int | Signals | None') -> 'Signals | None':
    """Normalise a signal number to a `signal.Signals` member (None stays None)."""
    if value is None:
        return None
    try:
        return _signal.Signals(value)
    except ValueError:
        raise ValueError(f'signal: {value!r} is not a signal number') from None


def _nobody_listens_on(path: str) -> bool:
    """True only when connecting to the Unix socket at `path` is refused: nobody serves on it.
    Whoever asks (a worker's listen()) must never make the primary unlink a live server's
    socket; any other outcome (accepted, backlog full, no permission) leaves the file alone
    and the bind then fails with EADDRINUSE."""
    import errno
    import socket

    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.setblocking(False)
        return probe.connect_ex(path) == errno.ECONNREFUSED
    finally:
        probe.close()


def bind_listening(address: Any, reuse_port: bool = False) -> Any:
    """A listening socket for a `(host, port)` tuple or a Unix socket path (the one way both
    transports bind shared addresses); `reuse_port`: with SO_REUSEPORT, one of several sockets on
    the address among which the kernel balances connections. Raises OSError, or ValueError for
    a malformed address."""
    import socket
    import stat

    if isinstance(address, str) and reuse_port:
        raise ValueError(f'reuse_port: only for a (host, port) address, not the Unix socket {address!r}')
    if isinstance(address, str):
        try:
            if stat.S_ISSOCK(os.stat(address).st_mode) and _nobody_listens_on(address):
                os.unlink(address)  # a stale socket file of an earlier run (or of ours, closed)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(address)
        except BaseException:
            sock.close()
            raise
        try:
            sock.listen(128)
        except BaseException:
            sock.close()
            os.unlink(address)  # the file this call just created
            raise
        return sock
    if isinstance(address, tuple) and len(address) == 2 and isinstance(address[0], str) and type(address[1]) is int:
        family = socket.AF_INET6 if ':' in address[0] else socket.AF_INET
        return socket.create_server(address, family=family, backlog=128, reuse_port=reuse_port)
    raise ValueError(f'address: expected a (host, port) tuple or a Unix socket path, got {address!r}')


_SO_ATTACH_FILTER = 26  # Linux, every architecture


def refuse_new_connections(sock: Any) -> None:
    """Make a listening socket drop new connection attempts while the connections already in
    its accept queue stay there to be accepted (Linux: a socket filter that drops every packet,
    applied before the listener sees a SYN). Closing a listening socket resets the queued
    connections whose clients have already sent their request; with this first, a client
    that comes later retries its SYN and is refused once the socket is closed. Elsewhere a no-op."""
    if not sys.platform.startswith('linux'):
        return
    import ctypes
    import socket

    class Instruction(ctypes.Structure):
        _fields_ = [('code', ctypes.c_uint16), ('jt', ctypes.c_uint8), ('jf', ctypes.c_uint8), ('k', ctypes.c_uint32)]

    class Program(ctypes.Structure):
        _fields_ = [('len', ctypes.c_ushort), ('filter', ctypes.POINTER(Instruction))]

    drop_all = (Instruction * 1)(Instruction(0x06, 0, 0, 0))  # BPF_RET | BPF_K 0: keep no byte
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, bytes(Program(1, drop_all)))
    except OSError:
        pass  # no socket filters here: closing is all that can be done


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


class WorkerLink(abc.ABC):
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

    # The flow control of what this end writes (see flow.py): the transport keeps it
    # current; the core reads it to pace and cap sends.
    flow: LinkFlow

    def pending_writes(self) -> int:
        """Bytes queued for the worker and not yet written (for backpressure)."""
        return self.flow.pending

    def congested(self) -> bool:
        """True while the write buffer is over its high-water mark: senders should wait."""
        return self.flow.congested()

    async def drain(self) -> None:
        """Wait until the write buffer is well below its high-water mark."""
        await self.flow.drain()


class PrimaryLink(abc.ABC):
    """A worker's end of its link to the primary."""

    flow: LinkFlow  # as WorkerLink.flow, for what the worker writes

    def pending_writes(self) -> int:
        """Bytes queued for the primary and not yet written (for backpressure)."""
        return self.flow.pending

    def congested(self) -> bool:
        return self.flow.congested()

    async def drain(self) -> None:
        """Wait until the write buffer is well below its high-water mark."""
        await self.flow.drain()

    worker_id: int
    codec: Codec
    loop: asyncio.AbstractEventLoop
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    ready_sent: bool = False  # READY goes out at most once per worker process (R105)
    draining: bool = False  # the primary asked this worker to leave; it is finishing its work

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


def exit_code_of(exit_: SystemExit) -> int:
    """The exit status a worker ends with for a SystemExit (R33): None -> 0, an int -> that
    int, anything else is printed to stderr and gives 1."""
    code = exit_.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


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


class ThreadedPrimaryLink(PrimaryLink):
    """What the worker ends of the process and Ray transports share: frames kept until a
    receiver attaches, a kill timer on a thread (it fires even when the worker's loop is
    blocked), and the orderly end of the worker's loop. Subclasses set up `_receiver`,
    `_backlog`, `_eof`, `_delivering`, `_finished`, `_kill_deadline`, `_kill_timer`, and
    provide `_deliver_eof()`, `_end_now(code)` and `close()`."""

    _receiver: Any
    _backlog: Any
    _eof: bool
    _delivering: bool
    _finished: bool
    _kill_deadline: float | None
    _kill_timer: Any

    def attach(self, receiver: LinkReceiver) -> None:
        self._receiver = receiver
        if (self._backlog or self._eof) and not self._delivering:
            self._delivering = True
            self.loop.call_soon(self._deliver_backlog)

    def detach(self, receiver: LinkReceiver) -> None:
        if self._receiver is receiver:
            self._receiver = None

    def _deliver_backlog(self) -> None:
        self._delivering = False
        backlog = self._backlog
        while backlog and self._receiver is not None:
            self._receiver.link_frame(*backlog.popleft())
        if self._eof and not backlog:
            self._deliver_eof()

    def _deliver_eof(self) -> None:
        raise NotImplementedError

    def _end_now(self, code: int) -> None:
        """End the worker at once (the kill timer fired)."""
        raise NotImplementedError

    def arm_kill_timer(self, seconds: float) -> None:
        import threading
        import time

        deadline = time.monotonic() + seconds
        if self._kill_deadline is not None and deadline >= self._kill_deadline:
            return
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        self._kill_deadline = deadline
        self._kill_timer = threading.Timer(max(seconds, 0.0), self._end_now, (0,))
        self._kill_timer.daemon = True
        self._kill_timer.start()

    def finish(self) -> None:
        self._finished = True
        if self.loop.is_running():
            self.loop.stop()

    def _wind_down(self) -> None:
        """After the worker ended: cancel its remaining tasks, let them clean up, close the link."""
        loop = self.loop
        tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        self.close()
