"""initialize / destroy: the lifecycle every cluster object shares (SPEC §3)."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Callable, ClassVar

from .checks import check_bool
from .pubsub import Publisher

_initializer_cache: dict[type, tuple[Callable[..., Any], ...]] = {}


def _initializers(cls: type) -> tuple[Callable[..., Any], ...]:
    """Every `_initialize` defined in a class's own namespace, base-most first, each once (R39)."""
    try:
        return _initializer_cache[cls]
    except KeyError:
        pass
    found: list[Callable[..., Any]] = []
    for klass in reversed(cls.__mro__):
        function = klass.__dict__.get('_initialize')
        if function is not None and function not in found:
            found.append(function)
    _initializer_cache[cls] = result = tuple(found)
    return result


class Initializable(Publisher):
    """A publisher with an initialize / destroy lifecycle.

    Subclasses put their set-up in `_initialize` (sync or async; every class's own runs, base
    first, without calling super) and their tear-down in a cooperative `_destroy` that calls
    `super()._destroy(*args, **kwargs)` last.
    """

    _pubsub: ClassVar[dict[str, dict[str, Any]]] = {
        'initialize': {'complete_once': True},
        'initialize_complete': {'publish_once': True},
        'initialize_error': {'publish_once': True},
        'destroy': {'complete_once': True},
        'destroy_complete': {'publish_once': True},
    }

    def __init__(self, *, initialize: bool = True) -> None:
        check_bool('initialize', initialize)
        super().__init__()
        self.initialized = False
        self.destroyed = False
        self._initialize_task: asyncio.Task[Any] | None = None
        self._written: asyncio.Future[None] | None = None
        if initialize:
            self.initialize()

    def _resolved_future(self) -> 'asyncio.Future[None]':
        """What send() returns when every write went out at once: one already-resolved
        future, shared (a future per message was ~10 % of a small send's cost)."""
        future = self._written
        if future is None:
            future = self._written = self._pubsub_loop().create_future()
            future.set_result(None)
        return future

    def _rejected(self, error: BaseException) -> 'asyncio.Future[Any]':
        future: asyncio.Future[Any] = self._pubsub_loop().create_future()
        future.set_exception(error)
        return future

    # -- initialize ------------------------------------------------------------------

    def initialize(self, *args: Any, **kwargs: Any) -> 'Initializable':
        self._publish('initialize', {'args': args, 'kwargs': kwargs})
        return self

    def _event_initialize(self, event: Any) -> None:
        args, kwargs = event.data['args'], event.data['kwargs']
        steps = _initializers(type(self))
        for index, step in enumerate(steps):
            try:
                result = step(self, *args, **kwargs)
            except Exception as error:
                self._initialization_failed(error)
                return
            if inspect.isawaitable(result):
                self._initialize_task = self._spawn(
                    self._initialize_rest(result, steps[index + 1:], args, kwargs)
                )
                return
        self._initialization_succeeded(args, kwargs)

    async def _initialize_rest(self, pending: Any, steps: tuple[Callable[..., Any], ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            await pending
            for step in steps:
                result = step(self, *args, **kwargs)
                if inspect.isawaitable(result):
                    await result
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._initialize_task = None
            self._initialization_failed(error)
            return
        self._initialize_task = None
        self._initialization_succeeded(args, kwargs)

    def _initialization_succeeded(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.initialized = True
        self._on_initialized()
        self._publish('initialize_complete', {'args': args, 'kwargs': kwargs})

    def _on_initialized(self) -> None:
        """Library hook run when initialization succeeds, just before `initialize_complete`."""

    def _initialization_failed(self, error: BaseException) -> None:
        # Always on a later loop turn (R42), so a handler subscribed right after the
        # constructor returns still sees the error.
        self._call_soon(self._publish_initialize_error, error)

    def _publish_initialize_error(self, error: BaseException) -> None:
        if not self.destroyed:
            self._publish('initialize_error', {'error': error})

    def _event_initialize_error(self, event: Any) -> None:
        raise event.data['error']

    def _event_initialize_complete(self, event: Any) -> Any:
        return self._initialize_complete(*event.data['args'], **event.data['kwargs'])

    def _initialize_complete(self, *args: Any, **kwargs: Any) -> Any:
        """Override to act once initialized. The library's classes do nothing here."""

    # -- destroy ---------------------------------------------------------------------

    def destroy(self, *args: Any, **kwargs: Any) -> 'Initializable':
        if not self.destroyed:
            self._publish('destroy', {'args': args, 'kwargs': kwargs})
        return self

    def _event_destroy(self, event: Any) -> None:
        self._destroy(*event.data['args'], **event.data['kwargs'])

    def _destroy(self, *args: Any, **kwargs: Any) -> None:
        self.destroyed = True
        self.initialized = False
        task, self._initialize_task = self._initialize_task, None
        if task is not None:
            task.cancel()
        self._publish('destroy_complete', {'args': args, 'kwargs': kwargs})
        self._close_pubsub()

    def _event_destroy_complete(self, event: Any) -> Any:
        return self._destroy_complete(*event.data['args'], **event.data['kwargs'])

    def _destroy_complete(self, *args: Any, **kwargs: Any) -> Any:
        """Override to act once destroyed."""

    # -- running library code on the loop --------------------------------------------

    def _fatal(self, error: BaseException) -> None:
        """An exception escaped library-invoked code that the library itself scheduled.
        Default: let it reach the loop, whose handling is fatal (SPEC §2)."""
        raise error

    def _task_failed(self, error: BaseException) -> None:
        self._fatal(error)

    def _guarded(self, function: Callable[..., Any], *args: Any) -> None:
        try:
            function(*args)
        except Exception as error:
            self._fatal(error)

    def _call_soon(self, function: Callable[..., Any], *args: Any) -> asyncio.Handle:
        return self._pubsub_loop().call_soon(self._guarded, function, *args)

    def _call_later(self, delay: float, function: Callable[..., Any], *args: Any) -> asyncio.TimerHandle:
        return self._pubsub_loop().call_later(delay, self._guarded, function, *args)
