"""Per-task head pretraining and two-step specialisation."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn

from ..routed import RoutedMultitaskModel
from ..trainer import MultitaskTrainer, MultitaskTrainingArguments


def pretrain_heads(
    model: Any,
    train: dict[str, datasets.Dataset],
    validation: dict[str, datasets.Dataset],
    args: MultitaskTrainingArguments,
    **trainer_kwargs: Any,
) -> dict[str, float]:
    """Frozen-encoder head training, run separately for every task.

    For each task a copy of ``model`` trains only that task's head on that task alone, is
    evaluated every ``args.eval_steps`` steps (or epoch, per ``args.eval_strategy``), and the
    head with the best validation score of its own task is loaded back into ``model``. Returns
    each task's best score. The encoder is never changed.
    """
    best: dict[str, float] = {}
    for task in train:
        copy_model = copy.deepcopy(model)
        copy_model.set_trainable("heads")
        for name, p in copy_model.heads.named_parameters():
            p.requires_grad = name.startswith(f"{task}.")
        task_args = replace(
            args,
            output_dir=str(Path(args.output_dir) / f"heads-{task}"),
            load_best_model_at_end=True,
            metric_for_best_model=f"{task}_score",
            greater_is_better=True,
            save_strategy=args.eval_strategy,
            save_steps=args.eval_steps,
            save_total_limit=1,
        )
        trainer = MultitaskTrainer(
            model=copy_model, args=task_args, train_dataset={task: train[task]}, eval_dataset={task: validation[task]}, **trainer_kwargs
        )
        trainer.train()
        best[task] = float(trainer.state.best_metric)
        model.heads[task].load_state_dict(copy_model.heads[task].state_dict())
    return best


def reset_head(head: nn.Module) -> None:
    """Fresh parameters for a head (also on models loaded from a checkpoint)."""
    for module in head.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif hasattr(module, "scale") and isinstance(module.scale, nn.Parameter):
            with torch.no_grad():
                module.scale.fill_(5.0)
                module.bias.zero_()


SPECIALISE_FORMS = ("encoder", "pal", "lora")


@dataclass
class Specialisation:
    """Every task's expert after two-step specialisation, and the one place that packs a choice of
    them into the model that is served ([`pack()`][hf_multitask.schemes.specialise.Specialisation.pack]).

    ``form`` says what each expert changed: ``"encoder"``, a whole fine-tuned copy of the model
    per task (``experts[task]``, packed as a
    [`RoutedMultitaskModel`][hf_multitask.routed.RoutedMultitaskModel]: one encoder per kept
    expert); ``"pal"`` or ``"lora"``, only the task's own zero-initialised PALs or LoRA adapter and
    its head, all held by one model (``modules``: one backbone in memory, packed as a
    [`MultitaskModel`][hf_multitask.modeling.MultitaskModel] with the kept tasks' modules).
    ``multitask`` is the model it started from, unchanged; it serves the tasks not kept."""

    form: str
    multitask: Any
    tasks: list[str]
    experts: dict[str, Any] = field(default_factory=dict)  # "encoder": task -> its fine-tuned copy
    modules: Any = None  # "pal" / "lora": the one model holding every task's trained modules and head

    def expert(self, task: str) -> Any:
        """The model that answers ``task`` as its expert (its copy, or the model with the modules)."""
        if task not in self.tasks:
            raise KeyError(f"{task!r} was not specialised; the experts are {self.tasks}")
        return self.experts[task] if self.form == "encoder" else self.modules

    def pack(self, keep: Sequence[str]) -> Any:
        """The served model with the experts of ``keep`` (the other tasks answer as the multitask
        model does): a routed model for the ``encoder`` form, one backbone with the kept tasks'
        PALs or LoRA adapters otherwise, and the multitask model itself when nothing is kept."""
        unknown = [t for t in keep if t not in self.tasks]
        if unknown:
            raise KeyError(f"cannot keep {unknown}: they were not specialised (the experts are {self.tasks})")
        kept = [t for t in self.tasks if t in keep]
        if not kept:
            return self.multitask
        if self.form == "encoder":
            return RoutedMultitaskModel.from_models({t: self.experts[t] for t in kept}, self.multitask)
        return _pack_modules(self.modules, self.multitask, kept, self.form)


def _pack_modules(modules: Any, multitask: Any, kept: list[str], form: str) -> Any:
    """A copy of ``modules`` with only the ``kept`` tasks' PALs / LoRA adapters, and for every other
    task the multitask model's own head (and adjustment)."""
    from ..configuration import MultitaskConfig

    config = MultitaskConfig.from_dict(modules.config.to_dict())
    if form == "pal":
        config.pal_tasks = [t for t in config.task_names if t in kept]
    else:
        config.lora = {**config.lora, "tasks": list(kept)}
    packed = type(modules)(config)
    shared_state = multitask.state_dict()
    state = {}
    for name, value in modules.state_dict().items():
        owner = modules._owner(name)
        if owner is not None and owner not in kept:
            if name in shared_state:  # its head and adjustment as the multitask model has them
                state[name] = shared_state[name]
            continue  # its PAL / adapter is left out
        state[name] = value
    packed.load_state_dict(state, strict=True)
    first = next(modules.parameters())
    return packed.to(device=first.device, dtype=first.dtype).train(modules.training)


def specialise_experts(
    model: Any,
    train: dict[str, datasets.Dataset],
    args: MultitaskTrainingArguments,
    *,
    form: str = "encoder",
    tasks: list[str] | None = None,
    fresh_heads: bool = False,
    rank: int | None = None,
    pal_heads: int | None = None,
    pal_shared_projections: bool | None = None,
    lora_alpha: int | None = None,
    lora_targets: Sequence[str] = ("query", "value"),
    **trainer_kwargs: Any,
) -> Specialisation:
    """Two-step specialisation in any of the forms (see [`Specialisation`][hf_multitask.schemes.specialise.Specialisation]):
    each task of ``tasks`` (default: every task of ``train``) trains alone on its data, from the
    multitask ``model``, which is not changed.

    ``form="encoder"``: a copy of the whole model per task (its head kept or, with
    ``fresh_heads``, re-initialised), training what ``model`` trains. ``form="pal"`` / ``"lora"``: one copy of the model gets
    zero-initialised PALs (``rank``, ``pal_heads``, ``pal_shared_projections``) or per-task LoRA
    adapters (r ``rank``, ``lora_alpha``, ``lora_targets``) for the tasks, then each task trains
    only its own module and head, every other parameter frozen, so one task's training leaves
    every other parameter exactly as it was. ``args`` are the phase's training arguments (each
    task's run goes to ``output_dir/specialise-{task}``).
    """
    if form not in SPECIALISE_FORMS:
        raise ValueError(f"specialisation form must be one of {SPECIALISE_FORMS}, got {form!r}")
    names = list(tasks or train)
    unknown = [t for t in names if t not in train]
    if unknown:
        raise KeyError(f"specialise: no training data for task(s) {unknown}; have {list(train)}")
    result = Specialisation(form=form, multitask=model, tasks=names)
    if form == "pal" and model.config.pal_tasks:
        raise ValueError(f"specialisation form 'pal' adds PALs, but the model has PALs already (for {model.config.pal_tasks})")
    if form == "lora" and model.config.lora:
        raise ValueError("specialisation form 'lora' adds per-task LoRA adapters, but the model has LoRA adapters already")
    if form != "encoder":
        result.modules = copy.deepcopy(model)
        # the new modules' random part (PAL V_E and attention, LoRA A) is drawn from the run's seed, not from whatever the
        # process did before: a run resumed from a checkpoint must build the same experts as one that never stopped
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            if form == "pal":
                result.modules.add_pal(names, rank=rank, heads=pal_heads, shared_projections=pal_shared_projections, init="zero")
            else:
                result.modules.add_lora(r=rank or 8, alpha=lora_alpha or 2 * (rank or 8), target_modules=tuple(lora_targets),
                                        per_task=True, tasks=names)  # fmt: skip
    for task in names:
        # the encoder form: a copy trains what the model trains (requires_grad comes along: a LoRA, PAL or heads-only run
        # stays one); the PAL and LoRA forms: the task's own module and head (and adjustment) only
        special = copy.deepcopy(model) if form == "encoder" else result.modules
        if form != "encoder":
            for name, p in special.named_parameters():
                p.requires_grad = special._owner(name) == task
        if fresh_heads:
            reset_head(special.heads[task])
        task_args = replace(args, output_dir=str(Path(args.output_dir) / f"specialise-{task}"))
        MultitaskTrainer(model=special, args=task_args, train_dataset={task: train[task]}, **trainer_kwargs).train()
        if form == "encoder":
            result.experts[task] = special
    if result.modules is not None:  # what trains in the model with the modules: what trained in the model, and the modules
        trainable = {n: p.requires_grad for n, p in model.named_parameters()}
        for name, p in result.modules.named_parameters():
            p.requires_grad = trainable.get(name.replace(".base_layer", ""), True)
    return result


def specialise(
    model: Any,
    train: dict[str, datasets.Dataset],
    args: MultitaskTrainingArguments,
    *,
    tasks: list[str] | None = None,
    fresh_heads: bool = False,
    save_dir: str | os.PathLike[str] | None = None,
    **trainer_kwargs: Any,
) -> dict[str, Any]:
    """Two-step specialisation of the whole encoder: after multitask training, one copy of the
    model per task fine-tuned on that task alone (its head kept or, with ``fresh_heads``,
    re-initialised). Each copy trains the parameters ``model`` trains: the whole model, or only
    what ``set_trainable`` chose (LoRA, PALs, heads). ``model`` itself is not changed. (The PAL
    and LoRA forms, and the choice of experts:
    [`specialise_experts()`][hf_multitask.schemes.specialise.specialise_experts].)

    Returns ``{task: specialised model}``. With ``save_dir``, each is saved to
    ``save_dir/{task}``, and all of them together as one
    [`RoutedMultitaskModel`][hf_multitask.routed.RoutedMultitaskModel] in ``save_dir/routed`` (tasks left out of
    ``tasks`` route to ``model``); every folder loads with ``AutoModel.from_pretrained``.
    Build the routed model in memory with [`route()`][hf_multitask.schemes.specialise.route].
    """
    result = specialise_experts(model, train, args, form="encoder", tasks=tasks, fresh_heads=fresh_heads, **trainer_kwargs)
    if save_dir is not None:
        for task, special in result.experts.items():
            special.save_pretrained(Path(save_dir) / task)
        result.pack(result.tasks).save_pretrained(Path(save_dir) / "routed")
    return dict(result.experts)


def route(specialised: dict[str, Any], multitask: Any | None = None) -> Any:
    """One [`RoutedMultitaskModel`][hf_multitask.routed.RoutedMultitaskModel] from `specialise()`'s models; tasks
    without a specialised model run ``multitask`` (stored only if some task needs it)."""
    return RoutedMultitaskModel.from_models(specialised, multitask)


def better_experts(multitask: Any, experts: list[str], expert_predictions: dict, multitask_predictions: dict) -> list[str]:
    """The tasks of ``experts`` whose expert scores higher than the multitask model on the data
    both were scored on (``{task: TaskPredictions}`` each). The members of a metric group are
    kept or dropped together, on the group's pooled score, and only when every member has an
    expert. Scored on the data it is then reported on, the choice leans high: choose on other
    data (a tuning split) and pass the list to keep instead."""
    from ..predict import metrics_from_predictions
    from ..tasks import metric_groups

    units = metric_groups([multitask.get_task(t) for t in multitask_predictions])
    grouped = {m for members in units.values() for m in members}
    units.update({t: [t] for t in experts if t not in grouped})
    kept: set[str] = set()
    for name, members in units.items():
        if all(m in experts for m in members):
            expert = metrics_from_predictions(multitask, {m: expert_predictions[m] for m in members})[f"{name}_score"]
            shared = metrics_from_predictions(multitask, {m: multitask_predictions[m] for m in members})[f"{name}_score"]
            if expert > shared:
                kept.update(members)
    return [t for t in experts if t in kept]
