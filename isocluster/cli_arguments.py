"""The `isocluster` command line: which arguments exist, what each accepts, and their help."""

from __future__ import annotations

import argparse
import os
from typing import Any

from .checks import MAX_WORKERS

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


def format_address(address: Any) -> str:
    if isinstance(address, (tuple, list)):
        host, port = address[0], address[1]
        return f'[{host}]:{port}' if ':' in host else f'{host}:{port}'
    return str(address)


def check_run(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> None:
    """The `run` checks that span several arguments; parser.error (exit 2) on the first that fails."""
    if arguments.target and arguments.script:
        parser.error('give MODULE:FUNCTION or --script, not both')
    if not arguments.target and not arguments.script:
        parser.error('give MODULE:FUNCTION (the function each worker runs) or --script PATH')
    if arguments.script_args and not arguments.script:
        parser.error('--script-arg is for --script workers')
