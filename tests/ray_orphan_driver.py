"""A primary on an existing Ray cluster that a test kills (tests/test_ray_cluster.py).

    python tests/ray_orphan_driver.py <gcs address> <PYTHONPATH for the actors>

Forks two workers (any node offering a `slot`), prints `pid <n>` for each worker's actor
process once both are ready, then waits to be killed. The actors import `worker_main` from
this module by name.
"""

import asyncio
import os
import sys

from isocluster import ClusterPrimary, ClusterWorker
from isocluster.transport import ray_local


class PidWorker(ClusterWorker):
    def _event_primary_message_pid(self, event):
        return os.getpid()


def worker_main():
    PidWorker()


async def main():
    from isocluster.transport.ray import RayTransport

    primary = ClusterPrimary(worker_target=worker_main, ready_timeout=60,
                             transport=RayTransport(worker_options={'num_cpus': 0, 'resources': {'slot': 1}}))
    ready = asyncio.Event()
    primary.after('worker_ready', lambda event: len(primary.workers) == 2 and ready.set())
    primary.fork(2)
    await ready.wait()
    for worker in primary.workers:
        print('pid', await primary.request({'type': 'pid'}, to=worker), flush=True)
    await asyncio.Event().wait()


if __name__ == '__main__':
    ray_local.prepare_environment()
    import ray

    ray.init(**ray_local.init_kwargs(sys.argv[2].split(os.pathsep), address=sys.argv[1]))
    asyncio.run(main())
