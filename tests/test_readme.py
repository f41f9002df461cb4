"""The README's code is real: every Python block is part of a program under examples/, and
those programs run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / 'README.md').read_text()
BLOCKS = re.findall(r'```python\n(.*?)```', README, flags=re.S)


def test_readme_opens_with_the_demo_and_test_commands() -> None:
    first_block = re.search(r'```sh\n(.*?)```', README, flags=re.S).group(1)
    assert README.index('```sh') < README.index('\n## ')
    assert first_block.splitlines()[0].startswith('make demo')
    assert first_block.splitlines()[1].startswith('make test')
    commands = [line for line in (ROOT / '.ci' / 'run').read_text().splitlines()
                if line.strip() and not line.startswith(('#', 'set ', 'cd '))]
    assert commands[0] == 'make test'  # then the optional suites (make test-ray)


@pytest.mark.parametrize('block', BLOCKS, ids=[f'block{index}' for index in range(len(BLOCKS))])
def test_every_python_block_is_in_an_example(block: str) -> None:
    examples = {path.name: path.read_text() for path in (ROOT / 'examples').glob('*.py')}
    assert any(block.strip() in text for text in examples.values()), 'README block not found in examples/'


@pytest.mark.parametrize('name', ['quickstart.py', 'simulated.py'])
def test_readme_examples_run(name: str) -> None:
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / 'examples' / name)], capture_output=True, text=True, timeout=60, env=env,
    )
    assert result.returncode == 0, result.stderr
    if name == 'quickstart.py':
        assert result.stdout.splitlines() == [
            'hello Ada from worker 1', 'hello Ada from worker 2', 'hello Ada from worker 1', 'hello Ada from worker 2',
        ]
    else:
        assert 'crash and hang handled in virtual time' in result.stdout
