"""The comparison grid on the reference trio: does surgery help SST + QQP + STS? (issue 16)

    python benchmarks/compare_trio.py run [--arms separate lpft_annealed_pcgrad ...]
    python benchmarks/compare_trio.py report

The 1-pass protocol of ``quality.py`` (packaged MiniLM, batch 32 per task, max length 64,
QQP 8,000 pairs, one pass over the data), through `hf_multitask.compare`: every run in
its own process, resumable, results in ``benchmarks/results/compare_trio`` (the
``result.json`` files are committed). Results are reported on
validation split 1 (``--validation_seed 1``); split 0 is the one every earlier configuration
(the annealed schedule, LP-FT) was chosen on, and the only split the tuned baseline's
candidates are compared on. The report goes to ``benchmarks/compare_trio.md`` (included by
``benchmarks/README.md``) and ``benchmarks/compare_trio.png``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DATA_ARG, compare_main, primary_candidates  # noqa: E402

PROTOCOL = ["--data-dir", DATA_ARG, "--max_length", "64",
            "--per_device_train_batch_size", "32", "--num_train_epochs", "1", "--validation_fraction", "0.1",
            "--write_predictions", "false", "--logging_steps", "50", "--save_strategy", "no", "--eval_strategy", "no", "--load_best_model_at_end", "false", "--disable_tqdm", "true",
            "--telemetry_steps", "0"]  # fmt: skip
ROUND_ROBIN = ["--schedule_kwargs", '{"steps_per_epoch": 220}']  # 220 steps x 3 tasks x 32 = one pass
# One epoch: `annealed` keeps alpha at 1 (it moves from epoch to epoch), so these runs draw one task per micro-batch in
# proportion to its size, exactly as `--schedule proportional` (issue 53). The flag stays: the committed cells were run with it.
ANNEALED = ["--schedule", "annealed", "--gradient_accumulation_steps", "3"]
LP_FT = ["--lp_steps", "100", "--lp_learning_rate", "1e-3"]
WARMUP = ["--warmup_steps", "0.1"]
# The levers issue 16 puts in the search space: the backbone was trained with mean pooling (we
# use [CLS] by default), a cosine bi-encoder for STS, layer-wise LR decay with a faster head
MEAN_POOLING = ["--pooling", "mean"]
STS_COSINE = ["--pooling", "mean", "--task_pair_encodings", '{"sts": "cosine"}']
LLRD = ["--layer_lr_decay", "0.9", "--head_learning_rate", "1e-3"]
TEMPERATURE = ["--schedule", "temperature", "--schedule_kwargs", '{"temperature": 2.0}', "--gradient_accumulation_steps", "3"]

# the published batch ratio of sample-weighted PCGrad, SST:QQP:STS = 0:3:1 (SST sits out), for as many steps as ROUND_ROBIN
RATIO_031 = ["--schedule_kwargs", '{"steps_per_epoch": 220, "ratios": "0:3:1"}']

# issue 49: two-step specialisation after the tuned summed loss's multitask pass (150 single-task steps of 32 per task, about
# two thirds of a pass over each task), every expert kept (nothing chosen, nothing leans): the whole encoder per task, or
# only each task's own zero-initialised PALs (rank 96) or LoRA adapter (r 8 on every linear layer) and head, one backbone
SPECIALISE = ["--specialise_steps", "150", "--specialise_learning_rate", "5e-5", "--specialise_keep", "all"]
ONE_BACKBONE = ["--specialise_steps", "150", "--specialise_learning_rate", "5e-4", "--specialise_keep", "all"]
SPECIALISE_PAL = [*ONE_BACKBONE, "--specialise_form", "pal", "--specialise_rank", "96", "--pal_heads", "12"]
SPECIALISE_LORA = [*ONE_BACKBONE, "--specialise_form", "lora", "--specialise_rank", "8", "--lora_alpha", "16",
                   "--lora_targets", "query", "key", "value", "dense"]  # fmt: skip

# The tuning candidates (one run each on the tuning split, the best kept) shared by the tuned arms
TUNING = {
    "round_robin": ROUND_ROBIN,
    "round_robin_warmup": [*ROUND_ROBIN, *WARMUP],
    "annealed": ANNEALED,
    "temperature_2": TEMPERATURE,
    "annealed_lpft": [*ANNEALED, *LP_FT],
    "annealed_lpft_warmup": [*ANNEALED, *LP_FT, *WARMUP],
    "annealed_lpft_mean_pooling": [*ANNEALED, *LP_FT, *MEAN_POOLING],
    "annealed_lpft_sts_cosine": [*ANNEALED, *LP_FT, *STS_COSINE],
    "annealed_lpft_llrd": [*ANNEALED, *LP_FT, *LLRD],
}

# issue 49: PALs for every task from the first step, trained jointly: the rank and the schedule chosen on the tuning split
PAL_CANDIDATES = {
    "annealed_lpft_warmup_r96": [*ANNEALED, *LP_FT, *WARMUP, "--pal_rank", "96"],
    "annealed_lpft_warmup_r48": [*ANNEALED, *LP_FT, *WARMUP, "--pal_rank", "48"],
    "round_robin_warmup_r96": [*ROUND_ROBIN, *WARMUP, "--pal_rank", "96"],
}

GRID = {
    "tasks": ["sst", "quora", "sts"],
    "train_limits": {"quora": 8000},
    "seeds": [0, 1, 2],
    "splits": [1],
    "tuning_split": 0,
    "reference": "separate",
    "baseline": "sum_tuned",
    # each method against its control, seed by seed
    "pairs": [
        ["lpft_annealed_pcgrad", "lpft_annealed_sum"],
        ["pcgrad_sum_choice", "sum_tuned"],
        ["lpft_annealed_pcgrad", "sum_tuned"],
        ["pcgrad", "sum"],
        ["upgrad", "sum"],
        ["famo", "sum"],
        ["rlw", "sum"],
        ["weighted_pcgrad_031", "pcgrad_031"],
        ["weighted_pcgrad_031", "pooled_pcgrad_031"],
        # issue 25, STS as the primary task (scored on STS alone): against the symmetric summed loss on the same
        # round-robin batches (one pass, no checkpoint choice, so `sum` is the symmetric arm) and STS's own model
        ["primary_sts", "sum"],
        ["primary_sts", "separate"],
        ["bam", "separate"],
        ["bam", "sum_tuned"],
        # issue 49: the full-capacity reference and the one-backbone arms, against the three models and the tuned summed loss
        *([arm, "separate"] for arm in ("specialised", "pal", "specialised_pal", "specialised_lora", "bam_specialised")),
        *([arm, "sum_tuned"] for arm in ("specialised", "pal", "specialised_pal", "specialised_lora", "bam_specialised")),
        ["bam_specialised", "bam"],
    ],  # fmt: skip
    "arms": {
        # three single-task models, each one pass over its data (10 % warm-up, as the stock-Trainer baseline had)
        "separate": {"single_task": True, "args": ["--aggregator", "sum", *WARMUP]},
        "sum": {"args": ["--aggregator", "sum", *ROUND_ROBIN]},
        # summed loss with a tuning budget like the one that chose the best PCGrad recipe on split 0
        "sum_tuned": {"args": ["--aggregator", "sum"], "candidates": TUNING},
        # PCGrad with the candidate sum_tuned chose: only the aggregator differs from the tuned baseline.
        # (PCGrad's own tuned recipe is lpft_annealed_pcgrad, chosen on split 0 in earlier sessions; a
        # 9-candidate search for PCGrad as well would cost 9 more runs and is not in the grid.)
        "pcgrad_sum_choice": {"args": ["--aggregator", "pcgrad"], "choice_of": "sum_tuned"},
        "pcgrad": {"args": ["--aggregator", "pcgrad", *ROUND_ROBIN]},
        "upgrad": {"args": ["--aggregator", "upgrad", *ROUND_ROBIN]},
        "famo": {"args": ["--aggregator", "famo", *ROUND_ROBIN]},
        "rlw": {"args": ["--aggregator", "rlw", *ROUND_ROBIN]},
        # the best recipe of benchmarks/README.md, and the same recipe with the summed loss
        "lpft_annealed_pcgrad": {"args": ["--aggregator", "pcgrad", *ANNEALED, *LP_FT]},
        "lpft_annealed_sum": {"args": ["--aggregator", "sum", *ANNEALED, *LP_FT]},
        # issue 28: sample-weighted PCGrad as published (per-sample mean rows: equal to PCGrad on our mean-loss
        # rows) against plain PCGrad and the old share weighting (pooled_pcgrad), all at the 0:3:1 batch ratio
        "weighted_pcgrad_031": {"args": ["--aggregator", "weighted_pcgrad", *RATIO_031]},
        "pcgrad_031": {"args": ["--aggregator", "pcgrad", *RATIO_031]},
        "pooled_pcgrad_031": {"args": ["--aggregator", "pooled_pcgrad", *RATIO_031]},
        # issue 25: SST and QQP serve STS. The primary-task methods chosen on split 0 by STS's Pearson r: the summed
        # loss and the primary-aware aggregators on round-robin batches, STILTs (150 steps of SST + QQP, then the
        # pass over STS alone) and multitask-then-fine-tune (100 steps of STS alone after the multitask pass)
        "primary_sts": {"primary": ["sts"], "candidates": primary_candidates("sts", ROUND_ROBIN, 150, 100)},
        # issue 42, BAM!: the tuned summed loss's recipe, each task distilled from the same seed's `separate` model with
        # teacher annealing (the cell retrains the three teachers and commits their outputs)
        "bam": {"args": ["--aggregator", "sum"], "choice_of": "sum_tuned", "teachers_from": "separate"},
        # issue 49: multitask-then-specialise (the full-capacity reference), PALs jointly, the one-backbone specialisations, and
        # BAM! from the specialised experts (the teacher run is the `specialised` arm's exact command), all on the tuned pass
        "specialised": {"args": ["--aggregator", "sum", *SPECIALISE], "choice_of": "sum_tuned"},
        "pal": {"args": ["--aggregator", "sum", "--pal_tasks", "all", "--pal_heads", "12"], "candidates": PAL_CANDIDATES},
        "specialised_pal": {"args": ["--aggregator", "sum", *SPECIALISE_PAL], "choice_of": "sum_tuned"},
        "specialised_lora": {"args": ["--aggregator", "sum", *SPECIALISE_LORA], "choice_of": "sum_tuned"},
        "bam_specialised": {"args": ["--aggregator", "sum"], "choice_of": "sum_tuned", "teachers_from": "specialised"},
    },
    "protocol": PROTOCOL,
}


def main() -> None:
    compare_main(__doc__, GRID, "benchmarks/results/compare_trio", "compare_trio", "compare")


if __name__ == "__main__":
    main()
