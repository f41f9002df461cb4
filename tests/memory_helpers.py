"""Small helpers for the rule tests that run on the deterministic memory transport.

Worker targets here are module-level functions (the memory transport runs each one as a task
on the simulation's loop, in the context of one simulated worker).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from isocluster import ClusterPrimary, ClusterWorker
from isocluster.transport.memory import MemoryTransport

# initialize / initialize_complete are left out: a primary has published them (publish_once /
# complete_once) before a recorder can subscribe, and a late subscriber is called at once (R22).
PRIMARY_EVENTS = (
    'initialize_error', 'destroy', 'destroy_complete',
    'fork', 'worker_fork', 'worker_online', 'worker_ready', 'add_worker', 'remove_worker',
    'worker_message', 'worker_listening', 'worker_disconnect', 'worker_error', 'worker_exit',
    'shut_down', 'shut_down_complete', 'restart_limit', 'reload', 'reload_complete',
)


# Observations made inside simulated workers: they run in this process, so one dict works.
# tests/conftest.py clears it around every test.
seen: dict[str, list] = {}


def note(key: str, value: Any) -> None:
    seen.setdefault(key, []).append(value)


# -- worker targets -------------------------------------------------------------------------

def ready_worker() -> None:
    """A plain worker: builds its ClusterWorker and is ready at once."""
    ClusterWorker()


def echo_worker() -> None:
    """Sends every primary message straight back."""
    worker = ClusterWorker()
    worker.on('primary_message', lambda event: worker.send(event.data['message']))


def inert_worker() -> None:
    """Never builds a ClusterWorker, so never becomes ready (R102)."""


def exit_at_boot_worker() -> None:
    """Exits with code 0 before it is ready."""
    raise SystemExit(0)


def crash_at_boot_worker() -> None:
    raise RuntimeError('boom at boot')


# -- recording ------------------------------------------------------------------------------

class RecordingTransport(MemoryTransport):
    """A MemoryTransport that keeps what crossed the Transport seam: every spec the primary
    checked (`specs`), per worker id the link it was handed (`links`: the primary's end of
    each link, the one its link_* callbacks name), and every listening socket it had bound,
    with its address (`bound`). Behaviour is MemoryTransport's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.specs: list[Any] = []
        self.links: dict[int, Any] = {}
        self.bound: list[tuple[Any, Any]] = []

    def bind(self, address: Any, reuse_port: bool = False) -> Any:
        sock = super().bind(address, reuse_port)
        self.bound.append((address, sock))
        return sock

    def open_sockets(self) -> list[Any]:
        """The bound sockets still open: the ones the primary holds."""
        return [sock for _address, sock in self.bound if sock.fileno() != -1]

    def bound_for(self, address: Any) -> Any:
        """The last socket bound for `address`."""
        return [sock for bound_address, sock in self.bound if bound_address == address][-1]

    def check_spec(self, spec: Any) -> None:
        self.specs.append(spec)
        super().check_spec(spec)

    def start_worker(self, spec: Any, listener: Any) -> Any:
        link = super().start_worker(spec, listener)
        self.links[spec.id] = link
        return link


# -- recording (events) ------------------------------------------------------------------------------

class Entry(NamedTuple):
    stage: str
    name: str
    worker: int | None
    time: float

    @property
    def text(self) -> str:
        return f'{self.stage} {self.name}'


class Recorder:
    """Records `on` and `after` of the given events of one primary (subscribed first)."""

    def __init__(self, primary: ClusterPrimary, events: tuple[str, ...] = PRIMARY_EVENTS) -> None:
        self.primary = primary
        self.entries: list[Entry] = []
        self.data: list[tuple[str, str, dict[str, Any]]] = []
        loop = primary.transport.loop
        for name in events:
            primary.on(name, self._handler('on', name, loop))
            primary.after(name, self._handler('after', name, loop))

    def _handler(self, stage: str, name: str, loop: Any) -> Callable[[Any], None]:
        def handler(event: Any) -> None:
            data = event.data if isinstance(event.data, dict) else {}
            worker = data.get('worker')
            self.entries.append(Entry(stage, name, getattr(worker, 'id', None), loop.time()))
            self.data.append((stage, name, dict(data)))
        return handler

    def texts(self, *, stage: str | None = None) -> list[str]:
        return [e.text for e in self.entries if stage is None or e.stage == stage]

    def names(self, stage: str = 'on') -> list[str]:
        return [e.name for e in self.entries if e.stage == stage]

    def count(self, name: str, stage: str = 'on') -> int:
        return sum(1 for e in self.entries if e.name == name and e.stage == stage)

    def of(self, name: str, stage: str = 'on') -> list[dict[str, Any]]:
        return [d for s, n, d in self.data if n == name and s == stage]

    def for_worker(self, worker_id: int, stage: str = 'on') -> list[str]:
        return [e.name for e in self.entries if e.worker == worker_id and e.stage == stage]

    def times(self, name: str, stage: str = 'on') -> list[float]:
        return [e.time for e in self.entries if e.name == name and e.stage == stage]


def make(target: Callable[[], Any] = ready_worker, *, seed: int = 1, sim: MemoryTransport | None = None,
         cls: type = ClusterPrimary, record: bool = True, **options: Any) -> tuple[MemoryTransport, Any, Recorder | None]:
    """A primary on a memory transport, with a recorder subscribed first."""
    sim = sim if sim is not None else RecordingTransport(seed=seed)
    primary = cls(worker_target=target, transport=sim, **options)
    recorder = Recorder(primary) if record else None
    return sim, primary, recorder


def started(count: int = 1, target: Callable[[], Any] = ready_worker, **options: Any) -> tuple[MemoryTransport, Any, Recorder]:
    """A primary with `count` ready workers."""
    sim, primary, recorder = make(target, **options)
    primary.fork(count)
    sim.run_until(lambda: len(primary.workers) == count, timeout=10)
    return sim, primary, recorder


def crash_and_wait(sim: MemoryTransport, primary: Any, recorder: Recorder, worker: Any, *, pool: int | None = None,
                   **how: Any) -> None:
    """Crash `worker` (code=/signal=), run until its worker_exit is published and, when `pool` is
    given, until the pool holds `pool` workers again."""
    exits = recorder.count('worker_exit')
    sim.crash(worker, **how)
    sim.run_until(lambda: recorder.count('worker_exit') > exits, timeout=60)
    if pool is not None:
        sim.run_until(lambda: len(primary.workers) == pool, timeout=60)


def close(sim: MemoryTransport, primary: Any, timeout: float = 120.0) -> None:
    """Destroy the primary and run until it is closed."""
    if not primary.destroyed:
        primary.destroy()
    sim.run_until(lambda: primary.closed, timeout=timeout)
