"""A RayTransport that keeps the links it starts, so Ray tests reach a worker's actor through
the transport's own `start_worker` (a WorkerHandle keeps its link private)."""

from __future__ import annotations

from typing import Any, Callable

from isocluster.transport import base
from isocluster.transport.ray import RayTransport


class RecordingRayTransport(RayTransport):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started: list[Any] = []  # every link start_worker returned, in order

    def start_worker(self, spec: base.WorkerSpec, listener: base.LinkListener) -> Any:
        link = super().start_worker(spec, listener)
        self.started.append(link)
        return link

    def link_of(self, worker: Any) -> Any:
        """The link of `worker` (a handle of the one primary using this transport)."""
        return next(link for link in reversed(self.started) if link.id == worker.id)


def actors_alive(transport: RecordingRayTransport, is_dead: Callable[[Any], bool]) -> list[int]:
    """The worker ids whose actor is still alive (`is_dead(actor)` asks Ray)."""
    return [link.id for link in transport.started if not is_dead(link.actor)]
