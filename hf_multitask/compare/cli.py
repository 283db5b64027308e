"""``python -m hf_multitask.compare run GRID --output-dir DIR`` / ``report DIR``."""

from __future__ import annotations

import argparse
import sys

from . import __doc__ as _DOC
from .grid import Grid, GridError
from .report import report
from .run import run_grid


def main(argv: list[str] | None = None) -> None:
    """``python -m hf_multitask.compare run GRID --output-dir DIR`` / ``report DIR``."""
    parser = argparse.ArgumentParser(prog="python -m hf_multitask.compare", description=_DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run (or resume) a grid")
    run_p.add_argument("grid", help="grid file (.yaml or .json)")
    run_p.add_argument("--output-dir", required=True)
    run_p.add_argument("--arms", nargs="+", help="run only these arms")
    run_p.add_argument("--report", action="store_true", help="write the report when the runs are done")
    rep_p = sub.add_parser("report", help="summarise a comparison folder")
    rep_p.add_argument("output_dir")
    rep_p.add_argument("--markdown", help="where to write the markdown table (default DIR/results.md)")
    rep_p.add_argument("--png", help="where to write the figure (default DIR/results.png)")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            run_grid(Grid.from_file(args.grid), args.output_dir, args.arms, say=lambda m: print(f"[compare] {m}", flush=True))
            if args.report:
                report(args.output_dir)
        else:
            report(args.output_dir, args.markdown, args.png)
    except (GridError, RuntimeError) as err:
        print(f"hf-multitask compare: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
