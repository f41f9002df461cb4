"""Shared helpers of the benchmark cases: the message, codecs, child tracking.

Every case runs in its own short-lived Python process (started by `run.py`). A case
records each child it starts in `CHILDREN` and `kill_children()` SIGKILLs and reaps them
by pid when the case ends, whether it succeeded or not. Raw-fork children also arm
PR_SET_PDEATHSIG, so they die with the case process even if it is killed itself.
"""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import resource
import signal
import struct
import sys
import time

MESSAGE_PAYLOAD = 'x' * 40


def message(i: int) -> dict:
    """The reference message of PERFORMANCE.md (~80 bytes of JSON, ~100 with the frame)."""
    return {'type': 'task', 'id': i, 'method': 'echo', 'payload': MESSAGE_PAYLOAD}


CHILDREN: set[int] = set()

try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover
    _libc = None


def die_with_parent() -> None:
    """In a raw-forked child: SIGKILL when the parent (the case process) dies."""
    if _libc is not None:
        _libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)


def track(pid: int) -> int:
    CHILDREN.add(pid)
    return pid


def reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    CHILDREN.discard(pid)


def kill_children() -> None:
    for pid in list(CHILDREN):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        CHILDREN.discard(pid)


def peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def current_rss_kib(pid: int | str = 'self') -> int:
    with open(f'/proc/{pid}/statm') as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf('SC_PAGE_SIZE') // 1024


def smaps_rollup_kib(pid: int) -> dict[str, int]:
    """Rss, Pss and private memory of a process (kB), from /proc/PID/smaps_rollup."""
    out: dict[str, int] = {}
    try:
        with open(f'/proc/{pid}/smaps_rollup') as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0].endswith(':') and parts[1].isdigit():
                    out[parts[0][:-1]] = int(parts[1])
    except OSError:
        return {}
    return {
        'rss': out.get('Rss', 0), 'pss': out.get('Pss', 0),
        'private': out.get('Private_Clean', 0) + out.get('Private_Dirty', 0),
    }


# --- codecs for the raw baselines: the very objects isocluster uses, so codec cost is equal


def get_codec(name: str):
    from isocluster.protocol import get_codec as iso_get_codec

    return iso_get_codec(name)


def codec_available(name: str) -> bool:
    try:
        get_codec(name)
    except Exception:
        return False
    return True


def ray_available() -> bool:
    """Whether `ray` is installed (looked up, not imported: importing ray takes seconds)."""
    import importlib.util

    return importlib.util.find_spec('ray') is not None


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


# --- length-prefixed frames over a blocking socket (the raw baseline's wire format)

_LEN = struct.Struct('>I')


def write_frame(sock, body: bytes) -> None:
    sock.sendall(_LEN.pack(len(body)) + body)


def read_frame(reader) -> bytes | None:
    """`reader` is `sock.makefile('rb')` (buffered: few syscalls for many small frames)."""
    header = reader.read(4)
    if len(header) < 4:
        return None
    (n,) = _LEN.unpack(header)
    return reader.read(n)


def emit(result: dict) -> None:
    sys.stdout.write('RESULT ' + json.dumps(result) + '\n')
    sys.stdout.flush()


now = time.perf_counter
_ = pickle  # re-exported for the cases
