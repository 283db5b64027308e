"""Baseline: three separately fine-tuned plain Hugging Face models (one per task).

    python benchmarks/separate_models.py --output-dir outputs/bench/separate

``AutoModelForSequenceClassification`` on the packaged MiniLM with the stock ``Trainer`` and
``DataCollatorWithPadding``, under the "1-pass" protocol: batch 32, max length 64, SST one
epoch, STS one epoch, QQP 8,000 pairs; evaluated on the same seeded validation split the
multitask recipe uses (10 %, seed 0). Reports each task's metric, the overall score and the
training throughput (samples / s) of the plain Trainer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DATA_DIR, FILES  # noqa: E402

import hf_multitask as hm  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="outputs/bench/separate")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--quora-limit", type=int, default=8000)
    parser.add_argument("--limit", type=int, default=None, help="cap every task's training rows (smoke runs)")
    parser.add_argument("--seed", type=int, default=42, help="training seed of the three models (the validation split stays seed 0)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    backbone = hm.default_backbone()
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    results, timings = {}, {}
    scores = {}
    for spec in hm.reference_tasks():
        raw = hm.load_task_data(spec, DATA_DIR / FILES[spec.name])
        train, val = hm.train_validation_split(raw, 0.1, seed=0)
        limit = args.quora_limit if spec.name == "quora" else None
        if args.limit:
            limit = min(limit or args.limit, args.limit)
        if limit and limit < len(train):
            train = train.select(range(limit))

        def tok(batch, spec=spec):
            cols = spec.text_columns
            enc = tokenizer(batch[cols[0]], batch[cols[1]] if spec.is_pair else None, truncation=True, max_length=64)
            enc["labels"] = batch["label"]
            return enc

        keep = ["input_ids", "attention_mask", "token_type_ids", "labels"]
        train_enc = train.map(tok, batched=True, remove_columns=train.column_names).select_columns(keep)
        val_enc = val.map(tok, batched=True, remove_columns=val.column_names).select_columns(keep)
        kwargs = {"problem_type": "regression"} if spec.kind == "regression" else {}
        model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=spec.num_labels, **kwargs)
        targs = TrainingArguments(
            output_dir=str(Path(args.output_dir) / spec.name),
            per_device_train_batch_size=32,
            per_device_eval_batch_size=64,
            learning_rate=args.learning_rate,
            num_train_epochs=1,
            warmup_steps=0.1,
            logging_steps=50,
            save_strategy="no",
            report_to="none",
            seed=args.seed,
        )
        trainer = Trainer(model=model, args=targs, train_dataset=train_enc, data_collator=DataCollatorWithPadding(tokenizer))
        start = time.perf_counter()
        trainer.train()
        timings[spec.name] = {"seconds": time.perf_counter() - start, "samples": len(train_enc)}
        logits = trainer.predict(val_enc).predictions
        preds = spec.task_type.predictions(spec, np.asarray(logits), {})
        m = hm.compute_task_metrics(spec, preds, np.asarray(val_enc["labels"]))
        scores[spec.name] = m["score"]
        results.update({f"{spec.name}_{k}": v for k, v in m.items()})
        print(spec.name, m, timings[spec.name], flush=True)
    results["overall"] = hm.overall_score(scores)
    total_s = sum(t["seconds"] for t in timings.values())
    total_n = sum(t["samples"] for t in timings.values())
    report = {
        "metrics": results,
        "train_seconds": total_s,
        "train_samples": total_n,
        "samples_per_second": total_n / total_s,
        "per_task": timings,
    }
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.output_dir) / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
