"""Custom worker initialization: an async `_initialize`.

`DbWorker` connects to its "database" in an async `_initialize`. The library sends READY
only when that coroutine has finished, so the primary's `worker_ready` means "connected and
loaded", and nothing is routed to a half-initialized worker. `_destroy` closes the
connection and then calls the parent's `_destroy`.

The seed connects to MongoDB with mongoose; this example stays stdlib-only with a tiny
in-memory stand-in (`FakeDatabase`) that takes a little while to connect.

    python examples/custom_init.py
"""

import asyncio
import time

from isocluster import ClusterPrimary, ClusterWorker

WORKER_COUNT = 2
STARTED = time.monotonic()


def say(text: str) -> None:
    print(f'[{time.monotonic() - STARTED:6.3f}s] {text}', flush=True)


class FakeDatabase:
    """A stand-in for a database client: async connect, a query, disconnect."""

    @classmethod
    async def connect(cls, url: str) -> 'FakeDatabase':
        await asyncio.sleep(0.2)  # pretend to do a network round trip
        return cls(url)

    def __init__(self, url: str) -> None:
        self.url = url
        self.tables: dict[str, dict[str, str]] = {}

    def find(self, table: str, key: str) -> str | None:
        return self.tables.get(table, {}).get(key)

    def disconnect(self) -> None:
        self.tables.clear()


class DbWorker(ClusterWorker):
    """A worker with a database connection (the seed's `_DbWorker`)."""

    _db: FakeDatabase | None = None

    @property
    def db(self) -> FakeDatabase | None:
        return self._db

    # Custom initialization: every class's own `_initialize` runs, base first (no super call).
    async def _initialize(self):
        say(f'Worker {ClusterWorker.worker_id} connecting to database...')
        self._db = await FakeDatabase.connect('memory://localhost/myapp')
        # Perform other initialization.
        self._setup_models()
        await self._load_initial_data()

    def _initialize_complete(self):
        say(f'Worker {ClusterWorker.worker_id} database initialized')

    # Clean up resources on destroy.
    def _destroy(self, *args, **kwargs):
        if self._db is not None:
            say(f'Worker {ClusterWorker.worker_id} closing database connection')
            self._db.disconnect()
            self._db = None
        # Call the parent's destroy.
        super()._destroy(*args, **kwargs)

    # Helper methods.
    async def _load_initial_data(self):
        await asyncio.sleep(0.05)
        self._db.tables['greetings'] = {'en': 'Hello', 'fr': 'Bonjour'}

    def _setup_models(self):
        self._db.tables['greetings'] = {}

    # Answer queries from the primary.
    def _event_primary_message_query(self, event):
        key = event.data['message']['key']
        self.send({'type': 'answer', 'key': key, 'value': self.db.find('greetings', key)})


def worker_main() -> None:
    # Create the worker: it becomes ready once `_initialize` has finished.
    DbWorker()


def main() -> None:
    primary = ClusterPrimary(worker_target=worker_main)
    answers: list[str] = []

    primary.on('worker_online', lambda event: say(f"Worker {event.data['worker'].id} (pid {event.data['worker'].pid}) online"))

    def on_worker_ready(event):
        worker = event.data['worker']
        say(f'Worker {worker.id} ready (its database is connected)')
        primary.send({'type': 'query', 'key': 'en' if worker.id % 2 else 'fr'}, to=worker)

    def on_worker_message(event):
        message = event.data['message']
        if message.get('type') == 'answer':
            say(f"Worker {event.data['worker'].id} answered {message['key']!r}: {message['value']}")
            answers.append(message['value'])
            if len(answers) == WORKER_COUNT:
                primary.shut_down()

    primary.on('worker_ready', on_worker_ready)
    primary.on('worker_message', on_worker_message)
    primary.after('worker_exit', lambda event: say(f"Worker {event.data['worker'].id} exited with code {event.data['code']}"))
    primary.fork(worker_count=WORKER_COUNT)
    primary.run()


if __name__ == '__main__':
    main()
