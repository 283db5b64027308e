"""Step streams for :class:`~hf_multitask.MultitaskTrainer`: which task examples form each training step.

A step is a dict ``{task: batch}``. :class:`MultitaskStepSampler` decides the example indices
of every step; :func:`make_train_dataloader` wraps it into a ``DataLoader`` whose collate
function pads each task's sub-batch on its own. Everything is seeded and deterministic, each
DDP rank takes its own slice of every global batch, and the Trainer's resume logic can skip
steps (the sampler is a batch sampler, so accelerate's ``skip_first_batches`` works).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import datasets
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .encoding import MultitaskCollator

__all__ = ["MultitaskStepSampler", "TaskIndexedDataset", "make_train_dataloader"]

SCHEDULES = ("round_robin",)


class MultitaskStepSampler(Sampler):
    """Yields, for each step, a list of ``(task, index)`` pairs of this rank's examples.

    ``round_robin``: every step holds one batch of every task. An epoch lasts
    ``ceil(N_max / B_global)`` steps, so the largest task is seen once; every task's examples
    are drawn from a fresh seeded permutation each pass and smaller tasks cycle (reshuffled).
    ``B_global = batch_size * world_size``; rank r takes items ``[r*B, (r+1)*B)`` of each
    global batch, so ranks see disjoint examples and agree on the tasks of every step.
    """

    def __init__(
        self,
        task_sizes: Mapping[str, int],
        batch_sizes: int | Mapping[str, int],
        *,
        schedule: str = "round_robin",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"Unknown schedule {schedule!r}; choose from {SCHEDULES}")
        if not task_sizes:
            raise ValueError("MultitaskStepSampler needs at least one task")
        self.tasks = list(task_sizes)
        self.sizes = {t: int(n) for t, n in task_sizes.items()}
        empty = [t for t, n in self.sizes.items() if n <= 0]
        if empty:
            raise ValueError(f"Tasks with no training examples: {empty}")
        if isinstance(batch_sizes, int):
            batch_sizes = {t: batch_sizes for t in self.tasks}
        missing = [t for t in self.tasks if t not in batch_sizes]
        if missing:
            raise ValueError(f"No batch size for task(s) {missing}")
        self.batch_sizes = {t: int(batch_sizes[t]) for t in self.tasks}
        if any(b <= 0 for b in self.batch_sizes.values()):
            raise ValueError(f"Batch sizes must be positive, got {self.batch_sizes}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.schedule, self.seed, self.rank, self.world_size = schedule, int(seed), int(rank), int(world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return max(math.ceil(self.sizes[t] / (self.batch_sizes[t] * self.world_size)) for t in self.tasks)

    def _stream(self, task_pos: int, task: str) -> Iterator[int]:
        """Endless sequence of shuffled passes over one task, seeded by (seed, epoch, task, pass)."""
        n, p = self.sizes[task], 0
        while True:
            gen = torch.Generator().manual_seed(hash((self.seed, self.epoch, task_pos, p)) & 0x7FFFFFFFFFFFFFFF)
            yield from torch.randperm(n, generator=gen).tolist()
            p += 1

    def __iter__(self) -> Iterator[list[tuple[str, int]]]:
        streams = {t: self._stream(i, t) for i, t in enumerate(self.tasks)}
        for _ in range(len(self)):
            step: list[tuple[str, int]] = []
            for t in self.tasks:
                b = self.batch_sizes[t]
                global_batch = [next(streams[t]) for _ in range(b * self.world_size)]
                step += [(t, i) for i in global_batch[self.rank * b : (self.rank + 1) * b]]
            yield step

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "seed": self.seed}


class TaskIndexedDataset(Dataset):
    """Map-style view of several encoded task datasets, indexed by ``(task, index)``."""

    def __init__(self, datasets_by_task: Mapping[str, datasets.Dataset]) -> None:
        self.data = dict(datasets_by_task)

    def __len__(self) -> int:
        return sum(len(d) for d in self.data.values())

    def __getitem__(self, key: tuple[str, int]) -> tuple[str, dict[str, Any]]:
        task, index = key
        return task, self.data[task][int(index)]


class _StepCollator:
    def __init__(self, pad_token_id: int, tasks: list[str], pad_to_multiple_of: int | None) -> None:
        self.collators = {t: MultitaskCollator(pad_token_id, pad_to_multiple_of=pad_to_multiple_of) for t in tasks}

    def __call__(self, items: list[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
        grouped: dict[str, list[dict[str, Any]]] = {}
        for task, example in items:
            grouped.setdefault(task, []).append(example)
        return {t: self.collators[t](rows) for t, rows in grouped.items()}


class _StepLoader(DataLoader):
    """A DataLoader whose ``set_epoch`` reaches the step sampler (the Trainer calls it)."""

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)


def make_train_dataloader(
    datasets_by_task: Mapping[str, datasets.Dataset],
    sampler: MultitaskStepSampler,
    pad_token_id: int,
    *,
    pad_to_multiple_of: int | None = None,
    num_workers: int = 0,
) -> DataLoader:
    """DataLoader yielding ``{task: padded batch}`` steps in the sampler's order."""
    unknown = [t for t in sampler.tasks if t not in datasets_by_task]
    if unknown:
        raise ValueError(f"The sampler names task(s) {unknown} with no dataset")
    return _StepLoader(
        TaskIndexedDataset(datasets_by_task),
        batch_sampler=sampler,
        collate_fn=_StepCollator(pad_token_id, sampler.tasks, pad_to_multiple_of),
        num_workers=num_workers,
    )
