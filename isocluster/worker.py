"""ClusterWorker: a worker's side of the cluster (SPEC §5).

Binds to the link of the worker whose code is running (a ContextVar the transport sets),
so the same code works in a forked process, an exec'd script, and a simulated worker.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any, ClassVar

from . import drain, protocol, read_buffers
from .errors import EncodeError, ListenError, NotAWorkerError, PrimaryLost, ProtocolError, SendError, TransportError
from .lifecycle import Initializable
from .routing import PendingRequests, Request, route
from .routed_publish import routed_publisher, routed_receiver
from .request_gate import BatchAnswer, RequestGate, chunk_publisher
from .checks import check_seconds
from .pacing import DEFAULT_MAX_QUEUED_BYTES, check_max_queued_bytes, over_cap
from .transport.base import PrimaryLink, current_link
from .transport.flow import HIGH_WATER

DEFAULT_KILL_TIMEOUT = 6.765
# After a drain the worker still needs time to destroy itself: its kill timer is armed this
# long past drain_timeout (never shorter than the kill timeout; with the default 5 s drain both are 6.765 s).
DRAIN_CLEANUP = 1.765
_MISSING: Any = object()
_MESSAGE = protocol.MESSAGE


def _link_closed(link: PrimaryLink, error: TransportError) -> SendError:
    failure = SendError(
        f'worker {link.worker_id} could not send: the link to the primary is closed', worker_id=link.worker_id,
    )
    failure.__cause__ = error
    return failure


def _not_a_worker(method: str) -> NotAWorkerError:
    return NotAWorkerError(f'ClusterWorker.{method}() only works inside a worker process')


class _WorkerId:
    """`ClusterWorker.worker_id`, read on the class or an instance, at the moment it is read."""

    def __get__(self, instance: Any, owner: Any = None) -> int | None:
        link = current_link()
        return link.worker_id if link is not None else None


class _Draining:
    """`ClusterWorker.draining`: True once the primary asked this worker to leave; read on the
    class or an instance, so a server's code can ask without holding the worker."""

    def __get__(self, instance: Any, owner: Any = None) -> bool:
        link = current_link()
        return link is not None and link.draining


class ClusterWorker(Initializable):
    """The worker's end of the cluster. Build one in the worker's code; see DESIGN.md."""

    _pubsub: ClassVar[dict[str, dict[str, Any]]] = {
        'primary_message': {},
        'primary_disconnect': {},
    }

    worker_id = _WorkerId()
    draining = _Draining()

    @staticmethod
    def is_worker() -> bool:
        """True inside a worker started by a ClusterPrimary."""
        return current_link() is not None

    def __init__(self, *, initialize: bool = True, max_concurrency: int | None = None,
                 max_queued_bytes: int | None = DEFAULT_MAX_QUEUED_BYTES) -> None:
        self._queue_cap = check_max_queued_bytes(max_queued_bytes)
        if max_concurrency is not None and (type(max_concurrency) is not int or max_concurrency < 1):
            raise ValueError(f'max_concurrency: expected an int >= 1 or None, got {max_concurrency!r}')
        # Requests beyond max_concurrency wait their turn here, in order (request_gate.py).
        self._link: PrimaryLink | None = current_link()
        self._gate = RequestGate(max_concurrency, self._call_soon, _read_counter(self._link)) \
            if max_concurrency is not None else None
        self._receiving = False
        self._disconnected = False
        self._kill_timeout = DEFAULT_KILL_TIMEOUT
        self._listen_requests: dict[int, asyncio.Future[Any]] = {}
        self._next_request = 1
        self._requests = PendingRequests()
        self._write_reply: Any = None  # link.write(REPLY, ...) as one C-level call
        self._listen_sockets: list[Any] = []
        self._drain_timeout = 0.0
        self._drain_servers: list[Any] = []
        self._tasks_before_drain: set[Any] = set()
        super().__init__(initialize=initialize)

    def _pubsub_loop(self) -> asyncio.AbstractEventLoop:
        if self._link is not None:
            return self._link.loop
        return super()._pubsub_loop()

    # -- lifecycle -------------------------------------------------------------------

    def _initialize(self) -> None:
        if self._link is None:
            raise NotAWorkerError(
                'ClusterWorker can only initialize inside a worker process started by a ClusterPrimary '
                '(use ClusterWorker(initialize=False) elsewhere)'
            )
        if not self._receiving:
            self._receiving = True
            self._deliver = routed_publisher(self, 'primary_message', '_event_primary_message_',
                                             ClusterWorker._event_primary_message)
            if type(self).link_message is ClusterWorker.link_message:  # not overridden: one call per frame
                codec, worker_id = self._link.codec, self._link.worker_id
                self.link_message, self.link_messages = routed_receiver(  # type: ignore[method-assign]
                    self, 'primary_message', '_event_primary_message_', ClusterWorker._event_primary_message,
                    codec.decode, lambda error: protocol.decode_error(codec, error, worker_id))
            self._link.attach(self)

    def _on_initialized(self) -> None:
        link = self._link
        if link is not None and not link.ready_sent:
            link.ready_sent = True
            try:
                link.write(protocol.READY, None)
            except TransportError:
                pass  # the primary is gone; primary_disconnect follows

    def destroy(self, *args: Any, timeout: float = DEFAULT_KILL_TIMEOUT, **kwargs: Any) -> 'ClusterWorker':
        """Disconnect from the primary and end the worker; `timeout` bounds how long that may take."""
        seconds = check_seconds('timeout', timeout, allow_zero=False)
        if not self.destroyed:
            self._kill_timeout = min(self._kill_timeout, seconds)
        super().destroy(*args, **kwargs)
        return self

    def _destroy(self, *args: Any, **kwargs: Any) -> None:
        link = self._link
        if self._receiving and link is not None:
            self._receiving = False
            link.detach(self)
        if link is not None and link.is_open and not self._disconnected:
            try:
                link.write(protocol.EXITING, None)
            except TransportError:
                pass
            link.close()
        for future in self._listen_requests.values():
            if not future.done():
                future.set_exception(ListenError('the worker was destroyed before the primary answered listen()'))
        self._listen_requests.clear()
        self._requests.lose(None, lambda: PrimaryLost('the worker was destroyed before the primary replied'))
        super()._destroy(*args, **kwargs)
        if link is not None:
            link.arm_kill_timer(self._kill_timeout)
            link.finish()

    def run(self) -> None:
        """Script mode: run this worker's loop until the worker ends."""
        if self._link is None:
            raise NotAWorkerError('ClusterWorker.run() can only be called inside a worker process')
        self._link.run()

    # -- messages --------------------------------------------------------------------

    def send(self, message: Any = _MISSING) -> 'asyncio.Future[None]':
        if message is _MISSING:
            raise TypeError("send() missing required argument: 'message'")
        link = self._link  # inline, not _prepare(): this is the hot path
        if link is None:
            return self._rejected(_not_a_worker('send'))
        codec = link.codec
        try:
            data = codec.encode(message)  # protocol.encode_message inline, as the primary's Outbox.send
        except Exception as exc:
            return self._rejected(protocol.encode_failure(codec, exc, link.worker_id))
        size = len(data)
        if size >= link.max_frame_size:  # its frame adds the kind byte
            return self._rejected(protocol.oversized(size, link.max_frame_size, link.worker_id))
        flow = link.flow
        pending = flow.pending
        if pending and pending + size > self._queue_cap:
            return self._rejected(over_cap(
                f'the link of worker {link.worker_id} to the primary', link.worker_id, pending, self._queue_cap,
            ))
        try:
            link.write(_MESSAGE, data)
        except TransportError as error:
            return self._rejected(_link_closed(link, error))
        if flow.pending > HIGH_WATER:  # backpressure: resolves once the link has drained
            return flow.completion()
        return self._written or self._resolved_future()

    def request(self, message: Any, *, timeout: float | None = None) -> 'asyncio.Future[Any]':
        """Send `message` to the primary and await its reply (its routed handler's return value)."""
        check_seconds('timeout', timeout, allow_none=True, allow_zero=False)
        try:
            link, data = self._prepare('request', message, protocol.REQUEST_OVERHEAD)
        except (NotAWorkerError, EncodeError) as error:
            return self._rejected(error)
        request_id, reply = self._requests.open(self._pubsub_loop(), None, timeout, 'the request to the primary')
        try:
            link.write(protocol.REQUEST, (request_id, data))
        except TransportError as error:
            self._requests.cancel(request_id)
            return self._rejected(_link_closed(link, error))
        return reply

    def _prepare(self, method: str, message: Any, overhead: int = 0) -> tuple[PrimaryLink, bytes]:
        """The link and the message's bytes. Raises NotAWorkerError outside a worker and
        EncodeError for a message that cannot travel."""
        link = self._link
        if link is None:
            raise _not_a_worker(method)
        return link, protocol.encode_message(link.codec, message, link.max_frame_size, link.worker_id, overhead)

    async def listen(self, address: Any, *, reuse_port: bool = False) -> Any:
        """A listening socket for `address`, bound once by the primary and shared by every worker;
        `reuse_port=True` (TCP, Linux): a SO_REUSEPORT socket of this worker's own on the same
        address, so that the kernel balances connections among the workers."""
        link = self._link
        if link is None:
            raise _not_a_worker('listen')
        if type(reuse_port) is not bool:
            raise TypeError(f'reuse_port: expected True or False, got {reuse_port!r}')
        if isinstance(address, tuple):
            if len(address) != 2 or not isinstance(address[0], str) or type(address[1]) is not int:
                raise ValueError(f'address: expected (host, port) or a Unix socket path, got {address!r}')
            wire_address: Any = list(address)
        elif isinstance(address, str):
            wire_address = address
        else:
            raise TypeError(f'address: expected (host, port) or a Unix socket path, got {address!r}')
        request = self._next_request
        self._next_request += 1
        future = self._pubsub_loop().create_future()
        self._listen_requests[request] = future
        try:
            link.write(protocol.LISTEN, {'id': request, 'address': wire_address, **({'reuse_port': True} if reuse_port else {})})
        except TransportError as error:
            self._listen_requests.pop(request, None)
            raise ListenError('listen(): the link to the primary is closed', worker_id=link.worker_id) from error
        except BaseException:  # a transport that cannot listen at all (NotSupportedError): no answer will come
            self._listen_requests.pop(request, None)
            raise
        payload = await future
        if 'error' in payload:
            cause = OSError(payload['errno'], payload['strerror']) if payload.get('errno') else None
            raise ListenError(
                f'the primary could not listen on {address!r}: {payload["error"]}', worker_id=link.worker_id
            ) from cause
        self._listen_sockets.append(payload['socket'])
        read_buffers.prepare_for_socket_reads()  # about to serve: asyncio's reads stop mapping memory
        return payload['socket']

    # -- link events (called by the transport) ----------------------------------------

    def link_message(self, payload: Any) -> None:
        """A MESSAGE frame: `link_frame(MESSAGE, payload)`, which a link may call directly. Once
        attached to its link, the worker's instance attribute takes over: the same, in one call,
        and `link_messages` for a run of them (routed_publish.routed_receiver)."""
        link = self._link
        if not self._disconnected and link is not None:
            try:
                message = link.codec.decode(payload)
            except Exception as error:  # inline, not decode_message(): this is the hot path
                raise protocol.decode_error(link.codec, error, link.worker_id) from error
            self._deliver({'message': message})

    def _deliver(self, data: dict[str, Any]) -> None:
        """Publish primary_message (R108). Once attached to its link, the worker's instance
        attribute takes over: the same publish, straight to the routed method while nothing
        else can observe it (routed_publish.py)."""
        self._publish('primary_message', data)

    def link_frame(self, kind: str, payload: Any) -> None:
        link = self._link
        if kind == protocol.MESSAGE:
            self.link_message(payload)
        elif kind == protocol.REQUEST:
            if not self._disconnected and link is not None:
                if self._gate is None:
                    self._serve_request(link, payload)
                else:
                    self._gate.submit(lambda done: self._serve_request(link, payload, done))
        elif kind == protocol.REQUEST_BATCH:
            if not self._disconnected and link is not None:
                self._serve_batch(link, payload)
        elif kind == protocol.REPLY:
            if link is not None:
                self._requests.settle(payload, link.codec, link.worker_id)
        elif kind == protocol.HEARTBEAT:
            if link is not None and link.is_open:
                try:
                    link.write(protocol.HEARTBEAT_ACK, payload)
                except TransportError:
                    pass
        elif kind == protocol.DISCONNECT:
            self._primary_gone(_drain_timeout_of(payload))
        elif kind == protocol.LISTENING:
            future = self._listen_requests.pop(payload.get('id'), None) if isinstance(payload, dict) else None
            if future is not None and not future.done():
                future.set_result(payload)
            elif isinstance(payload, dict) and payload.get('socket') is not None:
                payload['socket'].close()
        else:
            raise ProtocolError(f'worker received an unexpected {kind.upper()} frame from the primary')

    def _serve_request(self, link: PrimaryLink, payload: Any, done: Any = None) -> None:
        request_id, data = payload
        if done is None:
            write = self._write_reply
            if write is None:
                write = self._write_reply = partial(link.write, protocol.REPLY)
        else:
            def write(reply: Any) -> None:
                try:
                    link.write(protocol.REPLY, reply)
                finally:
                    done()  # its place in the gate is free: the next request may start
        message = protocol.decode_message(link.codec, data, link.worker_id)
        self._publish_request(message, Request(request_id, write, link.codec, self._spawn, link.max_frame_size))

    def _serve_batch(self, link: PrimaryLink, payload: Any) -> None:
        request_id, data = payload
        messages = protocol.decode_message(link.codec, data, link.worker_id)
        if type(messages) is not list or not messages:
            raise ProtocolError(f'worker {link.worker_id} received a REQUEST_BATCH that is not a list of messages')

        def job(done: Any) -> None:
            BatchAnswer(link, request_id, messages, chunk_publisher(self, ClusterWorker._event_primary_message),
                        self._spawn, done).start()

        if self._gate is None:
            job(lambda: None)
        else:
            self._gate.submit(job)

    def _publish_request(self, message: Any, request: Request) -> None:
        try:
            self._deliver({'message': message, 'request': request})
        except Exception as error:
            # A handler error inside a request goes back to the requester; the worker lives on.
            if request.answered:
                raise
            request.fail(error)
        request.settle_unanswered(message.get('type') if type(message) is dict else None)

    def link_closed(self) -> None:
        self._primary_gone()

    def _primary_gone(self, drain_timeout: float = 0.0) -> None:
        if self._disconnected:
            return
        self._disconnected = True
        link = self._link
        if link is not None:
            link.close()
            if drain_timeout > 0:
                link.draining = True
                self._drain_timeout = drain_timeout
                # Found now: a primary_disconnect handler may close its server before the default action.
                self._drain_servers = drain.servers_on(link.loop, self._listen_sockets)
                self._tasks_before_drain = set(self._ps_tasks)
            link.arm_kill_timer(max(self._kill_timeout, drain_timeout + DRAIN_CLEANUP))
        for future in self._listen_requests.values():
            if not future.done():
                future.set_exception(ListenError('the primary disconnected before answering listen()'))
        self._listen_requests.clear()
        self._requests.lose(None, lambda: PrimaryLost('the primary disconnected before it replied'))
        self._publish('primary_disconnect', {})

    # -- default actions -------------------------------------------------------------

    def _event_primary_message(self, event: Any) -> None:
        route(self, '_event_primary_message_', event)

    def _event_primary_disconnect(self, event: Any) -> None:
        """Drain, then end: stop accepting, wait (at most drain_timeout) for the connections of
        the servers on listen() sockets and for the coroutine handlers of this event."""
        servers = self._drain_servers
        for server in servers:
            server.close()  # stops accepting and closes this worker's dup of the listening socket
        held: list[Any] = []
        if self._drain_timeout > 0:  # else R111 as ever: destroy on the next loop turn
            held += [drain.connections_closed(server) for server in servers if drain.has_connections(server)]
            held += [task for task in self._ps_tasks - self._tasks_before_drain if not task.done()]
        if held:
            self._spawn(self._drain_then_destroy(held))
        else:
            self._call_soon(self.destroy)

    async def _drain_then_destroy(self, held: list[Any]) -> None:
        waits = [asyncio.ensure_future(awaitable) for awaitable in held]
        try:
            await asyncio.wait(waits, timeout=self._drain_timeout)
        finally:
            for wait in waits:
                if wait not in self._ps_tasks:
                    wait.cancel()  # our own waiters only: a handler's task is cancelled by the worker's end
        self.destroy()


def _read_counter(link: PrimaryLink | None) -> Any:
    """How the request gate tells one read of `link` from the next (None: it cannot)."""
    if link is None or link.reads is None:
        return None
    return lambda: link.reads


def _drain_timeout_of(payload: Any) -> float:
    """The drain_timeout a DISCONNECT carries (none from an older primary: no drain)."""
    value = payload.get('drain_timeout') if isinstance(payload, dict) else None
    return float(value) if isinstance(value, (int, float)) and value > 0 else 0.0
