"""Basic usage: a primary and its workers in one script.

With neither `worker_target` nor `worker_script`, each worker runs the current script again
(like Node's cluster): `ClusterWorker.is_worker()` tells the two roles apart.

The seed's primary shuts down after 60 seconds; this one shuts down as soon as every worker
has answered its greeting, so it finishes in well under a second.

    python examples/basic.py
"""

from isocluster import ClusterPrimary, ClusterWorker

WORKER_COUNT = 4


def primary_main() -> None:
    # Create a cluster primary (workers run this same script).
    primary = ClusterPrimary()
    answered: set[int] = set()

    # Listen for messages from workers.
    def on_worker_message(event):
        worker, message = event.data['worker'], event.data['message']
        print(f'Received from worker {worker.id}: {message}', flush=True)
        if message.get('type') == 'response':
            answered.add(worker.id)
            if len(answered) == WORKER_COUNT:
                print('Every worker answered; shutting down', flush=True)
                primary.shut_down()

    # Listen for worker lifecycle events.
    def on_worker_ready(event):
        worker = event.data['worker']
        print(f'Worker {worker.id} (pid {worker.pid}) is ready to handle requests', flush=True)
        # Send a message to the worker.
        primary.send({'name': 'User', 'type': 'greet'}, to=worker)

    def on_worker_exit(event):
        worker = event.data['worker']
        print(f"Worker {worker.id} (pid {worker.pid}) exited with code {event.data['code']}", flush=True)

    primary.on('worker_message', on_worker_message)
    primary.on('worker_ready', on_worker_ready)
    primary.on('worker_exit', on_worker_exit)
    primary.on('shut_down_complete', lambda event: print('Shut down complete', flush=True))

    # Start some workers, then run until the cluster has shut down.
    primary.fork(worker_count=WORKER_COUNT)
    primary.run()


def worker_main() -> None:
    # Create a cluster worker.
    worker = ClusterWorker()

    # Handle messages from the primary.
    def on_primary_message(event):
        message = event.data['message']
        if message.get('type') == 'greet':
            print(f"Hello, {message['name']}! (from worker {ClusterWorker.worker_id})", flush=True)
            # Send a response back to the primary.
            worker.send({'content': f"Greeted {message['name']}", 'type': 'response'})

    # Handle primary disconnection (the default action then ends the worker).
    def on_primary_disconnect(event):
        print(f'Worker {ClusterWorker.worker_id}: primary disconnected, cleaning up...', flush=True)

    worker.on('primary_message', on_primary_message)
    worker.on('primary_disconnect', on_primary_disconnect)
    worker.run()


if __name__ == '__main__':
    if ClusterWorker.is_worker():
        worker_main()
    else:
        primary_main()
