"""worker_stdio is checked by one function (transport/stdio.py): a transport's check_spec
names a bad stream as the primary's options do (tests/test_primary.py checks the primary's)."""

from __future__ import annotations

import pytest

from isocluster.protocol import get_codec
from isocluster.transport.base import WorkerSpec
from isocluster.transport.process import ProcessTransport

UNKNOWN = r"worker_stdio: unknown streams \['stdlog'\]; use stdin, stdout, stderr"


def ready_worker() -> None:
    pass


def test_the_process_transport_names_an_unknown_stream_as_the_primary_does():
    transport = ProcessTransport()
    try:
        with pytest.raises(ValueError, match=UNKNOWN):
            transport.check_spec(WorkerSpec(id=1, codec=get_codec('json'), target=ready_worker, stdio={'stdlog': 'pipe'}))
    finally:
        transport.close()

