"""One checkpoint whose tasks route to their own (specialised) multitask models.

Two-step specialisation (`hf_multitask.schemes.specialise()`) ends with one fine-tuned
copy of the multitask model per task. [`RoutedMultitaskModel`][hf_multitask.routed.RoutedMultitaskModel] packs them into a single
``PreTrainedModel``: ``model(task="sst", ...)`` runs the SST expert, and every task without
an expert of its own runs the shared multitask model. It saves, loads with
``AutoModel.from_pretrained`` and is evaluated and predicted like a [`MultitaskModel`][hf_multitask.modeling.MultitaskModel].
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from .configuration import MultitaskConfig
from .model_folders import CheckedFolderLoading
from .modeling import MultitaskModel, MultitaskOutput
from .tasks import TaskSpec

SHARED_EXPERT = "multitask"


class RoutedMultitaskConfig(PretrainedConfig):
    """Config of a [`RoutedMultitaskModel`][hf_multitask.routed.RoutedMultitaskModel].

    Args:
        expert_config: The [`MultitaskConfig`][hf_multitask.configuration.MultitaskConfig] every expert is built from (all experts
            share tasks, heads and adapters; only their weights differ).
        specialised_tasks: Tasks with an expert of their own. The others run the shared
            ``"multitask"`` expert, which exists only if some task is not specialised.
    """

    model_type = "hf_multitask_routed"
    sub_configs = {"expert_config": MultitaskConfig}

    def __init__(
        self, expert_config: MultitaskConfig | dict[str, Any] | None = None, specialised_tasks: list[str] | None = None, **kwargs: Any
    ) -> None:
        if isinstance(expert_config, dict):
            expert_config = MultitaskConfig(**{k: v for k, v in expert_config.items() if k != "model_type"})
        self.expert_config = expert_config
        self.specialised_tasks = list(specialised_tasks or [])
        if expert_config is not None:
            known = expert_config.task_names
            unknown = [t for t in self.specialised_tasks if t not in known]
            if unknown:
                raise ValueError(f"specialised_tasks {unknown} are not tasks of the expert config {known}")
            if SHARED_EXPERT in known:
                raise ValueError(f"A task may not be called {SHARED_EXPERT!r} in a routed model (that name is the shared expert)")
        if len(set(self.specialised_tasks)) != len(self.specialised_tasks):
            raise ValueError(f"specialised_tasks has duplicates: {self.specialised_tasks}")
        super().__init__(**kwargs)

    @property
    def task_specs(self) -> list[TaskSpec]:
        return self.expert_config.task_specs

    @property
    def task_names(self) -> list[str]:
        return self.expert_config.task_names

    def get_task(self, name: str) -> TaskSpec:
        """The [`TaskSpec`][hf_multitask.tasks.TaskSpec] of ``name`` (a ``KeyError`` lists the tasks)."""
        return self.expert_config.get_task(name)

    @property
    def encoder_config(self) -> PretrainedConfig:
        """The experts' encoder config."""
        return self.expert_config.encoder_config

    def route(self, task: str) -> str:
        """The expert that runs ``task``."""
        self.get_task(task)
        return task if task in self.specialised_tasks else SHARED_EXPERT

    @property
    def experts(self) -> list[str]:
        needs_shared = any(t not in self.specialised_tasks for t in self.task_names)
        return list(self.specialised_tasks) + ([SHARED_EXPERT] if needs_shared else [])


class RoutedMultitaskModel(CheckedFolderLoading, PreTrainedModel):
    """Per-task experts (each a [`MultitaskModel`][hf_multitask.modeling.MultitaskModel]) behind one ``forward(task=...)``.

    Build one with [`from_models()`][hf_multitask.routed.RoutedMultitaskModel.from_models] from the models `specialise()`
    returns; the shared multitask model is only needed (and only stored) when some task has
    no specialised model.
    """

    config_class = RoutedMultitaskConfig
    base_model_prefix = "experts"
    main_input_name = "input_ids"
    _supports_sdpa = True
    accepts_loss_kwargs = False

    def __init__(self, config: RoutedMultitaskConfig) -> None:
        super().__init__(config)
        if config.expert_config is None:
            raise ValueError("RoutedMultitaskConfig.expert_config is required")
        self.experts = nn.ModuleDict({name: MultitaskModel(config.expert_config) for name in config.experts})
        self.post_init()

    @classmethod
    def from_models(cls, specialised: dict[str, MultitaskModel], multitask: MultitaskModel | None = None) -> RoutedMultitaskModel:
        """Pack ``{task: specialised model}`` (and the shared ``multitask`` model for the other
        tasks) into one model. All models must have the same config apart from their weights."""
        if not specialised:
            raise ValueError("from_models needs at least one specialised model")
        first = next(iter(specialised.values()))
        base = multitask if multitask is not None else first
        expert_config = MultitaskConfig.from_dict(base.config.to_dict())
        for task, model in [*specialised.items(), *([(SHARED_EXPERT, multitask)] if multitask is not None else [])]:
            if model.config.task_specs != base.config.task_specs:
                raise ValueError(f"The {task!r} model has different tasks from the others")
        config = RoutedMultitaskConfig(expert_config=expert_config, specialised_tasks=list(specialised))
        missing = [t for t in config.task_names if t not in specialised]
        if missing and multitask is None:
            raise ValueError(f"Tasks {missing} have no specialised model: pass the multitask model for them")
        config.name_or_path = base.config.name_or_path
        routed = cls(config)
        sources = {**specialised, **({SHARED_EXPERT: multitask} if missing else {})}
        for name, model in sources.items():
            routed.experts[name].load_state_dict(model.state_dict())
        first_param = next(base.parameters())
        return routed.to(device=first_param.device, dtype=first_param.dtype)

    def _init_weights(self, module: nn.Module) -> None:
        # Nothing of our own to initialise: transformers dispatches every module inside an
        # expert to that expert's (MultitaskModel's) _init_weights.
        return None

    @property
    def task_names(self) -> list[str]:
        return self.config.task_names

    def get_task(self, task: str) -> TaskSpec:
        """The [`TaskSpec`][hf_multitask.tasks.TaskSpec] of ``task`` (a ``KeyError`` lists the tasks)."""
        try:
            return self.config.get_task(task)
        except KeyError:
            raise KeyError(f"Unknown task {task!r}; this model knows {self.task_names}") from None

    def expert(self, task: str) -> MultitaskModel:
        """The [`MultitaskModel`][hf_multitask.modeling.MultitaskModel] that runs ``task``."""
        return self.experts[self.config.route(task)]

    def get_input_embeddings(self) -> nn.Module:
        return next(iter(self.experts.values())).get_input_embeddings()

    def forward(self, task: str, labels: torch.Tensor | None = None, **inputs: Any) -> MultitaskOutput:
        """Run ``task`` on its expert; arguments as [`MultitaskModel.forward()`][hf_multitask.modeling.MultitaskModel.forward]."""
        return self.expert(task)(task=task, labels=labels, **inputs)


RoutedMultitaskConfig.register_for_auto_class()
RoutedMultitaskModel.register_for_auto_class("AutoModel")

__all__ = ["RoutedMultitaskConfig", "RoutedMultitaskModel", "SHARED_EXPERT"]
