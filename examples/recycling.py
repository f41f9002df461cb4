"""Recycling healthy workers (as gunicorn's max_requests): after a number of messages, after
an age, or above a resident memory size, a worker is replaced by a new one, which is ready
before the old one drains and leaves. Recycling is not a restart: it never counts toward
`restart_intensity`.

Runs in virtual time on the memory transport (an hour passes in milliseconds); on real
processes the same options apply, and resident memory is read from /proc.

    python examples/recycling.py
"""

from isocluster import ClusterPrimary, ClusterWorker
from isocluster.transport.memory import MemoryTransport

MiB = 1024 * 1024


def worker_main():
    ClusterWorker().on('primary_message', lambda event: None)


def main():
    sim = MemoryTransport(seed=1)
    primary = ClusterPrimary(
        worker_target=worker_main, transport=sim,
        max_requests=1000, max_requests_jitter=50,  # after 1,000 to 1,050 messages or requests
        max_age=3600.0, max_age_jitter=600.0,       # after 1 hour plus up to 10 minutes
        max_memory=512 * MiB,                       # above 512 MiB resident, checked every second
    )

    def on_recycle(event):
        data = event.data
        print(f"worker {data['worker'].id} recycled: {data['reason']} {data['value']:.0f} >= {data['limit']:.0f}",
              flush=True)

    primary.on('worker_recycle', on_recycle)
    primary.on('worker_exit', lambda event: print(f"worker {event.data['worker'].id} left", flush=True))
    primary.fork(worker_count=2)
    sim.run_until(lambda: len(primary.workers) == 2)

    first, second = primary.workers
    for number in range(1100):
        primary.send({'type': 'work', 'number': number}, to=first)
    sim.run_until(lambda: first.is_dead())

    sim.set_resident_bytes(second, 600 * MiB)  # simulated: the worker grew
    sim.run_until(lambda: second.is_dead())

    sim.advance(4300.0)  # the next workers reach their age limit

    for worker_id, figures in primary.stats()['workers'].items():
        print(f"worker {worker_id}: up {figures['uptime']:.0f} s, {figures['messages_out']} messages, "
              f"restarts of its slot {figures['restarts']}", flush=True)
    print(f"restarts counted: {primary.stats()['restarts']}", flush=True)
    primary.shut_down()
    sim.run_until(lambda: primary.closed)


if __name__ == '__main__':
    main()
