"""The same cluster code on the deterministic memory transport: virtual time, fault injection.

Runs as a script or under pytest (`pytest examples/simulated.py`).
"""

from isocluster import ClusterPrimary, ClusterWorker
from isocluster.transport.memory import MemoryTransport


class Greeter(ClusterWorker):
    def _event_primary_message_greet(self, event):
        return f"hello {event.data['message']['name']}"


def test_crashed_and_hung_workers_are_replaced():
    sim = MemoryTransport(seed=7)
    primary = ClusterPrimary(worker_target=Greeter, transport=sim, heartbeat_interval=10)
    primary.fork(worker_count=3)
    sim.run_until(lambda: len(primary.workers) == 3)
    sim.crash(primary.workers[0], signal=9)  # SIGKILL: replaced at once
    sim.run_until(lambda: [worker.id for worker in primary.workers] == [2, 3, 4])
    sim.hang(primary.workers[0])  # a blocked event loop, found by heartbeats
    sim.run_until(lambda: [worker.id for worker in primary.workers] == [3, 4, 5], timeout=60)
    assert 30 < sim.loop.time() < 60  # 30-second heartbeat timeout, no real waiting
    primary.destroy()
    sim.run_until(lambda: primary.closed)


if __name__ == '__main__':
    test_crashed_and_hung_workers_are_replaced()
    print('simulated: crash and hang handled in virtual time')
