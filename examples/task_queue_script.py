"""`primary.map_sync()`: the task queue for a script without its own event loop, like
`multiprocessing.Pool.map`. Tiny tasks travel in chunks: one frame and one reply per
`chunksize` tasks, so each does not pay a round trip of its own.

    python examples/task_queue_script.py
"""

from isocluster import ClusterPrimary, ClusterWorker


class Summer(ClusterWorker):
    def _event_primary_message_total(self, event):
        return sum(event.data['message']['values'])


def main():
    primary = ClusterPrimary(worker_target=Summer)
    primary.fork(worker_count=2)
    tasks = [{'type': 'total', 'values': [n, n, n]} for n in range(1000)]
    totals = primary.map_sync(tasks, chunksize=100)  # blocks; replies in input order
    print(f'{len(totals)} totals, the last {totals[-1]}, together {sum(totals)}', flush=True)
    primary.shut_down()
    primary.run()  # returns once every worker has left


if __name__ == '__main__':
    main()
