"""Does sharing the encoder with sentence tasks cost or help tagging? (issue 14)

    python benchmarks/upos_sharing.py run
    python benchmarks/upos_sharing.py report

SST + STS + UPOS on the packaged MiniLM, one pass (batch 32 per task, max length 64), PCGrad
and the summed loss, against a UPOS tagger fine-tuned alone on the same data, seeds 0-2,
scored on the seeded 10 % validation split (seed 0) of each training file: UPOS is the
2,001-sentence ``en_ewt-ud-dev.conllu`` (the project judges on a held-out treebank split).
Runs go through :mod:`hf_multitask.compare` into ``outputs/compare/upos``; the report goes to
``benchmarks/upos_sharing.md`` (included by ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DATA_DIR  # noqa: E402

from hf_multitask.compare import Grid, GridError, report, run_grid  # noqa: E402

HERE = Path(__file__).resolve().parent
PROTOCOL = ["--data-dir", str(DATA_DIR), "--max_length", "64", "--per_device_train_batch_size", "32", "--num_train_epochs", "1",
            "--validation_fraction", "0.1", "--write_predictions", "false", "--logging_steps", "50", "--save_strategy", "no",
            "--eval_strategy", "no", "--load_best_model_at_end", "false", "--disable_tqdm", "true", "--telemetry_steps", "0"]  # fmt: skip
# one pass: SST 7,689 + STS 5,436 + UPOS 1,801 = 14,926 examples = 155 round-robin steps of 3 x 32
ROUND_ROBIN = ["--schedule_kwargs", '{"steps_per_epoch": 155}']

GRID = {
    "tasks": ["sst", "sts", "upos"],
    "seeds": [0, 1, 2],
    "splits": [0],
    "reference": "upos_alone",
    "baseline": "sum",
    "arms": {
        "upos_alone": {"single_task": True, "tasks": ["upos"], "args": ["--aggregator", "sum", "--warmup_steps", "0.1"]},
        "sum": {"args": ["--aggregator", "sum", *ROUND_ROBIN]},
        "pcgrad": {"args": ["--aggregator", "pcgrad", *ROUND_ROBIN]},
    },
    "protocol": PROTOCOL,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "report"])
    parser.add_argument("--arms", nargs="+", help="run only these arms, in this order")
    parser.add_argument("--output-dir", default="outputs/compare/upos")
    args = parser.parse_args()
    try:
        if args.command == "run":
            run_grid(Grid.from_dict(GRID), args.output_dir, args.arms, say=lambda m: print(f"[upos] {m}", flush=True))
        else:
            report(args.output_dir, HERE / "upos_sharing.md", HERE / "upos_sharing.png")
    except GridError as err:
        raise SystemExit(f"upos_sharing: {err}") from None


if __name__ == "__main__":
    main()
