"""The primary's writes to workers: `send()` and `request()`. Which workers a destination
names, the queued-bytes cap, backpressure, and every failure as a rejected future (R71-R75)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable

from . import protocol
from .errors import EncodeError, InvalidDestinationError, SendError, TransportError
from .handle import WorkerHandle
from .pacing import admits, over_cap
from .states import CONNECTED
from .transport.flow import HIGH_WATER, all_resolved

if TYPE_CHECKING:
    from .registry import Registry
    from .transport.base import Transport


_MESSAGE = protocol.MESSAGE


def write_failure(target: WorkerHandle, error: TransportError) -> SendError:
    failure = SendError(
        f'could not write to worker {target.id}: {error}; the worker is gone or its link broke',
        worker_id=target.id,
    )
    failure.__cause__ = error
    return failure


def _over_cap(target: WorkerHandle, pending: int, cap: float) -> SendError:
    return over_cap(f'the link to worker {target.id}', target.id, pending, cap)


class Outbox:
    def __init__(self, registry: 'Registry', codec: protocol.Codec, transport: 'Transport', queue_cap: float,
                 loop: Callable[[], asyncio.AbstractEventLoop],
                 resolved: Callable[[], 'asyncio.Future[None]'], rejected: Callable[[BaseException], 'asyncio.Future[Any]'],
                 handled: Callable[[WorkerHandle, int], None]) -> None:
        self._registry = registry
        self._codec = codec
        self._encode = codec.encode
        self._transport = transport
        self._queue_cap = queue_cap
        # Messages written, all workers: primary.stats()'s 'messages_out', counted here (an
        # attribute costs a send ~50 ns less than the stats dict's item).
        self.messages_out = 0
        self._loop = loop
        self._resolved = resolved
        self._rejected = rejected
        self._handled = handled  # `count` more messages written to a worker (figures, recycling)
        self._live = registry.live  # the same dict for the registry's life: one lookup less per send
        self._written: asyncio.Future[None] | None = None  # what `resolved` returns: asked for once

    def send(self, message: Any, to: Any) -> 'asyncio.Future[None]':
        if type(to) is WorkerHandle:
            life = to.life
            if life.state in CONNECTED and self._live.get(to.id) is to:
                # One connected worker, the common case (a stream's every message): the codec
                # called here, no destination lists, no layer a connected link does not need.
                try:
                    data = self._encode(message)
                except Exception as exc:
                    return self._rejected(protocol.encode_failure(self._codec, exc))
                size = len(data)
                if size >= self._transport.max_frame_size:  # its frame adds the kind byte
                    return self._rejected(protocol.oversized(size, self._transport.max_frame_size))
                link = life.link
                flow = link.flow
                pending = flow.pending
                if pending and pending + size > self._queue_cap:
                    return self._rejected(_over_cap(to, pending, self._queue_cap))
                try:
                    link.write(_MESSAGE, data)
                except TransportError as error:
                    return self._rejected(write_failure(to, error))
                self.messages_out += 1
                if life.recycle_limits is None:
                    life.messages_out += 1  # all Recycler.handled does for a worker it does not recycle
                else:
                    self._handled(to, 1)
                if flow.pending > HIGH_WATER:  # backpressure: resolves once the link has drained
                    return flow.completion()
                written = self._written
                if written is None:
                    written = self._written = self._resolved()
                return written
        try:
            data = protocol.encode_message(self._codec, message, self._transport.max_frame_size)
        except EncodeError as error:
            return self._rejected(error)
        destinations = self._destinations(to)
        if not destinations:
            return self._resolved()
        failures: list[tuple[Any, BaseException]] = []
        waiting: dict[Any, asyncio.Future[None]] = {}
        for destination, target in destinations:
            if isinstance(target, BaseException):
                failures.append((destination, target))
                continue
            flow = target.life.link.flow
            if not admits(flow.pending, len(data), self._queue_cap):
                failures.append((destination, _over_cap(target, flow.pending, self._queue_cap)))
                continue
            try:
                target.life.link.write(protocol.MESSAGE, data)
            except TransportError as error:
                failures.append((destination, write_failure(target, error)))
            else:
                self.messages_out += 1
                self._handled(target, 1)
                if flow.pending > HIGH_WATER:  # the same link twice waits for its later mark
                    waiting[flow] = flow.completion()
        if not failures:
            if not waiting:
                return self._resolved()
            return all_resolved(self._loop(), list(waiting.values()))  # backpressure
        if len(destinations) == 1:
            return self._rejected(failures[0][1])
        return self._rejected(SendError(
            f'{len(failures)} of {len(destinations)} destinations failed: '
            + '; '.join(f'{destination!r}: {error}' for destination, error in failures),
            failures=failures,
        ))

    def request(self, message: Any, to: Any, timeout: float | None) -> 'asyncio.Future[Any]':
        if isinstance(to, (list, tuple)):
            return self._rejected(InvalidDestinationError(f'request(): to must name one worker, got {to!r}'))
        try:
            data = protocol.encode_message(self._codec, message, self._transport.max_frame_size,
                                           overhead=protocol.REQUEST_OVERHEAD)
        except EncodeError as error:
            return self._rejected(error)
        target = self.resolve_one(to)
        if isinstance(target, BaseException):
            return self._rejected(target)
        return self._write_request(target, data, timeout)

    def request_ready(self, message: Any, target: WorkerHandle, timeout: float | None) -> 'asyncio.Future[Any]':
        """request() to `target`, a worker the primary just took from its ready pool (so it
        names one connected worker of this primary: nothing to resolve)."""
        try:
            data = protocol.encode_message(self._codec, message, self._transport.max_frame_size,
                                           overhead=protocol.REQUEST_OVERHEAD)
        except EncodeError as error:
            return self._rejected(error)
        return self._write_request(target, data, timeout)

    def _write_request(self, target: WorkerHandle, data: bytes, timeout: float | None) -> 'asyncio.Future[Any]':
        requests = self._registry.requests
        # The description is for a timeout's error only: not formatted for every request.
        describe = f'the request to worker {target.id}' if timeout is not None else ''
        request_id, reply = requests.open(self._loop(), target, timeout, describe)
        try:
            target.life.link.write(protocol.REQUEST, (request_id, data))
        except TransportError as error:
            requests.cancel(request_id)
            return self._rejected(write_failure(target, error))
        self.messages_out += 1
        self._handled(target, 1)
        return reply

    @property
    def codec(self) -> protocol.Codec:
        return self._codec

    @property
    def max_frame_size(self) -> int:
        return self._transport.max_frame_size

    def write_request(self, worker: WorkerHandle, kind: str, body: bytes, timeout: float | None,
                      describe: str, count: int = 1) -> 'asyncio.Future[Any]':
        """Write one request (REQUEST or REQUEST_BATCH) already encoded: its reply's future,
        rejected with SendError when the write failed."""
        requests = self._registry.requests
        request_id, future = requests.open(self._loop(), worker, timeout, describe)
        try:
            worker.life.link.write(kind, (request_id, body))
        except TransportError as error:
            requests.cancel(request_id)
            return self._rejected(SendError(f'could not write to worker {worker.id}: {error}', worker_id=worker.id))
        self.messages_out += 1
        self._handled(worker, count)  # `count` messages of a chunk
        return future

    def _destinations(self, to: Any) -> list[tuple[Any, Any]]:
        if to is None:
            return [(handle, handle) for handle in self._registry.choosable()]
        if isinstance(to, (list, tuple)):
            return [(item, self.resolve_one(item)) for item in to]
        return [(to, self.resolve_one(to))]

    def resolve_one(self, destination: Any) -> Any:
        """The connected worker `destination` names, or the InvalidDestinationError saying why not."""
        if isinstance(destination, WorkerHandle):
            if destination.life.state in CONNECTED and self._registry.owns(destination):
                return destination
            return InvalidDestinationError(
                f'invalid message destination {destination!r}: not a connected worker of this primary',
                worker_id=destination.id,
            )
        if type(destination) is int:
            handle = self._registry.pool.get(destination)
            if handle is not None:
                return handle
            return InvalidDestinationError(
                f'invalid message destination {destination!r}: no ready worker has this id', worker_id=destination
            )
        return InvalidDestinationError(
            f'invalid message destination {destination!r}: use a WorkerHandle, a worker id (int), '
            'a list of them, or None for every ready worker'
        )
