"""The TweetEval grid: does one encoder beat six separate models on a public benchmark? (issue 24)

    python benchmarks/compare_tweeteval.py run [--arms separate sum_annealed ...]
    python benchmarks/compare_tweeteval.py report

The protocol (a CPU budget, stated): the packaged MiniLM (22.7M parameters), max length 64,
batch 32, 2 epochs with 10 % warm-up, evaluation on the official validation files after each
epoch and the best epoch kept by the validation benchmark score (the mean of the six official
metrics). The three largest training sets are capped at their first 4,000 tweets (emoji 9 %,
hate 44 %, offensive 34 % of their data); emotion (3,257), irony (2,862) and stance (2,620, the
five targets as one pair task) are used whole. Every arm trains on exactly these examples.

Through :mod:`hf_multitask.compare`: every run in its own process, resumable, results in
``benchmarks/results/tweeteval`` (each cell's ``result.json`` is committed), and each cell's
test prediction files in the official layout gathered into
``benchmarks/results/tweeteval/<arm>/seed<k>/test/`` (committed: the held-out test labels score
them). The report goes to ``benchmarks/compare_tweeteval.md`` and ``.png``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DATA_ARG, compare_main  # noqa: E402

PROTOCOL = ["--benchmark", "tweeteval", "--data-dir", f"{DATA_ARG}/tweeteval", "--max_length", "64",
            "--per_device_train_batch_size", "32", "--num_train_epochs", "2", "--warmup_steps", "0.1",
            "--eval_strategy", "epoch", "--save_strategy", "epoch", "--load_best_model_at_end", "true",
            "--write_predictions", "false", "--test_predictions", "true", "--logging_steps", "50", "--disable_tqdm", "true",
            "--telemetry_steps", "0"]  # fmt: skip
ANNEALED = ["--schedule", "annealed"]  # the PAL schedule, one task per step: p_i ~ N_i^alpha, alpha 1 -> 0.2

GRID = {
    "tasks": ["emoji", "emotion", "hate", "irony", "offensive", "stance"],
    "train_limits": {"emoji": 4000, "hate": 4000, "offensive": 4000},
    "seeds": [0, 1, 2],
    "splits": [0],  # the official validation files (the split seed does not change them)
    "reference": "separate",
    "pairs": [["sum_annealed", "separate"]],
    "test_predictions": "{arm}/seed{seed}/test",
    "arms": {
        # six single-task models (stance: one model for the five targets), each trained on its own data for 2 epochs
        "separate": {"single_task": True, "args": ["--aggregator", "sum"]},
        # one encoder, summed loss, the annealed schedule (the trio's best schedule), same examples and epochs
        "sum_annealed": {"args": ["--aggregator", "sum", *ANNEALED]},
    },
    "protocol": PROTOCOL,
}


def main() -> None:
    compare_main(__doc__, GRID, "benchmarks/results/tweeteval", "compare_tweeteval", "tweeteval")


if __name__ == "__main__":
    main()
