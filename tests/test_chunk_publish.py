"""The messages of a chunk (map(chunksize=n)) see the same publish as messages sent one by
one (SPEC R1-R28, R108): an after handler the routed method subscribes runs in that same
publish (R18), and a default action overridden on the instance replaces routing (R7). The
chunk's direct path skipped both."""

from __future__ import annotations

from typing import Any

import pytest

from isocluster import ClusterPrimary, ClusterWorker
from tests.cluster_helpers import ready_waiter, run_cluster


class AfterWorker(ClusterWorker):
    def __init__(self) -> None:
        self.after_seen: list[int] = []
        super().__init__()

    def _event_primary_message_task(self, event: Any) -> Any:
        seen = list(self.after_seen)
        number = event.data['message']['id']
        self.once_after('primary_message', lambda e: self.after_seen.append(number))  # R18
        return seen


def after_worker() -> None:
    AfterWorker()


class OverridingWorker(ClusterWorker):
    def __init__(self) -> None:
        super().__init__()
        self._event_primary_message = lambda event: event.reply(('instance action', event.data['message']['id']))

    def _event_primary_message_task(self, event: Any) -> Any:
        return 'routed'  # what routing, the class's default action, would answer


def overriding_worker() -> None:
    OverridingWorker()


def replies(target: Any, chunksize: int) -> Any:
    async def scenario(primary: ClusterPrimary) -> Any:
        primary.fork(1)
        await ready_waiter(primary, 1)
        messages = [{'type': 'task', 'id': number} for number in range(4)]
        return [reply async for reply in primary.map(messages, chunksize=chunksize, max_in_flight=1)]

    return run_cluster('memory', scenario, worker_target=target)


@pytest.mark.parametrize('chunksize', [1, 4])
def test_r18_an_after_handler_the_routed_method_subscribes_runs_in_its_publish(chunksize: int) -> None:
    assert replies(after_worker, chunksize) == [[], [0], [0, 1], [0, 1, 2]]


@pytest.mark.parametrize('chunksize', [1, 4])
def test_r7_a_default_action_overridden_on_the_instance_replaces_routing(chunksize: int) -> None:
    assert replies(overriding_worker, chunksize) == [['instance action', number] for number in range(4)]
