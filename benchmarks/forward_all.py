"""One encoder pass for all heads that read the same sentences vs one forward per head.

    python benchmarks/forward_all.py --repeats 10 --batch 32

Packaged MiniLM with three single-sentence heads on the same input (SST-5 sentiment, a
binary head and a regression head), batches of real SST sentences (max length 64), inference
mode. Both ways run interleaved in one process, so the ratio holds on a noisy machine; the
outputs are checked equal before timing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from transformers import AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DATA_DIR, FILES  # noqa: E402

import hf_multitask as hm  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    tasks = [hm.sst_task(), hm.TaskSpec("polarity", "classification", num_labels=2, text_columns=("sentence",), label_column="sentiment"),
             hm.TaskSpec("intensity", "regression", num_labels=1, text_columns=("sentence",), label_column="sentiment")]  # fmt: skip
    backbone = hm.default_backbone()
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    model = hm.MultitaskModel.from_encoder(backbone, tasks=tasks).eval()
    raw = hm.load_task_data(tasks[0], DATA_DIR / FILES["sst"], limit=args.batch * args.repeats)
    enc = hm.encode_task(raw, tasks[0], tokenizer, max_length=64)
    collate = hm.MultitaskCollator(tokenizer.pad_token_id)
    batches = [collate([enc[i] for i in range(k * args.batch, (k + 1) * args.batch)]) for k in range(args.repeats)]
    batches = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
    per_task, shared = [], []
    with torch.inference_mode():
        for t in tasks:  # warm-up, and the equality check
            torch.testing.assert_close(
                model.forward_all({s.name: batches[0] for s in tasks})[t.name], model(task=t.name, **batches[0]).logits
            )
        for batch in batches:
            start = time.perf_counter()
            for t in tasks:
                model(task=t.name, **batch)
            per_task.append(time.perf_counter() - start)
            start = time.perf_counter()
            model.forward_all({t.name: batch for t in tasks})
            shared.append(time.perf_counter() - start)
    a, b = statistics.median(per_task), statistics.median(shared)
    print(f"3 heads, batch {args.batch}: one forward per head {a * 1000:.1f} ms, forward_all {b * 1000:.1f} ms, speedup {a / b:.2f}x")


if __name__ == "__main__":
    main()
