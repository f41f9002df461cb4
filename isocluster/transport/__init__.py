"""Transports: the process transport (default) and the deterministic memory transport."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from . import base
from .base import PrimaryLink, Transport, WorkerLink, WorkerSpec

if TYPE_CHECKING:
    from .memory import MemoryTransport
    from .process import ProcessTransport

__all__ = ['MemoryTransport', 'PrimaryLink', 'ProcessTransport', 'Transport', 'WorkerLink', 'WorkerSpec', 'default_transport']


def default_transport() -> Transport:
    from .process import ProcessTransport

    return ProcessTransport()


def _script_worker_link() -> PrimaryLink | None:
    # A worker_script the process transport started finds its link in its environment;
    # the process transport is imported only then (and registers its own finder).
    if base.WORKER_FD_ENV not in os.environ:
        return None
    from .process import link_from_environment

    return link_from_environment()


base.add_link_finder(_script_worker_link)


def __getattr__(name: str) -> Any:
    # Lazy, so importing the package never forks-proofs or builds a loop it does not need.
    if name == 'MemoryTransport':
        from .memory import MemoryTransport

        return MemoryTransport
    if name == 'ProcessTransport':
        from .process import ProcessTransport

        return ProcessTransport
    raise AttributeError(name)
