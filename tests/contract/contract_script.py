"""`worker_script` form of a contract worker: `contract_script.py <target name>`."""

import sys

import contract_workers

getattr(contract_workers, sys.argv[1])()
contract_workers.BUILT[-1].run()
