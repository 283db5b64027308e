"""Does a multitask method help *my* tasks? A seeded, resumable comparison harness: a grid of
arms x seeds x splits run through the recipe, reported with intervals. The grid format and the
commands are in `hf_multitask.compare.cli` (``python -m hf_multitask.compare --help``)."""

from __future__ import annotations

from .cli import main
from .grid import Arm, Grid, GridError
from .report import load_results, markdown, plot, report
from .run import grid_dict, run_grid, tuned_args
from .stats import interval, paired, summarise
from .status import status, status_text

__all__ = ["Arm", "Grid", "GridError", "grid_dict", "interval", "load_results", "main", "markdown", "paired", "plot", "report",
           "run_grid", "status", "status_text", "summarise", "tuned_args"]  # fmt: skip
