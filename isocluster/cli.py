"""The `isocluster` command (`python -m isocluster`).

`isocluster run MODULE:FUNCTION --workers N` supervises N workers running FUNCTION with the
full supervision of `ClusterPrimary` (restart policy, bounded shutdown, rolling reload on
SIGHUP) and prints one line per lifecycle event. `isocluster demo` runs `make demo`.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import inspect
import logging
import os
import sys
from typing import Any, Callable, Sequence, TextIO

from .checks import MAX_WORKERS
from .errors import NoWorkersError
from .primary import ClusterPrimary
from .transport.base import LOOP_ENV
from .worker import ClusterWorker

PREFIX = 'isocluster: '
LISTEN_ENV = 'ISOCLUSTER_LISTEN'

RUN_DESCRIPTION = """\
Start a primary that supervises --workers worker processes, each running FUNCTION from
MODULE (imported from the current directory or sys.path) or a --script. Workers that die
are replaced (--restart); one line is printed per lifecycle event, with progress (workers
ready / target) while workers start or reload when stdout is a terminal.

How FUNCTION is called in each worker:
  without --listen   FUNCTION() with no argument, exactly as ClusterPrimary(worker_target=
                     FUNCTION): it builds its ClusterWorker (and may be a coroutine function).
  with --listen      FUNCTION(sock), where sock is the listening socket the primary bound
                     once for every worker (a socket.socket, to serve with e.g.
                     asyncio.start_server(sock=sock)); the worker's ClusterWorker is built
                     for it, and the worker is ready once FUNCTION has been called. A
                     coroutine FUNCTION runs as a task for the life of the worker.
  --script PATH      each worker runs `python PATH ARG...` (--script-arg); the script builds
                     its ClusterWorker and calls worker.run(). With --listen the address is
                     in the environment variable ISOCLUSTER_LISTEN.

Signals to the primary: SIGTERM or SIGINT: graceful shutdown (each worker stops accepting
and finishes its connections within --drain-timeout, then SIGTERM after --shutdown-timeout,
then SIGKILL after --kill-timeout); a second SIGINT: kill every worker at once; SIGHUP:
rolling reload (each worker replaced by a new one, new ready before old leaves); SIGTTIN:
one worker more; SIGTTOU: one worker less (never below one).

Under systemd (Type=notify, NOTIFY_SOCKET set) the primary sends READY=1 once its workers are
ready, RELOADING=1 / READY=1 around a reload, STOPPING=1 at shutdown and WATCHDOG=1 every half
WatchdogSec; --listen systemd serves the socket of a .socket unit (socket activation).

Exit status: 0 after a shutdown asked for by a signal (or once every worker has ended
cleanly and none is replaced); 1, with one line saying why, when the cluster stopped
because no worker is left and none will be started (3 failed starts before any worker was
ready, the restart limit, or failed workers --restart does not replace) or the primary
failed; 2 for a bad command line."""

RUN_EPILOG = """\
examples:
  isocluster run myapp:worker_main --workers auto
  isocluster run myapp:serve --workers 4 --listen 127.0.0.1:8000
  isocluster run --script worker.py --script-arg=--verbose --workers 2 --restart on-failure"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='isocluster', description='Run and supervise a local cluster of Python worker processes.',
    )
    commands = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    commands.add_parser('demo', help='fork a small cluster, route tasks, crash and replace a worker, shut down',
                        description='Fork 3 workers, balance tasks, crash one, watch it replaced, shut down.')
    run = commands.add_parser(
        'run', help='supervise workers running MODULE:FUNCTION (or a --script)',
        description=RUN_DESCRIPTION, epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.set_defaults(command_parser=run)  # its errors read "isocluster run: error: ..."
    run.add_argument('target', nargs='?', metavar='MODULE:FUNCTION',
                     help='the function each worker runs, e.g. myapp.server:serve')
    run.add_argument('-w', '--workers', default='auto', type=_worker_count, metavar='N|auto',
                     help='number of workers; auto = the number of usable CPUs (default: auto)')
    run.add_argument('--script', metavar='PATH', help='run this Python script in each worker instead of a function')
    run.add_argument('--script-arg', action='append', default=[], metavar='ARG', dest='script_args',
                     help='an argument for the --script (repeat for several; --script-arg=-x for one that starts with -)')
    run.add_argument('--listen', type=_listen_address, metavar='HOST:PORT',
                     help='bind HOST:PORT once (port 0: any free port; or a Unix socket path) and share '
                          'it with every worker; the bound address is printed; "systemd": the socket '
                          'systemd passed (socket activation, LISTEN_FDS)')
    speed = run.add_argument_group('speed (opt-in)')
    speed.add_argument('--codec', choices=('json', 'pickle', 'msgpack', 'orjson'), default='json',
                       help='how messages travel: json (default; data only), pickle (any object; trusted '
                            'workers only), msgpack or orjson (faster; need their package)')
    speed.add_argument('--uvloop', action='store_true',
                       help="run the primary's and the workers' loops on uvloop (pip install 'isocluster[uvloop]')")
    supervision = run.add_argument_group('supervision')
    supervision.add_argument('--restart', choices=('always', 'on-failure', 'never'), default='always',
                             help='which worker exits are replaced (default: always)')
    supervision.add_argument('--restart-intensity', type=_non_negative_int, default=10, metavar='N',
                             help='at most N replacements within --restart-period, then stop replacing (default: 10)')
    supervision.add_argument('--restart-period', type=_seconds, default=60.0, metavar='S',
                             help='the sliding window of --restart-intensity, in seconds (default: 60)')
    supervision.add_argument('--ready-timeout', type=_seconds_or_none, default=60.0, metavar='S',
                             help='kill a worker not ready after S seconds; "none" waits forever (default: 60)')
    supervision.add_argument('--shutdown-timeout', type=_seconds, default=10.0, metavar='S',
                             help='after asking a worker to leave, wait S seconds before SIGTERM (default: 10)')
    supervision.add_argument('--kill-timeout', type=_seconds, default=5.0, metavar='S',
                             help='after SIGTERM, wait S seconds before SIGKILL (default: 5)')
    supervision.add_argument('--drain-timeout', type=_seconds, default=None, metavar='S',
                             help='a leaving worker stops accepting and gets S seconds to finish its '
                                  'connections; less than --shutdown-timeout (default: 5, at most half of it)')
    supervision.add_argument('--heartbeat-interval', type=_positive_seconds, metavar='S',
                             help='ping every ready worker every S seconds (default: off)')
    supervision.add_argument('--heartbeat-timeout', type=_positive_seconds, metavar='S',
                             help='kill and replace a worker silent for S seconds (default: 3 x interval)')
    return parser


# -- argument types (argparse turns their ArgumentTypeError into "error: ..." and exit 2) ------

def _worker_count(text: str) -> int:
    if text == 'auto':
        try:
            return len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            return os.cpu_count() or 1
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number of workers or "auto", got {text!r}') from None
    if count < 1:
        raise argparse.ArgumentTypeError(f'expected at least 1 worker, got {count}')
    if count > MAX_WORKERS:
        raise argparse.ArgumentTypeError(f'expected at most {MAX_WORKERS} workers, got {count}')
    return count


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected an integer, got {text!r}') from None
    if value < 0:
        raise argparse.ArgumentTypeError(f'expected an integer >= 0, got {value}')
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number of seconds, got {text!r}') from None
    if not value >= 0 or value == float('inf'):
        raise argparse.ArgumentTypeError(f'expected a finite number of seconds >= 0, got {text!r}')
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError('expected a number of seconds > 0, got 0')
    return value


def _seconds_or_none(text: str) -> float | None:
    return None if text.lower() == 'none' else _positive_seconds(text)


def _listen_address(text: str) -> Any:
    if text == 'systemd':
        return text  # resolved by _systemd_address() once the command runs
    if '/' in text:
        return text  # a Unix socket path
    host, colon, port_text = text.rpartition(':')
    if not colon:
        raise argparse.ArgumentTypeError(f'expected HOST:PORT (e.g. 127.0.0.1:8000) or a Unix socket path, got {text!r}')
    host = host[1:-1] if host.startswith('[') and host.endswith(']') else host
    try:
        port = int(port_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'the port of {text!r} is not a number') from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f'the port of {text!r} is not in 0..65535')
    return (host or '0.0.0.0', port)


def _format_address(address: Any) -> str:
    if isinstance(address, (tuple, list)):
        host, port = address[0], address[1]
        return f'[{host}]:{port}' if ':' in host else f'{host}:{port}'
    return str(address)


def load_function(spec: str) -> Callable[..., Any]:
    """`module:attribute.path` -> the callable; ValueError with a clear message otherwise."""
    module_name, colon, attribute = spec.partition(':')
    if not colon or not module_name or not attribute:
        raise ValueError(f'expected MODULE:FUNCTION (e.g. myapp:worker_main), got {spec!r}')
    if os.getcwd() not in sys.path and '' not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules of the current directory import
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f'cannot import module {module_name!r}: {error}') from None
    function: Any = module
    for part in attribute.split('.'):
        try:
            function = getattr(function, part)
        except AttributeError:
            raise ValueError(f'module {module_name!r} has no attribute {attribute!r}') from None
    if not callable(function):
        raise ValueError(f'{spec} is not callable: got {function!r}')
    return function


# -- the worker side of --listen --------------------------------------------------------------

class _ListeningWorker(ClusterWorker):
    """Gets the shared socket, then hands it to the user's function; ready after that."""

    def __init__(self, function: Callable[[Any], Any], address: Any) -> None:
        self._function = function
        self._address = address
        super().__init__()

    async def _initialize(self) -> None:
        sock = await self.listen(self._address)
        result = self._function(sock)
        if inspect.isawaitable(result):
            self._spawn(result)  # runs for the life of the worker; a failure is fatal to it


def _listening_worker(function: Callable[[Any], Any], address: Any) -> None:
    _ListeningWorker(function, address)


# -- what the command prints ------------------------------------------------------------------

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
        address = _format_address(event.data['address'])
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


# -- run --------------------------------------------------------------------------------------

def _primary_options(arguments: argparse.Namespace) -> dict[str, Any]:
    return {
        'restart': arguments.restart,
        'restart_intensity': arguments.restart_intensity,
        'restart_period': arguments.restart_period,
        'ready_timeout': arguments.ready_timeout,
        'shutdown_timeout': arguments.shutdown_timeout,
        'kill_timeout': arguments.kill_timeout,
        'drain_timeout': arguments.drain_timeout,
        'heartbeat_interval': arguments.heartbeat_interval,
        'heartbeat_timeout': arguments.heartbeat_timeout,
    }


def _build_primary(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> tuple[ClusterPrimary, str]:
    if arguments.target and arguments.script:
        parser.error('give MODULE:FUNCTION or --script, not both')
    if not arguments.target and not arguments.script:
        parser.error('give MODULE:FUNCTION (the function each worker runs) or --script PATH')
    if arguments.script_args and not arguments.script:
        parser.error('--script-arg is for --script workers')
    options = _primary_options(arguments)
    options['codec'] = arguments.codec
    if arguments.uvloop:
        try:
            import uvloop
        except ImportError:
            parser.error("--uvloop needs the uvloop package: pip install 'isocluster[uvloop]'")
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        os.environ[LOOP_ENV] = 'uvloop'  # for --script workers: a new interpreter has the default policy
    if arguments.script:
        if not os.path.isfile(arguments.script):
            parser.error(f'--script: {arguments.script!r} is not an existing file')
        if arguments.listen is not None:
            os.environ[LISTEN_ENV] = _format_address(arguments.listen)
        options.update(worker_script=arguments.script, worker_args=arguments.script_args)
        what = f'script {arguments.script}'
    else:
        try:
            function = load_function(arguments.target)
        except ValueError as error:
            parser.error(str(error))
        target: Callable[[], Any] = function
        if arguments.listen is not None:
            target = functools.partial(_listening_worker, function, arguments.listen)
        options.update(worker_target=target)
        what = arguments.target
    try:
        return ClusterPrimary(**options), what
    except (TypeError, ValueError) as error:
        parser.error(str(error))


class _LibraryLog(logging.Handler):
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


def _bind_listen_address(primary: ClusterPrimary, address: Any) -> str | None:
    """Bind --listen before any worker is forked; the one line to print when it cannot be."""
    try:
        primary.bind(address)
    except (OSError, ValueError) as error:
        why = os.strerror(error.errno) if isinstance(error, OSError) and error.errno else str(error)
        return f'cannot listen on {_format_address(address)}: {why}; no worker was started (free it or choose another)'
    return None


def _systemd_address() -> Any:
    """--listen systemd: the address of the first socket systemd passed (socket activation),
    or None when it passed none to this process."""
    from .transport import systemd

    sockets = systemd.passed_sockets()
    if not sockets:
        return None
    address = sockets[0].getsockname()
    return tuple(address[:2]) if isinstance(address, tuple) else address  # IPv6 adds flowinfo, scope


def run(parser: argparse.ArgumentParser, arguments: argparse.Namespace, stream: TextIO | None = None) -> int:
    stream = stream or sys.stdout
    if arguments.listen == 'systemd':
        arguments.listen = _systemd_address()
        if arguments.listen is None:
            print(PREFIX + '--listen systemd: systemd passed no socket to this process (LISTEN_FDS/LISTEN_PID '
                  'unset or not for this pid); run it from a .socket unit, or give --listen HOST:PORT', file=sys.stderr)
            return 2
    primary, what = _build_primary(parser, arguments)
    if arguments.listen is not None:
        failure = _bind_listen_address(primary, arguments.listen)
        if failure is not None:
            primary.destroy()
            primary.run()  # no worker: the destroy completes on the next turn, closing the loop it made
            print(PREFIX + failure, file=sys.stderr)
            return 2
    reporter = Reporter(primary, arguments.workers, stream)
    library_log = logging.getLogger('isocluster')
    log_handler, propagate = _LibraryLog(reporter), library_log.propagate
    library_log.addHandler(log_handler)
    library_log.propagate = False
    reporter.line(
        f'primary pid {os.getpid()}: {arguments.workers} worker(s) running {what} '
        f'(restart={arguments.restart}); SIGTERM/SIGINT: shut down, SIGHUP: reload, SIGTTIN/SIGTTOU: one worker more/less'
    )
    primary.fork(worker_count=arguments.workers)
    try:
        primary.run()
    except NoWorkersError as error:  # the library's end state: no worker left, none to come
        reporter.line(f'stopped: {error}')
        return 1
    except Exception as error:
        reporter.line(f'fatal: {type(error).__name__}: {error}')
        return 1
    finally:
        library_log.removeHandler(log_handler)
        library_log.propagate = propagate
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.command == 'demo':
        from .demo import main as demo

        return demo()
    if arguments.command == 'run':
        return run(arguments.command_parser, arguments)
    return 2  # pragma: no cover - argparse rejects unknown commands
