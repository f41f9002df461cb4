"""Smoke test of the benchmark harness: `benchmarks/run.py --quick` completes and writes
valid JSON with every scenario. No timing assertions (this machine is shared and noisy)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'benchmarks'))

pytestmark = pytest.mark.skipif(not sys.platform.startswith('linux'), reason='Linux process transport')


def test_quick_bench_writes_every_scenario(tmp_path):
    import run as bench_run

    expected = {s.key for s in bench_run.build_scenarios()}
    out = tmp_path / 'quick.json'
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')])))
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / 'benchmarks' / 'run.py'), '--quick', '--out', str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT), env=env,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, stderr[-3000:]
    data = json.loads(out.read_text())
    assert data['meta']['quick'] is True
    assert set(data['scenarios']) == expected
    for key, scenario in data['scenarios'].items():
        assert not scenario['errors'], (key, scenario['errors'])
        iso = [name for name, v in scenario['variants'].items() if v['isocluster']]
        assert iso, f'{key}: no isocluster figure'
        for name, variant in scenario['variants'].items():
            assert variant['runs'] >= 1 and variant['median'] is not None, (key, name)
        for target in scenario['targets']:
            assert target['status'] in ('PASS', 'MISS', 'SKIP', '(PASS)', '(MISS)', 'info'), target
            if target['status'] == 'info':  # a ratio shown without a bound: measured
                assert target['ratio'] is not None, target
        if key not in ('broadcast', 'flood'):  # flood is measured against its documented bound
            assert any(not v['isocluster'] for v in scenario['variants'].values()), f'{key}: no baseline'
    assert 'targets' in stdout and 'results:' in stdout
