"""``napari-medseg`` command line: a thin shell over the Python API."""

from __future__ import annotations

import argparse
import sys

from .io.errors import MedSegIOError


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, headless=True if args.headless else None)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-medseg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="open the shipped sample data in napari (or headless: screenshots + summary)")
    demo.add_argument("--headless", action="store_true", help="no window: write screenshots and a summary to --out")
    demo.add_argument("--out", default="out/demo", help="output folder for --headless (default: out/demo)")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (MedSegIOError, KeyError, ValueError) as err:
        print(f"napari-medseg: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
