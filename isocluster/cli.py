"""The `isocluster` command (`python -m isocluster`).

`isocluster run MODULE:FUNCTION --workers N` supervises N workers running FUNCTION with the
full supervision of `ClusterPrimary` (restart policy, bounded shutdown, rolling reload on
SIGHUP) and prints one line per lifecycle event. `isocluster demo` runs `make demo`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any, Sequence, TextIO

from .cli_arguments import build_parser, check_run, format_address
from .cli_report import PREFIX, LibraryLog, Reporter
from .cli_target import worker_options
from .errors import NoWorkersError
from .primary import ClusterPrimary
from .transport.base import LOOP_ENV

__all__ = ['PREFIX', 'Reporter', 'build_parser', 'main', 'run']


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
    check_run(parser, arguments)
    options = _primary_options(arguments)
    options['codec'] = arguments.codec
    if arguments.uvloop:
        try:
            import uvloop
        except ImportError:
            parser.error("--uvloop needs the uvloop package: pip install 'isocluster[uvloop]'")
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        os.environ[LOOP_ENV] = 'uvloop'  # for --script workers: a new interpreter has the default policy
    workers, what = worker_options(parser, arguments)
    options.update(workers)
    try:
        return ClusterPrimary(**options), what
    except (TypeError, ValueError) as error:
        parser.error(str(error))


def _bind_listen_address(primary: ClusterPrimary, address: Any) -> str | None:
    """Bind --listen before any worker is forked; the one line to print when it cannot be."""
    try:
        primary.bind(address)
    except (OSError, ValueError) as error:
        why = os.strerror(error.errno) if isinstance(error, OSError) and error.errno else str(error)
        return f'cannot listen on {format_address(address)}: {why}; no worker was started (free it or choose another)'
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
    log_handler, propagate = LibraryLog(reporter), library_log.propagate
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
