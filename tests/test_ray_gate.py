"""The max_concurrency scenario of tests/test_gate_transports.py on the Ray transport: the same
observable, and the worker's end counts its reads as the others do (R145).

Skipped when `ray` is not installed and under xdist (`make test-ray` runs it). One local Ray
instance on 127.0.0.1 only serves the module; the primary's destroy kills every actor."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from isocluster.transport import ray_local

ray = ray_local.ray_for_tests()

from isocluster import ClusterPrimary  # noqa: E402
from isocluster.transport.ray import RayTransport  # noqa: E402
from tests import gate_scenario  # noqa: E402

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
RAY_TIMEOUT = 90.0  # wall-clock seconds for one scenario (each worker is a new actor process)


@pytest.fixture(scope='module', autouse=True)
def ray_instance() -> Any:
    if ray.is_initialized():  # pragma: no cover - another module left it running
        ray.shutdown()
    ray_local.start_local(paths=[TESTS, ROOT])
    yield
    ray.shutdown()


def run(scenario: Any) -> Any:
    async def main() -> Any:
        primary = ClusterPrimary(worker_target=gate_scenario.gated_worker, transport=RayTransport(),
                                 ready_timeout=60.0)
        ready = asyncio.get_running_loop().create_future()
        primary.after('worker_ready', lambda event: len(primary.workers) >= gate_scenario.WORKERS
                      and not ready.done() and ready.set_result(None))
        try:
            primary.fork(gate_scenario.WORKERS)
            await asyncio.wait_for(ready, RAY_TIMEOUT)
            return await asyncio.wait_for(scenario(primary), RAY_TIMEOUT)
        finally:
            primary.destroy()
            await asyncio.wait_for(primary.wait_closed(), RAY_TIMEOUT)

    return asyncio.run(main())


def test_the_ray_worker_end_counts_its_reads() -> None:
    gate_scenario.check_reads(run(gate_scenario.reads_scenario))


def test_max_concurrency_holds_on_ray_as_on_the_other_transports() -> None:
    gate_scenario.check(run(gate_scenario.scenario))
