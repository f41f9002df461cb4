"""An exec-mode worker for tests/test_process_transport.py: echoes message frames.

`b'env'` answers with whether the link variables are still in the environment,
`b'id'` with the worker id, `b'finish'` ends the worker through `run()` returning.
"""

import os
import sys

from isocluster.transport import base


class Echo:
    def __init__(self, link):
        self.link = link

    def link_frame(self, kind, payload):
        if kind != 'message':
            return
        if payload == b'finish':
            self.link.finish()
        elif payload == b'env':
            self.link.write('message', str(base.WORKER_FD_ENV in os.environ).encode())
        elif payload == b'id':
            self.link.write('message', str(self.link.worker_id).encode())
        else:
            self.link.write('message', payload)

    def link_closed(self):
        self.link.finish()


link = base.current_link()
assert base.current_link() is link
link.attach(Echo(link))
link.run()
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
