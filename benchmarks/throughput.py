"""Training throughput: MultitaskTrainer (3 tasks per step, length-grouped batches) vs the
plain Hugging Face Trainer fine-tuning each task alone, same backbone and batch size.

    python benchmarks/throughput.py --steps 12 --rounds 2

Each round runs, back to back in one process, the plain Trainer for ``--steps`` steps on
each of SST, QQP and STS (``AutoModelForSequenceClassification``, ``DataCollatorWithPadding``,
random batches of 32) and then ``MultitaskTrainer`` (PCGrad, round-robin, batches of 32 per
task) for ``--steps`` steps. Step times come from a callback; the first step of every run is
dropped as warm-up. Reports examples / second of both and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings

from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DATA_DIR, FILES  # noqa: E402

import hf_multitask as hm  # noqa: E402


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def plain_run(backbone, tokenizer, spec, data, steps):
    kwargs = {"problem_type": "regression"} if spec.kind == "regression" else {}
    model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=spec.num_labels, **kwargs)
    timer = StepTimer()
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=32, max_steps=steps, report_to="none", save_strategy="no",
                             disable_tqdm=True, use_cpu=True, seed=0)  # fmt: skip
    Trainer(model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer), callbacks=[timer]).train()
    return 32 * (len(timer.times) - 1), sum(timer.times[1:])


def multitask_run(backbone, tokenizer, data, steps):
    model = hm.MultitaskModel.from_encoder(backbone, tasks=hm.reference_tasks())
    timer = StepTimer()
    args = hm.MultitaskTrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=32, max_steps=steps, report_to="none",
                                         save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0, aggregator="pcgrad")  # fmt: skip
    trainer = hm.MultitaskTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=[timer])
    trainer.train()
    return 96 * (len(timer.times) - 1), sum(timer.times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    backbone = hm.default_backbone()
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    plain_data, multi_data = {}, {}
    probe = hm.MultitaskModel.from_encoder(backbone, tasks=hm.reference_tasks())
    for spec in hm.reference_tasks():
        raw, _ = hm.train_validation_split(hm.load_task_data(spec, DATA_DIR / FILES[spec.name]), 0.1, seed=0)
        multi_data[spec.name] = hm.encode_task(raw, spec, tokenizer, pair_encoding=probe.config.task_pair_encoding(spec), max_length=64)
        plain_data[spec.name] = multi_data[spec.name].select_columns(["input_ids", "attention_mask", "token_type_ids", "labels"])
    totals = {"plain": [0, 0.0], "multitask": [0, 0.0]}
    rounds = []
    for _ in range(args.rounds):
        n_p, t_p = 0, 0.0
        for spec in hm.reference_tasks():
            n, t = plain_run(backbone, tokenizer, spec, plain_data[spec.name], args.steps)
            n_p, t_p = n_p + n, t_p + t
        n_m, t_m = multitask_run(backbone, tokenizer, multi_data, args.steps)
        rounds.append({"plain_examples_per_s": n_p / t_p, "multitask_examples_per_s": n_m / t_m, "ratio": (n_m / t_m) / (n_p / t_p)})
        totals["plain"][0] += n_p
        totals["plain"][1] += t_p
        totals["multitask"][0] += n_m
        totals["multitask"][1] += t_m
    plain = totals["plain"][0] / totals["plain"][1]
    multi = totals["multitask"][0] / totals["multitask"][1]
    print(json.dumps({"plain_examples_per_s": plain, "multitask_examples_per_s": multi, "ratio": multi / plain, "rounds": rounds,
                      "steps_per_run": args.steps}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
