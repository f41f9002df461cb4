"""ClusterWorker: a worker's side of the cluster (SPEC §5).

Binds to the link of the worker whose code is running (a ContextVar the transport sets),
so the same code works in a forked process, an exec'd script, and a simulated worker.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from . import protocol
from .errors import EncodeError, ListenError, NotAWorkerError, PrimaryLost, ProtocolError, SendError, TransportError
from .lifecycle import Initializable
from .routing import PendingRequests, Request, route
from .checks import check_seconds
from .pacing import DEFAULT_MAX_QUEUED_BYTES, check_max_queued_bytes, over_cap
from .transport.base import PrimaryLink, current_link
from .transport.flow import HIGH_WATER

DEFAULT_KILL_TIMEOUT = 6.765
_MISSING: Any = object()


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


class ClusterWorker(Initializable):
    """The worker's end of the cluster. Build one in the worker's code; see DESIGN.md."""

    _pubsub: ClassVar[dict[str, dict[str, Any]]] = {
        'primary_message': {},
        'primary_disconnect': {},
    }

    worker_id = _WorkerId()

    @staticmethod
    def is_worker() -> bool:
        """True inside a worker started by a ClusterPrimary."""
        return current_link() is not None

    def __init__(self, *, initialize: bool = True, max_queued_bytes: int | None = DEFAULT_MAX_QUEUED_BYTES) -> None:
        self._queue_cap = check_max_queued_bytes(max_queued_bytes)
        self._link: PrimaryLink | None = current_link()
        self._receiving = False
        self._disconnected = False
        self._kill_timeout = DEFAULT_KILL_TIMEOUT
        self._listen_requests: dict[int, asyncio.Future[Any]] = {}
        self._next_request = 1
        self._requests = PendingRequests()
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
        flow = link.flow
        try:
            data = protocol.encode_message(link.codec, message, link.max_frame_size, link.worker_id)
            if flow.pending and flow.pending + len(data) > self._queue_cap:
                return self._rejected(over_cap(
                    f'the link of worker {link.worker_id} to the primary', link.worker_id, flow.pending, self._queue_cap,
                ))
            link.write(protocol.MESSAGE, data)
        except EncodeError as error:
            return self._rejected(error)
        except TransportError as error:
            return self._rejected(_link_closed(link, error))
        if flow.pending > HIGH_WATER:  # backpressure: resolves once the link has drained
            return flow.completion()
        return self._resolved_future()

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

    async def listen(self, address: Any) -> Any:
        """A listening socket for `address`, bound once by the primary and shared by every worker."""
        link = self._link
        if link is None:
            raise _not_a_worker('listen')
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
            link.write(protocol.LISTEN, {'id': request, 'address': wire_address})
        except TransportError as error:
            self._listen_requests.pop(request, None)
            raise ListenError('listen(): the link to the primary is closed', worker_id=link.worker_id) from error
        payload = await future
        if 'error' in payload:
            cause = OSError(payload['errno'], payload['strerror']) if payload.get('errno') else None
            raise ListenError(
                f'the primary could not listen on {address!r}: {payload["error"]}', worker_id=link.worker_id
            ) from cause
        return payload['socket']

    # -- link events (called by the transport) ----------------------------------------

    def link_frame(self, kind: str, payload: Any) -> None:
        link = self._link
        if kind == protocol.MESSAGE:
            if not self._disconnected and link is not None:
                message = protocol.decode_message(link.codec, payload, link.worker_id)
                self._publish('primary_message', {'message': message})
        elif kind == protocol.REQUEST:
            if not self._disconnected and link is not None:
                self._serve_request(link, payload)
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
            self._primary_gone()
        elif kind == protocol.LISTENING:
            future = self._listen_requests.pop(payload.get('id'), None) if isinstance(payload, dict) else None
            if future is not None and not future.done():
                future.set_result(payload)
            elif isinstance(payload, dict) and payload.get('socket') is not None:
                payload['socket'].close()
        else:
            raise ProtocolError(f'worker received an unexpected {kind.upper()} frame from the primary')

    def _serve_request(self, link: PrimaryLink, payload: Any) -> None:
        request_id, data = payload
        message = protocol.decode_message(link.codec, data, link.worker_id)
        request = Request(request_id, lambda reply: link.write(protocol.REPLY, reply), link.codec, self._spawn,
                          link.max_frame_size)
        try:
            self._publish('primary_message', {'message': message, 'request': request})
        except Exception as error:
            # A handler error inside a request goes back to the requester; the worker lives on.
            if request.answered:
                raise
            request.fail(error)
        request.settle_unanswered(message.get('type') if type(message) is dict else None)

    def link_closed(self) -> None:
        self._primary_gone()

    def _primary_gone(self) -> None:
        if self._disconnected:
            return
        self._disconnected = True
        link = self._link
        if link is not None:
            link.close()
            link.arm_kill_timer(self._kill_timeout)
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
        self._call_soon(self.destroy)
