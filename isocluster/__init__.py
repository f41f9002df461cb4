"""isocluster: a local cluster of Python worker processes.

A primary forks workers, exchanges typed messages with them, balances work with per-tag
round-robin, replaces workers that die and shuts everything down within bounded time.
The cluster logic runs unchanged on real processes and on a deterministic simulation.
"""

from .errors import (
    ClusterError, DecodeError, DestroyedError, EncodeError, HeartbeatTimeout, InvalidDestinationError,
    ListenError, NotAWorkerError, NotInitializedError, NotSupportedError, PrimaryLost, ProtocolError,
    ReadyTimeout, RemoteError, RequestTimeout, SendError, TransportError, WorkerLost,
)
from .handle import WorkerHandle
from .lifecycle import Initializable
from .primary import ClusterPrimary
from .pubsub import Event, Publisher, Subscription
from .supervision import Backoff, RestartPolicy
from .worker import ClusterWorker

__version__ = '0.1.0'

__all__ = [
    'Backoff', 'ClusterError', 'ClusterPrimary', 'ClusterWorker', 'DecodeError', 'DestroyedError',
    'EncodeError', 'Event', 'HeartbeatTimeout', 'Initializable', 'InvalidDestinationError', 'ListenError',
    'NotAWorkerError', 'NotInitializedError', 'NotSupportedError', 'PrimaryLost', 'ProtocolError', 'Publisher',
    'ReadyTimeout', 'RemoteError', 'RequestTimeout', 'RestartPolicy', 'SendError', 'Subscription', 'TransportError', 'WorkerHandle', 'WorkerLost',
]
