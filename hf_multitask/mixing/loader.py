"""Step sampler and DataLoader: turn a schedule's epoch plan into padded ``{task: batch}`` steps."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import datasets
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..encoding import MultitaskCollator
from .schedules import Schedule, build_schedule

__all__ = ["MultitaskStepSampler", "TaskIndexedDataset", "WINDOW_KEY", "make_train_dataloader"]

# Step key of the last accumulation window of an epoch shorter than the longest (uneven
# schedules such as ``staggered``): the number of real micro-batches in that window. The
# window is padded with empty micro-batches to a full ``accumulation``, so it never runs into
# the next epoch, and the trainer divides the losses by the real count.
WINDOW_KEY = "_window"


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from several parts, the same in every process (unlike ``hash``)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFFFFFFFFFFFFFF


class MultitaskStepSampler(Sampler):
    """Yields, for each step, the ``(task, index, loss_weight)`` items of this rank.

    The schedule decides how many examples of which tasks form each step (see
    `hf_multitask.mixing.schedules`). Examples of each task come from an endless stream
    of seeded permutations (a fresh one each pass; the streams restart every epoch), so
    small tasks cycle and every task's examples are seen in a new order each pass.

    DDP: with ``world_size`` ranks a slot of ``k`` examples takes ``k * world_size``
    examples from the stream and rank r keeps items ``[r*k, (r+1)*k)``: ranks see disjoint
    examples, and since the plan depends only on ``(seed, epoch)`` all ranks agree on the
    tasks of every step.

    With ``lengths`` (token counts per example of every task) batches are length-grouped
    (see `_length_grouped()`), which cuts padding on real text; pass the gradient
    ``accumulation`` steps so that groups match optimizer steps.
    """

    def __init__(
        self,
        task_sizes: Mapping[str, int],
        batch_sizes: int | Mapping[str, int],
        *,
        schedule: str | Schedule = "round_robin",
        schedule_kwargs: Mapping[str, Any] | None = None,
        num_epochs: int = 1,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        lengths: Mapping[str, Sequence[int]] | None = None,
        megabatch: int = 50,
        accumulation: int = 1,
    ) -> None:
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
        self.schedule = build_schedule(schedule, **dict(schedule_kwargs or {}))
        self.num_epochs = max(1, int(num_epochs))
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch = 0
        self._len: int | None = None
        self.lengths = None
        if lengths is not None:
            bad = [t for t in self.tasks if t not in lengths or len(lengths[t]) != self.sizes[t]]
            if bad:
                raise ValueError(f"lengths must give one length per example of every task; wrong for {bad}")
            self.lengths = {t: list(lengths[t]) for t in self.tasks}
        if megabatch <= 0:
            raise ValueError(f"megabatch must be positive, got {megabatch}")
        self.megabatch = int(megabatch)
        self.accumulation = max(1, int(accumulation))

    def set_epoch(self, epoch: int) -> None:
        """Plan ``epoch``'s steps next (the Trainer calls it at every epoch start)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Micro-steps of the longest epoch (the Trainer sizes its epoch loop with it)."""
        if self._len is None:
            self._len = self.schedule.max_steps_per_epoch(self.num_epochs, self.sizes, self.batch_sizes, self.world_size)
        return self._len

    def epoch_micro_steps(self, epoch: int) -> int:
        """Micro-steps of one epoch, before any padding (epochs past ``num_epochs`` follow the schedule)."""
        gen = torch.Generator().manual_seed(0)
        return len(self.schedule.plan(epoch, max(self.num_epochs, epoch + 1), self.sizes, self.batch_sizes, gen, self.world_size))

    @property
    def uneven(self) -> bool:
        """Whether the epochs differ in length (``staggered`` stages of different sizes)."""
        lengths = {self.epoch_micro_steps(e) for e in range(self.schedule.epochs_to_size(self.num_epochs))}
        return len(lengths) > 1

    def updates_per_epoch(self, epochs: int | None = None) -> list[int]:
        """Optimizer steps of each epoch: ``ceil(micro-steps / accumulation)``."""
        n = self.num_epochs if epochs is None else epochs
        return [math.ceil(self.epoch_micro_steps(e) / self.accumulation) for e in range(n)]

    def epochs_for_updates(self, updates: int) -> int:
        """The fewest epochs whose optimizer steps add up to at least ``updates``."""
        total, epoch = 0, 0
        while total < updates:
            total += math.ceil(self.epoch_micro_steps(epoch) / self.accumulation)
            epoch += 1
        return max(1, epoch)

    def plan(self, epoch: int | None = None):
        """The schedule's plan of an epoch (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch, "plan"))
        return self.schedule.plan(epoch, self.num_epochs, self.sizes, self.batch_sizes, gen, self.world_size)

    def _stream(self, task: str) -> Iterator[int]:
        n, p = self.sizes[task], 0
        # one optimizer step's examples (all ranks, all micro-batches) form one length group,
        # so gradient accumulation sees the same examples per step as one big batch
        chunk = self.batch_sizes[task] * self.world_size * self.accumulation
        while True:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, task, p))
            order = torch.randperm(n, generator=gen).tolist()
            if self.lengths is None:
                yield from order
            else:
                yield from self._length_grouped(order, self.lengths[task], chunk, gen)
            p += 1

    def _length_grouped(self, order: list[int], lengths: list[int], chunk: int, gen: torch.Generator) -> Iterator[int]:
        """Length grouping: cut the shuffled pass into megabatches of ``megabatch`` global
        batches, sort each by length, split it into batches and shuffle their order. Batches
        then hold examples of similar length (less padding) while staying random."""
        size = self.megabatch * chunk
        for start in range(0, len(order), size):
            mega = sorted(order[start : start + size], key=lambda i: -lengths[i])
            batches = [mega[j : j + chunk] for j in range(0, len(mega), chunk)]
            for b in torch.randperm(len(batches), generator=gen).tolist():
                yield from batches[b]

    def __iter__(self) -> Iterator[list[tuple[str, int, float]]]:
        streams = {t: self._stream(t) for t in self.tasks}
        plan = self.plan()
        real = len(plan) % self.accumulation
        # an epoch shorter than the longest ends its last accumulation window with empty micro-steps
        padded = self.accumulation > 1 and real and len(plan) < len(self)
        last_window = len(plan) - real
        for n, step in enumerate(plan):
            items: list[tuple[str, int, float]] = []
            for slot in step:
                k = slot.examples
                global_batch = [next(streams[slot.task]) for _ in range(k * self.world_size)]
                items += [(slot.task, i, slot.loss_weight) for i in global_batch[self.rank * k : (self.rank + 1) * k]]
            if padded and n >= last_window:
                items.append((WINDOW_KEY, real, 0.0))
            yield items
        if padded:
            for _ in range(self.accumulation - real):
                yield [(WINDOW_KEY, real, 0.0)]


class TaskIndexedDataset(Dataset):
    """Map-style view of several encoded task datasets, indexed by ``(task, index, weight)``."""

    def __init__(self, datasets_by_task: Mapping[str, datasets.Dataset]) -> None:
        self.data = dict(datasets_by_task)

    def __len__(self) -> int:
        return sum(len(d) for d in self.data.values())

    def __getitem__(self, key: tuple[str, int, float]) -> tuple[str, Any, float]:
        task, index, weight = key
        if task == WINDOW_KEY:
            return task, int(index), 0.0
        return task, self.data[task][int(index)], float(weight)


class _StepCollator:
    def __init__(self, pad_token_id: int, tasks: list[str], pad_to_multiple_of: int | None) -> None:
        self.collators = {t: MultitaskCollator(pad_token_id, pad_to_multiple_of=pad_to_multiple_of) for t in tasks}

    def __call__(self, items: list[tuple[str, dict[str, Any], float]]) -> dict[str, dict[str, Any]]:
        grouped: dict[str, list[dict[str, Any]]] = {}
        weights: dict[str, float] = {}
        out: dict[str, Any] = {}
        for task, example, weight in items:
            if task == WINDOW_KEY:
                out[WINDOW_KEY] = example
                continue
            grouped.setdefault(task, []).append(example)
            weights[task] = weight
        for t, rows in grouped.items():
            batch = self.collators[t](rows)
            if weights[t] != 1.0:
                batch["loss_weight"] = torch.tensor(weights[t], dtype=torch.float32)
            out[t] = batch
        return out


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
    pin_memory: bool = False,
    persistent_workers: bool = False,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """DataLoader yielding ``{task: padded batch}`` steps in the sampler's order.

    A batch whose schedule sets a loss weight other than 1 carries it as ``loss_weight``.
    ``pin_memory``, ``persistent_workers`` and ``prefetch_factor`` go to the DataLoader (the
    last two only with workers, as PyTorch requires).
    """
    unknown = [t for t in sampler.tasks if t not in datasets_by_task]
    if unknown:
        raise ValueError(f"The sampler names task(s) {unknown} with no dataset")
    return _StepLoader(
        TaskIndexedDataset(datasets_by_task),
        batch_sampler=sampler,
        collate_fn=_StepCollator(pad_token_id, sampler.tasks, pad_to_multiple_of),
        num_workers=num_workers,
        pin_memory=pin_memory,
        **({"persistent_workers": persistent_workers, "prefetch_factor": prefetch_factor} if num_workers > 0 else {}),
    )
