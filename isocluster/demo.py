"""`make demo` / `isocluster demo`: fork, route, balance, crash, replace, shut down."""

from __future__ import annotations

import sys
import time
from typing import Any

from .primary import ClusterPrimary
from .worker import ClusterWorker

TASKS = 6


class SquareWorker(ClusterWorker):
    """Answers `square` tasks; a `crash` message kills it (to show replacement)."""

    def _event_primary_message_square(self, event: Any) -> None:
        message = event.data['message']
        self.send({'type': 'result', 'task': message['task'], 'value': message['value'] ** 2})

    def _event_primary_message_crash(self, event: Any) -> None:
        raise SystemExit(3)


def worker_main() -> None:
    SquareWorker()


class DemoPrimary(ClusterPrimary):
    def __init__(self, out: Any = None, **options: Any) -> None:
        self.out = out or sys.stdout
        self.started = time.monotonic()
        self.results: dict[int, int] = {}
        self.crashed = False
        super().__init__(worker_target=worker_main, **options)
        self.after({
            'worker_fork': lambda e: self.say(f"worker {e.data['worker'].id} forked (pid {e.data['worker'].pid})"),
            'worker_ready': self.on_ready,
            'worker_exit': lambda e: self.say(
                f"worker {e.data['worker'].id} exited: code={e.data['code']} "
                f"signal={e.data['signal'].name if e.data['signal'] else None}"
            ),
            'shut_down': lambda e: self.say('shutting down'),
            'shut_down_complete': lambda e: self.say('shut down complete: no worker left'),
        })

    def say(self, text: str) -> None:
        print(f'[{time.monotonic() - self.started:7.3f}s] {text}', file=self.out, flush=True)

    def on_ready(self, event: Any) -> None:
        self.say(f"worker {event.data['worker'].id} ready")
        if not self.crashed and len(self.workers) == 3 and not self.results:
            for task in range(TASKS):
                worker = self.round_robin()
                self.say(f'task {task} -> worker {worker.id} (round robin)')
                self.send({'type': 'square', 'task': task, 'value': task + 2}, to=worker)
        elif self.crashed and len(self.workers) == 3:
            self.say(f'replacement ready; pool is {[worker.id for worker in self.workers]}')
            self.shut_down()

    def _event_worker_message_result(self, event: Any) -> None:
        message = event.data['message']
        self.results[message['task']] = message['value']
        self.say(f"worker {event.data['worker'].id} answered task {message['task']}: {message['value']}")
        if len(self.results) == TASKS:
            victim = self.workers[1]
            self.say(f'asking worker {victim.id} to crash; it will be replaced')
            self.crashed = True
            self.send({'type': 'crash'}, to=victim)


def main(out: Any = None) -> int:
    primary = DemoPrimary(out=out, shutdown_timeout=2.0, kill_timeout=1.0)
    primary.fork(worker_count=3)
    primary.run()
    return 0 if len(primary.results) == TASKS else 1


if __name__ == '__main__':
    raise SystemExit(main())
