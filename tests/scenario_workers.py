"""Worker targets of the acceptance scenarios (SPEC §8.1, "Worker modes").

Module-level functions, so both transports can run them: the memory transport calls them as
tasks in the test process, the process transport calls them in a forked child. Each target
builds its `ClusterWorker`, subscribes and returns (SPEC R99); none calls `run()`.
"""

from __future__ import annotations

import asyncio
import os

from isocluster.errors import SendError
from isocluster.worker import ClusterWorker

# Written by the worker of scenario 7 straight to the file descriptors, which is what a
# process "printing" means: a forked child's `sys.stdout` may be a test-runner object that
# bypasses fd 1, so only the descriptors say whether the primary silenced the worker.
STDOUT_MARKER = 'isocluster-scenario-worker-stdout-marker'
STDERR_MARKER = 'isocluster-scenario-worker-stderr-marker'

# communicate-sad: one entry per `after primary_disconnect` call, True when the send made
# after the disconnect was already rejected with SendError. Only the memory transport shares
# this list with the test; on both transports a False also raises, which is fatal to the
# worker (exit code 1, SPEC R33), and the tests check the exit code.
SAD_CHECKS: list[bool] = []


def idle() -> None:
    """Never builds a ClusterWorker: never ready, ends with code 0 when disconnected (R102)."""


def idle_printing() -> None:
    """idle, after writing one line to stdout and one to stderr (scenario 7)."""
    os.write(1, (STDOUT_MARKER + '\n').encode())
    os.write(2, (STDERR_MARKER + '\n').encode())


def _count_replier(worker: ClusterWorker):
    def reply(event) -> None:
        message = event.data['message']
        if isinstance(message, dict) and 'count' in message:
            worker.send({'count': message['count'] + 1})

    return reply


def communicate() -> None:
    worker = ClusterWorker()
    worker.after('primary_message', _count_replier(worker))


def communicate_sad() -> None:
    worker = ClusterWorker()
    worker.after('primary_message', _count_replier(worker))

    def send_after_disconnect(event) -> None:
        future = worker.send('message')
        rejected = (
            future.done()
            and not future.cancelled()
            and isinstance(future.exception(), SendError)
        )
        SAD_CHECKS.append(rejected)
        if not rejected:
            raise AssertionError(
                f'communicate-sad: a send after primary_disconnect returned {future!r}, '
                'not a future already rejected with SendError (R107, R109)'
            )

    worker.after('primary_disconnect', send_after_disconnect)


def early_send() -> None:
    worker = ClusterWorker(initialize=False)
    worker.send('not ready')
    worker.initialize()


def identify() -> None:
    worker = ClusterWorker()

    def answer(event) -> None:
        if event.data['message'] == 'identify':
            worker.send({
                'worker_id': ClusterWorker.worker_id,
                'worker_property': ClusterWorker.is_worker(),
            })

    worker.after('primary_message', answer)


def replace() -> None:
    worker = ClusterWorker()

    def obey(event) -> None:
        message = event.data['message']
        if message == 'destroy':
            worker.destroy()
        elif message == 'exit':
            raise SystemExit(0)
        elif message == 'throw':
            raise RuntimeError('Throwing an error on purpose')

    worker.after('primary_message', obey)


def server() -> None:
    worker = ClusterWorker()
    loop = asyncio.get_event_loop()
    kept: list = []  # the listen task and, once it is done, the shared socket

    def close_socket(event) -> None:
        for task in kept:
            if task.done() and not task.cancelled() and task.exception() is None:
                task.result().close()

    def listen(event):
        task = asyncio.ensure_future(worker.listen(('127.0.0.1', 0)), loop=loop)
        kept.append(task)
        return task  # as the spec's lambda does: an awaitable handler result (R27)

    worker.on('destroy_complete', close_socket)
    # initialize_complete was published during construction: this late subscriber runs at
    # once (R22), after READY was sent.
    worker.after('initialize_complete', listen)


class TypedWorker(ClusterWorker):
    """Records every primary message in `pm` and answers typed messages a, b, c, reply_unknown."""

    def _initialize(self, *args, **kwargs) -> None:
        self.pm: list = []
        self.on('primary_message', self._record_primary_message)

    def _record_primary_message(self, event) -> None:
        self.pm.append(event.data['message'])

    def _answer(self, event, type_: str) -> None:
        self.send({
            'message': event.data['message'],
            'primary_messages': self.pm,
            'type': type_,
            type_: type_,
        })

    def _event_primary_message_a(self, event) -> None:
        self._answer(event, 'x')

    def _event_primary_message_b(self, event) -> None:
        self._answer(event, 'y')

    def _event_primary_message_c(self, event) -> None:
        self._answer(event, 'z')

    def _event_primary_message_reply_unknown(self, event) -> None:
        self.send({'message': event.data['message'], 'primary_messages': self.pm, 'type': 'unknown'})


def typed() -> None:
    TypedWorker()
