"""What each worker of `isocluster run` runs: MODULE:FUNCTION (given the shared socket with
--listen) or a --script."""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import os
import sys
from typing import Any, Callable

from .cli_arguments import format_address
from .worker import ClusterWorker

LISTEN_ENV = 'ISOCLUSTER_LISTEN'


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


def worker_options(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The primary's worker options for the command line, and how to name what workers run."""
    if arguments.script:
        if not os.path.isfile(arguments.script):
            parser.error(f'--script: {arguments.script!r} is not an existing file')
        if arguments.listen is not None:
            os.environ[LISTEN_ENV] = format_address(arguments.listen)
        return {'worker_script': arguments.script, 'worker_args': arguments.script_args}, f'script {arguments.script}'
    try:
        function = load_function(arguments.target)
    except ValueError as error:
        parser.error(str(error))
    target: Callable[[], Any] = function
    if arguments.listen is not None:
        target = functools.partial(_listening_worker, function, arguments.listen)
    return {'worker_target': target}, arguments.target
