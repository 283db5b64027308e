"""Evaluation time with batches in order of token count against file order, on TweetEval's
validation files (six tasks, max length 64), and what the order changes in the results.

    python benchmarks/eval_speed.py [--model SAVED_MODEL] [--repeats 3] [--batch 64]

``--model`` is a saved six-task TweetEval model (e.g. a recipe run's ``best/``); without it the
packaged MiniLM gets fresh heads (seed 0), which times the same work but makes the metric
comparison less telling. The two orders run interleaved (file, length, file, ...) in one
process so machine noise hits them alike; the ratio of the medians is reported, with the
number of examples whose prediction differs between the orders and the largest metric
difference. Results go to ``results/eval_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
from transformers import AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DATA_DIR  # noqa: E402

import hf_multitask as hm  # noqa: E402
from hf_multitask.predict import metrics_from_predictions, predict  # noqa: E402
from hf_multitask.tweeteval import load_tweeteval, tweeteval_tasks  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "eval_speed.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a saved six-task TweetEval model folder (default: fresh heads)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    root = DATA_DIR / "tweeteval"
    if args.model:
        model = hm.MultitaskModel.from_pretrained(args.model)
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    else:
        from hf_multitask.backbone import default_backbone

        backbone = default_backbone()
        model = hm.MultitaskModel.from_encoder(backbone, tweeteval_tasks(root))
        tokenizer = AutoTokenizer.from_pretrained(backbone)
    model.eval()
    data = {}
    for spec in model.config.task_specs:
        raw = load_tweeteval(spec, root, "val")
        data[spec.name] = hm.encode_task(raw, spec, tokenizer, pair_encoding=model.config.task_pair_encoding(spec), max_length=64)
    seconds: dict[bool, list[float]] = {False: [], True: []}
    outputs: dict[bool, dict] = {}
    for _ in range(args.repeats):
        for by_length in (False, True):
            start = time.perf_counter()
            outputs[by_length] = {
                t: predict(model, ds, t, pad_token_id=tokenizer.pad_token_id, batch_size=args.batch, progress=False, by_length=by_length)
                for t, ds in data.items()
            }
            seconds[by_length].append(time.perf_counter() - start)
    metrics = {k: metrics_from_predictions(model, outputs[k]) for k in (False, True)}
    flips = {t: int(sum(_differs(a, b) for a, b in zip(outputs[False][t].predictions, outputs[True][t].predictions))) for t in data}
    scores = [k for k in metrics[False] if not k.endswith("_loss") and k != "loss"]
    result = {
        "model": "a saved model" if args.model else "packaged MiniLM, fresh heads (seed 0)",
        "examples": {t: len(ds) for t, ds in data.items()},
        "batch": args.batch,
        "repeats": args.repeats,
        "seconds_file_order": seconds[False],
        "seconds_by_length": seconds[True],
        "file_over_by_length": statistics.median(seconds[False]) / statistics.median(seconds[True]),
        "predictions_that_differ": flips,
        "largest_score_difference": max(abs(metrics[True][k] - metrics[False][k]) for k in scores),
        "largest_loss_difference": max(abs(metrics[True][k] - metrics[False][k]) for k in metrics[False] if k.endswith("loss")),
        "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__},
    }
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as handle:
        json.dump(result, handle, indent=1)
    print(json.dumps(result, indent=1))


def _differs(a, b) -> bool:
    """Whether two predictions of one example differ (a class, a value, or a row of tags)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.shape != b.shape or bool(np.any(a != b))


if __name__ == "__main__":
    main()
