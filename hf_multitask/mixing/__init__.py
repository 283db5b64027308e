"""Task mixing: schedules that decide which task trains when, and the step loader.

See `hf_multitask.mixing.schedules` for the schedules and their formulas.
"""

from .loader import WINDOW_KEY, MultitaskStepSampler, TaskIndexedDataset, derive_seed, make_train_dataloader
from .schedules import (
    SCHEDULE_NAMES,
    SCHEDULES,
    GradientCompromise,
    RoundRobin,
    Sampled,
    Schedule,
    Slot,
    Staggered,
    annealed_alpha,
    build_schedule,
    compromise_beta,
    parse_ratios,
    register_schedule,
    task_probabilities,
)

__all__ = [
    "SCHEDULE_NAMES",
    "SCHEDULES",
    "register_schedule",
    "GradientCompromise",
    "MultitaskStepSampler",
    "RoundRobin",
    "Sampled",
    "Schedule",
    "Slot",
    "Staggered",
    "TaskIndexedDataset",
    "WINDOW_KEY",
    "annealed_alpha",
    "build_schedule",
    "compromise_beta",
    "derive_seed",
    "make_train_dataloader",
    "parse_ratios",
    "task_probabilities",
]
