"""Gradient engines: collect each task's gradient, reduce across ranks, apply the aggregator's weights.

The aggregators ([`hf_multitask.surgery`][hf_multitask.surgery]) are pure functions of the small T x T Gram
matrix; an engine owns the big per-task gradient rows and decides where they live:

* [`ReplicatedEngine`][hf_multitask.surgery.engine.ReplicatedEngine] -- one process, or DDP. Every rank holds a full fp32 ``(T, P)``
  buffer (T tasks, P shared parameters). Each task's gradient comes from
  ``torch.autograd.grad`` straight into its row. Under DDP the rows are reduced either with
  one all-reduce of the whole buffer (``mode="all_reduce"``: ``2 T P`` elements on the wire
  per rank) or, with ``mode="reduce_scatter"``, each row is reduce-scattered, every rank
  forms the update on its ``1/N`` slice from the all-reduced Gram matrix, and the slices are
  all-gathered (``(T + 1) P``).
* [`ShardedEngine`][hf_multitask.surgery.engine.ShardedEngine] -- FSDP2 (``fully_shard``). Each task's ``backward()`` lands in
  FSDP's reduce-scattered, sharded gradients; the engine moves the local shard into row t of
  a ``(T, P/N)`` buffer. Each rank computes its partial Gram matrix ``G_r = S_r S_r^T``, one
  all-reduce of ``T x T`` numbers gives ``G``, every rank computes the same weights ``w``
  (same seeded generator, same float64 logic), and writes ``sum_i w_i S_r,i`` into its
  shard's ``.grad``. Per-rank surgery memory is ``T P / N``; the only collective beyond
  FSDP's own is the Gram all-reduce.

Both weight each task's rows across ranks by its sample counts (the pooled-batch gradient)
and give task-owned parameters (heads, per-task adapters) their task's gradient times the
aggregator's [`loss_weights()`][hf_multitask.surgery.base.Aggregator.loss_weights].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .base import Aggregator, accumulation_eps

__all__ = [
    "EngineStep",
    "GradientEngine",
    "ReplicatedEngine",
    "ShardedEngine",
    "ddp_collectives",
    "engine_bytes_formula",
    "trainable_signature",
]

_GRAM_CHUNK = 1 << 20  # columns per float64 Gram chunk (bounds the temporary copy)


def trainable_signature(model: nn.Module) -> tuple[int, ...]:
    """Identity of the set of trainable parameters (the engine is rebuilt when it changes)."""
    return tuple(id(p) for p in model.parameters() if p.requires_grad)


def _views(flat: torch.Tensor, shapes: list[torch.Size]) -> list[torch.Tensor]:
    views, offset = [], 0
    for shape in shapes:
        n = math.prod(shape)
        views.append(flat[offset : offset + n].view(shape))
        offset += n
    return views


@dataclass
class EngineStep:
    """What one optimizer step's surgery did."""

    tasks: list[str]  # the tasks that had examples in the step
    counts: list[float]  # their samples (all ranks)
    loss_weights: list[float]  # each task's weight in the objective (applied to its head)
    finite: bool  # False: the gradients held inf/NaN
    info: dict[str, Any]  # the aggregator's telemetry of the step (its ``last_info``: Gram matrix, weights, ...)


class GradientEngine:
    """Base class: per-task gradient rows of the shared parameters plus each task's head section.

    Call [`add()`][hf_multitask.surgery.engine.GradientEngine.add] for every task batch of every micro-batch, then [`finish()`][hf_multitask.surgery.engine.GradientEngine.finish] once per
    optimizer step. ``tasks`` are the tasks that train; ``signature`` identifies the trainable
    parameters the engine was built for.
    """

    def __init__(self, model: nn.Module, tasks: list[str]) -> None:
        self.tasks = list(tasks)
        self.index = {t: i for i, t in enumerate(self.tasks)}
        self.shared = [p for p in model.shared_parameters() if p.requires_grad]
        self.heads = {t: [p for p in model.task_parameters(t) if p.requires_grad] for t in self.tasks}
        self.signature = trainable_signature(model)
        self.host_counts = [0.0] * len(self.tasks)  # samples per task in this step, on the host
        self.fresh = [True] * len(self.tasks)  # a fresh row is copied into, later micro-batches add

    def add(self, task: str, scaled_loss: torch.Tensor, samples: int) -> None:
        raise NotImplementedError

    def finish(self, aggregator: Aggregator, scaler_active: bool) -> EngineStep:
        raise NotImplementedError

    def nbytes(self) -> int:
        """Bytes of the surgery buffers on this rank."""
        raise NotImplementedError

    def _reset(self) -> None:
        self.host_counts = [0.0] * len(self.tasks)
        self.fresh = [True] * len(self.tasks)

    def _write_grads(self, aggregator: Aggregator, names: list[str], scaler_active: bool) -> EngineStep:
        """Put the update into the shared parameters' ``.grad`` and each active task's head
        gradient, times its loss weight, into the head's (``head_flat`` / ``update_views`` /
        ``head_views`` are the subclass's buffers); clear them all for a non-finite step
        without a GradScaler."""
        finite = bool(torch.isfinite(aggregator.last_info["gram"]).all()) and self._heads_finite(names)
        loss_weights = aggregator.loss_weights(aggregator.last_info["weights"]).tolist()
        if not finite and not scaler_active:
            for p in self.shared + [p for ps in self.heads.values() for p in ps]:
                p.grad = None
        else:
            for p, view in zip(self.shared, self.update_views):
                p.grad = _like(p, view)
            for t, w in zip(names, loss_weights):
                if w != 1.0:
                    self.head_flat[t].mul_(w)  # the head follows its task's weight in the objective
                for p, view in zip(self.heads[t], self.head_views[t]):
                    p.grad = _like(p, view.clone())
        return EngineStep(names, [], loss_weights, finite, dict(aggregator.last_info))

    def _heads_finite(self, names: list[str]) -> bool:
        """Whether the active tasks' head gradients are finite (the Gram matrix holds only the
        shared rows: a head's gradient can be NaN while it is finite). Here the head sections
        are the same on every rank (reduced already), so every rank decides alike."""
        flags = [torch.isfinite(self.head_flat[t]).all() for t in names if self.head_flat[t].numel()]
        return bool(torch.stack(flags).all()) if flags else True

    def _write_rows(self, targets: list[torch.Tensor], grads: list[torch.Tensor | None], row: int) -> None:
        pairs = [(v, g.float() if g.dtype != torch.float32 else g) for v, g in zip(targets, grads) if g is not None]
        if self.fresh[row]:
            unused = [v for v, g in zip(targets, grads) if g is None]
            if unused:
                torch._foreach_zero_(unused)
            if pairs:
                torch._foreach_copy_([v for v, _ in pairs], [g for _, g in pairs])
            self.fresh[row] = False
        elif pairs:
            torch._foreach_add_([v for v, _ in pairs], [g for _, g in pairs])


class ReplicatedEngine(GradientEngine):
    """The flat fp32 buffer ``[T x P | P_heads | T counts]`` on every rank (one process or DDP).

    Args:
        model: The unwrapped multitask model.
        tasks: The tasks that train.
        device: Where the buffer lives.
        reduce: ``None`` (one process), or the process group's ``(all_reduce_sum, reduce_scatter_sum,
            all_gather, world_size, rank)`` callables for DDP (see [`ddp_collectives()`][hf_multitask.surgery.engine.ddp_collectives]).
        mode: ``"all_reduce"`` or ``"reduce_scatter"`` (DDP only).
    """

    def __init__(self, model: nn.Module, tasks: list[str], device: torch.device, reduce: Any = None, mode: str = "all_reduce") -> None:
        super().__init__(model, tasks)
        if mode not in ("all_reduce", "reduce_scatter"):
            raise ValueError(f"mode must be 'all_reduce' or 'reduce_scatter', got {mode!r}")
        self.reduce, self.mode = reduce, mode
        t_count = len(self.tasks)
        self.p_shared = sum(p.numel() for p in self.shared)
        p_heads = sum(p.numel() for ps in self.heads.values() for p in ps)
        self.flat = torch.zeros(t_count * self.p_shared + p_heads + t_count, dtype=torch.float32, device=device)
        self.matrix = self.flat[: t_count * self.p_shared].view(t_count, self.p_shared)
        head_flat = self.flat[t_count * self.p_shared : t_count * self.p_shared + p_heads]
        self.counts = self.flat[t_count * self.p_shared + p_heads :]  # device copy, for the DDP reduce
        self.update = torch.zeros(self.p_shared, dtype=torch.float32, device=device)
        self.row_views = {t: _views(self.matrix[self.index[t]], [p.shape for p in self.shared]) for t in self.tasks}
        self.update_views = _views(self.update, [p.shape for p in self.shared])
        self.head_flat: dict[str, torch.Tensor] = {}
        self.head_views: dict[str, list[torch.Tensor]] = {}
        offset = 0
        for t in self.tasks:
            n = sum(p.numel() for p in self.heads[t])
            self.head_flat[t] = head_flat[offset : offset + n]
            self.head_views[t] = _views(self.head_flat[t], [p.shape for p in self.heads[t]])
            offset += n
        self._slice: torch.Tensor | None = None  # reduce_scatter mode: this rank's (T, P/N) slice

    def nbytes(self) -> int:
        extra = 0 if self._slice is None else self._slice.numel() * 4
        padded = 0 if getattr(self, "_padded", None) is None else self._padded.numel() * 4
        return self.flat.numel() * 4 + self.update.numel() * 4 + extra + padded

    def add(self, task: str, scaled_loss: torch.Tensor, samples: int) -> None:
        if not self.shared and not self.heads[task]:
            raise ValueError(
                f"task {task!r} has no trainable parameters (the shared ones are frozen and its head has none, "
                "e.g. the cosine pair head): leave it out of this training phase"
            )
        grads = torch.autograd.grad(scaled_loss, self.shared + self.heads[task], allow_unused=True)
        row = self.index[task]
        self._write_rows(self.row_views[task] + self.head_views[task], list(grads), row)
        self.host_counts[row] += float(samples)

    # -- DDP -------------------------------------------------------------------
    def _weight_by_counts(self) -> None:
        """Rows times their local sample count (absent tasks zeroed: their rows are stale)."""
        for t, i in self.index.items():
            n = self.host_counts[i]
            if n == 0:
                self.matrix[i].zero_()
                self.head_flat[t].zero_()
            elif n != 1.0:
                self.matrix[i].mul_(n)
                self.head_flat[t].mul_(n)
        self.counts.copy_(torch.tensor(self.host_counts, dtype=torch.float32))

    def _reduce_all(self) -> list[float]:
        all_reduce = self.reduce[0]
        self._weight_by_counts()
        all_reduce(self.flat)
        totals = self.counts.tolist()  # the step's one host sync
        for t, i in self.index.items():
            if totals[i] > 0:
                self.matrix[i].div_(totals[i])
                self.head_flat[t].div_(totals[i])
        return totals

    def _reduce_scattered(self) -> tuple[list[float], torch.Tensor]:
        """Reduce-scatter every row: this rank keeps columns ``[r*P/N, (r+1)*P/N)`` of each."""
        all_reduce, reduce_scatter, _, world, _ = self.reduce
        self._weight_by_counts()
        width = math.ceil(self.p_shared / world)
        if self._slice is None:
            self._slice = torch.zeros(len(self.tasks), width, dtype=torch.float32, device=self.flat.device)
            # P not divisible by N: rows and the gathered update go through a padded copy
            self._padded = (
                None if width * world == self.p_shared else torch.zeros(world * width, dtype=torch.float32, device=self.flat.device)
            )
        for i in range(len(self.tasks)):
            if self._padded is None:
                reduce_scatter(self._slice[i], self.matrix[i])
            else:
                self._padded[: self.p_shared].copy_(self.matrix[i])
                reduce_scatter(self._slice[i], self._padded)
        small = self.flat[len(self.tasks) * self.p_shared :]  # heads and counts
        all_reduce(small)
        totals = self.counts.tolist()
        for t, i in self.index.items():
            if totals[i] > 0:
                self._slice[i].div_(totals[i])
                self.head_flat[t].div_(totals[i])
        return totals, self._slice

    # -- the step ----------------------------------------------------------------
    def finish(self, aggregator: Aggregator, scaler_active: bool) -> EngineStep:
        sliced = None
        if self.reduce is None:
            counts = list(self.host_counts)
        elif self.mode == "all_reduce":
            counts = self._reduce_all()
        else:
            _refuse_full_vectors(aggregator, "DDP with ddp_surgery='reduce_scatter'")
            counts, sliced = self._reduce_scattered()
        active = [i for i in range(len(self.tasks)) if counts[i] > 0]
        if not active:
            raise RuntimeError("An optimizer step with no task batches")
        names = [self.tasks[i] for i in active]
        n = torch.tensor([counts[i] for i in active], dtype=torch.float64)
        if sliced is None:
            if active[-1] - active[0] + 1 == len(active):
                rows = self.matrix[active[0] : active[-1] + 1]  # a view (one-task steps included): no copy
            else:
                rows = self.matrix[active]
            aggregator(rows, counts=n, tasks=names, out=self.update)
        else:
            rows = sliced[active]
            all_reduce = self.reduce[0]
            gram = (rows @ rows.T).double()
            all_reduce(gram)
            w = aggregator.weights_from_gram(gram, n, names, eps=accumulation_eps(rows))
            local = torch.mv(rows.t(), w.to(rows))
            if self._padded is None:
                self.reduce[2](self.update, local)  # all-gather the slices into the full update
            else:
                self.reduce[2](self._padded, local)
                self.update.copy_(self._padded[: self.p_shared])
        step = self._write_grads(aggregator, names, scaler_active)
        step.counts = [counts[i] for i in active]
        self._reset()
        return step


def ddp_collectives(group: Any = None) -> tuple:
    """``(all_reduce_sum, reduce_scatter_sum, all_gather, world_size, rank)`` over a process group."""
    import torch.distributed as dist

    def all_reduce(t: torch.Tensor) -> None:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)

    def reduce_scatter(out: torch.Tensor, inp: torch.Tensor) -> None:
        dist.reduce_scatter_tensor(out, inp, op=dist.ReduceOp.SUM, group=group)

    def all_gather(out: torch.Tensor, inp: torch.Tensor) -> None:
        dist.all_gather_into_tensor(out, inp, group=group)

    return all_reduce, reduce_scatter, all_gather, dist.get_world_size(group), dist.get_rank(group)


class ShardedEngine(GradientEngine):
    """Surgery on FSDP2 shards: a ``(T, P/N)`` buffer per rank and one ``T x T`` all-reduce per step.

    Every parameter is an FSDP2 ``DTensor``; each task's ``backward()`` reduce-scatters its
    gradient into ``param.grad`` (averaged over ranks by FSDP), whose local shard the engine
    moves into the task's row before the next task runs. FSDP2 needs every rank to run the
    same tasks' backwards in the same order (collectives); [`MultitaskStepSampler`][hf_multitask.mixing.loader.MultitaskStepSampler]
    guarantees that (every rank plans the same steps). Since the ranks hold equal numbers of
    every task's examples, FSDP's plain average is the pooled-batch gradient.

    Args:
        model: The FSDP2-sharded multitask model.
        tasks: The tasks that train.
        all_reduce: ``fn(tensor)`` summing a tensor over the ranks (the Gram all-reduce).
    """

    def __init__(self, model: nn.Module, tasks: list[str], all_reduce: Any) -> None:
        super().__init__(model, tasks)
        self.all_reduce = all_reduce
        locals_ = [_local(p) for p in self.shared]
        device = locals_[0].device if locals_ else torch.device("cpu")
        self.p_local = sum(x.numel() for x in locals_)
        self.matrix = torch.zeros(len(self.tasks), self.p_local, dtype=torch.float32, device=device)
        self.update = torch.zeros(self.p_local, dtype=torch.float32, device=device)
        shapes = [x.shape for x in locals_]
        self.row_views = {t: _views(self.matrix[self.index[t]], shapes) for t in self.tasks}
        self.update_views = _views(self.update, shapes)
        self.head_flat = {
            t: torch.zeros(sum(_local(p).numel() for p in self.heads[t]), dtype=torch.float32, device=device) for t in self.tasks
        }
        self.head_views = {t: _views(self.head_flat[t], [_local(p).shape for p in self.heads[t]]) for t in self.tasks}

    def nbytes(self) -> int:
        return (self.matrix.numel() + self.update.numel() + sum(b.numel() for b in self.head_flat.values())) * 4

    def _heads_finite(self, names: list[str]) -> bool:
        return True  # each rank holds its own shard of the heads: finish() folds them into the Gram matrix instead

    def _fold_heads(self, gram: torch.Tensor, names: list[str]) -> None:
        """Make this rank's partial Gram matrix non-finite if one of its head shards is: after
        the all-reduce every rank sees it and skips the step alike, with no extra collective
        (a finite step adds an exact 0)."""
        flags = [torch.isfinite(self.head_flat[t]).all() for t in names if self.head_flat[t].numel()]
        if flags:
            gram[0, 0] += torch.where(torch.stack(flags).all(), 0.0, float("nan")).to(gram)

    def add(self, task: str, scaled_loss: torch.Tensor, samples: int) -> None:
        params = self.shared + self.heads[task]
        for p in params:
            p.grad = None
        scaled_loss.backward()
        grads = [None if p.grad is None else _local(p.grad) for p in params]
        row = self.index[task]
        self._write_rows(self.row_views[task] + self.head_views[task], grads, row)
        for p in params:
            p.grad = None
        self.host_counts[row] += float(samples)

    def partial_gram(self, rows: torch.Tensor) -> torch.Tensor:
        """``S_r S_r^T`` of this rank's shard in float64 (no rescaling needed for fp32 entries),
        a chunk of columns at a time."""
        gram = torch.zeros(rows.shape[0], rows.shape[0], dtype=torch.float64, device=rows.device)
        for start in range(0, rows.shape[1], _GRAM_CHUNK):
            chunk = rows[:, start : start + _GRAM_CHUNK].double()
            gram += chunk @ chunk.T
        return gram

    def finish(self, aggregator: Aggregator, scaler_active: bool) -> EngineStep:
        _refuse_full_vectors(aggregator, "the FSDP2 sharded engine")
        counts = list(self.host_counts)
        active = [i for i in range(len(self.tasks)) if counts[i] > 0]
        if not active:
            raise RuntimeError("An optimizer step with no task batches")
        names = [self.tasks[i] for i in active]
        rows = self.matrix[active]
        gram = self.partial_gram(rows)
        self._fold_heads(gram, names)
        self.all_reduce(gram)  # the one extra collective: T x T numbers
        w = aggregator.weights_from_gram(gram, torch.tensor([counts[i] for i in active], dtype=torch.float64), names,
                                         eps=accumulation_eps(rows))  # fmt: skip
        torch.mv(rows.t(), w.to(rows), out=self.update)
        step = self._write_grads(aggregator, names, scaler_active)
        step.counts = [counts[i] for i in active]
        self._reset()
        return step


def fully_shard_multitask(model: nn.Module, device_type: str = "cpu") -> nn.Module:
    """Shard a [`MultitaskModel`][hf_multitask.modeling.MultitaskModel] with FSDP2 over all ranks of the default
    process group: each encoder layer is its own unit (so its parameters are gathered only
    while it runs), then the whole model (embeddings, heads, adapters). Returns the model."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    layers = getattr(getattr(getattr(model, "encoder", None), "encoder", None), "layer", None) or []
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _refuse_full_vectors(aggregator: Aggregator, where: str) -> None:
    if getattr(aggregator, "needs_full_vectors", False):
        raise ValueError(
            f"Aggregator {aggregator.name!r} needs the full gradient vectors, which {where} never assembles; "
            "use the replicated engine (DDP with ddp_surgery='all_reduce')"
        )


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (the tensor itself otherwise)."""
    return t.to_local() if hasattr(t, "to_local") else t


def _like(param: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """A gradient for ``param`` holding ``local`` as its local shard (a DTensor for a DTensor)."""
    local = local if local.dtype == param.dtype else local.to(param.dtype)
    if hasattr(param, "to_local"):
        from torch.distributed.tensor import DTensor

        return DTensor.from_local(local, param.device_mesh, param.placements, shape=param.shape, stride=param.stride(), run_check=False)
    return local


def engine_bytes_formula(tasks: int, shared: int, ranks: int, sharded: bool) -> int:
    """Per-rank bytes of the fp32 surgery buffers: ``(T + 1) P`` replicated, ``(T + 1) P / N`` sharded."""
    per = math.ceil(shared / ranks) if sharded else shared
    return (tasks + 1) * per * 4
