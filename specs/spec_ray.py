"""The executable spec on the Ray transport (issue 8): the same state machine, workers as actors.

`RayClusterMachine` is `spec_cluster.ClusterMachine` with `TRANSPORT = 'ray'`, so it runs
the rules and invariants of the process variant (`ProcessClusterMachine`), except as below:

Skipped, as for processes (the rules are preconditioned on the memory transport):
    crash (an exit with a chosen code), hold / release / hold_and_reorder, fail_next_send,
    inject_bytes, slow_boot -- fault injection a real worker cannot be made to do from outside;
    kill_primary -- it would kill the test process itself (and on Ray, fate sharing kills the
    actors outright: no R118 kill timer to check).
Restricted on Ray, unlike processes:
    heartbeats are off and `hang` does not run (each actor is a new process on 2 shared CPUs);
    `kill` sends SIGKILL only (on Ray `kill(signal)` is `ray.kill` whatever the signal and
    reports the signal asked for, so SIGTERM would check nothing more).
As for processes: crashes in the compound rules are SIGKILLs; the model allows either outcome
for writes racing a worker's death (`exact_writes=False`).
What Ray cannot do beyond that:
    - a 5 s ready timeout: each worker is a new actor process that imports isocluster, and
      several start at once on 2 CPUs, so the driver gives Ray workers `RAY_READY_TIMEOUT`
      (30 s; the model's ready timeout only matters for the memory-only `slow_boot`);
    - shared sockets and worker_script: the machine uses neither (NotSupportedError on Ray).

One local Ray instance (`driver.start_ray()`: `ray.init(num_cpus=2, include_dashboard=False)`
with this checkout on the actors' PYTHONPATH, as tests/test_ray_transport.py) serves the module
and is shut down after it. Skipped when `ray` is not installed, so `make test` stays ray-free;
`make test-ray` runs it: `python3 -m pytest -q specs/spec_ray.py`.
"""

from __future__ import annotations

import pytest

ray = pytest.importorskip('ray')

from hypothesis import settings  # noqa: E402

from .driver import start_ray  # noqa: E402
from .spec_cluster import _COMMON, FULL, PROCESS_STEPS, STATS, ClusterMachine  # noqa: E402

RAY_EXAMPLES = 10 if FULL else 5
RAY_STATS: dict[str, float] = {'examples': 0, 'seconds': 0.0}


@pytest.fixture(scope='module', autouse=True)
def ray_instance():
    if ray.is_initialized():  # pragma: no cover - another module left it running
        ray.shutdown()
    start_ray()
    yield
    ray.shutdown()


class RayClusterMachine(ClusterMachine):
    """The process variant's spec against Ray actors (see the module docstring)."""

    TRANSPORT = 'ray'

    def teardown(self) -> None:
        # ClusterMachine.teardown counts every non-memory run as a process run: count it here.
        examples, seconds = STATS['process_examples'], STATS['process_seconds']
        try:
            super().teardown()
        finally:
            RAY_STATS['examples'] += STATS['process_examples'] - examples
            RAY_STATS['seconds'] += STATS['process_seconds'] - seconds
            STATS['process_examples'], STATS['process_seconds'] = examples, seconds


class TestRayCluster(RayClusterMachine.TestCase):
    """The machine above, run as one test that also checks it really ran its examples on Ray
    (at least 5, issue 8): the check lives in the run it checks, so it holds in any order, alone
    or on any xdist worker."""

    settings = settings(max_examples=RAY_EXAMPLES, stateful_step_count=PROCESS_STEPS, **_COMMON)

    def runTest(self) -> None:
        before = RAY_STATS['examples']
        super().runTest()
        ran = RAY_STATS['examples'] - before
        assert ran >= min(5, RAY_EXAMPLES), f'TestRayCluster ran {ran} examples on Ray: {RAY_STATS}'
