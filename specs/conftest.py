"""Reports for `make spec`: example counts, time and the rare-path table (issue 4)."""

from __future__ import annotations

import sys

import pytest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    ray_module = sys.modules.get('specs.spec_ray')
    if ray_module is not None and getattr(ray_module, 'RAY_STATS', {}).get('examples'):
        stats = ray_module.RAY_STATS
        reporter = session.config.pluginmanager.get_plugin('terminalreporter')
        (reporter.write_line if reporter is not None else print)(
            f"isocluster spec: ray transport: {int(stats['examples'])} examples in {stats['seconds']:.1f}s, "
            f"{int(stats.get('nodes_lost', 0))} nodes lost with {int(stats.get('workers_lost', 0))} workers on them")
    module = sys.modules.get('specs.spec_cluster')
    if module is None or not (module.STATS['memory_examples'] or module.STATS['process_examples']):
        return  # the machines did not run in this process (xdist worker elsewhere, or deselected)
    stats, rare = module.STATS, module.RARE
    lines = [
        '',
        f"isocluster spec [{module.PROFILE} profile]",
        f"  memory transport:  {int(stats['memory_examples'])} examples in {stats['memory_seconds']:.1f}s "
        f"({int(stats['replays'])} replayed for determinism, R121)",
        f"  process transport: {int(stats['process_examples'])} examples in {stats['process_seconds']:.1f}s",
        '  rare paths reached:',
    ]
    lines += [f'    {name:<26} {rare[name]}' for name in module.RARE_PATHS]
    missing = [name for name in module.RARE_PATHS if rare[name] == 0]
    ran_memory = stats['memory_examples'] >= module.MEMORY_EXAMPLES
    if missing and module.FULL and ran_memory:
        lines.append(f'  FAIL: rare paths never reached: {", ".join(missing)}')
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    reporter = session.config.pluginmanager.get_plugin('terminalreporter')
    write = reporter.write_line if reporter is not None else print
    for line in lines:
        write(line)
