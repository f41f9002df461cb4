"""Captured worker output: a worker's stdout/stderr pipe drained into the `isocluster.worker` logger."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .spawn import ProcessTransport

output_logger = logging.getLogger('isocluster.worker')

_MAX_PARTIAL_LINE = 64 * 1024


class _OutputReader:
    """Drains a captured stdout/stderr pipe of a worker into the `isocluster.worker` logger."""

    def __init__(self, transport: 'ProcessTransport', fd: int, worker_id: int, stream: str) -> None:
        self._transport = transport
        self.fd = fd
        self._extra = {'worker_id': worker_id, 'stream': stream}
        self._partial = b''
        os.set_blocking(fd, False)
        transport.loop.add_reader(fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b''
        if not data:
            if self._partial:
                self._log(self._partial)
            self.close()
            return
        if not output_logger.isEnabledFor(logging.DEBUG):
            self._partial = b''
            return
        lines = (self._partial + data).split(b'\n')
        self._partial = lines.pop()
        if len(self._partial) > _MAX_PARTIAL_LINE:
            lines.append(self._partial)
            self._partial = b''
        for line in lines:
            self._log(line)

    def _log(self, line: bytes) -> None:
        output_logger.debug('%s', line.decode('utf-8', 'replace').rstrip('\r'), extra=self._extra)

    def close(self) -> None:
        if self.fd < 0:
            return
        self._transport.loop.remove_reader(self.fd)
        self._transport._forget_fd(self.fd)
        os.close(self.fd)
        self.fd = -1


