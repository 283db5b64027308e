"""The TweetEval grid: does one encoder beat six separate models on a public benchmark? (issue 24)

    python benchmarks/compare_tweeteval.py run [--arms separate sum_annealed ...]
    python benchmarks/compare_tweeteval.py report

The protocol (a CPU budget, stated): the packaged MiniLM (22.7M parameters), max length 64,
batch 32, 2 epochs with 10 % warm-up, evaluation on the official validation files after each
epoch and the best epoch kept by the validation benchmark score (the mean of the six official
metrics). The three largest training sets are capped at their first 4,000 tweets (emoji 9 %,
hate 44 %, offensive 34 % of their data); emotion (3,257), irony (2,862) and stance (2,620, the
five targets as one pair task) are used whole. Every arm trains on exactly these examples.

Through `hf_multitask.compare`: every run in its own process, resumable, results in
``benchmarks/results/tweeteval`` (each cell's ``result.json`` is committed), and each cell's
test prediction files in the official layout gathered into
``benchmarks/results/tweeteval/<arm>/seed<k>/test/`` (committed: the held-out test labels score
them). The report goes to ``benchmarks/compare_tweeteval.md`` and ``.png``.

Arms: ``separate``, ``sum_annealed``, their stance-as-five-target-heads twins (``--stance targets``:
``separate_stance_targets``, one stance model with five heads, and ``sum_annealed_stance_targets``), the tuned summed loss ``sum_tuned`` (five candidates, one
run each on the tuning split), and PCGrad, UPGrad and FAMO on round-robin batches against
``sum_round_robin``, plus the primary-task arms of issue 25. One run costs 20-40 min of this
CPU, so each seed of these arms is about 3 h, and the tuning is another 3 h.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DATA_ARG, compare_main, primary_candidates  # noqa: E402

PROTOCOL = ["--benchmark", "tweeteval", "--data-dir", f"{DATA_ARG}/tweeteval", "--max_length", "64",
            "--per_device_train_batch_size", "32", "--num_train_epochs", "2", "--warmup_steps", "0.1",
            "--eval_strategy", "epoch", "--save_strategy", "epoch", "--load_best_model_at_end", "true",
            "--write_predictions", "false", "--test_predictions", "true", "--logging_steps", "50", "--disable_tqdm", "true",
            "--telemetry_steps", "0"]  # fmt: skip
ANNEALED = ["--schedule", "annealed"]  # the PAL schedule, one task per step: p_i ~ N_i^alpha, alpha 1 -> 0.2
# every task in every step (the primary-aware methods compare each auxiliary with the primary), 108 steps of
# 6 x 32 examples per epoch: the same number of examples as one pass over the capped data (41,498 in 2 epochs)
ROUND_ROBIN = ["--schedule", "round_robin", "--schedule_kwargs", '{"steps_per_epoch": 108}']
TEMPERATURE_2 = ["--schedule", "temperature", "--schedule_kwargs", '{"temperature": 2}']  # p_i ~ N_i^(1/2)
PRIMARIES = ("irony", "emotion", "stance")  # the three smallest tasks, each the primary in turn (issue 25)
SPECIALISE = ["--specialise_steps", "125", "--specialise_learning_rate", "5e-5", "--specialise_keep", "better"]
SUM_SOURCE = "emotion"  # whose `sum` tuning run the others re-score (the first run that recorded its evaluations)
# issue 49, one backbone in memory: after sum_annealed's multitask phase, each task trains only its own zero-initialised
# PALs (rank 96: 0.24 M parameters a task) or LoRA adapter (r 8 on every linear layer: 0.33 M a task) and its head, for
# the steps the whole-encoder specialisation takes; every adapter kept (nothing is chosen, so nothing leans). The
# adapters' learning rate (5e-4, 10x the whole encoder's) is not tuned: the budget went to the PAL arm's tuning
ONE_BACKBONE = ["--specialise_steps", "125", "--specialise_learning_rate", "5e-4", "--specialise_keep", "all"]
SPECIALISE_PAL = [*ONE_BACKBONE, "--specialise_form", "pal", "--specialise_rank", "96", "--pal_heads", "12"]
SPECIALISE_LORA = [*ONE_BACKBONE, "--specialise_form", "lora", "--specialise_rank", "8", "--lora_alpha", "16",
                   "--lora_targets", "query", "key", "value", "dense"]  # fmt: skip
# PALs for every task from the first step, trained jointly (Stickland & Murray 2019): the rank and the schedule chosen
# on the tuning split, as sum_tuned was (rank 96: 6 x 0.24 M = 1.06x one encoder; rank 48: 1.03x)
PAL_CANDIDATES = {
    "annealed_r96": [*ANNEALED, "--pal_rank", "96"],
    "annealed_r48": [*ANNEALED, "--pal_rank", "48"],
    "temperature_2_r96": [*TEMPERATURE_2, "--pal_rank", "96"],
}


# the tuned summed loss (issue 24): its budget, one run each on the tuning split (a seeded 10 % of train, never val)
SUM_CANDIDATES = {
    "annealed": ANNEALED,
    "round_robin": ROUND_ROBIN,
    "temperature_2": TEMPERATURE_2,
    "annealed_lpft": [*ANNEALED, "--lp_steps", "200"],
    "annealed_lr_5e-5": [*ANNEALED, "--learning_rate", "5e-5"],
}

GRID = {
    "tasks": ["emoji", "emotion", "hate", "irony", "offensive", "stance"],
    "train_limits": {"emoji": 4000, "hate": 4000, "offensive": 4000},
    "seeds": [0, 1, 2],
    "splits": [0],  # the official validation files (the split seed does not change them)
    # tuning (the primary-task methods) on a seeded 10 % split of the training files, never on val
    "tuning_split": 1,
    "tuning_args": ["--benchmark_validation", "split", "--validation_fraction", "0.1", "--test_predictions", "false"],
    "reference": "separate",
    "baseline": "sum_tuned",
    "pairs": [
        ["sum_annealed", "separate"],
        # stance as five target heads (--stance targets, pooled metric) against the one (target, tweet) pair task
        ["separate_stance_targets", "separate"],
        ["sum_annealed_stance_targets", "sum_annealed"],
        # issue 42: multitask-then-specialise against the six models and against its own first step
        ["specialised", "separate"],
        ["specialised", "sum_annealed"],
        ["bam", "separate"],
        ["bam", "sum_annealed"],
        # issue 49: the one-backbone arms against the six models and against their own multitask phase
        *([arm, "separate"] for arm in ("pal", "specialised_pal", "specialised_lora", "bam_specialised")),
        *([arm, "sum_annealed"] for arm in ("specialised_pal", "specialised_lora", "bam_specialised")),
        ["bam_specialised", "bam"],
        # the gradient methods need every task in every step (under the annealed schedule a step has one task,
        # and PCGrad is the summed loss): each against the summed loss on the same round-robin batches
        ["pcgrad", "sum_round_robin"],
        ["upgrad", "sum_round_robin"],
        ["famo", "sum_round_robin"],
        # issue 25: each primary-task arm is scored on its primary alone, so these compare that task's metric
        *([f"primary_{p}", f"symmetric_{p}"] for p in PRIMARIES),
        *([f"primary_{p}", "separate"] for p in PRIMARIES),
        *([f"symmetric_{p}", "separate"] for p in PRIMARIES),
    ],
    "test_predictions": "{arm}/seed{seed}/test",
    "arms": {
        # six single-task models (stance: one model for the five targets), each trained on its own data for 2 epochs
        "separate": {"single_task": True, "args": ["--aggregator", "sum"]},
        # one encoder, summed loss, the annealed schedule (the trio's best schedule), same examples and epochs
        "sum_annealed": {"args": ["--aggregator", "sum", *ANNEALED]},
        # stance's two designs (issue 24: measure both on validation, keep the better): one stance model with five
        # target heads against `separate`'s one pair-task model, and the one encoder with ten heads against six
        "separate_stance_targets": {"single_task": True, "tasks": ["stance"], "args": ["--aggregator", "sum", "--stance", "targets"]},
        "sum_annealed_stance_targets": {"args": ["--aggregator", "sum", *ANNEALED, "--stance", "targets"]},
        "sum_tuned": {"args": ["--aggregator", "sum"], "candidates": SUM_CANDIDATES},
        "sum_round_robin": {"args": ["--aggregator", "sum", *ROUND_ROBIN]},
        # issue 42, MT-DNN: sum_annealed, then each task fine-tuned alone from the multitask encoder (125 steps of 32, one pass
        # over a capped task), routed; a task keeps its expert only where it beats the multitask model on validation
        "specialised": {"args": ["--aggregator", "sum", *ANNEALED, *SPECIALISE]},
        # issue 42, BAM!: sum_annealed's training, each task distilled from the same seed's `separate` model with teacher
        # annealing (the gold weight rising from 0 to 1); the cell retrains the six teachers and commits their outputs
        "bam": {"args": ["--aggregator", "sum", *ANNEALED], "teachers_from": "separate"},
        # issue 49: one backbone in memory. PALs for every task, jointly (tuned); the multitask phase, then each task's own
        # PALs or LoRA adapter; BAM! whose teachers are the same seed's specialised experts (the teacher run is the
        # `specialised` arm's exact command, so it also re-checks that arm's cell; every expert teaches, kept or not)
        "pal": {"args": ["--aggregator", "sum", "--pal_tasks", "all", "--pal_heads", "12"], "candidates": PAL_CANDIDATES},
        "specialised_pal": {"args": ["--aggregator", "sum", *ANNEALED, *SPECIALISE_PAL]},
        "specialised_lora": {"args": ["--aggregator", "sum", *ANNEALED, *SPECIALISE_LORA]},
        "bam_specialised": {"args": ["--aggregator", "sum", *ANNEALED], "teachers_from": "specialised"},
        "pcgrad": {"args": ["--aggregator", "pcgrad", *ROUND_ROBIN]},
        "upgrad": {"args": ["--aggregator", "upgrad", *ROUND_ROBIN]},
        "famo": {"args": ["--aggregator", "famo", *ROUND_ROBIN]},
        # issue 25, per primary task P: symmetric multitask with P's checkpoint choice, and the best primary-task
        # method chosen on the tuning split by P's score (only P's test file is written); the harness passes
        # `primary` as --primary_tasks and scores the arm on P alone
        # the same training as sum_round_robin (only the checkpoint choice differs): its cell runs first, and a symmetric
        # cell is that run re-scored when P keeps the checkpoint it kept (it trains only when P keeps another)
        **{
            f"symmetric_{p}": {"primary": [p], "args": ["--aggregator", "sum", *ROUND_ROBIN], "same_training_as": "sum_round_robin"}
            for p in PRIMARIES
        },
        # STILTs: the auxiliaries first (150 steps of 5 x 32), then 2 epochs of the primary alone; multitask, then
        # 100 steps of the primary alone from the multitask encoder. The candidate `sum` is the same training for
        # every primary (--primary_tasks changes only its checkpoint): irony's and stance's are emotion's run,
        # re-scored when their task keeps the checkpoint emotion's kept
        **{
            f"primary_{p}": {
                "primary": [p],
                "candidates": primary_candidates(p, ROUND_ROBIN, 150, 100),
                **({"candidates_same_training_as": {"sum": f"primary_{SUM_SOURCE}"}} if p != SUM_SOURCE else {}),
            }
            for p in PRIMARIES
        },
    },
    "protocol": PROTOCOL,
}


def main() -> None:
    compare_main(__doc__, GRID, "benchmarks/results/tweeteval", "compare_tweeteval", "tweeteval")


if __name__ == "__main__":
    main()
