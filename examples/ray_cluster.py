"""The quick start on Ray: the same cluster code, each worker a Ray actor (issue 8).

Needs `pip install 'isocluster[ray]'`; without Ray it says so and exits 0. Starts a local Ray
instance (2 CPUs) and shuts it down at the end. On an existing cluster, build the transport
with `RayTransport(address='ray://head:10001')` (or 'auto' on one of its nodes) instead, and
no `num_cpus` (the cluster has its own).
"""

import asyncio
import importlib.util
import os
import socket

from isocluster import ClusterPrimary, ClusterWorker
from isocluster.transport import ray_local
from isocluster.transport.ray import RayTransport  # imports ray only when a RayTransport is built


class Greeter(ClusterWorker):  # module level: Ray ships it to the actors
    def _event_primary_message_greet(self, event):
        where = f'pid {os.getpid()} on {socket.gethostname()}'
        return f"hello {event.data['message']['name']} from worker {ClusterWorker.worker_id} ({where})"


async def main():
    transport = RayTransport(
        worker_options={'num_cpus': 1},  # the Ray actor options of every worker (placement)
        # ray.init() options: a local instance on 127.0.0.1 only (2 CPUs, 80 MB object store),
        # started on the first fork
        **ray_local.init_kwargs(num_cpus=2),
    )
    primary = ClusterPrimary(worker_target=Greeter, transport=transport)
    ready = asyncio.Event()
    primary.after('worker_ready', lambda event: len(primary.workers) == 2 and ready.set())
    primary.fork(worker_count=2)
    await ready.wait()
    for _ in range(4):
        print(await primary.request({'type': 'greet', 'name': 'Ada'}, to=primary.round_robin()))
    primary.shut_down()
    await primary.wait_closed()
    transport.close()  # shuts down the Ray instance this transport started


if __name__ == '__main__':
    if importlib.util.find_spec('ray') is None:
        print("ray is not installed: pip install 'isocluster[ray]' to run this example")
    else:
        asyncio.run(main())
        print('Shut down complete')
