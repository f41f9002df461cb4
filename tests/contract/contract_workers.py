"""The workers of the transport contract suite: module-level targets (Ray imports them by
name in its actor processes) that `contract_script.py` also runs as a `worker_script`."""

from __future__ import annotations

import asyncio
from typing import Any

from isocluster import ClusterWorker, EncodeError

BUILT: list[ClusterWorker] = []


class Contract(ClusterWorker):
    """Each message type is one clause of the worker's end of the contract."""

    def _event_primary_message_echo(self, event: Any) -> None:
        self.send(event.data['message'])

    def _event_primary_message_send(self, event: Any) -> None:
        # The worker's end must know the transport's frame limit: an oversized send rejects
        # here, with EncodeError, instead of reaching the primary as a protocol violation.
        sent = self.send({'type': 'echo', 'data': 'x' * event.data['message']['size']})
        outcome = 'accepted'
        if sent.done() and sent.exception() is not None:
            outcome = 'rejected' if isinstance(sent.exception(), EncodeError) else repr(sent.exception())
        self.send({'type': 'outcome', 'outcome': outcome})

    def _event_primary_message_burst(self, event: Any) -> None:
        for n in range(event.data['message']['count']):
            self.send({'type': 'burst', 'n': n})
        raise SystemExit(event.data['message']['code'])

    def _event_primary_message_exit(self, event: Any) -> None:
        raise SystemExit(event.data['message']['code'])

    def _event_primary_message_throw(self, event: Any) -> None:
        raise RuntimeError('thrown on purpose by the contract suite')

    def _event_primary_message_destroy(self, event: Any) -> None:
        self.destroy()

    def _event_primary_message_linger(self, event: Any) -> None:
        # A cleanup that never ends: only the kill timer of destroy(timeout) ends the worker.
        asyncio.get_running_loop().create_task(_refuse_to_end())
        self.destroy(timeout=0.5)


async def _refuse_to_end() -> None:
    while True:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass


def contract() -> None:
    worker = Contract()
    BUILT.append(worker)
    worker.send({'type': 'hello'})  # the application's first act: after ONLINE (R62)


async def idle() -> None:
    """Application code that never builds a ClusterWorker and never returns."""
    await asyncio.Event().wait()
