"""A worker_script that reports how it was started: what a script run as `python script args`
would see (argv, sys.path[0], __name__, __file__) and whether the link variables are left
in the environment for its subprocesses."""

import os
import sys

from isocluster import ClusterWorker

worker = ClusterWorker()
worker.send({
    'type': 'started', 'argv': sys.argv, 'path0': sys.path[0], 'name': __name__, 'file': __file__,
    'main_is_me': sys.modules['__main__'].__dict__.get('worker') is worker,
    'isocluster_env': sorted(name for name in os.environ if name.startswith('ISOCLUSTER_')),
})
worker.run()
