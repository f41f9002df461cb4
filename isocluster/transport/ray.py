"""The Ray transport: each worker is a Ray actor, so the same cluster code runs across hosts.

    from isocluster import ClusterPrimary
    from isocluster.transport.ray import RayTransport

    primary = ClusterPrimary(worker_target=my_app.worker_main,      # module-level, importable
                             transport=RayTransport())              # local Ray (ray.init())
    # or RayTransport(address='ray://head:10001') / RayTransport('auto') for an existing cluster,
    # and RayTransport(worker_options={'num_cpus': 1, 'resources': {'gpu_box': 1}}) for placement.

`ray` is imported only when a `RayTransport` is built (`pip install 'isocluster[ray]'`);
`import isocluster` never imports it. Ray is initialised on the first `start_worker` unless
the application already called `ray.init()`; a transport that initialised Ray shuts it down
in `close()`.

Primary side
    The primary runs on an asyncio loop of the driver (`loop`: the running loop when the
    transport is first used inside one, else a new loop that `primary.run()` drives). Each
    worker is one async actor (`_WorkerActor`, `max_restarts=0`). Frames are encoded with
    `protocol.encode_frame` (the same framing, codec and maximum frame size as the process
    transport; user messages arrive as bytes already encoded by the core) and travel in
    batches:
      primary -> worker: `actor.deliver(blob, eof)`, at most one call in flight per link;
          the frames written meanwhile form the next batch. `deliver` returns once the
          worker's loop has dispatched the batch, so a slow worker pushes back
          (`pending_writes()` / `drain()`).
      worker -> primary: a long poll, `actor.pull()`, one call in flight per link, returns
          every frame written since the last one (plus EOF and the exit status). The
          frames count as queued on the worker's side until its loop hears they were
          pulled, so a slow primary pushes back too (and `max_queued_bytes` holds there).
    One call in flight per direction is what keeps per-link FIFO order (Ray does not order
    the tasks of an async actor). Results come back on Ray's threads and are handed to
    the loop with `call_soon_threadsafe`, so the listener is only ever called from the loop.

Worker side
    The actor hosts the worker runtime: a thread of its own with a new event loop (set as
    current, not running), the `_RayPrimaryLink` bound in `base._current_link` for that
    thread's context (and for every callback the transport schedules on it), ONLINE written
    first, then `worker_target()` (awaited when it is a coroutine function), then the loop
    runs until the worker ends -- as in the process transport's fork mode. Ray's own actor
    loop (which serves `deliver`/`pull`) stays responsive even when the worker's loop is
    blocked, so the kill timer and `kill()` always work.

How a worker ends, and what the primary sees (`link_closed`, then `link_exit(code, signal)`)
    | cause                                                        | code | signal          |
    | `PrimaryLink.finish()` (ClusterWorker destroyed), R102 end   | 0    | None            |
    | the kill timer fires (even with a blocked worker loop)       | 0    | None            |
    | `SystemExit(n)` escaping the worker's code                   | n    | None            |
    | an exception escaping into the worker's loop (traceback on   | 1    | None            |
    |   the actor's stderr, which Ray forwards to the driver)      |      |                 |
    | the actor's `__init__` failed (target not importable, ...)   | 1    | None            |
    | `link.kill(sig)` / `handle.kill(sig)` (any signal)           | None | sig             |
    | anything else Ray reports as actor death: `ray.kill` by     | None | SIGKILL         |
    |   other code, the actor process exiting or killed, node loss |      |                 |
    Once the runtime has reported an exit status the primary `ray.kill`s the actor and reports
    `link_exit` only when Ray confirms that it is dead (the process transport's "reaped").

Deviations from the seam contract and from the process transport (SPEC §6), all Ray's
    - `kill(signal)` is `ray.kill` whatever the signal: the worker cannot catch or ignore
      SIGTERM, and there is no graceful stage (the core's shutdown_timeout still sends
      DISCONNECT first). The exit reports the requested signal.
    - Ray does not report an actor process's exit code or signal: deaths the runtime did
      not see coming (`os._exit(n)` in the worker, OOM, node loss) are reported as SIGKILL.
    - A fatal exception or `SystemExit` ends the worker at once from the primary's point of
      view (exit reported, the worker's writes refused, no task cleanup) and the actor is
      killed right after; frames the worker wrote before it are still delivered (R116
      allows either).
    - R118: when the driver (the primary) dies, Ray kills its actors outright (fate
      sharing of non-detached actors), so the worker's code sees no `primary_disconnect`.
    - No shared listening sockets: `bind()` and `send_socket()` raise `NotSupportedError`,
      and so does `await worker.listen(...)` in a worker (its LISTEN frame never leaves the
      worker). Use `ProcessTransport` for servers that share a port.
    - No worker_script (script mode) and no `worker_stdio` file objects or fds: a Ray worker
      may live on another host. `worker_silent=True` and the words 'devnull' / 'pipe'
      discard the actor process's stdout/stderr; 'inherit' (default) leaves them to Ray,
      which forwards them to the driver (`ray.init(log_to_driver=...)`).
    - `ClusterWorker.worker_id` is known in the worker's loop thread (and the tasks and
      callbacks started from it), not in other threads the worker's code starts.
    - `worker_target` (and a non-built-in codec) must be picklable and importable on the
      cluster's nodes (a module-level function of an installed module, or ship it with
      `ray.init(runtime_env=...)` / `worker_options={'runtime_env': ...}`).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import inspect
import os
import sys
import threading
import time
import traceback
from typing import Any, Callable, Mapping

from .. import protocol
from ..errors import NotSupportedError, ProtocolError, TransportError
from . import base
from .flow import LinkFlow

_CONFIRM_DEATH_TIMEOUT = 10.0  # seconds to wait for Ray to confirm a killed actor is gone
_STREAMS = ('stdin', 'stdout', 'stderr')
_DISCARD_WORDS = ('devnull', 'pipe')
_ALTERNATIVE = (
    'use ProcessTransport (isocluster.transport.ProcessTransport), which shares listening sockets '
    'between the workers of one machine'
)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError(
            "RayTransport needs the ray package: pip install 'isocluster[ray]' (or 'ray>=2.9')"
        ) from exc
    return ray


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass



# ---------------------------------------------------------------------------------------
# Primary side


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
            raise TransportError(f'{self._describe()} is closed', worker_id=self.id)
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


class RayTransport(base.RealLoopTransport):
    """Workers are Ray actors, on this machine or across a Ray cluster.

    `address`: passed to `ray.init(address=...)` when Ray is not initialised yet (None: a
    local instance, or `RAY_ADDRESS`); `ray_init_kwargs` go to `ray.init` too.
    `worker_options`: the actor options of every worker (`num_cpus`, `num_gpus`, `memory`,
    `resources`, `scheduling_strategy`, `runtime_env`, ...), or a callable `spec -> dict`
    for per-worker placement. `max_restarts` is always 0: the primary's restart policy
    replaces workers, not Ray.
    """

    def __init__(self, address: str | None = None, *, worker_options: 'Mapping[str, Any] | Callable[[base.WorkerSpec], Mapping[str, Any]] | None' = None,
                 max_frame_size: int = protocol.DEFAULT_MAX_FRAME_SIZE,
                 loop: asyncio.AbstractEventLoop | None = None, **ray_init_kwargs: Any) -> None:
        if not isinstance(max_frame_size, int) or isinstance(max_frame_size, bool) or max_frame_size < 1:
            raise ValueError(f'max_frame_size: expected a positive int, got {max_frame_size!r}')
        if worker_options is not None and not (callable(worker_options) or isinstance(worker_options, Mapping)):
            raise TypeError(f'worker_options: expected a mapping or a callable, got {worker_options!r}')
        self._ray = _import_ray()
        self.address = address
        self.max_frame_size = max_frame_size
        self._worker_options = worker_options
        self._init_kwargs = ray_init_kwargs
        self._loop = loop
        self._owns_loop = False
        self._closed = False
        self._started_ray = False
        self._actor_class: Any = None
        self._links: set[RayWorkerLink] = set()

    def check_spec(self, spec: base.WorkerSpec) -> None:
        if spec.target is None:
            raise ValueError(
                'the Ray transport runs only worker_target workers: pass worker_target=<a module-level '
                'callable importable on every node>; worker_script (and the current-script default) '
                'needs ProcessTransport'
            )
        for name, value in (spec.stdio or {}).items():
            if name not in _STREAMS:
                raise ValueError(f'worker_stdio: unknown stream {name!r}; use {_STREAMS}')
            if value not in (None, 'inherit', *_DISCARD_WORDS):
                raise ValueError(
                    f'worker_stdio[{name!r}]: the Ray transport accepts only None, "inherit", "devnull" or "pipe" '
                    f'(a worker may run on another host, so file objects and fds cannot be passed), got {value!r}'
                )

    def start_worker(self, spec: base.WorkerSpec, listener: base.LinkListener) -> RayWorkerLink:
        if self._closed:
            raise TransportError('the Ray transport is closed', worker_id=spec.id)
        self.check_spec(spec)
        actor_class = self._connect(spec)
        options = self._options_for(spec)
        try:
            actor = actor_class.options(**options).remote(
                spec.id, self._codec_argument(spec.codec), spec.target, self._discarded_streams(spec),
                self.max_frame_size,
            )
        except Exception as exc:
            raise TransportError(f'could not start worker {spec.id} as a Ray actor: {exc!r}', worker_id=spec.id) from exc
        link = RayWorkerLink(self, spec, actor, listener)
        self._links.add(link)
        link._start()
        return link

    def _connect(self, spec: base.WorkerSpec) -> Any:
        ray = self._ray
        if not ray.is_initialized():
            kwargs = dict(self._init_kwargs)
            if self.address is not None:
                kwargs['address'] = self.address
            try:
                ray.init(**kwargs)
            except Exception as exc:
                raise TransportError(f'could not connect to Ray: {exc!r}', worker_id=spec.id) from exc
            self._started_ray = True
        if self._actor_class is None:
            self._actor_class = ray.remote(_WorkerActor)
        return self._actor_class

    def _options_for(self, spec: base.WorkerSpec) -> dict[str, Any]:
        options = self._worker_options
        chosen = dict((options(spec) if callable(options) else options) or {})
        chosen['max_restarts'] = 0
        chosen.setdefault('max_task_retries', 0)
        return chosen

    @staticmethod
    def _codec_argument(codec: protocol.Codec) -> Any:
        """A built-in codec travels by name (its C encoder does not pickle); others as objects."""
        try:
            if type(protocol.get_codec(codec.name)) is type(codec):
                return codec.name
        except (ValueError, TypeError):
            pass
        return codec

    @staticmethod
    def _discarded_streams(spec: base.WorkerSpec) -> tuple[str, ...]:
        choices: dict[str, Any] = {'stdout': 'pipe', 'stderr': 'pipe'} if spec.silent else {}
        choices.update(spec.stdio or {})
        return tuple(name for name in ('stdout', 'stderr') if choices.get(name) in _DISCARD_WORDS)

    def _watch(self, ref: Any, callback: Callable[[Any], None]) -> None:
        """Call `callback(future)` on the loop when the object `ref` is ready (or failed)."""
        future = ref.future()
        future.add_done_callback(lambda done: self._call_threadsafe(callback, done))

    def _call_threadsafe(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if self._closed or loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass  # the loop closed meanwhile

    def bind(self, address: Any, reuse_port: bool = False) -> Any:
        raise NotSupportedError(f'the Ray transport cannot share listening sockets ({address!r}); {_ALTERNATIVE}')

    def close(self) -> None:
        """Kill the actors still alive; shut Ray down if this transport started it; close the
        loop this transport created once it has stopped (call again after it stops)."""
        if not self._closed:
            self._closed = True
            for link in list(self._links):
                link._abandon()
            self._links.clear()
            if self._started_ray:
                self._started_ray = False
                try:
                    self._ray.shutdown()
                except Exception:
                    pass
        self._close_owned_loop()


# ---------------------------------------------------------------------------------------
# Worker side (runs in the actor's process)


class _RayPrimaryLink(base.ThreadedPrimaryLink):
    """The worker's end; lives on the worker's loop thread, fed by the actor's loop."""

    def __init__(self, runtime: '_Runtime', worker_id: int, codec: protocol.Codec,
                 loop: asyncio.AbstractEventLoop, max_frame_size: int) -> None:
        self.worker_id = worker_id
        self.codec = codec
        self.loop = loop
        self.max_frame_size = max_frame_size  # the transport's, so a worker's send rejects what the primary would
        self._runtime = runtime
        self._decoder = protocol.FrameDecoder(max_frame_size)
        self._receiver: base.LinkReceiver | None = None
        self._backlog: collections.deque[protocol.Frame] = collections.deque()
        self._delivering = False
        self._eof = False
        self._closed = False
        self._finished = False
        self._kill_deadline: float | None = None
        self._kill_timer: threading.Timer | None = None
        # Counts the runtime's outbox: bytes are queued when pushed and flushed once this
        # loop hears that the primary pulled them (`_Runtime.pull`), so backpressure and
        # max_queued_bytes hold on this side too.
        self.flow = LinkFlow(loop)

    def _describe(self) -> str:
        return f'link of worker {self.worker_id} to its primary'

    @property
    def is_open(self) -> bool:
        return not (self._closed or self._eof or self._runtime.code is not None)

    # receiving

    def _receive(self, blob: bytes, eof: bool, ack: Any) -> None:
        """A batch from the primary, on the worker's loop (scheduled by `_Runtime.deliver`)."""
        try:
            if self._closed or self._eof:
                return  # this end is closed: what arrives now is discarded (R109)
            if blob:
                self._dispatch(blob)
            if eof and not self._eof:
                self._eof = True
                if not self._backlog:
                    self._deliver_eof()
        finally:
            self._runtime.acknowledge(ack)

    def _dispatch(self, blob: bytes) -> None:
        # A ProtocolError here is fatal to the worker (R120): it reaches the loop's handler.
        for kind, payload in self._decoder.feed(blob):
            receiver = self._receiver
            if receiver is None and kind == protocol.DISCONNECT:
                self.finish()  # R102: a worker that never built a ClusterWorker just ends
            elif receiver is not None and not self._backlog:
                receiver.link_frame(kind, payload)
            else:
                self._backlog.append((kind, payload))
        if self._decoder.error is not None:
            raise self._decoder.error

    def _deliver_eof(self) -> None:
        if self._receiver is not None:
            self._receiver.link_closed()
        else:
            self.finish()

    # writing

    def write(self, kind: str, payload: Any) -> None:
        if kind == protocol.LISTEN:
            self._refuse_listen(payload)
        if not self.is_open:
            raise TransportError(f'{self._describe()} is closed', worker_id=self.worker_id)
        self._runtime.push(protocol.encode_frame(kind, payload))

    def _refuse_listen(self, payload: Any) -> None:
        # The seam has no "listen unsupported" answer: ClusterWorker.listen() has already
        # registered a future for this request, which would never be answered. Drop it, so
        # nothing is left to be rejected (and reported as never retrieved) at destroy.
        requests = getattr(self._receiver, '_listen_requests', None)
        if isinstance(requests, dict) and isinstance(payload, dict):
            future = requests.pop(payload.get('id'), None)
            if future is not None and not future.done():
                future.cancel()
        raise NotSupportedError(
            f'worker {self.worker_id}: listen() is not supported on the Ray transport (workers may run on '
            f'different hosts, so they cannot share a listening socket); {_ALTERNATIVE}',
            worker_id=self.worker_id,
        )

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

    def _serve(self) -> None:
        loop = self.loop
        runtime = self._runtime
        while not self._finished and runtime.code is None:
            loop.run_forever()
        if runtime.code is not None:
            return  # ended abruptly (fatal error, kill timer): no cleanup, as a dead process
        self._wind_down()


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
        self.loop.set_exception_handler(self._loop_exception)
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
        code = 1
        try:
            asyncio.set_event_loop(self.loop)
            self.push(protocol.encode_frame(protocol.ONLINE, None))
            result = self.target()
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result, loop=self.loop)
                task.add_done_callback(self._target_done)
            self.link._serve()
            code = 0
        except SystemExit as exc:
            code = base.exit_code_of(exc)
        except BaseException:
            if self.code is None:
                try:
                    traceback.print_exc()
                except BaseException:
                    pass
            code = 1
        finally:
            _flush_stdio()
            self.end(code)

    def _target_done(self, task: 'asyncio.Future[Any]') -> None:
        if not task.cancelled() and task.exception() is not None:
            self._die(task.exception())  # type: ignore[arg-type]

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get('exception')
        # "exception was never retrieved" comes from a garbage-collected future: reported as
        # usual, not fatal (R34), as on the process transport.
        if error is None or 'never retrieved' in context.get('message', ''):
            loop.default_exception_handler(context)
            return
        self._die(error, context.get('message'))

    def _die(self, error: BaseException, message: str | None = None) -> None:
        """R33: a traceback on stderr, then the worker ends with code 1 at once."""
        try:
            if message:
                print(message, file=sys.stderr)
            traceback.print_exception(error, file=sys.stderr)
            _flush_stdio()
        finally:
            self.end(1)
            self.loop.stop()

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
            _flush_stdio()
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
