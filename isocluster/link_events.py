"""What happens on a worker's link, turned into the primary's worker events: control frames
(checked against the state table in `states.py` and the shapes in `frames.py`), faults, the
close and the exit of a worker. Any frame the table or the shapes refuse is that worker's
protocol violation (it is killed and replaced), never an error of the primary.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from . import frames, protocol
from .errors import DecodeError, HeartbeatTimeout, ProtocolError, ReadyTimeout, WorkerLost
from .routing import Request
from .states import FRAMES_ALLOWED_IN, LEAVING, STARTING

if TYPE_CHECKING:
    from .handle import WorkerHandle
    from .heartbeats import Heartbeats
    from .listening import Listening
    from .registry import Registry
    from .transport.base import Signals, Transport

logger = logging.getLogger('isocluster')


class WorkerEvents:
    _ACTIONS: ClassVar[dict[str, Callable[..., None]]]  # frame kind -> what it does (set below)

    def __init__(self, *, registry: 'Registry', codec: protocol.Codec, transport: 'Transport',
                 heartbeats: 'Heartbeats', listening: 'Listening', stats: dict[str, int],
                 publish: Callable[[str, dict[str, Any]], Any], spawn: Callable[[Any], Any],
                 exited: Callable[['WorkerHandle'], None], ready_timeout: float | None,
                 now: Callable[[], float]) -> None:
        self._registry = registry
        self._codec = codec
        self._transport = transport
        self._heartbeats = heartbeats
        self._listening = listening
        self._stats = stats
        self._publish = publish
        self._spawn = spawn
        self._after_exit = exited  # the primary's bookkeeping after worker_exit, whatever its handlers did
        self._ready_timeout = ready_timeout
        self._now = now

    # -- frames ------------------------------------------------------------------------

    def control_frame(self, handle: 'WorkerHandle', kind: str, payload: Any) -> None:
        life = handle.life
        try:
            why = frames.refusal(kind, life.state, life.ready_received)
            if why is None:
                frames.check_payload(kind, payload)
        except ProtocolError as error:
            why = str(error)
        except Exception as error:  # whatever a worker's bytes make fail is its violation
            why = f'{frames.describe(kind)} that could not be checked ({error!r})'
        if why is not None:
            return self.violation(handle, why, kind)
        self._ACTIONS[kind](self, handle, payload)

    def reply_frame(self, handle: 'WorkerHandle', payload: Any) -> None:
        """A REPLY, the frame every request waits for: the table's and the shape's checks, then
        the settle, without the general dispatch. Anything refused goes the general way, which
        says why."""
        if handle.life.state in _REPLY_STATES:
            try:
                frames.check_payload(protocol.REPLY, payload)
            except Exception:
                return self.control_frame(handle, protocol.REPLY, payload)
            return self._reply(handle, payload)
        self.control_frame(handle, protocol.REPLY, payload)

    # One method per kind a worker may send besides MESSAGE (link_frame's hot path); each runs
    # only once the state table and the payload's shape have accepted the frame.

    def _heartbeat_ack(self, handle: 'WorkerHandle', payload: Any) -> None:
        self._heartbeats.answered(handle)

    def _reply(self, handle: 'WorkerHandle', payload: Any, kind: str = protocol.REPLY) -> None:
        try:
            why = self._registry.requests.settle(payload, self._codec, handle.id, handle)
        except Exception as error:
            why = f'a {kind.upper()} that could not be read ({error!r})'
        if why is not None:
            self.violation(handle, why, kind)

    def _reply_batch(self, handle: 'WorkerHandle', payload: Any) -> None:
        # A chunk's answer settles its request like a REPLY.
        self._reply(handle, (payload[0], True, payload[1]), protocol.REPLY_BATCH)

    def _message(self, handle: 'WorkerHandle', payload: Any) -> None:
        """Nothing: link_frame delivers every MESSAGE the table accepts; one sent before ONLINE
        was refused above."""

    def _online(self, handle: 'WorkerHandle', payload: Any) -> None:
        handle.life.move('online')
        self._publish('worker_online', {'worker': handle})

    def _ready(self, handle: 'WorkerHandle', payload: Any) -> None:
        life = handle.life
        life.ready_received = True
        if life.online_accepted and life.state == 'online':
            self._publish('worker_ready', {'worker': handle})

    def _exiting(self, handle: 'WorkerHandle', payload: Any) -> None:
        handle.life.said_exiting = True

    def _listen(self, handle: 'WorkerHandle', payload: Any) -> None:
        bound, why = self._listening.answer(handle, payload)
        if why is not None:
            self.violation(handle, why)
        elif bound is not None:
            self._publish('worker_listening', {'worker': handle, 'address': bound})

    def _request(self, handle: 'WorkerHandle', payload: Any) -> None:
        request_id, data = payload
        try:
            message = protocol.decode_message(self._codec, data, handle.id)
        except DecodeError as error:
            return self.fault(handle, error)
        self._stats['messages_in'] += 1
        handle.life.messages_in += 1
        link = handle.life.link
        request = Request(request_id, lambda reply: link.write(protocol.REPLY, reply), self._codec, self._spawn,
                          self._transport.max_frame_size)
        try:
            self._publish('worker_message', {'worker': handle, 'message': message, 'request': request})
        except Exception as error:
            if request.answered:
                raise
            request.fail(error)
        request.settle_unanswered(message.get('type') if type(message) is dict else None)

    def violation(self, handle: 'WorkerHandle', what: str, kind: str | None = None) -> None:
        error = ProtocolError(
            f'worker {handle.id} broke the link protocol: {what}; it is killed and replaced',
            worker_id=handle.id,
        )
        error.frame_kind = kind
        self.fault(handle, error)

    # -- a worker's end ----------------------------------------------------------------

    def fault(self, handle: 'WorkerHandle', error: BaseException) -> None:
        """A fault on a worker: read nothing more from it, publish worker_error once (R85)."""
        life = handle.life
        first = life.error is None
        if first:
            life.error = error
        if not first or life.state == 'dead':
            return  # published already, or nothing left to publish it for
        life.cancel_timer('ready')
        self._log_error(handle, error)
        self._publish('worker_error', {'worker': handle, 'error': error})

    def ready_timed_out(self, handle: 'WorkerHandle') -> None:
        handle.life.timers.pop('ready', None)
        if handle.state in STARTING:
            self._stats['killed_by_timeout'] += 1
            self.fault(handle, ReadyTimeout(
                f'worker {handle.id} did not become ready within ready_timeout={self._ready_timeout}s; '
                'it is killed (check its initialization, or raise ready_timeout)', worker_id=handle.id,
            ))

    def closed(self, handle: 'WorkerHandle') -> None:
        life = handle.life
        if life.state in LEAVING:
            return
        life.move('disconnected')
        life.cancel_timer('ready')
        self._registry.requests.lose(handle, lambda: WorkerLost(
            f'worker {handle.id} disconnected before it replied', worker_id=handle.id,
        ))
        self._publish('worker_disconnect', {'worker': handle})

    def exited(self, handle: 'WorkerHandle', code: int | None, signal: 'Signals | None') -> None:
        life = handle.life
        life.move('dead')
        life.cancel_timers()
        handle.exit_code, handle.exit_signal = code, signal
        handle.exited_after_disconnect = life.disconnect_requested
        life.exited_at = self._now()
        self._registry.remove_live(handle)
        self._stats['exited'] += 1
        self._log_exit(handle)
        try:
            self._publish('worker_exit', {'worker': handle, 'code': code, 'signal': signal})
        finally:
            # Even when a handler raised (fatal, R34), the cluster must still close: the
            # bookkeeping that leads to shut_down_complete does not depend on the handlers.
            self._after_exit(handle)

    # -- logging -----------------------------------------------------------------------

    def _log_exit(self, handle: 'WorkerHandle') -> None:
        signal_name = handle.exit_signal.name if handle.exit_signal is not None else None
        failed = signal_name is not None or handle.exit_code != 0
        asked = handle.life.disconnect_requested
        logger.log(
            logging.WARNING if failed and not asked else logging.INFO,
            'worker %s exited (code=%s, signal=%s%s)', handle.id, handle.exit_code, signal_name,
            ', after disconnect' if asked else '',
            extra={
                'worker_id': handle.id, 'exit_code': handle.exit_code, 'signal': signal_name,
                'reason': 'disconnect' if asked else ('crash' if failed else 'exit'),
            },
        )

    def _log_error(self, handle: 'WorkerHandle', error: BaseException) -> None:
        extra: dict[str, Any] = {'worker_id': handle.id, 'reason': type(error).__name__}
        if isinstance(error, HeartbeatTimeout):
            extra['heartbeat_age'] = self._heartbeats.age(handle)
        logger.warning('worker %s error: %s', handle.id, error, extra=extra)


WorkerEvents._ACTIONS = {
    protocol.HEARTBEAT_ACK: WorkerEvents._heartbeat_ack,
    protocol.REPLY: WorkerEvents._reply,
    protocol.REPLY_BATCH: WorkerEvents._reply_batch,
    protocol.REQUEST: WorkerEvents._request,
    protocol.MESSAGE: WorkerEvents._message,
    protocol.ONLINE: WorkerEvents._online,
    protocol.READY: WorkerEvents._ready,
    protocol.EXITING: WorkerEvents._exiting,
    protocol.LISTEN: WorkerEvents._listen,
}
assert set(WorkerEvents._ACTIONS) == set(FRAMES_ALLOWED_IN), 'every kind a worker may send has one action'
_REPLY_STATES = FRAMES_ALLOWED_IN[protocol.REPLY]
