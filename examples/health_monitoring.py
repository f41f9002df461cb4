"""Health monitoring: application health checks plus the library's heartbeats.

Two layers, as in the seed plus isocluster's supervision:

- The application: every `check_interval` seconds (30 in the seed) the primary sends each
  worker a `health_check`; the worker answers with a `health_status` (active requests,
  memory usage, uptime). A worker over `memory_limit` is asked to `prepare_for_restart`: it
  finishes its work and leaves (`destroy()`), and the primary replaces it (restart policy
  'always'). Worker 2 here has a *simulated* leak (no memory is really allocated) so that
  this happens after four checks.
- The library: with `heartbeat_interval` / `heartbeat_timeout`, the primary pings every ready
  worker from its event loop; a worker whose loop is stuck stops answering, gets a
  `worker_error` (`HeartbeatTimeout`), is killed and replaced. `main()` freezes worker 3
  to show it.

`HealthPrimary` and `worker_main` are the app; `tests/test_testing_plugin.py` runs the same
app with 30-second timers on the simulated transport in milliseconds.

    python examples/health_monitoring.py
"""

import resource
import time

from isocluster import ClusterPrimary, ClusterWorker, HeartbeatTimeout

MB = 1024 * 1024
MEMORY_LIMIT = 1536 * MB  # 1.5 GB, as in the seed
BASE_HEAP = 50 * MB
LEAK_PER_CHECK = 400 * MB  # simulated
LEAKY_WORKER = 2


class HealthPrimary(ClusterPrimary):
    """A primary that checks its workers' health every `check_interval` seconds."""

    def __init__(self, *, check_interval: float = 30.0, memory_limit: int = MEMORY_LIMIT, **options):
        self.check_interval = check_interval
        self.memory_limit = memory_limit
        self.worker_health: dict[int, dict] = {}
        self.restart_requested: list[int] = []
        self._check_timer = None
        super().__init__(**options)
        self.on('shut_down', lambda event: self._stop_checks())

    def say(self, text: str) -> None:
        print(f'[t={self.transport.loop.time() - self._started:8.3f}] {text}', flush=True)

    def start(self, worker_count: int) -> 'HealthPrimary':
        self._started = self.transport.loop.time()
        self.fork(worker_count=worker_count)
        self.send_health_checks()
        return self

    def send_health_checks(self) -> None:
        # Send regular health checks to workers.
        loop = self.transport.loop
        for worker in self.workers:
            def failed(future, worker=worker):
                if future.exception() is not None:
                    self.say(f'Failed to send health check to worker {worker.id}: {future.exception()}')
            self.send({'timestamp': loop.time(), 'type': 'health_check'}, to=worker).add_done_callback(failed)
        self._check_timer = loop.call_later(self.check_interval, self.send_health_checks)

    def _stop_checks(self) -> None:
        if self._check_timer is not None:
            self._check_timer.cancel()

    # Process health responses (routed by type: no worker_message subscription needed).
    def _event_worker_message_health_status(self, event):
        message, worker = event.data['message'], event.data['worker']
        self.worker_health[worker.id] = {
            'active_requests': message['active_requests'],
            'last_response': self.transport.loop.time(),
            'memory_usage': message['memory_usage'],
            'uptime': message['uptime'],
        }
        heap_used = message['memory_usage']['heap_used']
        self.say(f'Worker {worker.id} healthy: heap {heap_used // MB} MB, uptime {message["uptime"]:.1f}s')
        # Check for memory leaks or other issues.
        if heap_used > self.memory_limit and worker.id not in self.restart_requested:
            self.say(f'Worker {worker.id} using excessive memory, scheduling restart')
            self.restart_requested.append(worker.id)
            # Gracefully restart the worker: it finishes its current tasks and exits.
            self.send({'type': 'prepare_for_restart'}, to=worker)


class HealthWorker(ClusterWorker):
    def _initialize(self):
        self.started = self._pubsub_loop().time()
        self.active_requests = 0
        self.heap_used = BASE_HEAP

    def _event_primary_message_health_check(self, event):
        if ClusterWorker.worker_id == LEAKY_WORKER:
            self.heap_used += LEAK_PER_CHECK
        self.send({
            'active_requests': self.active_requests,
            'memory_usage': {'heap_used': self.heap_used,
                             'max_rss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024},
            'type': 'health_status',
            'uptime': self._pubsub_loop().time() - self.started,
        })

    def _event_primary_message_prepare_for_restart(self, event):
        print(f'Worker {ClusterWorker.worker_id} finishing its work and leaving for a restart', flush=True)
        self.destroy()

    def _event_primary_message_freeze(self, event):
        print(f'Worker {ClusterWorker.worker_id} freezing its event loop', flush=True)
        time.sleep(30)  # a stuck loop answers no heartbeat: the primary kills it long before


def worker_main() -> None:
    HealthWorker()


def main() -> None:
    primary = HealthPrimary(worker_target=worker_main, check_interval=0.25,
                            heartbeat_interval=0.1, heartbeat_timeout=0.5)
    replaced: set[int] = set()

    def on_worker_ready(event):
        worker = event.data['worker']
        primary.say(f'Worker {worker.id} (pid {worker.pid}) ready')
        if worker.id == 3:
            primary.send({'type': 'freeze'}, to=worker)
        if len(replaced) == 2 and len(primary.workers) == 4:
            primary.say(f'Both replacements are ready: workers {[w.id for w in primary.workers]}; shutting down')
            primary.shut_down()

    def on_worker_error(event):
        error = event.data['error']
        if isinstance(error, HeartbeatTimeout):
            primary.say(f"Worker {event.data['worker'].id} missed its heartbeats: killing and replacing it")

    def on_worker_exit(event):
        worker = event.data['worker']
        how = f"signal {event.data['signal'].name}" if event.data['signal'] else f"code {event.data['code']}"
        primary.say(f'Worker {worker.id} exited ({how})')
        if worker.id in (LEAKY_WORKER, 3):
            replaced.add(worker.id)

    primary.after('worker_ready', on_worker_ready)
    primary.on('worker_error', on_worker_error)
    primary.on('worker_exit', on_worker_exit)
    primary.transport.loop.call_later(15.0, primary.shut_down)  # a safety net: never run forever
    primary.start(4)
    primary.run()


if __name__ == '__main__':
    main()
