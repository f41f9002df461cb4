"""Transports: the process transport (default) and the deterministic memory transport."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import PrimaryLink, Transport, WorkerLink, WorkerSpec

if TYPE_CHECKING:
    from .memory import MemoryTransport
    from .process import ProcessTransport

__all__ = ['MemoryTransport', 'PrimaryLink', 'ProcessTransport', 'Transport', 'WorkerLink', 'WorkerSpec', 'default_transport']


def default_transport() -> Transport:
    from .process import ProcessTransport

    return ProcessTransport()


def __getattr__(name: str) -> Any:
    # Lazy, so importing the package never forks-proofs or builds a loop it does not need.
    if name == 'MemoryTransport':
        from .memory import MemoryTransport

        return MemoryTransport
    if name == 'ProcessTransport':
        from .process import ProcessTransport

        return ProcessTransport
    raise AttributeError(name)
