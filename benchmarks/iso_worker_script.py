"""Exec-mode (worker_script) worker for the start-up benchmark: becomes ready, echoes tasks."""

from isocluster import ClusterWorker


class EchoWorker(ClusterWorker):
    def _event_primary_message_task(self, event):
        self.send(event.data['message'])


EchoWorker().run()
