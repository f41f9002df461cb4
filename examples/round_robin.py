"""Task distribution with round-robin.

Each time a worker becomes ready, and each time a task completes, the primary sends the next
task of its queue to `primary.round_robin()`: the worker least recently picked. Workers run
`worker_main` (fork without exec: `worker_target`). The primary shuts down when every task
is done.

    python examples/round_robin.py
"""

from isocluster import ClusterPrimary, ClusterWorker

WORKER_COUNT = 4


class TaskWorker(ClusterWorker):
    def _event_primary_message_process_task(self, event):
        task = event.data['message']['task']
        result = sum(ord(character) for character in task['data'])  # stand-in for real work
        self.send({'type': 'task_complete', 'task_id': task['id'], 'result': result})


def worker_main() -> None:
    TaskWorker()


def main() -> None:
    primary = ClusterPrimary(worker_target=worker_main)
    # Queue of tasks to process.
    tasks = [{'data': f'payload {number}', 'id': number} for number in range(1, 11)]
    total, completed = len(tasks), []

    def process_queue() -> None:
        if tasks:
            task = tasks.pop(0)  # get the next task
            worker = primary.round_robin()  # select a worker using round-robin
            if worker is None:  # no worker ready (yet): the task waits in the queue
                tasks.insert(0, task)
                return

            def sent(future):
                if future.exception() is None:
                    print(f"Task {task['id']} sent to worker {worker.id}", flush=True)
                else:
                    print(f"Failed to send task {task['id']}: {future.exception()}", flush=True)
                    tasks.insert(0, task)  # put the task back in the queue

            # Send the task to the worker.
            primary.send({'task': task, 'type': 'process_task'}, to=worker).add_done_callback(sent)

    # Start processing tasks when at least one worker is ready. A worker joins the pool
    # (and round_robin() can pick it) once the default action of worker_ready has run: 'after'.
    primary.after('worker_ready', lambda event: process_queue())

    # Handle task completion.
    def on_worker_message(event):
        message = event.data['message']
        if message['type'] == 'task_complete':
            print(f"Task {message['task_id']} completed by worker {event.data['worker'].id} "
                  f"with result: {message['result']}", flush=True)
            completed.append(message['task_id'])
            if len(completed) == total:
                print(f'All {total} tasks completed; shutting down', flush=True)
                primary.shut_down()
            else:
                process_queue()  # process the next task

    primary.on('worker_message', on_worker_message)
    primary.after('worker_exit', lambda event: print(f"Worker {event.data['worker'].id} (pid "
                                                     f"{event.data['worker'].pid}) exited", flush=True))

    # Start workers.
    primary.fork(worker_count=WORKER_COUNT)
    primary.run()


if __name__ == '__main__':
    main()
