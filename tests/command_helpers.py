"""`python -m isocluster ...` run as a child in its own session, its output lines collected."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WAIT = 20.0  # seconds: the deadline of any one wait


class Command:
    """`python -m isocluster ARGS` in its own session, its output lines collected by a thread."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')])))
        self.process = subprocess.Popen([sys.executable, '-m', 'isocluster', *args], cwd=cwd, env=env,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, start_new_session=True)
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line.rstrip('\n'))
                self.changed.notify_all()

    def wait_for(self, pattern: str, count: int = 1) -> list[re.Match[str]]:
        regex = re.compile(pattern)
        with self.changed:
            found = lambda: [m for m in map(regex.search, self.lines) if m]
            if not self.changed.wait_for(lambda: len(found()) >= count, timeout=WAIT):
                raise AssertionError(f'no {count} lines matching {pattern!r}:\n' + '\n'.join(self.lines))
            return found()

    def kill_group(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait(WAIT)
        self.reader.join(WAIT)
