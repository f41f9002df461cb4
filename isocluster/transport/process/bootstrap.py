"""How the process transport starts a `worker_script`: `python -c BOOTSTRAP script *args`.

A script worker is online as soon as its interpreter starts the script, whether or not the
script ever imports isocluster (SPEC R62, Node's semantics): the bootstrap writes ONLINE
on the inherited link fd, then runs the script as `__main__` with its own argv and
`sys.path[0]`. A `ClusterWorker` the script builds later reuses that link
(`script.link_from_environment`), which then does not write ONLINE again.

The bootstrap is a `-c` string, not a module run with `-m`: it must not import isocluster
(nor asyncio, nor socket), so a script that never uses them does not pay for them, and
exec start-up stays at `python -c 'import asyncio'` (PERFORMANCE.md).
"""

from __future__ import annotations

from ... import protocol
from .. import base

# Set by the bootstrap once ONLINE is written; read (and removed) by link_from_environment.
ONLINE_SENT_ENV = 'ISOCLUSTER_ONLINE_SENT'

_CODE = '''\
import os, sys
fd = int(os.environ[{fd_env!r}])
os.write(fd, {online!r})
os.set_inheritable(fd, False)
os.environ[{sent_env!r}] = '1'
del sys.argv[0]
sys.path[0] = os.path.dirname(os.path.realpath(sys.argv[0]))
del fd
import runpy
runpy.run_path(sys.argv[0], run_name='__main__')
'''


def bootstrap_code() -> str:
    """The `-c` program: ONLINE first, then the script as `__main__` (argv: script, *args)."""
    return _CODE.format(fd_env=base.WORKER_FD_ENV, online=protocol.encode_frame(protocol.ONLINE, None),
                        sent_env=ONLINE_SENT_ENV)


def exec_argv(executable: str, script: str, args: 'tuple[str, ...] | list[str]') -> list[str]:
    """The argv a script worker is exec'd with."""
    return [executable, '-c', bootstrap_code(), script, *args]
