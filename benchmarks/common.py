"""Helpers shared by the benchmark scripts: the real backbone on the reference data."""

from __future__ import annotations

import os
from pathlib import Path

import hf_multitask as hm

DATA_DIR = Path(os.environ.get("HF_MULTITASK_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
FILES = {"sst": "ids-sst-train.csv", "quora": "quora-train.csv", "sts": "sts-train.csv"}


def load_reference(tokenizer, config: hm.MultitaskConfig, limit: int | None = None, max_length: int = 64) -> dict:
    """Encoded reference datasets ``{task: dataset}`` following the model's pair encodings."""
    out = {}
    for spec in config.task_specs:
        raw = hm.load_task_data(spec, DATA_DIR / FILES[spec.name], limit=limit)
        out[spec.name] = hm.encode_task(raw, spec, tokenizer, pair_encoding=config.task_pair_encoding(spec), max_length=max_length)
    return out


def compare_main(doc: str, grid: dict, default_output: str, report_stem: str, tag: str) -> None:
    """The ``run`` / ``report`` command line of a comparison grid (see ``hf_multitask.compare``):
    results in ``default_output``, the report in ``benchmarks/<report_stem>.md`` and ``.png``."""
    import argparse

    from hf_multitask.compare import Grid, GridError, report, run_grid

    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "report"])
    parser.add_argument("--arms", nargs="+", help="run only these arms, in this order")
    parser.add_argument("--output-dir", default=default_output)
    args = parser.parse_args()
    try:
        if args.command == "run":
            run_grid(Grid.from_dict(grid), args.output_dir, args.arms, say=lambda m: print(f"[{tag}] {m}", flush=True))
        else:
            report(args.output_dir, here / f"{report_stem}.md", here / f"{report_stem}.png")
    except GridError as err:
        raise SystemExit(f"{tag}: {err}") from None
