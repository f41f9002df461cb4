"""isocluster: a local cluster of Python worker processes.

A primary forks workers, exchanges typed messages with them, balances work with per-tag
round-robin, replaces workers that die and shuts everything down within bounded time.
The cluster logic runs unchanged on real processes and on a deterministic simulation.
"""

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    BackpressureError, ClusterError, DecodeError, DestroyedError, EncodeError, HeartbeatTimeout, InvalidDestinationError,
    ListenError, MapError, NoWorkersError, NotAWorkerError, NotInitializedError, NotSupportedError, PrimaryLost,
    ProtocolError,
    ReadyTimeout, RemoteError, RequestTimeout, SendError, TransportError, WorkerLost,
)
from .handle import WorkerHandle
from .lifecycle import Initializable
from .pubsub import Event, Publisher, Subscription
from .worker import ClusterWorker

if TYPE_CHECKING:
    from .primary import ClusterPrimary
    from .supervision import Backoff, RestartPolicy

__version__ = '0.1.0'

# The primary's side is imported on first use: an exec-mode worker (`from isocluster import
# ClusterWorker` in a fresh interpreter) never loads it, which saves ~3 ms of its start-up.
_LAZY = {'ClusterPrimary': 'primary', 'Backoff': 'supervision', 'RestartPolicy': 'supervision'}
_LAZY_MODULES = frozenset({'primary', 'supervision', 'checks'})


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:  # `isocluster.primary` without importing it first, as before
        return importlib.import_module(f'.{name}', __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(f'.{module}', __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})

__all__ = [
    'BackpressureError', 'Backoff', 'ClusterError', 'ClusterPrimary', 'ClusterWorker', 'DecodeError', 'DestroyedError',
    'EncodeError', 'Event', 'HeartbeatTimeout', 'Initializable', 'InvalidDestinationError', 'ListenError', 'MapError',
    'NoWorkersError', 'NotAWorkerError', 'NotInitializedError', 'NotSupportedError', 'PrimaryLost', 'ProtocolError', 'Publisher',
    'ReadyTimeout', 'RemoteError', 'RequestTimeout', 'RestartPolicy', 'SendError', 'Subscription', 'TransportError', 'WorkerHandle', 'WorkerLost',
]
