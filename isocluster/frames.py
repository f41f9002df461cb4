"""The one boundary where a worker's frames enter the primary: which kinds a worker may send,
when, and what each must carry. Pure decisions, no I/O.

The primary asks `refusal` and `check_payload` about every frame that is not a plain message
before it acts on it (and `reply_error` about a failure reply's body): anything they reject,
and any exception raised while a worker's bytes are decoded or checked, is that worker's
protocol violation (the worker is killed and replaced), never an error of the primary.
"""

from __future__ import annotations

import json
import reprlib
from typing import Any

from . import protocol
from .errors import ProtocolError
from .states import FRAMES_ALLOWED_IN, frame_refusal

def refusal(kind: str, state: str, ready_received: bool) -> str | None:
    """Why a worker in `state` may not send a `kind` frame now, or None when it may (the table
    is `states.FRAMES_ALLOWED_IN`)."""
    return frame_refusal(kind, state, ready_received)


def check_payload(kind: str, payload: Any) -> Any:
    """The payload of a worker's frame when its shape is right; else ProtocolError saying what
    is wrong. Control payloads are None or a JSON object; LISTEN names an id and an address."""
    if kind == protocol.REPLY:  # the commonest here: written out, it is on every request's path
        if not (type(payload) is tuple and len(payload) == 3 and type(payload[0]) is int
                and 0 <= payload[0] < _ID_LIMIT and type(payload[1]) is bool and type(payload[2]) is bytes):
            _reject(kind, 'a request id, an ok flag and a body', payload)
    elif kind == protocol.REQUEST or kind == protocol.REPLY_BATCH:
        if not (type(payload) is tuple and len(payload) == 2 and type(payload[0]) is int
                and 0 <= payload[0] < _ID_LIMIT and type(payload[1]) is bytes):
            _reject(kind, 'a request id and a body', payload)
    elif kind == protocol.MESSAGE:
        if type(payload) is not bytes:
            _reject(kind, 'a body of bytes', payload)
    elif kind == protocol.LISTEN:
        if not (type(payload) is dict and _is_id(payload.get('id')) and _is_address(payload.get('address'))):
            _reject(kind, "an object with an int 'id' and an 'address' (a path, or [host, port])", payload)
    elif payload is not None and type(payload) is not dict:
        _reject(kind, 'no body or a JSON object', payload)
    return payload


def reply_error(data: bytes) -> dict[str, str]:
    """The description a failure REPLY carries: {'type', 'message', 'traceback'}, all strings."""
    try:
        description = json.loads(data)
    except ValueError as error:
        raise ProtocolError(f'a failure REPLY whose body is not JSON: {error}') from None
    except RecursionError:  # CPython's scanner guards its recursion: no pre-check is needed
        raise ProtocolError('a failure REPLY whose body is nested too deeply') from None
    if type(description) is not dict:
        raise ProtocolError(f'a failure REPLY whose body is a JSON {type(description).__name__}, not an object')
    fields = {name: description.get(name, '') for name in ('type', 'message', 'traceback')}
    for name, value in fields.items():
        if type(value) is not str:
            raise ProtocolError(f'a failure REPLY whose {name!r} is a {type(value).__name__}, not a string')
    return fields


def describe(kind: str) -> str:
    return f'a {kind.upper()} frame' if kind in FRAMES_ALLOWED_IN or kind in protocol.KINDS else f'a frame of kind {kind!r}'


def _reject(kind: str, what: str, payload: Any) -> None:
    shown = reprlib.repr(payload)  # bounded: the payload may be large or deeply nested
    raise ProtocolError(f'a malformed {kind.upper()} frame: it must carry {what}, got {shown}')


_ID_LIMIT = 2 ** 64  # ids travel as 8-byte unsigned ints


def _is_id(value: Any) -> bool:
    return type(value) is int and 0 <= value < _ID_LIMIT


def _is_address(address: Any) -> bool:
    if type(address) is str:
        return bool(address) and '\0' not in address
    return (type(address) is list and len(address) == 2 and type(address[0]) is str
            and type(address[1]) is int and 0 <= address[1] <= 65535)
