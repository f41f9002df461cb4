"""The worker runtime: what a worker's end of its link does, whatever moves its bytes.

Every transport runs a worker the same way (SPEC R33, R102, R110): ONLINE goes out before
any application code; the target is called on a fresh loop (awaited when it returns an
awaitable); frames that arrive before a ClusterWorker attaches wait for it, except that a
DISCONNECT with nobody attached ends the worker (R102: a worker that never built a
ClusterWorker just ends), and so does EOF; an exception escaping into the worker's loop
prints a traceback and ends it with code 1; a `SystemExit` ends it with its code; the kill
timer ends it with code 0 even when its loop is blocked. A transport supplies only how
bytes move (`write`, `close`) and how the worker ends at once (`_end_now`).

`BaseWorkerEnd` is what every worker's end does with the frames from its primary (the
backlog until a ClusterWorker attaches, R102, EOF); `WorkerEnd` adds a real loop of the
worker's own (the process and Ray transports). The memory transport's simulated workers
share one virtual-time loop with the primary: its end is a `BaseWorkerEnd` whose kill
timer and finish run on virtual time; it uses the target start and exit-code rule from here.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import sys
import threading
import time
import traceback
from typing import Any, Callable

from .. import protocol
from .base import LinkReceiver, PrimaryLink

# A worker whose primary died and that has not armed its kill timer (it has not reached
# primary_disconnect) this long after is judged blocked and ends (R118).
PARENT_DEATH_WATCHDOG = 1.5  # seconds (virtual ones on the memory transport)


def flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass


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


def report_fatal(error: BaseException, message: str | None = None) -> None:
    """R33: what a worker prints when an exception ends it."""
    if message:
        print(message, file=sys.stderr)
    traceback.print_exception(error, file=sys.stderr)
    flush_stdio()


def start_target(target: Callable[[], Any], loop: asyncio.AbstractEventLoop,
                 on_failure: Callable[[BaseException], None]) -> None:
    """Call a worker's target; an awaitable it returns runs on `loop`, and an exception it
    ends with goes to `on_failure`."""
    result = target()
    if inspect.isawaitable(result):
        def done(task: 'asyncio.Future[Any]') -> None:
            if not task.cancelled() and task.exception() is not None:
                on_failure(task.exception())  # type: ignore[arg-type]

        asyncio.ensure_future(result, loop=loop).add_done_callback(done)


def run_guarded(main: Callable[[], int], quiet: Callable[[], bool] = lambda: False) -> int:
    """Run a worker's `main` and return the code it ends with: its own, a SystemExit's
    (R33), or 1 with a traceback for anything else (none when `quiet()`: it has ended
    already and said why)."""
    try:
        return main()
    except SystemExit as exc:
        return exit_code_of(exc)
    except BaseException:
        if not quiet():
            try:
                traceback.print_exc()
            except BaseException:
                pass
        return 1
    finally:
        flush_stdio()


class BaseWorkerEnd(PrimaryLink):
    """What every worker's end does with the frames from its primary. A subclass calls
    `_init_end()`, hands each frame from the primary to `_accept()` and the end of input to
    `_end_of_input()`, and provides `write`, `close`, `is_open`, `arm_kill_timer` and `finish`.

    `defers_disconnect`: DISCONNECT and EOF reach the ClusterWorker one loop pass later, after
    the accept callbacks of shared listening sockets (see the process transport)."""

    defers_disconnect = False

    def _init_end(self) -> None:
        self._receiver: LinkReceiver | None = None
        # The receiver's link_message, for a transport that hands MESSAGE frames over directly.
        self._message_sink: Callable[[Any], None] | None = None
        self._backlog: collections.deque[protocol.Frame] = collections.deque()
        self._delivering = False
        self._eof = False
        # Every end counts its read deliveries (a socket read, a simulated frame, a Ray batch):
        # the request gate tells a later read from the same one by it (request_gate.py).
        self.reads = 0

    # frames from the primary

    def attach(self, receiver: LinkReceiver) -> None:
        self._receiver = receiver
        self._message_sink = getattr(receiver, 'link_message', None)
        if (self._backlog or self._eof) and not self._delivering:
            self._delivering = True
            self.loop.call_soon(self._deliver_backlog)

    def detach(self, receiver: LinkReceiver) -> None:
        if self._receiver is receiver:
            self._receiver = None
            self._message_sink = None

    def _accept(self, kind: str, payload: Any) -> None:
        receiver = self._receiver
        disconnect = kind == protocol.DISCONNECT
        if receiver is None and disconnect:
            self.finish()  # R102: a worker that never built a ClusterWorker just ends
        elif receiver is not None and not self._backlog and not (disconnect and self.defers_disconnect):
            receiver.link_frame(kind, payload)
        else:
            self._backlog.append((kind, payload))
            if receiver is not None and disconnect:
                self._deliver_later()

    def _end_of_input(self) -> None:
        self._eof = True
        if self._receiver is not None and self.defers_disconnect:
            self._deliver_later()
        elif not self._backlog:
            self._deliver_eof()

    def _deliver_later(self) -> None:
        if not self._delivering:
            self._delivering = True
            self.loop.call_soon(self._deliver_backlog)

    def _deliver_backlog(self) -> None:
        self._delivering = False
        backlog = self._backlog
        while backlog and self._receiver is not None:
            self._receiver.link_frame(*backlog.popleft())
        if self._eof and not backlog:
            self._deliver_eof()

    def _deliver_eof(self) -> None:
        if self._receiver is not None:
            self._receiver.link_closed()
        else:
            self.finish()


class WorkerEnd(BaseWorkerEnd):
    """The worker's end of a link, on a real loop of its own; a subclass also provides
    `_end_now(code)`."""

    def _init_end(self) -> None:
        super()._init_end()
        self._finished = False
        self._kill_deadline: float | None = None
        self._kill_timer: threading.Timer | None = None
        self.loop.set_exception_handler(self._loop_exception)

    def ended(self) -> bool:
        """True once the worker has ended abruptly and its loop must not run on."""
        return False

    # ending

    def _end_now(self, code: int) -> None:
        """End the worker at once (the kill timer fired, a fatal error)."""
        raise NotImplementedError

    def arm_kill_timer(self, seconds: float) -> None:
        # A thread: it fires even when the worker's loop is blocked.
        deadline = time.monotonic() + seconds
        if self._kill_deadline is not None and deadline >= self._kill_deadline:
            return
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        self._kill_deadline = deadline
        self._kill_timer = threading.Timer(max(seconds, 0.0), self._end_now, (0,))
        self._kill_timer.daemon = True
        self._kill_timer.start()

    def kill_timer_armed(self) -> bool:
        return self._kill_deadline is not None

    def finish(self) -> None:
        self._finished = True
        if self.loop.is_running():
            self.loop.stop()

    def _die(self, error: BaseException, message: str | None = None) -> None:
        """R33: a traceback on stderr, then the worker ends with code 1 at once, without
        closing anything gracefully."""
        try:
            report_fatal(error, message)
        finally:
            self._end_now(1)
            self.loop.stop()

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get('exception')
        # "exception was never retrieved" comes from a garbage-collected future: asyncio
        # reports it as usual, as on the primary (R34).
        if error is None or 'never retrieved' in context.get('message', ''):
            loop.default_exception_handler(context)
            return
        if isinstance(error, asyncio.CancelledError) and self._finished:
            # The worker is ending and cancels its tasks: Python 3.11's asyncio.start_server calls
            # task.exception() on a cancelled connection handler from a done-callback (3.12 checks
            # cancelled() first). That is the end the worker is already taking, not a new failure.
            return
        self._die(error, context.get('message'))

    def run_target(self, target: Callable[[], Any]) -> int:
        """Run a worker's target on this link's loop until the worker ends: its exit code."""
        asyncio.set_event_loop(self.loop)
        start_target(target, self.loop, self._die)
        self._serve()
        return 0

    def _serve(self) -> None:
        loop = self.loop
        while not self._finished and not self.ended():
            loop.run_forever()
        if self.ended():
            return  # ended abruptly (fatal error, kill timer): no cleanup, as a dead process
        self._wind_down()

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
