"""Does a multitask method help *my* tasks? A seeded, resumable comparison harness.

A grid (YAML or JSON) names the recipe flags every run shares (the protocol), the arms to
compare, the training seeds and the validation splits (``--validation_seed`` values)::

    tasks: [sst, quora, sts]
    train_limits: {quora: 8000}   # passed as --train_limits to the runs that train the task
    protocol: [--data-dir, ../shared/data, --max_length, "64", ...]
    seeds: [0, 1, 2]
    splits: [1]                 # the splits results are reported on
    tuning_split: 0             # candidates are compared here only, never reported as results
    reference: separate         # the single-task arm: Delta-m is relative to it
    baseline: sum_tuned         # paired differences are against it
    pairs: [[pcgrad, sum_tuned]]  # more paired differences (a - b per seed), e.g. a method vs its control
    arms:
      separate: {single_task: true, args: [--warmup_ratio, "0.1"]}
      pcgrad: {args: [--aggregator, pcgrad]}
      sum_tuned:
        args: [--aggregator, sum]
        candidates:             # the tuning budget: one run each on the tuning split
          round_robin: []
          annealed: [--schedule, annealed, --gradient_accumulation_steps, "3"]
      pcgrad_on_sum_choice:     # PCGrad with the candidate sum_tuned chose: only the method differs
        args: [--aggregator, pcgrad]
        choice_of: sum_tuned
      gradsim_for_sts:          # the others serve STS: passed as --primary_tasks, chosen and scored on STS
        primary: [sts]
        args: [--aggregator, gradsim]

``python -m hf_multitask.compare run grid.yaml --output-dir DIR`` runs every
(split, arm, seed) in its own process through the recipe (``python -m hf_multitask.recipe``),
tuning arms first; a finished run (its ``result.json``) is never run again, so an interrupted
grid continues where it stopped (a result whose recorded flags no longer match the grid is
refused, not reused); a run killed mid-way continues from its newest complete checkpoint.
``python -m hf_multitask.compare status grid.yaml --output-dir DIR`` says, without running
anything, which runs are done, which can resume, what is left and about how long it will
take. Each run's wall time, training time and peak memory (the
child's max RSS) are recorded. ``python -m hf_multitask.compare report DIR`` writes the
results as CSV, a markdown table (per-task metrics, overall and Delta-m with 95 % t
intervals over seeds, the paired difference with the baseline and whether its interval
excludes 0, cost; then the ``pairs`` table of paired differences) and a PNG of score vs cost
and per-task deltas.
"""

from __future__ import annotations

import argparse
import sys

from .grid import Grid, GridError
from .report import report
from .run import run_grid
from .status import status, status_text


def main(argv: list[str] | None = None) -> None:
    """``python -m hf_multitask.compare run GRID --output-dir DIR`` / ``status GRID --output-dir DIR`` / ``report DIR``."""
    parser = argparse.ArgumentParser(prog="python -m hf_multitask.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run (or resume) a grid")
    run_p.add_argument("grid", help="grid file (.yaml or .json)")
    run_p.add_argument("--output-dir", required=True)
    run_p.add_argument("--arms", nargs="+", help="run only these arms")
    run_p.add_argument("--seeds", nargs="+", type=int, help="run only these of the grid's seeds (e.g. one seed of every arm first)")
    run_p.add_argument("--report", action="store_true", help="write the report when the runs are done")
    stat_p = sub.add_parser("status", help="what a grid has left to run (nothing is run)")
    stat_p.add_argument("grid", help="grid file (.yaml or .json)")
    stat_p.add_argument("--output-dir", required=True)
    rep_p = sub.add_parser("report", help="summarise a comparison folder")
    rep_p.add_argument("output_dir")
    rep_p.add_argument("--markdown", help="where to write the markdown table (default DIR/results.md)")
    rep_p.add_argument("--png", help="where to write the figure (default DIR/results.png)")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            run_grid(Grid.from_file(args.grid), args.output_dir, args.arms, say=lambda m: print(f"[compare] {m}", flush=True),
                     seeds=args.seeds)  # fmt: skip
            if args.report:
                report(args.output_dir)
        elif args.command == "status":
            print(status_text(status(Grid.from_file(args.grid), args.output_dir)))
        else:
            report(args.output_dir, args.markdown, args.png)
    except (GridError, RuntimeError) as err:
        print(f"hf-multitask compare: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
