"""Helpers shared by the benchmark scripts: the real backbone on the reference data."""

from __future__ import annotations

import os
from pathlib import Path

import hf_multitask as hm

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("HF_MULTITASK_DATA", REPO.parent / "shared" / "data"))
# The data folder as the comparison grids pass it to their runs: relative to the repository root
# (``compare_main`` runs from there), so the committed results name no machine's paths.
DATA_ARG = os.path.relpath(DATA_DIR, REPO) if "HF_MULTITASK_DATA" not in os.environ else str(DATA_DIR)
FILES = {"sst": "ids-sst-train.csv", "quora": "quora-train.csv", "sts": "sts-train.csv"}


def load_reference(tokenizer, config: hm.MultitaskConfig, limit: int | None = None, max_length: int = 64) -> dict:
    """Encoded reference datasets ``{task: dataset}`` following the model's pair encodings."""
    out = {}
    for spec in config.task_specs:
        raw = hm.load_task_data(spec, DATA_DIR / FILES[spec.name], limit=limit)
        out[spec.name] = hm.encode_task(raw, spec, tokenizer, pair_encoding=config.task_pair_encoding(spec), max_length=max_length)
    return out


def primary_candidates(task: str, every_step: list[str], intermediate_steps: int, specialise_steps: int) -> dict[str, list[str]]:
    """The primary-task methods of issue 25 as one tuned arm's candidates (one run each on the
    tuning split, the best by ``task``'s score reported): the summed loss and the primary-aware
    aggregators on ``every_step`` batches (a schedule with every task in every step, which they
    need to compare each auxiliary with the primary), STILTs (``intermediate_steps`` on the
    auxiliaries, then the protocol's training on ``task`` alone) and multitask-then-fine-tune
    (``specialise_steps`` on ``task`` alone after the multitask run)."""
    return {
        "sum": ["--aggregator", "sum", *every_step],
        "gradsim": ["--aggregator", "gradsim", *every_step],
        "gradsim_weighted": ["--aggregator", "gradsim", "--aggregator_kwargs", '{"weighted": true}', *every_step],
        "pcgrad_primary": ["--aggregator", "pcgrad_primary", *every_step],
        "metabalance": ["--aggregator", "metabalance", *every_step],
        "stilts": ["--aggregator", "sum", "--intermediate_steps", str(intermediate_steps)],
        "mt_then_ft": ["--aggregator", "sum", *every_step, "--specialise_steps", str(specialise_steps), "--specialise_tasks", task],
    }


def compare_main(doc: str, grid: dict, default_output: str, report_stem: str, tag: str) -> None:
    """The ``run`` / ``report`` command line of a comparison grid (see ``hf_multitask.compare``):
    results in ``default_output`` (relative to the repository root, where the runs start), the
    report in ``benchmarks/<report_stem>.md`` and ``.png``.

    The default output folders live under ``benchmarks/results/`` and their ``result.json`` files
    are committed (``benchmarks/results/.gitignore`` keeps the runs' models and logs out): a grid
    takes hours of CPU over several sessions, and a finished cell must outlive the machine it
    ran on."""
    import argparse
    import json

    from hf_multitask.compare import Grid, GridError, grid_dict, report, run_grid, status, status_text

    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "status", "report"], help="status: what is left to run (nothing is run)")
    parser.add_argument("--arms", nargs="+", help="run only these arms, in this order")
    parser.add_argument("--seeds", nargs="+", type=int, help="run only these of the grid's seeds (e.g. one seed of every arm first)")
    parser.add_argument("--output-dir", help=f"results folder (default: {default_output} in the repository)")
    args = parser.parse_args()
    output_dir = Path(args.output_dir).resolve() if args.output_dir else REPO / default_output
    os.chdir(REPO)
    try:
        if args.command == "run":
            run_grid(Grid.from_dict(grid), output_dir, args.arms, say=lambda m: print(f"[{tag}] {m}", flush=True), seeds=args.seeds)
        elif args.command == "status":
            print(status_text(status(Grid.from_dict(grid), output_dir)))
        else:
            # the grid as defined now (pairs added since the runs started, say), as `run` writes it
            (output_dir / "grid.json").write_text(json.dumps(grid_dict(Grid.from_dict(grid)), indent=2))
            report(output_dir, here / f"{report_stem}.md", here / f"{report_stem}.png")
    except GridError as err:
        raise SystemExit(f"{tag}: {err}") from None
