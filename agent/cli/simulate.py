"""`solar-agent simulate`: not built yet."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("simulate", help="(not built yet)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    print("solar-agent simulate: not built yet")
    return 1
