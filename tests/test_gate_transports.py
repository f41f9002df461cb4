"""The worker's request gate (R145, `ClusterWorker(max_concurrency=...)`) follows one rule on
every transport: each worker end counts its read deliveries, and the same scenario shows the
same observable on memory and processes (tests/test_ray_gate.py: on Ray)."""

from __future__ import annotations

from typing import Any

import pytest

from isocluster import ClusterPrimary
from tests import gate_scenario
from tests.cluster_helpers import TRANSPORTS, ready_waiter, run_cluster


def run(transport: str, scenario: Any) -> Any:
    async def ready_then(primary: ClusterPrimary) -> Any:
        primary.fork(gate_scenario.WORKERS)
        await ready_waiter(primary, gate_scenario.WORKERS)
        return await scenario(primary)

    return run_cluster(transport, ready_then, worker_target=gate_scenario.gated_worker)


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_every_worker_end_counts_its_reads(transport: str) -> None:
    """The gate tells a later read from the same one by the link's count (request_gate.py):
    a worker end that did not count would give the gate a rule of its own."""
    gate_scenario.check_reads(run(transport, gate_scenario.reads_scenario))


@pytest.mark.parametrize('transport', TRANSPORTS)
def test_max_concurrency_holds_the_same_way_on_every_transport(transport: str) -> None:
    gate_scenario.check(run(transport, gate_scenario.scenario))
