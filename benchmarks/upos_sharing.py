"""Does sharing the encoder with sentence tasks cost or help tagging? (issue 14)

    python benchmarks/upos_sharing.py run
    python benchmarks/upos_sharing.py report

SST + STS + UPOS on the packaged MiniLM, one pass (batch 32 per task, max length 64), PCGrad
and the summed loss, against a UPOS tagger fine-tuned alone on the same data, seeds 0-2,
scored on the seeded 10 % validation split (seed 0) of each training file: UPOS is the
2,001-sentence ``en_ewt-ud-dev.conllu`` (the project judges on a held-out treebank split).
Runs go through `hf_multitask.compare` into ``benchmarks/results/upos_sharing``; the report goes to
``benchmarks/upos_sharing.md`` (included by ``benchmarks/README.md``).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DATA_ARG, compare_main  # noqa: E402

PROTOCOL = ["--data-dir", DATA_ARG, "--max_length", "64", "--per_device_train_batch_size", "32", "--num_train_epochs", "1",
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
    compare_main(__doc__, GRID, "benchmarks/results/upos_sharing", "upos_sharing", "upos")


if __name__ == "__main__":
    main()
