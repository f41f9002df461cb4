"""The exception hierarchy: every error the library raises or rejects with."""

from __future__ import annotations

from typing import Any


class ClusterError(Exception):
    """Base of every isocluster error. `worker_id` names the worker concerned, if any."""

    def __init__(self, message: str = '', *, worker_id: int | None = None) -> None:
        super().__init__(message)
        self.worker_id = worker_id


class SendError(ClusterError):
    """A send failed. `failures` lists the `(destination, error)` pairs that failed."""

    def __init__(
        self,
        message: str = '',
        *,
        worker_id: int | None = None,
        failures: list[tuple[Any, BaseException]] | None = None,
    ) -> None:
        super().__init__(message, worker_id=worker_id)
        self.failures: list[tuple[Any, BaseException]] = failures if failures is not None else [(worker_id, self)]


class InvalidDestinationError(SendError):
    """`to` names no connected worker of this primary."""


class BackpressureError(SendError):
    """The link already holds `max_queued_bytes` of unwritten messages: this one was not
    queued (nothing of it was written). Await send()'s futures to pace the sender."""


class EncodeError(SendError):
    """The codec cannot encode the message, or the frame is too large; nothing was sent."""


class DecodeError(ClusterError):
    """A frame's payload could not be decoded."""


class ProtocolError(ClusterError):
    """A peer broke the link protocol (unknown, out-of-order, malformed or oversized frame).
    `frame_kind` names the kind of the offending frame when it was known."""

    frame_kind: str | None = None


class TransportError(ClusterError):
    """A link or worker start failed at the transport level."""


class ReadyTimeout(ClusterError):
    """A worker did not become ready within `ready_timeout`."""


class HeartbeatTimeout(ClusterError):
    """A ready worker did not answer heartbeats within `heartbeat_timeout`."""


class NotAWorkerError(ClusterError):
    """A worker-only API was used outside a worker."""


class NotInitializedError(ClusterError):
    """`fork()` was called before the primary finished initializing."""


class DestroyedError(ClusterError):
    """The object has been destroyed and can no longer publish or subscribe."""


class ListenError(ClusterError):
    """`ClusterWorker.listen()` failed; the cause is the primary's `OSError`."""


class NoWorkersError(ClusterError):
    """The cluster stopped because no worker is running and none will be started: `reason` is
    `'boot_failure'` (a worker failed to start before any became ready), `'restart_limit'` or
    `'no_restart'` (the restart policy replaces none of the workers that exited). `worker_id`
    names the last worker that failed."""

    def __init__(self, message: str = '', *, worker_id: int | None = None, reason: str = '') -> None:
        super().__init__(message, worker_id=worker_id)
        self.reason = reason


class NotSupportedError(ClusterError):
    """The transport cannot do what was asked."""


class RequestTimeout(ClusterError):
    """No reply arrived within the request's timeout."""


class WorkerLost(ClusterError):
    """The worker disconnected or died before it replied to a request."""


class PrimaryLost(ClusterError):
    """The primary disconnected before it replied to a worker's request."""


class RemoteError(ClusterError):
    """The handler of a request raised; `remote_type`, `remote_message` and
    `remote_traceback` describe the exception on the other side."""

    def __init__(
        self, message: str = '', *, worker_id: int | None = None, remote_type: str = '',
        remote_message: str = '', remote_traceback: str = '',
    ) -> None:
        super().__init__(message, worker_id=worker_id)
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback


class MapError(ClusterError):
    """A message of `primary.map()` failed; `index` is its position in the input and
    `__cause__` the failure (RemoteError, RequestTimeout, WorkerLost, EncodeError, ...)."""

    def __init__(self, message: str = '', *, worker_id: int | None = None, index: int | None = None) -> None:
        super().__init__(message, worker_id=worker_id)
        self.index = index
