"""(tests/contract is a package, so this conftest does not take the name `conftest` that
tests/conftest.py has: other test modules import helpers from it.)

The Ray cases run last: once Ray is up its threads live in this process, and forking
workers next to them (the fork and script cases) is what the process transport warns about."""

from __future__ import annotations

from typing import Any


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    ray_cases = [item for item in items if 'contract' in item.nodeid and item.nodeid.endswith('[ray]')]
    if ray_cases:
        moved = {id(item) for item in ray_cases}
        others = [item for item in items if id(item) not in moved]
        items[:] = others + ray_cases
