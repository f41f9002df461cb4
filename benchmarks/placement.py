"""Where a round trip's time goes on this machine: the json round trip of isocluster, of two
bare asyncio loops (the floor) and of `multiprocessing.Pipe`, with the scheduler free to place
the two processes and with both pinned to one CPU (`taskset`), interleaved.

    python benchmarks/placement.py            # 5 repetitions, ~15 s
    python benchmarks/placement.py --reps 3

Pinned to one CPU a round trip costs what the two processes compute; free, it also costs
whatever waking the other process on another CPU costs. Needs `taskset` (util-linux) and
Linux. Each measurement is a fresh `benchmarks/cases.py` process, run as `make bench` runs it
(`run.run_one`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import base, run_one  # noqa: E402  (the measurement make bench takes: fresh process, group killed)

CASES = (('isocluster json', 'iso_rtt'), ('bare asyncio both ends json', 'aio_rtt'),
         ('multiprocessing.Pipe', 'mp_rtt'))


def measure(case: str, cpus: str | None, n: int) -> float:
    prefix = ('taskset', '-c', cpus) if cpus is not None else ()
    result = run_one(base(case, case, {}, {}), {'n': n, 'codec': 'json'}, 120.0, sys.executable, prefix)
    if 'error' in result:
        raise SystemExit(f'placement: {case} failed: {result["error"]}\n{result.get("stderr", "")}')
    return float(result['value'])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--reps', type=int, default=5)
    parser.add_argument('--n', type=int, default=3000, help='round trips a measurement')
    args = parser.parse_args()
    if shutil.which('taskset') is None or not hasattr(os, 'sched_getaffinity'):
        print('placement: needs Linux and taskset (util-linux)', file=sys.stderr)
        return 2
    first = min(os.sched_getaffinity(0))
    placements = (('free', None), (f'pinned to CPU {first}', str(first)))
    samples: dict[tuple[str, str], list[float]] = {}
    for rep in range(args.reps):
        for placement, cpus in placements:
            order = CASES if rep % 2 == 0 else CASES[::-1]
            for label, case in order:
                samples.setdefault((placement, label), []).append(measure(case, cpus, args.n))
    print(f'json round trip, µs (medians of {args.reps}, interleaved)')
    print(f"{'placement':<20}" + ''.join(f'{label:>30}' for label, _ in CASES))
    for placement, _ in placements:
        cells = ''.join(f'{statistics.median(samples[(placement, label)]):>30.1f}' for label, _ in CASES)
        print(f'{placement:<20}{cells}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
