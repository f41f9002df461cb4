"""Workers leave without losing a request: a rolling reload and a scale down while clients
keep sending requests on keep-alive connections, served by the HTTP worker of
`http_server.py` (`http_worker.py`). Each leaving worker stops accepting, answers what it
holds (with `Connection: close`) and ends; its clients reconnect to the other workers.

    python examples/graceful_reload.py
"""

import asyncio
import sys
from pathlib import Path

from isocluster import ClusterPrimary

CLIENTS = 4
REQUESTS_PER_PHASE = 300  # answers to wait for before each change, and after the last


class Load:
    """Clients sending GET / on keep-alive connections until stopped; they count answers and failures."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answered = self.failed = 0
        self.progress = asyncio.Event()
        self.stopping = False

    async def answers(self, count: int) -> None:
        target = self.answered + count
        while self.answered < target:
            self.progress.clear()
            await self.progress.wait()

    async def client(self) -> None:
        reader = writer = None
        while not self.stopping:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection('127.0.0.1', self.port)
                writer.write(b'GET / HTTP/1.1\r\nHost: localhost\r\n\r\n')
                head = (await reader.readuntil(b'\r\n\r\n')).lower()
                length = int(head.split(b'content-length: ')[1].split(b'\r\n')[0])
                await reader.readexactly(length)
                self.answered += 1
                if b'connection: close' in head:  # the worker is leaving: reconnect elsewhere
                    writer.close()
                    writer = None
            except (OSError, asyncio.IncompleteReadError) as error:
                self.failed += 1
                print(f'request failed: {error!r}', flush=True)
                writer = None
            self.progress.set()
        if writer is not None:
            writer.close()


async def main() -> int:
    worker_script = str(Path(__file__).with_name('http_worker.py'))
    async with ClusterPrimary(worker_script=worker_script, worker_args=[], worker_silent=True) as primary:
        listening = asyncio.get_running_loop().create_future()
        primary.on('worker_listening', lambda event: len(primary.workers) == 2 and not listening.done()
                   and listening.set_result(event.data['address']))
        primary.fork(worker_count=2)
        host, port = await listening  # both workers serve
        load = Load(port)
        clients = [asyncio.create_task(load.client()) for _ in range(CLIENTS)]
        await load.answers(REQUESTS_PER_PHASE)

        reloaded = asyncio.get_running_loop().create_future()
        primary.once_after('reload_complete', lambda event: reloaded.set_result(None))
        primary.reload()  # each worker replaced, the new one ready before the old one drains
        await reloaded
        print(f'reload complete: workers {[worker.id for worker in primary.workers]}', flush=True)
        await load.answers(REQUESTS_PER_PHASE)

        left = asyncio.get_running_loop().create_future()
        primary.once_after('worker_exit', lambda event: left.set_result(event.data['worker'].id))
        primary.scale(1)  # one worker retired: it drains too
        print(f'scaled down: worker {await left} left', flush=True)
        await load.answers(REQUESTS_PER_PHASE)

        load.stopping = True
        await asyncio.gather(*clients)
    # Leaving `async with` shut the cluster down and waited for every worker.
    print(f'{load.answered} requests answered, {load.failed} failed', flush=True)
    return 1 if load.failed else 0


if __name__ == '__main__':
    sys.exit(asyncio.run(main()))
