"""What `isocluster run` prints: one line per lifecycle event, a progress line on a terminal,
and the library's own log records that no event line already says."""

from __future__ import annotations

import logging
from typing import Any, TextIO

from .cli_arguments import format_address
from .primary import ClusterPrimary

PREFIX = 'isocluster: '


class Reporter:
    """One line per lifecycle event; on a terminal, also a progress line kept at the bottom."""

    def __init__(self, primary: ClusterPrimary, target: int, stream: TextIO, tty: bool | None = None) -> None:
        self.primary = primary
        self.target = target
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.reloading: int | None = None  # workers the running reload replaces
        self.reload_ready = 0
        self.progress_shown = False
        self.addresses: set[str] = set()
        self.shutting_down = False
        primary.after({
            'worker_fork': self._worker_fork,
            'worker_online': lambda event: self.line(f"worker {event.data['worker'].id} online"),
            'worker_ready': self._worker_ready,
            'worker_listening': self._worker_listening,
            'worker_disconnect': lambda event: self.line(f"worker {event.data['worker'].id} disconnected"),
            'worker_exit': self._worker_exit,
            'worker_error': self._worker_error,
            'restart_limit': self._restart_limit,
            'no_workers': self._no_workers,
            'reload': self._reload,
            'reload_complete': self._reload_complete,
            'shut_down': self._shut_down,
            'shut_down_complete': lambda event: self.line('shut down: no worker left'),
        })

    # -- output ----------------------------------------------------------------------

    def line(self, text: str) -> None:
        if self.progress_shown:
            self.stream.write('\r\x1b[K')
            self.progress_shown = False
        self.stream.write(PREFIX + text + '\n')
        self._draw_progress()
        self.stream.flush()

    def progress_text(self) -> str | None:
        """The progress line, or None when there is nothing in progress."""
        if self.shutting_down:
            return None
        if self.reloading is not None:
            done, total, what = self.reload_ready, self.reloading, 'reload: new workers ready'
        else:
            done, total, what = len(self.primary.workers), self.target, 'workers ready'
            if done >= total:
                return None
        width = 20
        filled = width * min(done, total) // max(total, 1)
        return f"[{'#' * filled}{'-' * (width - filled)}] {what} {done}/{total}"

    def _draw_progress(self) -> None:
        if not self.tty:
            return
        text = self.progress_text()
        if text is not None:
            self.stream.write(PREFIX + text)
            self.progress_shown = True

    def _ready_count(self) -> str:
        if self.reloading is not None:
            return f'reload: {self.reload_ready}/{self.reloading} new workers ready'
        return f'{len(self.primary.workers)}/{self.target} ready'

    # -- events ----------------------------------------------------------------------

    def _worker_fork(self, event: Any) -> None:
        worker = event.data['worker']
        self.line(f'worker {worker.id} forked (pid {worker.pid})')

    def _worker_ready(self, event: Any) -> None:
        if self.reloading is not None:
            self.reload_ready += 1
        self.line(f"worker {event.data['worker'].id} ready ({self._ready_count()})")

    def _worker_listening(self, event: Any) -> None:
        address = format_address(event.data['address'])
        if address not in self.addresses:
            self.addresses.add(address)
            self.line(f'listening on {address}')
        self.line(f"worker {event.data['worker'].id} listening on {address}")

    def _worker_exit(self, event: Any) -> None:
        worker, code, signal = event.data['worker'], event.data['code'], event.data['signal']
        how = f'signal {signal.name}' if signal is not None else f'code {code}'
        if worker.exited_after_disconnect:
            how += ', after disconnect'
        self.line(f'worker {worker.id} exited ({how})')

    def _worker_error(self, event: Any) -> None:
        error = event.data['error']
        self.line(f"worker {event.data['worker'].id} error: {type(error).__name__}: {error}")

    def _restart_limit(self, event: Any) -> None:
        self.line(f"restart limit reached: workers that exit are no longer replaced "
                  f"({event.data['worker_count']} live)")

    def _no_workers(self, event: Any) -> None:
        if event.data['error'] is None:  # otherwise run() raises it and the command prints it once
            self.line('no worker left and none will be started; exiting')

    def _shut_down(self, event: Any) -> None:
        self.shutting_down = True
        self.line('shutting down')

    def _reload(self, event: Any) -> None:
        self.reloading, self.reload_ready = event.data['worker_count'], 0
        self.line(f"reload: replacing {event.data['worker_count']} workers, one at a time")

    def _reload_complete(self, event: Any) -> None:
        self.reloading = None
        state = 'aborted' if event.data['aborted'] else 'complete'
        self.line(f"reload {state}: {event.data['worker_count']} workers replaced "
                  f"({self._ready_count()}: workers {[worker.id for worker in self.primary.workers]})")


class LibraryLog(logging.Handler):
    """The library's log records as the command's lines, except those the Reporter prints
    already (worker exits and errors, the restart limit): each event is printed once."""

    ESCALATIONS = ('shutdown_timeout', 'kill_timeout')  # SIGTERM / SIGKILL: only the log says so

    def __init__(self, reporter: 'Reporter') -> None:
        super().__init__(logging.WARNING)
        self.reporter = reporter

    def emit(self, record: logging.LogRecord) -> None:
        reason = getattr(record, 'reason', None)
        if hasattr(record, 'exit_code') or reason in ('restart_limit', 'no_workers'):
            return  # the Reporter prints these, the end state as the command's last line
        if hasattr(record, 'worker_id') and reason not in self.ESCALATIONS:
            return  # a worker error
        text = record.getMessage()
        if record.exc_info:
            text += '\n' + logging.Formatter().formatException(record.exc_info)
        self.reporter.line(text)
