"""The orphan test (R118), in two processes.

`orphan_primary.py primary`: a primary that starts an echo worker and a worker whose loop
is blocked, prints their pids on one line once both are online, then waits to be killed.

`orphan_primary.py` (the reaper): a child subreaper that runs the primary, SIGKILLs it, then
reaps the orphaned workers itself (nothing depends on PID 1 reaping) and prints, as JSON,
how long after the primary's death each worker was reaped. Workers still alive after 10 s
are killed, and the reaper exits with code 1.
"""

import asyncio
import ctypes
import json
import os
import signal
import subprocess
import sys
import time

from isocluster import protocol
from isocluster.transport import base
from isocluster.transport.process import ProcessTransport


class Echo:
    def __init__(self, link):
        self.link = link

    def link_frame(self, kind, payload):
        if kind == 'message':
            self.link.write('message', payload)

    def link_closed(self):
        self.link.finish()


def echo_worker():
    link = base.current_link()
    link.attach(Echo(link))


def blocked_worker():
    base.current_link().loop.call_soon(time.sleep, 3600)


class Listener:
    def __init__(self, count):
        self.online = asyncio.get_running_loop().create_future()
        self.count = count

    def link_frame(self, link, kind, payload):
        if kind == 'online':
            self.count -= 1
            if self.count == 0:
                self.online.set_result(None)

    def link_error(self, link, error):
        pass

    def link_closed(self, link):
        pass

    def link_exit(self, link, code, signal):
        pass


async def main():
    transport = ProcessTransport()
    targets = [echo_worker, blocked_worker]
    listener = Listener(len(targets))
    codec = protocol.get_codec('json')
    links = [
        transport.start_worker(base.WorkerSpec(id=index + 1, codec=codec, target=target), listener)
        for index, target in enumerate(targets)
    ]
    await listener.online
    print(' '.join(str(link.pid) for link in links), flush=True)
    await asyncio.sleep(3600)


def reaper():
    PR_SET_CHILD_SUBREAPER = 36
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    primary = subprocess.Popen([sys.executable, __file__, 'primary'], stdout=subprocess.PIPE)
    pids = [int(pid) for pid in primary.stdout.readline().split()]
    primary.kill()
    died = time.monotonic()
    primary.wait()
    reaped = {}
    deadline = died + 10
    while len(reaped) < len(pids) and time.monotonic() < deadline:
        pid, _ = os.waitpid(-1, os.WNOHANG)
        if pid in pids:
            reaped[pid] = time.monotonic() - died
        elif pid == 0:
            time.sleep(0.005)  # an orphan's death has no event here but its reaping
    for pid in set(pids) - set(reaped):
        os.kill(pid, signal.SIGKILL)  # adopted and not reaped: the pid is still that worker
        os.waitpid(pid, 0)
    print(json.dumps({'pids': pids, 'reaped_after': reaped}), flush=True)
    return 0 if len(reaped) == len(pids) else 1


if sys.argv[1:] == ['primary']:
    asyncio.run(main())
else:
    sys.exit(reaper())
