"""RayTransport: connects to Ray and starts each worker as an actor with its options."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Mapping

from ... import protocol
from ...errors import NotSupportedError, TransportError
from .. import base
from ..stdio import check_stdio, stdio_choices
from .actor import _WorkerActor
from .link import _ALTERNATIVE, RayWorkerLink

_DISCARD_WORDS = ('devnull', 'pipe')


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError(
            "RayTransport needs the ray package: pip install 'isocluster[ray]' (or 'ray>=2.9')"
        ) from exc
    return ray


class RayTransport(base.RealLoopTransport):
    """Workers are Ray actors, on this machine or across a Ray cluster.

    `address`: passed to `ray.init(address=...)` when Ray is not initialised yet (None: a
    local instance, or `RAY_ADDRESS`); `ray_init_kwargs` go to `ray.init` too.
    `worker_options`: the actor options of every worker (`num_cpus`, `num_gpus`, `memory`,
    `resources`, `scheduling_strategy`, `runtime_env`, ...), or a callable `spec -> dict`
    for per-worker placement. `max_restarts` is always 0: the primary's restart policy
    replaces workers, not Ray.
    """

    def __init__(self, address: str | None = None, *, worker_options: 'Mapping[str, Any] | Callable[[base.WorkerSpec], Mapping[str, Any]] | None' = None,
                 max_frame_size: int = protocol.DEFAULT_MAX_FRAME_SIZE,
                 loop: asyncio.AbstractEventLoop | None = None, **ray_init_kwargs: Any) -> None:
        if not isinstance(max_frame_size, int) or isinstance(max_frame_size, bool) or max_frame_size < 1:
            raise ValueError(f'max_frame_size: expected a positive int, got {max_frame_size!r}')
        if worker_options is not None and not (callable(worker_options) or isinstance(worker_options, Mapping)):
            raise TypeError(f'worker_options: expected a mapping or a callable, got {worker_options!r}')
        self._ray = _import_ray()
        self.address = address
        self.max_frame_size = max_frame_size
        self._worker_options = worker_options
        self._init_kwargs = ray_init_kwargs
        self._loop = loop
        self._owns_loop = False
        self._closed = False
        self._started_ray = False
        self._actor_class: Any = None
        self._links: set[RayWorkerLink] = set()

    def check_spec(self, spec: base.WorkerSpec) -> None:
        if spec.target is None:
            raise ValueError(
                'the Ray transport runs only worker_target workers: pass worker_target=<a module-level '
                'callable importable on every node>; worker_script (and the current-script default) '
                'needs ProcessTransport'
            )
        check_stdio(spec, lambda value: value in (None, 'inherit', *_DISCARD_WORDS),
                    'the Ray transport accepts only None, "inherit", "devnull" or "pipe" (a worker may run '
                    'on another host, so file objects and fds cannot be passed)')

    def start_worker(self, spec: base.WorkerSpec, listener: base.LinkListener) -> RayWorkerLink:
        if self._closed:
            raise TransportError('the Ray transport is closed', worker_id=spec.id)
        self.check_spec(spec)
        actor_class = self._connect(spec)
        options = self._options_for(spec)
        try:
            actor = actor_class.options(**options).remote(
                spec.id, self._codec_argument(spec.codec), spec.target, self._discarded_streams(spec),
                self.max_frame_size,
            )
        except Exception as exc:
            raise TransportError(f'could not start worker {spec.id} as a Ray actor: {exc!r}', worker_id=spec.id) from exc
        link = RayWorkerLink(self, spec, actor, listener)
        self._links.add(link)
        link._start()
        return link

    def _connect(self, spec: base.WorkerSpec) -> Any:
        ray = self._ray
        if not ray.is_initialized():
            kwargs = dict(self._init_kwargs)
            if self.address is not None:
                kwargs['address'] = self.address
            try:
                ray.init(**kwargs)
            except Exception as exc:
                raise TransportError(f'could not connect to Ray: {exc!r}', worker_id=spec.id) from exc
            self._started_ray = True
        if self._actor_class is None:
            self._actor_class = ray.remote(_WorkerActor)
        return self._actor_class

    def _options_for(self, spec: base.WorkerSpec) -> dict[str, Any]:
        options = self._worker_options
        chosen = dict((options(spec) if callable(options) else options) or {})
        chosen['max_restarts'] = 0
        chosen.setdefault('max_task_retries', 0)
        return chosen

    @staticmethod
    def _codec_argument(codec: protocol.Codec) -> Any:
        """A built-in codec travels by name (its C encoder does not pickle); others as objects."""
        try:
            if type(protocol.get_codec(codec.name)) is type(codec):
                return codec.name
        except (ValueError, TypeError):
            pass
        return codec

    @staticmethod
    def _discarded_streams(spec: base.WorkerSpec) -> tuple[str, ...]:
        choices = stdio_choices(spec)
        return tuple(name for name in ('stdout', 'stderr') if choices.get(name) in _DISCARD_WORDS)

    def _watch(self, ref: Any, callback: Callable[[Any], None]) -> None:
        """Call `callback(future)` on the loop when the object `ref` is ready (or failed)."""
        future = ref.future()
        future.add_done_callback(lambda done: self._call_threadsafe(callback, done))

    def _call_threadsafe(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if self._closed or loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass  # the loop closed meanwhile

    def bind(self, address: Any, reuse_port: bool = False) -> Any:
        raise NotSupportedError(f'the Ray transport cannot share listening sockets ({address!r}); {_ALTERNATIVE}')

    def close(self) -> None:
        """Kill the actors still alive; shut Ray down if this transport started it; close the
        loop this transport created once it has stopped (call again after it stops)."""
        if not self._closed:
            self._closed = True
            for link in list(self._links):
                link._abandon()
            self._links.clear()
            if self._started_ray:
                self._started_ray = False
                try:
                    self._ray.shutdown()
                except Exception:
                    pass
        self._close_owned_loop()
