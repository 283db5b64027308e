"""Quality under the "1-pass" protocol: recipe configs on the packaged MiniLM and ../shared/data.

    python benchmarks/quality.py --configs plain pcgrad [--steps-per-epoch 220]

Protocol: batch 32 per task, max length 64, a seeded 10 % validation split of each
training file (seed 0), QQP limited to 8,000 training pairs, and the budget of one pass
over SST + STS + 8,000 QQP pairs (21,126 examples): round-robin configs run 220 steps of
3 x 32 examples (21,120). Each config runs in its own process; results are collected in
``outputs/bench/quality.json`` with the training throughput (examples / s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DATA_DIR  # noqa: E402

PROTOCOL = ["--train_limits", '{"quora": 8000}', "--max_length", "64", "--per_device_train_batch_size", "32",
            "--num_train_epochs", "1", "--validation_seed", "0", "--validation_fraction", "0.1",
            "--write_predictions", "false", "--logging_steps", "20"]  # fmt: skip

ROUND_ROBIN = ["--schedule_kwargs", '{"steps_per_epoch": 220}']  # 220 steps x 3 tasks x 32 = one pass
# one epoch: `annealed` keeps alpha at 1 (it moves from epoch to epoch), so this is the proportional schedule (issue 53)
ANNEALED = ["--aggregator", "pcgrad", "--schedule", "annealed", "--gradient_accumulation_steps", "3"]
LP_FT = ["--lp_steps", "100", "--lp_learning_rate", "1e-3"]

# name -> extra recipe arguments (on top of a config file, if the name is one)
RUNS = {
    "plain": ["--config", "recipes/configs/plain.yaml", *ROUND_ROBIN],
    "pcgrad": ["--aggregator", "pcgrad", *ROUND_ROBIN],
    "pcgrad_cosine": ["--config", "recipes/configs/pcgrad_cosine.yaml", *ROUND_ROBIN],
    "gradvac": ["--aggregator", "gradvac", *ROUND_ROBIN],
    "annealed_pcgrad": ANNEALED,
    "lpft_pcgrad": ["--aggregator", "pcgrad", *ROUND_ROBIN, *LP_FT],
    "lpft_annealed": [*ANNEALED, *LP_FT],
    "lpft_annealed_seed1": [*ANNEALED, *LP_FT, "--seed", "1"],  # the same run with another training seed
    "smart_pcgrad": ["--aggregator", "pcgrad", *ROUND_ROBIN, "--smart_lambda_s", "1.0"],
    # annealed PCGrad, then 60 single-task steps per task; reports both in one run
    "two_step_annealed": ["--config", "recipes/configs/two_step.yaml"],
    "lpft_two_step": ["--config", "recipes/configs/two_step.yaml", *LP_FT],
    "lpft_two_step_seed1": ["--config", "recipes/configs/two_step.yaml", *LP_FT, "--seed", "1"],
    # everything that helped on its own, together (multitask_eval_* is the run without two-step)
    "lpft_smart_two_step": ["--config", "recipes/configs/two_step.yaml", *LP_FT, "--smart_lambda_s", "1.0"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["plain", "pcgrad"], choices=sorted(RUNS))
    parser.add_argument("--output-dir", default="outputs/bench")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more recipe flags for every run")
    args = parser.parse_args()
    results_path = Path(args.output_dir) / "quality.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for name in args.configs:
        out = Path(args.output_dir) / name
        cmd = [sys.executable, str(ROOT / "recipes" / "train_pcgrad.py"), *RUNS[name], *PROTOCOL,
               "--data-dir", str(DATA_DIR), "--output-dir", str(out), *args.extra]  # fmt: skip
        print("running", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        metrics = json.loads((out / "metrics.json").read_text())
        keep = ("eval_", "train_", "multitask_eval_", "specialise_")
        results[name] = {k: metrics[k] for k in sorted(metrics) if k.startswith(keep)}
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2))
        print(name, json.dumps(results[name]), flush=True)


if __name__ == "__main__":
    main()
