"""Which worker gets the next request, and `primary.map()`: a task queue over the workers.

Decide, then do: `least_busy_id` is a pure choice over facts (the ready ids, their requests
in flight, the tag's round-robin history); `MapRun` carries a map out on the primary.
"""

from __future__ import annotations

import asyncio
from collections import deque
from itertools import islice
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterable, Mapping, NamedTuple

from . import protocol
from .checks import check_bool, check_seconds
from .errors import (
    EncodeError, MapError, ProtocolError, RemoteError, SendError, WorkerLost,
)

if TYPE_CHECKING:
    from .handle import WorkerHandle
    from .registry import Registry
    from .sending import Outbox
    from .states import PrimaryState

_NONE: Mapping[int, int] = {}  # a tag never picked: no history (read only)
DEFAULT_MAX_IN_FLIGHT = 2  # one request running, one waiting on the worker: it never idles for a round trip


def least_busy_id(pool_ids: Iterable[int], in_flight: Callable[[int], int], history: Mapping[int, int],
                  limit: int | None = None) -> int | None:
    """The id with the fewest requests in flight, below `limit` if given; ties go to the one
    the tag's round-robin would pick (never picked first, in id order; else least recently)."""
    chosen, fewest, oldest = None, 0, 0
    for worker_id in pool_ids:
        count = in_flight(worker_id)
        if limit is not None and count >= limit:
            continue
        picked = history.get(worker_id, 0)  # round-robin picks count from 1: 0 is never picked
        if chosen is None or count < fewest or (count == fewest and picked < oldest):
            chosen, fewest, oldest = worker_id, count, picked
    return chosen


def pick(registry: 'Registry', tag: Any, limit: int | None = None,
         avoid: 'set[int] | frozenset[int]' = frozenset()) -> 'WorkerHandle | None':
    """The least busy ready worker (None: none ready, or all at `limit`); recorded as the tag's
    round-robin pick, so round_robin(tag) and least_busy(tag) share one order."""
    pool = registry.pool
    counts = registry.requests.counts
    ids = registry.choosable_ids()
    if avoid:
        ids = [worker_id for worker_id in ids if worker_id not in avoid]
    chosen = least_busy_id(
        ids, lambda worker_id: counts.get(pool[worker_id], 0), registry.round_robin_history.get(tag, _NONE), limit,
    )
    if chosen is None:
        return None
    return registry.picked(tag, chosen)


def check_map_options(max_in_flight: Any, chunksize: Any, retries: Any) -> None:
    for name, value in (('max_in_flight', max_in_flight), ('chunksize', chunksize)):
        if type(value) is not int or value < 1:
            raise ValueError(f'{name}: expected an int >= 1, got {value!r}')
    if type(retries) is not int or retries < 0:
        raise ValueError(f'retries: expected an int >= 0, got {retries!r}')


def remote_error(description: Any, worker_id: int | None) -> RemoteError:
    """The RemoteError a failed message of a chunk describes (request_gate.describe wrote it)."""
    if type(description) is not dict:
        description = {'type': 'unknown', 'message': repr(description)[:200], 'traceback': ''}
    return RemoteError(
        f"the request handler raised {description.get('type')}: {description.get('message')}",
        worker_id=worker_id, remote_type=str(description.get('type', '')),
        remote_message=str(description.get('message', '')), remote_traceback=str(description.get('traceback', '')),
    )


def _unsent(error: BaseException) -> bool:
    """The request could not even be written: no worker saw it, so sending it elsewhere is free."""
    return isinstance(error, SendError) and not isinstance(error, EncodeError)


class Chunk(NamedTuple):
    """Messages `start`, `start + 1`, ... of the input, sent as one request."""

    start: int
    messages: list[Any]

    def describe(self) -> str:
        last = self.start + len(self.messages) - 1
        return f'message {self.start}' if last == self.start else f'the chunk of messages {self.start}..{last}'


class MapParts(NamedTuple):
    """What a map needs of its primary."""

    after: Callable[..., Any]  # the primary's public after(): the map wakes on add_worker and shut_down
    registry: 'Registry'
    state: 'PrimaryState'
    outbox: 'Outbox'


class MapRun:
    """One `primary.map()`: sends chunks to the least busy workers, at most `max_in_flight`
    requests on each, and hands the replies out in input order (or as they come)."""

    def __init__(self, parts: MapParts, messages: Iterable[Any], ordered: bool, max_in_flight: int,
                 chunksize: int, timeout: float | None, retries: int) -> None:
        self._parts = parts
        self._source = iter(messages)
        self._pulled = 0  # messages read from the input so far
        self._exhausted = False
        self._carry: Chunk | None = None  # read ahead (to know whether the input is done), not sent
        self._again: deque[Chunk] = deque()  # chunks of a lost worker, or halves of a too large one
        self._attempts: dict[int, int] = {}  # by message index: sends lost with their worker
        self._finished: deque[tuple[Chunk, Any, asyncio.Future[Any]]] = deque()
        self._outstanding = 0
        self._ordered = ordered
        self._results: dict[int, list[Any]] = {}  # by a chunk's start: its replies, until their turn
        self._ready: deque[Any] = deque()
        self._next_index = 0
        self._limit = max_in_flight
        self._chunksize = chunksize
        self._timeout = timeout
        self._retries = retries
        self._tag = object()  # the map's own tie-break order, not the user's tags
        self._wake = asyncio.Event()
        self._broken: set[int] = set()  # workers a write failed to: gone, though not yet out of the pool
        self._mine: dict[int, int] = {}  # by worker id: this map's requests in flight there
        self._isolated: set[int] = set()  # workers running a re-sent message: nothing else of this map goes there

    async def run(self) -> AsyncIterator[Any]:
        parts = self._parts
        wake = self._wake.set
        subscriptions = [parts.after('add_worker', lambda event: wake()), parts.after('shut_down', lambda event: wake())]
        parts.registry.requests.on_end.add(wake)
        try:
            while True:
                while self._finished:
                    self._take(*self._finished.popleft())
                self._dispatch()
                if self._ordered:
                    while self._next_index in self._results:
                        values = self._results.pop(self._next_index)
                        self._next_index += len(values)
                        for value in values:
                            yield value
                else:
                    while self._ready:
                        yield self._ready.popleft()
                if self._finished:
                    continue
                if self._outstanding == 0 and not self._has_work():
                    return
                if self._outstanding == 0 and not parts.registry.pool_ids and not parts.state.active:
                    index = self._again[0].start if self._again else (self._carry.start if self._carry else None)
                    raise MapError(
                        f'the primary is {parts.state.name.replace("_", " ")} and no worker is left to send '
                        f'message {index} of the map to', index=index,
                    )
                self._wake.clear()
                await self._wake.wait()
        finally:
            parts.registry.requests.on_end.discard(wake)
            for subscription in subscriptions:
                subscription.unsubscribe()
            parts.registry.round_robin_history.pop(self._tag, None)

    def _has_work(self) -> bool:
        if self._again or self._carry is not None:
            return True
        self._carry = self._read(1)  # looked at now: an empty input ends the map without a worker
        return self._carry is not None

    def _read(self, count: int) -> Chunk | None:
        if self._exhausted:
            return None
        messages = list(islice(self._source, count))
        if len(messages) < count:
            self._exhausted = True
        if not messages:
            return None
        start = self._pulled
        self._pulled += len(messages)
        return Chunk(start, messages)

    def _dispatch(self) -> None:
        while self._has_work():
            # A message lost with its worker goes alone to a worker with nothing else of this map
            # (it waits for one, and nothing is sent before it): when it is the message that kills
            # its worker, it dies alone, and the messages sent beside it the first time do not
            # spend their retries dying with it again (the map would name an innocent one).
            retry = bool(self._again) and self._attempts.get(self._again[0].start, 0) > 0
            avoid = self._broken
            if retry:
                avoid = avoid | self._isolated | {worker_id for worker_id, count in self._mine.items() if count}
            elif self._isolated:
                avoid = avoid | self._isolated
            worker = pick(self._parts.registry, self._tag, self._limit, avoid)
            if worker is None:
                return
            self._send(worker, self._again.popleft() if self._again else self._next_chunk(), retry)

    def _next_chunk(self) -> Chunk:
        chunk, self._carry = self._carry, None
        assert chunk is not None  # _has_work() read it
        more = self._chunksize - len(chunk.messages)
        if more > 0:
            rest = self._read(more)
            if rest is not None:
                chunk.messages.extend(rest.messages)
        return chunk

    def _encode(self, chunk: Chunk) -> tuple[str, bytes]:
        """The chunk's frame kind and body. Too large for one frame: the second half goes back
        to the front of the queue. A message that cannot be encoded fails the map, by index."""
        outbox = self._parts.outbox
        codec, limit = outbox.codec, outbox.max_frame_size
        messages = chunk.messages
        while True:
            try:
                if len(messages) == 1:
                    return protocol.REQUEST, protocol.encode_message(codec, messages[0], limit, overhead=protocol.REQUEST_OVERHEAD)
                return protocol.REQUEST_BATCH, protocol.encode_message(codec, messages, limit, overhead=protocol.REQUEST_OVERHEAD)
            except EncodeError as error:
                if len(messages) == 1:
                    raise MapError(f'message {chunk.start} of the map could not be sent: {error}', index=chunk.start) from error
                for offset, message in enumerate(messages):  # which one? (or the chunk is just too large)
                    try:
                        protocol.encode_message(codec, message, limit, overhead=protocol.REQUEST_OVERHEAD)
                    except EncodeError as item_error:
                        index = chunk.start + offset
                        raise MapError(f'message {index} of the map could not be sent: {item_error}',
                                       index=index) from item_error
                half = len(messages) // 2
                self._again.appendleft(Chunk(chunk.start + half, messages[half:]))
                del messages[half:]

    def _send(self, worker: 'WorkerHandle', chunk: Chunk, isolated: bool = False) -> None:
        kind, body = self._encode(chunk)
        future = self._parts.outbox.write_request(worker, kind, body, self._timeout,
                                                  f'the map request to worker {worker.id}', len(chunk.messages))
        self._outstanding += 1
        self._mine[worker.id] = self._mine.get(worker.id, 0) + 1
        if isolated:
            self._isolated.add(worker.id)
        future.add_done_callback(lambda done: self._done(chunk, worker, done, isolated))

    def _done(self, chunk: Chunk, worker: 'WorkerHandle', future: 'asyncio.Future[Any]', isolated: bool) -> None:
        if not future.cancelled():
            future.exception()  # retrieved here: a map that already ended must not log it
        self._finished.append((chunk, worker, future, isolated))
        self._wake.set()

    def _take(self, chunk: Chunk, worker: 'WorkerHandle', future: 'asyncio.Future[Any]', isolated: bool) -> None:
        self._outstanding -= 1
        left = self._mine.pop(worker.id) - 1
        if left:
            self._mine[worker.id] = left
        if isolated:
            self._isolated.discard(worker.id)
        error = future.exception() if not future.cancelled() else WorkerLost('the request was cancelled')
        if error is not None:
            if _unsent(error):
                self._broken.add(worker.id)
                self._again.appendleft(chunk)
                return None
            if isinstance(error, WorkerLost):
                return self._resend(chunk, worker, error)
            raise MapError(f'{chunk.describe()} of the map failed on worker {worker.id}: {error}',
                           index=chunk.start, worker_id=worker.id) from error
        if len(chunk.messages) == 1:
            return self._store(chunk.start, [future.result()])
        try:
            results, failures = future.result()
            if type(results) is not list or len(results) != len(chunk.messages) or type(failures) is not list:
                raise ValueError
            failed = {position: description for position, description in failures}
            if not all(type(position) is int and 0 <= position < len(results) for position in failed):
                raise ValueError
        except (TypeError, ValueError):
            raise MapError(f'worker {worker.id} answered {chunk.describe()} with something else',
                           index=chunk.start, worker_id=worker.id) from ProtocolError('malformed REPLY_BATCH')
        if failed:
            position = min(failed)
            failure = remote_error(failed[position], worker.id)
            raise MapError(f'message {chunk.start + position} of the map failed on worker {worker.id}: {failure}',
                           index=chunk.start + position, worker_id=worker.id) from failure
        self._store(chunk.start, results)

    def _store(self, start: int, values: list[Any]) -> None:
        if self._ordered:
            self._results[start] = values
        else:
            self._ready.extend(values)

    def _resend(self, chunk: Chunk, worker: 'WorkerHandle', error: BaseException) -> None:
        for index in range(chunk.start, chunk.start + len(chunk.messages)):
            attempts = self._attempts.get(index, 0) + 1
            if attempts > self._retries:
                raise MapError(
                    f'message {index} of the map was lost with worker {worker.id} ({error}) and retries={self._retries} '
                    'allows no more re-sends; pass retries=N to re-send lost messages to another worker '
                    '(at-least-once: a handler may then run twice for one message)',
                    index=index, worker_id=worker.id,
                ) from error
            self._attempts[index] = attempts
        # Each lost message is re-sent on its own: which of them killed the worker is unknown.
        self._again.extend(Chunk(chunk.start + offset, [message]) for offset, message in enumerate(chunk.messages))


def map_replies(parts: MapParts, messages: Iterable[Any], *, ordered: bool = True,
                max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, chunksize: int = 1, timeout: float | None = None,
                retries: int = 0) -> AsyncIterator[Any]:
    check_seconds('timeout', timeout, allow_none=True, allow_zero=False)
    check_map_options(max_in_flight, chunksize, retries)
    if isinstance(messages, (str, bytes, dict)):
        raise TypeError(f'messages: expected an iterable of messages (a list, a generator), got {type(messages).__name__}')
    return MapRun(parts, messages, check_bool('ordered', ordered), max_in_flight, chunksize, timeout, retries).run()


def collect_replies(loop: asyncio.AbstractEventLoop, start_map: Callable[[], AsyncIterator[Any]]) -> list[Any]:
    """`map_sync()`: runs `loop`, which must not be running already, until every reply is in."""
    if loop.is_running():
        raise RuntimeError("map_sync(): the primary's loop is already running; use `async for reply in primary.map(...)`")
    replies = start_map()

    async def collect() -> list[Any]:
        return [reply async for reply in replies]

    return loop.run_until_complete(collect())


__all__ = ['Chunk', 'MapRun', 'collect_replies', 'least_busy_id', 'map_replies', 'pick']
