"""Type-based message routing by subclassing.

A message that is a dict with a string `type` is routed to the method named
`_event_worker_message_<type>` of the primary (and `_event_primary_message_<type>` of a
worker): no `worker_message` subscription needed. The seed builds the subclass with
`isotropic-make`; in Python it is plain inheritance.

Each worker sends a log line, a metric and a request for help; the primary answers the
request, the worker reports it is done, and the primary shuts down once both workers are.

    python examples/type_routing.py
"""

from isocluster import ClusterPrimary, ClusterWorker

WORKER_COUNT = 2


class AdvancedPrimary(ClusterPrimary):
    """ClusterPrimary with handler methods for the message types its workers send."""

    def __init__(self, **options):
        self.metrics: list[tuple[str, float]] = []
        self.done: set[int] = set()
        super().__init__(**options)

    def _event_worker_message_log(self, event):
        # Handler for messages with type 'log'.
        message, worker = event.data['message'], event.data['worker']
        print(f"[Worker {worker.id} LOG] {message['level']}: {message['text']}", flush=True)

    def _event_worker_message_metric(self, event):
        # Handler for messages with type 'metric'.
        message = event.data['message']
        print(f"METRIC: {message['name']} = {message['value']}", flush=True)
        self._store_metric(name=message['name'], value=message['value'])

    def _event_worker_message_request_help(self, event):
        # Handler for messages with type 'request_help'.
        message, worker = event.data['message'], event.data['worker']
        print(f"Worker {worker.id} needs help with: {message['problem']}", flush=True)
        # Send help back to the worker.
        self.send({'solution': self._get_solution(message['problem']), 'type': 'help_response'}, to=worker)

    def _event_worker_message_done(self, event):
        self.done.add(event.data['worker'].id)
        if len(self.done) == WORKER_COUNT:
            print(f'Stored metrics: {self.metrics}', flush=True)
            self.shut_down()

    # Supporting methods.
    def _get_solution(self, problem):
        return f'Solution for {problem}'

    def _store_metric(self, *, name, value):
        self.metrics.append((name, value))  # a real app would store it in a database


class HelpfulWorker(ClusterWorker):
    """Sends typed messages, and routes the primary's answers by type too."""

    def _initialize_complete(self):
        worker_id = ClusterWorker.worker_id
        self.send({'level': 'info', 'text': 'started', 'type': 'log'})
        self.send({'name': f'worker_{worker_id}_boot_ms', 'type': 'metric', 'value': 12.5 * worker_id})
        self.send({'problem': f'puzzle #{worker_id}', 'type': 'request_help'})

    def _event_primary_message_help_response(self, event):
        print(f"Worker {ClusterWorker.worker_id} got help: {event.data['message']['solution']}", flush=True)
        self.send({'type': 'done'})


def worker_main() -> None:
    HelpfulWorker()


def main() -> None:
    primary = AdvancedPrimary(worker_target=worker_main)
    primary.after('worker_exit', lambda event: print(f"Worker {event.data['worker'].id} (pid "
                                                     f"{event.data['worker'].pid}) exited", flush=True))
    primary.fork(worker_count=WORKER_COUNT)
    primary.run()


if __name__ == '__main__':
    main()
