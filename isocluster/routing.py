"""Type routing and request/reply, shared by the primary and the worker.

A message `{'type': 'x', ...}` is routed to the method `<prefix>x` (R76, R108). A message
sent with `request()` carries a `Request` in the event data: the routed method's return
value (or awaitable) becomes the reply, or a handler calls `event.reply(value)`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import traceback
from typing import Any, Callable

from . import protocol
from .frames import reply_error
from .errors import EncodeError, ProtocolError, RemoteError, RequestTimeout, TransportError


# Results that cannot be awaitable: inspect.isawaitable() asks an ABC (~0.5 us) on every
# request's path, and a handler's result is most often one of these.
_PLAIN = frozenset({int, float, str, bytes, bool, dict, list, tuple})


def _awaitable(result: Any) -> bool:
    return result is not None and type(result) not in _PLAIN and inspect.isawaitable(result)


_ROUTE_NAMES_KEPT = 1024


def route_name(names: dict[str, str], prefix: str, kind: str) -> str:
    """The method name a message of type `kind` routes to ('' when `kind` is no identifier,
    R76), remembered in `names` (at most `_ROUTE_NAMES_KEPT` types: a stream of made-up types
    cannot grow it). Only the name is kept: the method itself is looked up on every message,
    so one added or overridden later, on the class or the instance, is found (R7)."""
    name = prefix + kind if kind.isidentifier() else ''
    if len(names) < _ROUTE_NAMES_KEPT:
        names[kind] = name
    return name


# prefix -> (type -> method name), as routed_publish keeps them: the few prefixes the library
# routes with; an unknown one past the bound is computed per message, not kept.
_ROUTE_NAMES: dict[str, dict[str, str]] = {}
_PREFIXES_KEPT = 8


def routed_method(publisher: Any, names: dict[str, str], prefix: str, message: Any) -> Any:
    """The method `message` routes to (R76): `<prefix><type>` of a dict message whose 'type' is
    a string, looked up now on `publisher`, or None. Only its name is kept (in `names`, by
    route_name): the method is looked up on every message, so one added or overridden later,
    on the class or the instance, is found (late binding, R7)."""
    if type(message) is not dict:
        return None
    kind = message.get('type')
    if type(kind) is not str:
        return None
    name = names.get(kind)
    if name is None:
        name = route_name(names, prefix, kind)
    if not name:
        return None
    method = getattr(publisher, name, None)
    return method if callable(method) else None


def route(publisher: Any, prefix: str, event: Any) -> None:
    """Call `<prefix><type>` for a typed dict message; feed its result to a pending request."""
    names = _ROUTE_NAMES.get(prefix)
    if names is None:
        names = {}
        if len(_ROUTE_NAMES) < _PREFIXES_KEPT:
            _ROUTE_NAMES[prefix] = names
    method = routed_method(publisher, names, prefix, event.data['message'])
    if method is None:
        return
    result = method(event)
    request = event.data.get('request')
    if request is not None:
        request.answer_with(result)
    elif _awaitable(result):
        publisher._spawn(result)


class Request:
    """One request received; answer it exactly once with `reply()` or `fail()`."""

    __slots__ = ('id', 'answered', '_write', '_codec', '_spawn', 'pending', '_max_frame_size')

    def __init__(self, request_id: int, write: Callable[[Any], None], codec: protocol.Codec, spawn: Callable[[Any], Any],
                 max_frame_size: int = protocol.DEFAULT_MAX_FRAME_SIZE) -> None:
        self.id = request_id
        self._max_frame_size = max_frame_size
        self.answered = False
        self.pending = False  # an awaitable will answer it
        self._write = write
        self._codec = codec
        self._spawn = spawn

    def reply(self, value: Any = None) -> None:
        if self.answered:
            raise RuntimeError(f'request {self.id} has already been answered')
        try:
            data = protocol.encode_message(self._codec, value, self._max_frame_size, overhead=protocol.REPLY_OVERHEAD)
        except EncodeError as error:
            self.fail(EncodeError(f'the reply could not be sent: {error}'))
            return
        self._send(True, data)

    def fail(self, error: BaseException) -> None:
        if self.answered:
            raise RuntimeError(f'request {self.id} has already been answered')
        kind, message = type(error).__qualname__, str(error)
        trace = ''.join(traceback.format_exception(error))
        # The description must fit in a frame too: the traceback goes first, then the message
        # is shortened.
        while True:
            data = json.dumps({'type': kind, 'message': message, 'traceback': trace}).encode('utf-8')
            if len(data) + 1 + protocol.REPLY_OVERHEAD <= self._max_frame_size or not (trace or message):
                break
            if trace:
                trace = ''
            else:
                message = message[:len(message) // 2]
        self._send(False, data)

    def _send(self, ok: bool, data: bytes) -> None:
        self.answered = True
        self.pending = False
        try:
            self._write((self.id, ok, data))
        except TransportError:
            pass  # the requester is gone; its side settles the request as lost

    def answer_with(self, result: Any) -> None:
        if self.answered:
            return
        if _awaitable(result):
            self.pending = True
            self._spawn(self._await_answer(result))
        else:
            self.reply(result)

    async def _await_answer(self, awaitable: Any) -> None:
        try:
            value = await awaitable
        except asyncio.CancelledError:
            if not self.answered:
                self.fail(RuntimeError('the request handler was cancelled'))
            raise
        except Exception as error:
            if not self.answered:
                self.fail(error)
            return
        if not self.answered:
            self.reply(value)

    def settle_unanswered(self, kind: Any) -> None:
        """After the publish: a request nobody answered (and nobody will) fails clearly."""
        if not self.answered and not self.pending:
            self.fail(LookupError(f'no handler answered the request (message type {kind!r})'))


_NOBODY = object()


class PendingRequests:
    """Requests this side sent and whose replies it awaits.

    A reply settles a request only when it comes from the peer the request was sent to. The
    ids of requests that timed out are remembered (the last `_EXPIRED_KEPT`, and only while
    their peer lives) so that a late reply to one of them is told apart from a forged one; a
    cancelled request stays pending until its reply, timeout or peer ends it.
    """

    _EXPIRED_KEPT = 4096

    def __init__(self) -> None:
        self._next_id = 1
        self._pending: dict[int, tuple[asyncio.Future[Any], Any, asyncio.TimerHandle | None]] = {}
        self._expired: dict[int, Any] = {}  # request id -> the peer it was sent to
        self.late_replies = 0

    def open(self, loop: asyncio.AbstractEventLoop, peer: Any, timeout: float | None, describe: str) -> tuple[int, 'asyncio.Future[Any]']:
        request_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[Any] = loop.create_future()
        timer = None
        if timeout is not None:
            timer = loop.call_later(timeout, self._time_out, request_id, timeout, describe)
        self._pending[request_id] = (future, peer, timer)
        return request_id, future

    def cancel(self, request_id: int) -> None:
        entry = self._pending.pop(request_id, None)
        if entry is not None and entry[2] is not None:
            entry[2].cancel()

    def _expire(self, request_id: int, peer: Any) -> None:
        expired = self._expired
        expired[request_id] = peer
        if len(expired) > self._EXPIRED_KEPT:
            del expired[next(iter(expired))]

    def _time_out(self, request_id: int, timeout: float, describe: str) -> None:
        entry = self._pending.pop(request_id, None)
        if entry is not None:
            self._expire(request_id, entry[1])
            if not entry[0].done():
                entry[0].set_exception(RequestTimeout(f'{describe} got no reply within {timeout}s', worker_id=getattr(entry[1], 'id', None)))

    def settle(self, payload: Any, codec: protocol.Codec, worker_id: int | None, sender: Any = None) -> str | None:
        """Settle the request `payload` replies to. Returns None when the reply was taken or
        dropped as late, else why `sender` (None: the one peer) may not send it."""
        request_id, ok, data = payload
        entry = self._pending.get(request_id)
        if entry is None:
            peer = self._expired.pop(request_id, _NOBODY)
            if peer is not _NOBODY and sender is not None and peer is not sender:
                self._expired[request_id] = peer
                return f'a REPLY to request {request_id}, which was sent to another worker'
            if peer is _NOBODY and not 0 < request_id < self._next_id:
                return f'a REPLY to request {request_id}, which was never sent'
            self.late_replies += 1  # it timed out, was cancelled or was lost: dropped
            return None
        future, peer, timer = entry
        if sender is not None and peer is not sender:
            return f'a REPLY to request {request_id}, which was sent to another worker'
        del self._pending[request_id]
        if timer is not None:
            timer.cancel()
        if future.done():  # the requester cancelled it: a late reply
            self.late_replies += 1
            return None
        if ok:
            try:
                future.set_result(protocol.decode_message(codec, data, worker_id))
            except Exception as error:
                future.set_exception(error)
                return f'a REPLY to request {request_id} that could not be decoded ({error})'
            return None
        violation = None
        try:
            description = reply_error(data)
        except ProtocolError as error:  # the requester still learns that the handler failed
            violation = str(error)
            description = {'type': 'unknown', 'message': repr(data[:200]), 'traceback': ''}
        future.set_exception(RemoteError(
            f"the request handler raised {description['type']}: {description['message']}",
            worker_id=worker_id, remote_type=description['type'],
            remote_message=description['message'], remote_traceback=description['traceback'],
        ))
        return violation

    def lose(self, peer: Any, make_error: Callable[[], BaseException]) -> None:
        """Fail every request sent to `peer` (None: all of them)."""
        for request_id, target in list(self._expired.items()):
            if peer is None or target is peer:
                del self._expired[request_id]
        for request_id, (future, target, timer) in list(self._pending.items()):
            if peer is None or target is peer:
                del self._pending[request_id]
                if timer is not None:
                    timer.cancel()
                if not future.done():
                    future.set_exception(make_error())
