"""Gradient conflicts across ten TweetEval tasks (stance split by target), as a readable plot.

    python benchmarks/tweeteval_conflicts.py [--steps 60] [--batch 16] [--every 3]

Trains the packaged MiniLM with round-robin PCGrad on the ten tasks of
``surgery_speed.py --tasks 10`` (every task in every step) and records the conflict telemetry
every ``--every`` steps; writes ``benchmarks/tweeteval_conflicts.png`` (the mean pairwise
cosine as a 10 x 10 matrix, the conflict rate, the per-task gradient norms and what PCGrad
removed) and prints the matrix's most conflicting and most agreeing pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

from transformers import AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from surgery_speed import tweeteval_tasks  # noqa: E402

import hf_multitask as hm  # noqa: E402
from hf_multitask.telemetry import _cosine_matrix  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--every", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    backbone = hm.default_backbone()
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    specs, data = tweeteval_tasks(tokenizer, 10, 1000)
    model = hm.MultitaskModel.from_encoder(backbone, tasks=specs)
    training = hm.MultitaskTrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch, max_steps=args.steps,
                                             learning_rate=1e-4, aggregator="pcgrad", telemetry_steps=args.every, report_to=[],
                                             use_cpu=True, save_strategy="no", disable_tqdm=True, logging_steps=args.every, seed=0)  # fmt: skip
    trainer = hm.MultitaskTrainer(model=model, args=training, train_dataset=data, processing_class=tokenizer)
    trainer.train()
    here = Path(__file__).resolve().parent
    hm.plot_conflicts(trainer.telemetry.history, here / "tweeteval_conflicts.png")
    names = [s.name for s in specs]
    matrix = _cosine_matrix(trainer.telemetry.history, names)
    pairs = sorted((matrix[i][j], names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names)))
    rates = [r["conflict/rate"] for r in trainer.telemetry.history if "conflict/rate" in r]
    print(json.dumps({"steps": args.steps, "batch_per_task": args.batch, "recorded_steps": len(trainer.telemetry.history),
                      "mean_conflict_rate": sum(rates) / len(rates), "most_conflicting": pairs[:5], "most_agreeing": pairs[-5:]},
                     indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
