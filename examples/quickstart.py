import asyncio

from isocluster import ClusterPrimary, ClusterWorker


class Greeter(ClusterWorker):
    def _event_primary_message_greet(self, event):  # routed by the message's 'type'
        return f"hello {event.data['message']['name']} from worker {ClusterWorker.worker_id}"


async def main():
    primary = ClusterPrimary(worker_target=Greeter)  # each worker runs Greeter()
    ready = asyncio.Event()
    primary.after('worker_ready', lambda event: len(primary.workers) == 2 and ready.set())
    primary.fork(worker_count=2)
    await ready.wait()
    for _ in range(4):
        print(await primary.request({'type': 'greet', 'name': 'Ada'}, to=primary.round_robin()))
    primary.shut_down()
    await primary.wait_closed()


if __name__ == '__main__':
    asyncio.run(main())
