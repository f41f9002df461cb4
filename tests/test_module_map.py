"""The README's "How it is built" table is the map of the package: every module of the tree
has a row (a package's modules are named in its row), and every row names a module that exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / 'isocluster'


def _table() -> dict[str, str]:
    text = (ROOT / 'README.md').read_text()
    section = text.split('## How it is built', 1)[1].split('\n## ', 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip('|').split('|')]
        if line.startswith('| `') and len(cells) == 2:
            for name in re.findall(r'`([^`]+)`', cells[0]):
                rows[name] = cells[1]
    return rows


def _modules() -> list[Path]:
    return sorted(path.relative_to(PACKAGE) for path in PACKAGE.rglob('*.py') if '__pycache__' not in path.parts)


def test_every_module_of_the_tree_is_on_the_map() -> None:
    rows = _table()
    missing = []
    for module in _modules():
        if module.name == '__main__.py' or (module.name == '__init__.py' and module.parent != Path('.')):
            continue  # `python -m isocluster` is the command's; a subpackage's names are its modules'
        if module.parent == Path('.') or module.parent == Path('transport'):
            if str(module) not in rows:
                missing.append(str(module))
        elif module.name != '__init__.py':  # a package's module: named in its package's row
            row = rows.get(f'{module.parent}/')
            if row is None or f'`{module.stem}`' not in row:
                missing.append(str(module))
    assert missing == [], f'modules with no row in the README\'s "How it is built" table: {missing}'


def test_every_row_of_the_map_names_a_module_that_exists() -> None:
    stale = [name for name in _table() if not (PACKAGE / name).exists()]
    assert stale == [], f'rows of the README\'s "How it is built" table with no module: {stale}'
