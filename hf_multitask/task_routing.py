"""Which task's encoder modules (PALs, per-task LoRA) an encoder call runs: part of the call, never model state.

A model with PALs or per-task LoRA runs a different encoder for each task. The task is carried
by a *route*, set for the length of one encoder call in a `contextvars.ContextVar` and every asyncio task, has its own), not stored on the model:

- two threads calling one model at once each run their own task's modules;
- under activation checkpointing a layer is recomputed (during the backward pass, after the
  forward has returned) under the route it first ran with: [`with_route()`][hf_multitask.task_routing.with_route]
  wraps the checkpoint function so the recomputation restores it;
- an encoder call with no task (``model.encode(...)`` without ``task=``) runs the shared encoder
  alone, whatever ran before it.

The PAL hooks ([`hf_multitask.pal`][hf_multitask.pal]) and the per-task LoRA layers
([`TaskAdapters`][hf_multitask.task_routing.TaskAdapters]) read the route of the call they run in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Route", "TaskAdapters", "current_route", "routed", "task_of", "with_route"]


@dataclass(frozen=True)
class Route:
    """The task of one encoder call: ``owner`` (the model whose encoder runs), ``task`` (None: the
    shared encoder alone) and the call's ``attention_mask`` (the PAL attention reads it)."""

    owner: Any
    task: str | None
    attention_mask: torch.Tensor | None = None


_ROUTE: ContextVar[Route | None] = ContextVar("hf_multitask_route", default=None)


def current_route() -> Route | None:
    """The route of the encoder call running in this thread (None outside one)."""
    return _ROUTE.get()


def task_of(owner: Any) -> str | None:
    """The task ``owner``'s running forward was called for (None outside it, or in another model's)."""
    route = _ROUTE.get()
    return route.task if route is not None and route.owner is owner else None


@contextmanager
def routed(owner: Any, task: str | None, attention_mask: torch.Tensor | None = None) -> Iterator[Route]:
    """Run the block under the route ``(owner, task, attention_mask)``; the route before it comes back after."""
    route = Route(owner, task, attention_mask)
    token = _ROUTE.set(route)
    try:
        yield route
    finally:
        _ROUTE.reset(token)


def with_route(checkpoint: Callable[..., Any]) -> Callable[..., Any]:
    """A checkpoint function (``torch.utils.checkpoint.checkpoint`` with its settings) whose
    recomputation runs under the route the layer first ran with.

    Without it the recomputation, which runs during the backward pass, would see whatever route
    is current then: none at all, so PALs silently drop out, or another task's, so per-task LoRA
    trains the wrong adapter. Works with reentrant and non-reentrant checkpointing alike.
    """
    if getattr(checkpoint, "_hf_multitask_routed", False):
        return checkpoint

    def checkpoint_with_route(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        route = _ROUTE.get()

        def replay(*a: Any, **k: Any) -> Any:
            token = _ROUTE.set(route)
            try:
                return function(*a, **k)
            finally:
                _ROUTE.reset(token)

        return checkpoint(replay, *args, **kwargs)

    checkpoint_with_route._hf_multitask_routed = True  # type: ignore[attr-defined]
    return checkpoint_with_route


class TaskAdapters(Sequence):
    """The active adapters of a per-task LoRA layer: the running call's task, if it has an adapter here.

    Stands in for the list peft keeps in a LoRA layer's ``_active_adapter`` (peft iterates it in
    every forward), so the adapter is chosen when the layer runs, from the route of that call,
    instead of being switched on the shared layer before it runs (which two threads, or a
    checkpointed recomputation, would see switched to another task).
    """

    def __init__(self, adapters: Sequence[str]) -> None:
        self.adapters = tuple(adapters)

    def _active(self) -> list[str]:
        route = _ROUTE.get()
        return [route.task] if route is not None and route.task in self.adapters else []

    def __getitem__(self, index: Any) -> Any:
        return self._active()[index]

    def __len__(self) -> int:
        return len(self._active())

    def __iter__(self) -> Iterator[str]:
        return iter(self._active())

    def __contains__(self, name: object) -> bool:
        return name in self._active()

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, (list, tuple, TaskAdapters)) else NotImplemented

    __hash__ = None  # type: ignore[assignment]  # compares by the current call's task: not a stable key

    def __repr__(self) -> str:
        return f"TaskAdapters({list(self.adapters)}, active={self._active()})"
