"""Specialized task distribution: one round-robin per queue (tag).

`primary.round_robin(tag)` keeps a separate history for each tag, so each kind of task is
spread over the workers independently of the others. The primary shuts down when every task
of every queue is done.

    python examples/tagged_distribution.py
"""

from isocluster import ClusterPrimary, ClusterWorker

WORKER_COUNT = 6


class TaskWorker(ClusterWorker):
    def _event_primary_message_process_task(self, event):
        message = event.data['message']
        task = message['task']
        self.send({'type': 'task_complete', 'queue': message['queue'], 'task_id': task['id'],
                   'result': task['data'].upper()})


def worker_main() -> None:
    TaskWorker()


def main() -> None:
    primary = ClusterPrimary(worker_target=worker_main)
    # Different types of tasks.
    tasks_by_type = {
        'compute': [{'data': 'crunch', 'id': 'c1'}, {'data': 'crunch more', 'id': 'c2'}],
        'io': [{'data': 'read', 'id': 'i1'}, {'data': 'write', 'id': 'i2'}],
        'lightweight': [{'data': 'ping', 'id': 'l1'}, {'data': 'pong', 'id': 'l2'}],
    }
    total = sum(len(tasks) for tasks in tasks_by_type.values())
    completed = []

    def process_queue(queue_type: str) -> None:
        tasks = tasks_by_type[queue_type]
        if tasks:
            task = tasks.pop(0)  # get the next task
            worker = primary.round_robin(tag=queue_type)  # queue-specific round-robin
            if worker is None:  # no worker ready (yet): the task waits in its queue
                tasks.insert(0, task)
                return

            def sent(future):
                if future.exception() is None:
                    print(f"Task {task['id']} sent to worker {worker.id} ({queue_type} queue)", flush=True)
                else:
                    print(f"Failed to send task {task['id']}: {future.exception()}", flush=True)
                    tasks.insert(0, task)  # put the task back in its queue

            primary.send({'queue': queue_type, 'task': task, 'type': 'process_task'}, to=worker).add_done_callback(sent)

    # Start processing tasks when at least one worker is ready.
    def on_worker_ready(event):
        process_queue('compute')
        process_queue('io')
        process_queue('lightweight')

    # Handle task completion: process the next task of the same queue.
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
                process_queue(message['queue'])

    # A worker joins the pool (round_robin() can pick it) in the default action of
    # worker_ready, so the 'after' stage is where it can receive work.
    primary.after('worker_ready', on_worker_ready)
    primary.on('worker_message', on_worker_message)
    primary.after('worker_exit', lambda event: print(f"Worker {event.data['worker'].id} (pid "
                                                     f"{event.data['worker'].pid}) exited", flush=True))

    # Start workers.
    primary.fork(worker_count=WORKER_COUNT)
    primary.run()


if __name__ == '__main__':
    main()
