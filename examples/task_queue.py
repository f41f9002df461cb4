"""A task queue with `primary.map()`: each task goes to the least busy worker.

Uneven tasks (a slow one, then a quick one, ...) are where round-robin falls short: it
picks a worker when a task is sent, so every slow task can land on the same worker while
the other idles. `map()` keeps at most `max_in_flight` requests on each worker and sends
the next task to whichever has fewest, so both stay busy. A worker lost mid-map has its
unfinished tasks re-sent to another worker (`retries=1`: at-least-once).

    python examples/task_queue.py
"""

import asyncio
import time

from isocluster import ClusterPrimary, ClusterWorker


class Cruncher(ClusterWorker):
    def _event_primary_message_crunch(self, event):
        task = event.data['message']
        end = time.perf_counter() + task['seconds']  # stand-in for CPU-bound work
        while time.perf_counter() < end:
            pass
        return {'id': task['id'], 'worker': ClusterWorker.worker_id}


def worker_main():
    Cruncher(max_concurrency=1)  # CPU-bound: serve one request at a time, the others wait in order


async def main():
    primary = ClusterPrimary(worker_target=worker_main)
    primary.fork(worker_count=2)  # map() waits for a ready worker
    tasks = [{'type': 'crunch', 'id': n, 'seconds': 0.05 if n % 2 == 0 else 0.001} for n in range(10)]
    async for result in primary.map(tasks, ordered=False, max_in_flight=1, retries=1):
        print(f"Task {result['id']} done by worker {result['worker']}", flush=True)
    primary.shut_down()
    await primary.wait_closed()


if __name__ == '__main__':
    asyncio.run(main())
