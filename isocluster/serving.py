"""How a worker serves requests: at most `max_concurrency` at once, and a chunk in order.

A request is being served from the moment its handler starts until it is answered. Requests
beyond the limit wait in arrival order; a chunk (one REQUEST_BATCH frame) takes one place
and runs its messages one after the other, each starting once the previous one is answered.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from . import protocol
from .errors import TransportError
from .routing import Request

Job = Callable[[Callable[[], None]], None]  # starts serving; calls its argument once answered


class RequestGate:
    """Admits requests up to `limit` (None: no limit); the rest wait, in order."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.active = 0
        self._waiting: deque[Job] = deque()
        self._admitting = False

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, job: Job) -> None:
        self._waiting.append(job)
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
        self._admit()


def _once(function: Callable[[], None]) -> Callable[[], None]:
    called = False

    def call() -> None:
        nonlocal called
        if not called:
            called = True
            function()

    return call


class BatchAnswer:
    """Serves the messages of one chunk in order and sends their answers as one REPLY_BATCH."""

    def __init__(self, link: Any, request_id: int, items: list[bytes], publish: Callable[[bytes, Request], None],
                 spawn: Callable[[Any], Any], done: Callable[[], None]) -> None:
        self._link = link
        self._request_id = request_id
        self._items = items
        self._publish = publish
        self._spawn = spawn
        self._done = done
        self._answers: list[tuple[bool, bytes]] = []
        self._suspended = False

    def start(self) -> None:
        link = self._link
        while len(self._answers) < len(self._items):
            index = len(self._answers)
            request = Request(index, self._answer, link.codec, self._spawn, link.max_frame_size)
            self._publish(self._items[index], request)
            if len(self._answers) == index:  # answered later, by an awaitable: resume then
                self._suspended = True
                return
        self._send()

    def _answer(self, reply: tuple[int, bool, bytes]) -> None:
        _index, ok, data = reply
        self._answers.append((ok, data))
        if self._suspended:
            self._suspended = False
            self.start()

    def _send(self) -> None:
        answers = self._answers
        size = 1 + protocol.REQUEST_OVERHEAD + sum(len(data) + protocol.BATCH_ITEM_OVERHEAD for _ok, data in answers)
        if size > self._link.max_frame_size:
            # Each answer fitted a frame, together they do not: say so for each message.
            problem = Request(0, lambda reply: None, self._link.codec, self._spawn, self._link.max_frame_size)
            failure = _description(problem, ValueError(
                f'the answers of this chunk add up to {size} bytes, over the maximum frame size of '
                f'{self._link.max_frame_size} bytes; use a smaller chunksize'))
            answers = [(False, failure)] * len(answers)
        try:
            self._link.write(protocol.REPLY_BATCH, (self._request_id, answers))
        except TransportError:
            pass  # the primary is gone; its side settles the request as lost
        finally:
            self._done()


def _description(request: Request, error: BaseException) -> bytes:
    written: list[bytes] = []
    request._write = lambda reply: written.append(reply[2])  # type: ignore[method-assign]
    request.fail(error)
    return written[0]
