"""What a worker loads (issue 7): an exec-mode worker starts a fresh interpreter, so every
module `from isocluster import ClusterWorker` pulls in is paid by each worker start-up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _loaded(code: str, modules: tuple[str, ...]) -> list[str]:
    probe = f'{code}\nimport sys\nprint(",".join(m for m in {modules!r} if m in sys.modules))'
    result = subprocess.run([sys.executable, '-c', probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [name for name in result.stdout.strip().split(',') if name]


PRIMARY_ONLY = ('isocluster.primary', 'isocluster.supervision', 'pickle', 'ctypes', 'isocluster.transport.memory')


def test_a_worker_import_leaves_out_the_primary_side() -> None:
    assert _loaded('from isocluster import ClusterWorker\nimport isocluster.transport.process', PRIMARY_ONLY) == []


def test_the_primary_side_is_there_on_first_use() -> None:
    code = 'import isocluster\nfrom isocluster import ClusterPrimary, Backoff, RestartPolicy\nassert ClusterPrimary.__name__ == "ClusterPrimary"'
    assert _loaded(code, ('isocluster.primary', 'isocluster.supervision')) == ['isocluster.primary', 'isocluster.supervision']


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    import isocluster

    try:
        isocluster.NoSuchThing  # noqa: B018
    except AttributeError as error:
        assert 'NoSuchThing' in str(error)
    else:
        raise AssertionError('isocluster.NoSuchThing did not raise')
    assert {'ClusterPrimary', 'ClusterWorker', 'Backoff'} <= set(dir(isocluster))


def test_the_primary_side_modules_are_attributes_as_before() -> None:
    code = 'import isocluster\nassert isocluster.supervision.Backoff is isocluster.Backoff\nassert isocluster.primary.ClusterPrimary is isocluster.ClusterPrimary'
    assert _loaded(code, ('isocluster.primary',)) == ['isocluster.primary']
