"""Which worker gets the next request, and `primary.map()`: a task queue over the workers.

Decide, then do: `least_busy_id` is a pure choice over facts (the ready ids, their requests
in flight, the tag's round-robin history); `MapRun` carries a map out on the primary.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterable, Mapping

from . import protocol
from .errors import (
    DecodeError, EncodeError, MapError, ProtocolError, RemoteError, SendError, TransportError, WorkerLost,
)

if TYPE_CHECKING:
    from .handle import WorkerHandle
    from .primary import ClusterPrimary

DEFAULT_MAX_IN_FLIGHT = 2  # one request running, one waiting on the worker: it never idles for a round trip


def least_busy_id(pool_ids: Iterable[int], in_flight: Callable[[int], int], history: Mapping[int, int],
                  limit: int | None = None) -> int | None:
    """The id with the fewest requests in flight, below `limit` if given; ties go to the one
    the tag's round-robin would pick (never picked first, in id order; else least recently)."""
    chosen, best = None, None
    for worker_id in pool_ids:
        count = in_flight(worker_id)
        if limit is not None and count >= limit:
            continue
        key = (count, history.get(worker_id, 0))  # round-robin picks count from 1: 0 is never picked
        if best is None or key < best:
            chosen, best = worker_id, key
    return chosen


def pick(primary: 'ClusterPrimary', tag: Any, limit: int | None = None,
         avoid: 'set[int] | frozenset[int]' = frozenset()) -> 'WorkerHandle | None':
    """The least busy ready worker (None: none ready, or all at `limit`); recorded as the tag's
    round-robin pick, so round_robin(tag) and least_busy(tag) share one order."""
    pool = primary._pool
    in_flight = primary._requests.in_flight
    ids = [worker_id for worker_id in primary._pool_ids if worker_id not in avoid] if avoid else primary._pool_ids
    chosen = least_busy_id(
        ids, lambda worker_id: in_flight(pool[worker_id]), primary._round_robin_history.get(tag, {}), limit,
    )
    if chosen is None:
        return None
    primary._round_robin_counter += 1
    primary._round_robin_history.setdefault(tag, {})[chosen] = primary._round_robin_counter
    return pool[chosen]


def check_map_options(max_in_flight: Any, chunksize: Any, retries: Any) -> None:
    for name, value in (('max_in_flight', max_in_flight), ('chunksize', chunksize)):
        if type(value) is not int or value < 1:
            raise ValueError(f'{name}: expected an int >= 1, got {value!r}')
    if type(retries) is not int or retries < 0:
        raise ValueError(f'retries: expected an int >= 0, got {retries!r}')


def remote_error(description: Any, worker_id: int | None) -> RemoteError:
    """The RemoteError a failed message of a chunk describes (serving.describe wrote it)."""
    if type(description) is not dict:
        description = {'type': 'unknown', 'message': repr(description)[:200], 'traceback': ''}
    return RemoteError(
        f"the request handler raised {description.get('type')}: {description.get('message')}",
        worker_id=worker_id, remote_type=str(description.get('type', '')),
        remote_message=str(description.get('message', '')), remote_traceback=str(description.get('traceback', '')),
    )


Task = tuple[int, Any]  # a message's index in the input, and the message


def _unsent(error: BaseException) -> bool:
    """The request could not even be written: no worker saw it, so sending it elsewhere is free."""
    return isinstance(error, SendError) and not isinstance(error, EncodeError)


class MapRun:
    """One `primary.map()`: sends chunks to the least busy workers, at most `max_in_flight`
    requests on each, and hands the replies out in input order (or as they come)."""

    def __init__(self, primary: 'ClusterPrimary', messages: Iterable[Any], ordered: bool, max_in_flight: int,
                 chunksize: int, timeout: float | None, retries: int) -> None:
        self._primary = primary
        self._source = iter(enumerate(messages))
        self._exhausted = False
        self._carry: Task | None = None  # encoded, but did not fit in the previous chunk's frame
        self._again: deque[list[Task]] = deque()  # chunks of a lost worker, to send elsewhere
        self._attempts: dict[int, int] = {}
        self._finished: deque[tuple[list[Task], Any, asyncio.Future[Any]]] = deque()
        self._outstanding = 0
        self._ordered = ordered
        self._results: dict[int, Any] = {}
        self._ready: deque[Any] = deque()
        self._next_index = 0
        self._limit = max_in_flight
        self._chunksize = chunksize
        self._timeout = timeout
        self._retries = retries
        self._tag = object()  # the map's own tie-break order, not the user's tags
        self._wake = asyncio.Event()
        self._broken: set[int] = set()  # workers a write failed to: gone, though not yet out of the pool

    async def run(self) -> AsyncIterator[Any]:
        primary = self._primary
        wake = self._wake.set
        subscriptions = [primary.after('add_worker', lambda event: wake()), primary.after('shut_down', lambda event: wake())]
        primary._requests.on_end.add(wake)
        try:
            while True:
                while self._finished:
                    self._take(*self._finished.popleft())
                self._dispatch()
                if self._ordered:
                    while self._next_index in self._results:
                        value = self._results.pop(self._next_index)
                        self._next_index += 1
                        yield value
                else:
                    while self._ready:
                        yield self._ready.popleft()
                if self._finished:
                    continue
                if self._outstanding == 0 and not self._has_work():
                    return
                if self._outstanding == 0 and not primary._pool_ids and primary._state != 'active':
                    index = self._again[0][0][0] if self._again else (self._carry[0] if self._carry else None)
                    raise MapError(
                        f'the primary is {primary._state.replace("_", " ")} and no worker is left to send '
                        f'message {index} of the map to', index=index,
                    )
                self._wake.clear()
                await self._wake.wait()
        finally:
            primary._requests.on_end.discard(wake)
            for subscription in subscriptions:
                subscription.unsubscribe()
            primary._round_robin_history.pop(self._tag, None)

    def _has_work(self) -> bool:
        if self._again or self._carry is not None:
            return True
        self._carry = self._pull()  # looked at now: an empty input ends the map without a worker
        return self._carry is not None

    def _pull(self) -> Task | None:
        if self._exhausted:
            return None
        try:
            index, message = next(self._source)
        except StopIteration:
            self._exhausted = True
            return None
        return (index, message)

    def _dispatch(self) -> None:
        while self._has_work():
            worker = pick(self._primary, self._tag, self._limit, self._broken)
            if worker is None:
                return
            chunk = self._again.popleft() if self._again else self._next_chunk()
            if not chunk:
                return
            self._send(worker, chunk)

    def _next_chunk(self) -> list[Task]:
        chunk: list[Task] = []
        while len(chunk) < self._chunksize:
            task, self._carry = self._carry, None
            if task is None:
                task = self._pull()
                if task is None:
                    break
            chunk.append(task)
        return chunk

    def _encode(self, chunk: list[Task]) -> tuple[str, bytes]:
        """The chunk's frame kind and body. Too large for one frame: the second half goes back
        to the front of the queue. A message that cannot be encoded fails the map, by index."""
        primary = self._primary
        codec, limit = primary._codec, primary._transport.max_frame_size
        while True:
            try:
                if len(chunk) == 1:
                    return protocol.REQUEST, protocol.encode_message(codec, chunk[0][1], limit, overhead=protocol.REQUEST_OVERHEAD)
                return protocol.REQUEST_BATCH, protocol.encode_message(
                    codec, [message for _index, message in chunk], limit, overhead=protocol.REQUEST_OVERHEAD)
            except EncodeError as error:
                if len(chunk) == 1:
                    raise MapError(f'message {chunk[0][0]} of the map could not be sent: {error}', index=chunk[0][0]) from error
                for index, message in chunk:  # which one? (or the chunk is just too large)
                    try:
                        protocol.encode_message(codec, message, limit, overhead=protocol.REQUEST_OVERHEAD)
                    except EncodeError as item_error:
                        raise MapError(f'message {index} of the map could not be sent: {item_error}',
                                       index=index) from item_error
                half = len(chunk) // 2
                self._again.appendleft(chunk[half:])
                del chunk[half:]

    def _send(self, worker: 'WorkerHandle', chunk: list[Task]) -> None:
        primary = self._primary
        requests = primary._requests
        kind, body = self._encode(chunk)
        request_id, future = requests.open(primary._pubsub_loop(), worker, self._timeout,
                                           f'the map request to worker {worker.id}')
        try:
            worker._link.write(kind, (request_id, body))
        except TransportError as error:
            requests.cancel(request_id)
            future = primary._rejected(SendError(
                f'could not write to worker {worker.id}: {error}', worker_id=worker.id))
        else:
            primary._stats['messages_out'] += 1
        self._outstanding += 1
        future.add_done_callback(lambda done: self._done(chunk, worker, done))

    def _done(self, chunk: list[Task], worker: 'WorkerHandle', future: 'asyncio.Future[Any]') -> None:
        if not future.cancelled():
            future.exception()  # retrieved here: a map that already ended must not log it
        self._finished.append((chunk, worker, future))
        self._wake.set()

    def _take(self, chunk: list[Task], worker: 'WorkerHandle', future: 'asyncio.Future[Any]') -> None:
        self._outstanding -= 1
        error = future.exception() if not future.cancelled() else WorkerLost('the request was cancelled')
        if error is not None:
            if _unsent(error):
                self._broken.add(worker.id)
                self._again.appendleft(chunk)
                return None
            if isinstance(error, WorkerLost):
                return self._resend(chunk, worker, error)
            first = chunk[0][0]
            which = f'message {first}' if len(chunk) == 1 else f'the chunk of messages {first}..{chunk[-1][0]}'
            raise MapError(f'{which} of the map failed on worker {worker.id}: {error}',
                           index=first, worker_id=worker.id) from error
        if len(chunk) == 1:
            return self._store(chunk[0][0], future.result())
        answer = future.result()
        try:
            results, failures = answer
            if type(results) is not list or len(results) != len(chunk) or type(failures) is not list:
                raise ValueError
            failed = {position: description for position, description in failures}
        except (TypeError, ValueError):
            raise MapError(f'worker {worker.id} answered a chunk of {len(chunk)} messages with something else',
                           index=chunk[0][0], worker_id=worker.id) from ProtocolError('malformed REPLY_BATCH')
        for position, (index, _message) in enumerate(chunk):
            if position in failed:
                failure = remote_error(failed[position], worker.id)
                raise MapError(f'message {index} of the map failed on worker {worker.id}: {failure}',
                               index=index, worker_id=worker.id) from failure
            self._store(index, results[position])

    def _store(self, index: int, value: Any) -> None:
        if self._ordered:
            self._results[index] = value
        else:
            self._ready.append(value)

    def _resend(self, chunk: list[Task], worker: 'WorkerHandle', error: BaseException) -> None:
        for index, _data in chunk:
            attempts = self._attempts.get(index, 0) + 1
            if attempts > self._retries:
                raise MapError(
                    f'message {index} of the map was lost with worker {worker.id} ({error}) and retries={self._retries} '
                    'allows no more re-sends; pass retries=N to re-send lost messages to another worker '
                    '(at-least-once: a handler may then run twice for one message)',
                    index=index, worker_id=worker.id,
                ) from error
            self._attempts[index] = attempts
        self._again.append(chunk)


def settle_batch(primary: 'ClusterPrimary', payload: Any, worker_id: int) -> None:
    """A REPLY_BATCH settles its chunk's request with the decoded `[results, failures]`."""
    request_id, data = payload
    primary._requests.settle((request_id, True, data), primary._codec, worker_id)


def map_replies(primary: 'ClusterPrimary', messages: Iterable[Any], *, ordered: bool = True,
                max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, chunksize: int = 1, timeout: float | None = None,
                retries: int = 0) -> AsyncIterator[Any]:
    check_map_options(max_in_flight, chunksize, retries)
    if isinstance(messages, (str, bytes, dict)):
        raise TypeError(f'messages: expected an iterable of messages (a list, a generator), got {type(messages).__name__}')
    return MapRun(primary, messages, bool(ordered), max_in_flight, chunksize, timeout, retries).run()


__all__ = ['MapRun', 'least_busy_id', 'map_replies', 'pick']
