"""A worker's resident memory, CPU time and sockets, read from Linux's /proc (None or empty
elsewhere, or once the process is gone)."""

from __future__ import annotations

import os

_PAGE_SIZE = os.sysconf('SC_PAGE_SIZE') if hasattr(os, 'sysconf') else 4096
_CLOCK_TICKS = os.sysconf('SC_CLK_TCK') if hasattr(os, 'sysconf') else 100


def resident_bytes(pid: int) -> int | None:
    """Resident set size: the second field of /proc/<pid>/statm, in pages."""
    try:
        with open(f'/proc/{pid}/statm', 'rb') as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of /proc/<pid>/stat (fields 14 and 15), in seconds."""
    try:
        with open(f'/proc/{pid}/stat', 'rb') as stat:
            data = stat.read()
        # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
        fields = data[data.rindex(b')') + 2:].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        return None


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process `pid` has open (to find them in /proc/net/*)."""
    inodes = set()
    try:
        for fd in os.listdir(f'/proc/{pid}/fd'):
            try:
                target = os.readlink(f'/proc/{pid}/fd/{fd}')
            except OSError:
                continue
            if target.startswith('socket:['):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes
