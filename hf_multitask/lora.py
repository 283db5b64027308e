"""LoRA adapters through ``peft``: one shared LoRA, or one LoRA per task chosen by the task of each call.

``model.add_lora(...)`` injects LoRA layers into the encoder with ``peft.inject_adapter_in_model``
and records the settings in ``config.lora``; ``MultitaskModel.__init__`` re-injects them from
the config, so a LoRA model saves and loads with plain ``save_pretrained`` /
``AutoModel.from_pretrained`` (no separate adapter files). With ``per_task=True`` every task
(or every task of ``tasks``) has its own adapter, named after the task; a LoRA layer runs the
adapter of the task of the call it runs in ([`TaskAdapters`][hf_multitask.task_routing.TaskAdapters]),
so threads and checkpointed recomputations never see another task's. Those adapters count as
task parameters (never projected by surgery).

Injecting adapters never changes which of the model's other parameters train (peft's injection
freezes them; they are put back): the model built with ``add_lora`` and the same model loaded
from its folder train the same parameters, and
[`set_trainable()`][hf_multitask.modeling.MultitaskModel.set_trainable] chooses what trains.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from .task_routing import TaskAdapters

DEFAULT_TARGETS = ("query", "value")
SHARED_ADAPTER = "shared"


def lora_settings(
    *,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules=DEFAULT_TARGETS,
    per_task: bool = False,
    tasks: list[str] | None = None,
) -> dict[str, Any]:
    """Validated LoRA settings as stored in ``MultitaskConfig.lora``. ``tasks`` (per-task LoRA only):
    the tasks that have an adapter (None: every task); the others run the encoder alone."""
    if int(r) <= 0:
        raise ValueError(f"LoRA rank must be positive, got {r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    if not targets:
        raise ValueError("LoRA needs at least one target module name")
    if tasks is not None and not per_task:
        raise ValueError("LoRA tasks= names the tasks with an adapter of their own: it needs per_task=True")
    settings = {"r": int(r), "alpha": int(alpha), "dropout": float(dropout), "target_modules": targets, "per_task": bool(per_task)}
    if tasks is not None:
        if not tasks:
            raise ValueError("LoRA tasks= is empty: name at least one task, or leave it out for every task")
        settings["tasks"] = list(tasks)
    return settings


def lora_tasks(settings: dict[str, Any] | None, task_names: list[str]) -> list[str]:
    """The tasks with an adapter of their own (per-task LoRA), in the model's task order."""
    if not settings or not settings.get("per_task"):
        return []
    chosen = settings.get("tasks")
    return [t for t in task_names if chosen is None or t in chosen]


def inject_lora(encoder: nn.Module, settings: dict[str, Any], adapters: list[str]) -> list[nn.Module]:
    """Inject one LoRA adapter per name into ``encoder``; returns the LoRA layers. With
    ``settings["per_task"]`` the adapters are tasks' and each layer runs the one of the task of
    the call it runs in; otherwise the one adapter always runs. Which of the encoder's own
    parameters train is left as it was."""
    try:  # only LoRA checkpoints need peft (transformers' remote-code check skips imports in a try)
        from peft import LoraConfig, inject_adapter_in_model
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError as err:
        raise ImportError("this model has LoRA adapters, which need the peft package: pip install peft") from err

    config = LoraConfig(
        r=settings["r"], lora_alpha=settings["alpha"], lora_dropout=settings["dropout"], target_modules=settings["target_modules"]
    )
    trainable = {name: p.requires_grad for name, p in encoder.named_parameters()}
    for name in adapters:
        try:
            with warnings.catch_warnings():
                # adding a second adapter makes peft warn about several adapters: intended here
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                inject_adapter_in_model(config, encoder, adapter_name=name)
        except ValueError as err:
            raise ValueError(f"LoRA target modules {settings['target_modules']} not found in the encoder: {err}") from err
    layers = [m for m in encoder.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:  # tag them so MultitaskModel._init_weights keeps peft's init (B = 0)
        for role in ("A", "B"):
            for sub in getattr(layer, f"lora_{role}").values():
                sub._lora_role = role
        if settings["per_task"]:
            layer._active_adapter = TaskAdapters(adapters)  # peft's list of active adapters, read from each call's route
    # peft freezes everything but the adapters it injects; the model's own parameters keep their setting (a
    # folder loaded again builds the model with every parameter trainable, and must train what this one trains)
    for name, p in encoder.named_parameters():
        if ".lora_" not in name:
            p.requires_grad = trainable.get(name.replace(".base_layer", ""), trainable.get(name, True))
    return layers


def merged_layers(layers: list[nn.Module]) -> list[nn.Module]:
    """The LoRA layers whose adapters were merged into their base weights (peft's ``layer.merge()``)."""
    return [layer for layer in layers if getattr(layer, "merged", False)]


def refuse_merged(layers: list[nn.Module], settings: dict[str, Any] | None, doing: str) -> None:
    """Raise if adapters were merged by hand: a merged per-task layer runs no task switch, and a saved
    merged model would apply its adapters a second time when loaded (its config re-injects them)."""
    if not merged_layers(layers):
        return
    if settings and settings.get("per_task"):
        raise ValueError(f"cannot {doing}: the per-task LoRA adapters were merged into the encoder's weights (peft's merge()), so "
                         "no task switch is left; unmerge them (layer.unmerge()); per-task adapters cannot be merged into one encoder")  # fmt: skip
    if doing.startswith("save"):
        raise ValueError("cannot save: the LoRA adapter was merged into the encoder's weights by hand, and loading the folder would "
                         "apply it again; unmerge it (layer.unmerge()), or call model.merge_lora(), which removes the adapter once merged")  # fmt: skip


def refuse_rerouted(layers: list[nn.Module]) -> None:
    """Raise if peft's own ``set_adapter`` replaced a per-task layer's routing: every task would then
    run that one adapter, silently."""
    if any(not isinstance(getattr(layer, "_active_adapter", None), TaskAdapters) for layer in layers):
        raise ValueError("a per-task LoRA layer's adapter was switched through peft (set_adapter): every task would run that one "
                         "adapter; the task of each call chooses it here, so do not call set_adapter on this model")  # fmt: skip


def merge_shared_lora(encoder: nn.Module, layers: list[nn.Module], settings: dict[str, Any]) -> None:
    """Fold a shared LoRA adapter into the encoder's weights and put the plain layers back."""
    if settings.get("per_task"):
        raise ValueError("per-task LoRA adapters cannot be merged into one encoder (each task's would need its own copy): "
                         "serve the model with its adapters")  # fmt: skip
    for layer in layers:
        if not getattr(layer, "merged", False):
            layer.merge(safe_merge=True, adapter_names=[SHARED_ADAPTER])
    for name, module in list(encoder.named_modules()):
        if module in layers:
            parent_name, _, child = name.rpartition(".")
            parent = encoder.get_submodule(parent_name) if parent_name else encoder
            setattr(parent, child, module.get_base_layer())
    for key in [k for k in vars(encoder) if k == "peft_config"]:
        delattr(encoder, key)
