"""How a worker serves requests: at most `max_concurrency` at once, and a chunk in order.

A request is being served from the moment its handler starts until it is answered. Requests
beyond the limit wait in arrival order; a chunk (one REQUEST_BATCH frame) takes one place
and runs its messages one after the other, each starting once the previous one is answered.
"""

from __future__ import annotations

import traceback
from collections import deque
from typing import Any, Callable

from . import protocol
from .errors import EncodeError, TransportError
from .pubsub import Event
from .routed_publish import after_complete
from .routing import Request

Job = Callable[[Callable[[], None]], None]  # starts serving; calls its argument once answered


class RequestGate:
    """Admits requests up to `limit` (None: no limit); the rest wait, in order.

    After a request finishes, the next one starts on a later loop turn, not at once, even
    one that arrives in the same read: the process transport sends the frames written while
    it delivers a read when the delivery ends, so a CPU-bound handler started at once would
    hold the finished request's reply back for its whole run (the primary would hear of
    every second reply one task late, and the worker would idle for a round trip).

    `reads()` counts the link's read deliveries (`PrimaryLink.reads`: a socket read, a
    simulated frame, a Ray batch; every worker end counts them), so the gate has one rule on
    every transport: a request that finished with nobody waiting costs no loop pass, and the
    next one starts at once when it arrives in a later read, on a later loop turn when it
    arrives in the same read. A link that does not count (`reads` None) is taken as one
    endless read: the next request always waits a turn, which never holds a reply back."""

    def __init__(self, limit: int | None, call_soon: Callable[[Callable[[], None]], Any],
                 reads: Callable[[], int] | None = None) -> None:
        self.limit = limit
        self.active = 0
        self._waiting: deque[Job] = deque()
        self._admitting = False
        self._call_soon = call_soon
        self._scheduled = False
        self._reads = reads if reads is not None else _one_endless_read
        self._finished_in = -1  # the read delivery during which a request last finished

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, job: Job) -> None:
        self._waiting.append(job)
        if self._scheduled:
            return
        if self._finished_in == self._reads():
            self._schedule()  # a request finished in this very read: its reply is still held
        else:
            self._admit()

    def _admit(self) -> None:
        if self._admitting:  # a job answered while being started: the loop below goes on
            return
        self._admitting = True
        try:
            while self._waiting and (self.limit is None or self.active < self.limit):
                job = self._waiting.popleft()
                self.active += 1
                job(_once(self._finished))
        finally:
            self._admitting = False

    def _finished(self) -> None:
        self.active -= 1
        if self._scheduled:
            return
        if self._waiting:
            self._schedule()
        else:
            self._finished_in = self._reads()

    def _schedule(self) -> None:
        self._scheduled = True
        self._call_soon(self._admit_next_turn)

    def _admit_next_turn(self) -> None:
        self._scheduled = False
        self._admit()


def _one_endless_read() -> int:
    return 0


def _once(function: Callable[[], None]) -> Callable[[], None]:
    called = False

    def call() -> None:
        nonlocal called
        if not called:
            called = True
            function()

    return call


class ChunkItem(Request):
    """One message of a chunk: its answer is kept as a value, encoded later with the others."""

    __slots__ = ('_batch',)

    def __init__(self, index: int, batch: 'BatchAnswer', spawn: Callable[[Any], Any]) -> None:
        super().__init__(index, _no_write, None, spawn)  # type: ignore[arg-type]
        self._batch = batch

    def answer_with(self, result: Any) -> None:
        if type(result) in _PLAIN_VALUES and not self.answered:  # never awaitable: skip the costly check
            self.reply(result)
        else:
            super().answer_with(result)

    def reply(self, value: Any = None) -> None:
        if self.answered:
            raise RuntimeError(f'message {self.id} of the chunk has already been answered')
        self.answered = True
        self.pending = False
        batch = self._batch
        batch._results.append(value)
        if batch._suspended:
            batch.resume()

    def fail(self, error: BaseException) -> None:
        if self.answered:
            raise RuntimeError(f'message {self.id} of the chunk has already been answered')
        self.answered = True
        self.pending = False
        batch = self._batch
        batch._results.append(None)
        batch._failures.append([self.id, describe(error)])
        if batch._suspended:
            batch.resume()


_PLAIN_VALUES = frozenset({int, float, str, bool, bytes, list, dict, tuple, type(None)})


def _no_write(reply: Any) -> None:  # pragma: no cover - ChunkItem never writes
    raise AssertionError('a chunk item is answered through its chunk')


def describe(error: BaseException) -> dict[str, str]:
    """What the primary learns of a failed message: the RemoteError's parts."""
    return {'type': type(error).__qualname__, 'message': str(error),
            'traceback': ''.join(traceback.format_exception(error))}


class BatchAnswer:
    """Serves the messages of one chunk in order (each starts once the previous one is
    answered) and sends their answers as one REPLY_BATCH: the codec's bytes of
    `[results, failures]`, `failures` a list of `[index, {type, message, traceback}]` and
    `results[index]` None for those."""

    def __init__(self, link: Any, request_id: int, messages: list[Any], publish: Callable[[Any, Request], None],
                 spawn: Callable[[Any], Any], done: Callable[[], None]) -> None:
        self._link = link
        self._request_id = request_id
        self._messages = messages
        self._publish = publish
        self._spawn = spawn
        self._done = done
        self._results: list[Any] = []
        self._failures: list[list[Any]] = []
        self._suspended = False

    def start(self) -> None:
        messages, results, publish, spawn = self._messages, self._results, self._publish, self._spawn
        for index in range(len(results), len(messages)):
            publish(messages[index], ChunkItem(index, self, spawn))
            if len(results) == index:  # an awaitable answers it later: resume then
                self._suspended = True
                return
        self._send()

    def resume(self) -> None:
        self._suspended = False
        self.start()

    def _send(self) -> None:
        link = self._link
        try:
            data = self._encode()
            link.write(protocol.REPLY_BATCH, (self._request_id, data))
        except TransportError:
            pass  # the primary is gone; its side settles the request as lost
        finally:
            self._done()

    def _encode(self) -> bytes:
        link = self._link
        encode = protocol.encode_message
        try:
            return encode(link.codec, [self._results, self._failures], link.max_frame_size, link.worker_id,
                          protocol.REQUEST_OVERHEAD)
        except EncodeError as error:
            whole = error
        # Name the results that cannot travel; if they all can, the chunk's answers are too big together.
        results, failures = self._results, self._failures
        for index, value in enumerate(results):
            try:
                encode(link.codec, value, link.max_frame_size, link.worker_id, protocol.REQUEST_OVERHEAD)
            except EncodeError as item_error:
                results[index] = None
                failures.append([index, describe(EncodeError(f'the reply could not be sent: {item_error}'))])
        try:
            return encode(link.codec, [results, failures], link.max_frame_size, link.worker_id, protocol.REQUEST_OVERHEAD)
        except EncodeError:
            failure = describe(EncodeError(f'the answers of this chunk could not be sent together ({whole}); '
                                           'use a smaller chunksize'))
            failure['traceback'] = ''
            return encode(link.codec, [[None] * len(results), [[index, failure] for index in range(len(results))]],
                          link.max_frame_size, link.worker_id, protocol.REQUEST_OVERHEAD)


def chunk_publisher(worker: Any, default_action: Any) -> Callable[[Any, Request], None]:
    """How a chunk hands each message to the worker's handlers. While nothing but the library's
    routing can observe `primary_message` (no subscription in any stage, the default action not
    overridden on the class or the instance, the worker not destroyed), the publish would only
    route (R108): the message goes straight to its `_event_primary_message_<type>` method, with
    the same event data, then the after stage the method may have subscribed to (R18), as
    `routed_publish` does for single messages. The routed method is looked up once per chunk
    (late binding, R7). Anything else takes the full publish."""
    config = worker._ps_config['primary_message']
    heard = worker._ps_heard
    publish = worker._publish_request
    direct = (type(worker)._event_primary_message is default_action and config.complete == '_event_primary_message'
              and '_event_primary_message' not in worker.__dict__)
    methods: dict[Any, Any] = {}  # type -> routed method

    def routed_method(kind: str) -> Any:
        if kind.isidentifier():
            found = getattr(worker, '_event_primary_message_' + kind, None)
            if callable(found):
                return found
        return None

    def hand_over(message: Any, request: Request) -> None:
        if not direct or worker._ps_closed or 'primary_message' in heard:
            return publish(message, request)
        kind = message.get('type') if type(message) is dict else None
        if type(kind) is not str:
            return publish(message, request)
        method = methods[kind] if kind in methods else methods.setdefault(kind, routed_method(kind))
        if method is None:
            return publish(message, request)  # nothing to route to: the publish fails it clearly
        event = Event(worker, 'primary_message', {'message': message, 'request': request}, config.preventable)
        event._si = 2  # the complete stage, where routing runs in a publish
        try:
            request.answer_with(method(event))
            after_complete(worker, event, 'primary_message')
        except Exception as error:
            if request.answered:
                raise
            request.fail(error)
        request.settle_unanswered(kind)

    return hand_over
