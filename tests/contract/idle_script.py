"""A worker_script that never builds a ClusterWorker: it is online all the same (R62).
With the argument `import`, it imports isocluster first (and still builds nothing)."""

import sys
import time

if sys.argv[1:] == ['import']:
    import isocluster  # noqa: F401

time.sleep(3600)
