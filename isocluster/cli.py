"""The `isocluster` command (`python -m isocluster`)."""

from __future__ import annotations

import argparse
from typing import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='isocluster', description='Run and supervise a local cluster of Python workers.')
    commands = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    commands.add_parser('demo', help='fork a small cluster, route tasks, crash and replace a worker, shut down')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    if arguments.command == 'demo':
        from .demo import main as demo

        return demo()
    return 2  # pragma: no cover - argparse rejects unknown commands
