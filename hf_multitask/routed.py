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

from .configuration import REMOTE_PIPELINE_TASK, MultitaskConfig
from .model_folders import CheckedFolderLoading
from .modeling import MultitaskModel, MultitaskOutput
from .tasks import TaskSpec

SHARED_EXPERT = "multitask"


class RoutedMultitaskConfig(PretrainedConfig):
    """Config of a [`RoutedMultitaskModel`][hf_multitask.routed.RoutedMultitaskModel].

    Args:
        expert_config: The [`MultitaskConfig`][hf_multitask.configuration.MultitaskConfig] of the
            shared multitask model: the tasks, and the experts' settings unless ``expert_configs``
            gives an expert its own.
        specialised_tasks: Tasks with an expert of their own. The others run the shared
            ``"multitask"`` expert, which exists only if some task is not specialised.
        expert_configs: ``{expert: MultitaskConfig}``, each expert's own settings (pooling, heads,
            PALs, LoRA, ...: whatever is not in its weights). Every expert has the tasks of
            ``expert_config``. Checkpoints written before it existed have none: every expert is
            then built from ``expert_config``.
    """

    model_type = "hf_multitask_routed"
    sub_configs = {"expert_config": MultitaskConfig}

    def __init__(
        self,
        expert_config: MultitaskConfig | dict[str, Any] | None = None,
        specialised_tasks: list[str] | None = None,
        expert_configs: dict[str, MultitaskConfig | dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        expert_config = _as_config(expert_config)
        self.expert_config = expert_config
        self.specialised_tasks = list(specialised_tasks or [])
        self.expert_configs = {name: _as_config(c) for name, c in (expert_configs or {}).items()}
        if expert_config is not None:
            known = expert_config.task_names
            unknown = [t for t in self.specialised_tasks if t not in known]
            if unknown:
                raise ValueError(f"specialised_tasks {unknown} are not tasks of the expert config {known}")
            if SHARED_EXPERT in known:
                raise ValueError(f"A task may not be called {SHARED_EXPERT!r} in a routed model (that name is the shared expert)")
            for name, own in self.expert_configs.items():
                if name not in self.experts:
                    raise ValueError(f"expert_configs names {name!r}, which is not an expert of this model ({self.experts})")
                if own.task_specs != expert_config.task_specs:
                    raise ValueError(f"expert {name!r} has other tasks than the routed model ({own.task_names} vs {known})")
        if len(set(self.specialised_tasks)) != len(self.specialised_tasks):
            raise ValueError(f"specialised_tasks has duplicates: {self.specialised_tasks}")
        # pipeline(model=..., trust_remote_code=True) finds the pipeline in the checkpoint's code, as for a MultitaskModel
        kwargs.setdefault(
            "custom_pipelines", {REMOTE_PIPELINE_TASK: {"impl": "pipeline.MultitaskPipeline", "pt": ["AutoModel"], "type": "text"}}
        )
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if kwargs.get(key) is None and expert_config is not None and getattr(expert_config, key, None) is not None:
                kwargs[key] = getattr(expert_config, key)
        super().__init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["expert_configs"] = {name: c.to_dict() for name, c in self.expert_configs.items()}
        return out

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

    def config_of(self, expert: str) -> MultitaskConfig:
        """The config ``expert`` is built from (its own, or the shared one)."""
        return self.expert_configs.get(expert, self.expert_config)

    def task_pair_encoding(self, spec: TaskSpec) -> str | None:
        """How ``spec``'s sentence pairs are encoded: as the expert that runs it encodes them."""
        return self.config_of(self.route(spec.name)).task_pair_encoding(spec)

    @property
    def experts(self) -> list[str]:
        needs_shared = any(t not in self.specialised_tasks for t in self.task_names)
        return list(self.specialised_tasks) + ([SHARED_EXPERT] if needs_shared else [])


def _as_config(config: MultitaskConfig | dict[str, Any] | None) -> MultitaskConfig | None:
    if isinstance(config, dict):
        return MultitaskConfig(**{k: v for k, v in config.items() if k != "model_type"})
    return config


class RoutedMultitaskModel(CheckedFolderLoading, PreTrainedModel):
    """Per-task experts (each a [`MultitaskModel`][hf_multitask.modeling.MultitaskModel]) behind one ``forward(task=...)``.

    Build one with [`from_models()`][hf_multitask.routed.RoutedMultitaskModel.from_models] from the models
    `hf_multitask.schemes.specialise()` returns; the shared multitask model is only
    needed (and only stored) when some task has no specialised model. It serves like a
    [`MultitaskModel`][hf_multitask.modeling.MultitaskModel]: the pipeline (``model.pipeline(tokenizer)``,
    or ``pipeline(model=folder, trust_remote_code=True)``), ``hf-multitask predict`` and
    ``tweeteval-test``; a request for one task runs one encoder pass (its expert's).
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
        self.experts = nn.ModuleDict({name: MultitaskModel(config.config_of(name)) for name in config.experts})
        self.post_init()

    @classmethod
    def from_models(cls, specialised: dict[str, MultitaskModel], multitask: MultitaskModel | None = None) -> RoutedMultitaskModel:
        """Pack ``{task: specialised model}`` (and the shared ``multitask`` model for the other
        tasks) into one model. Every model must have the same tasks; each keeps its own settings
        (pooling, heads, PALs, LoRA, ...), recorded in ``config.expert_configs``, so each task's
        outputs are its expert's."""
        if not specialised:
            raise ValueError("from_models needs at least one specialised model")
        first = next(iter(specialised.values()))
        base = multitask if multitask is not None else first
        expert_config = MultitaskConfig.from_dict(base.config.to_dict())
        for task, model in [*specialised.items(), *([(SHARED_EXPERT, multitask)] if multitask is not None else [])]:
            if not isinstance(model, MultitaskModel):
                raise ValueError(f"The {task!r} model is a {type(model).__name__}, not a MultitaskModel")
            if model.config.task_specs != base.config.task_specs:
                raise ValueError(f"The {task!r} model has different tasks from the others")
        missing = [t for t in base.config.task_names if t not in specialised]
        if missing and multitask is None:
            raise ValueError(f"Tasks {missing} have no specialised model: pass the multitask model for them")
        sources = {**specialised, **({SHARED_EXPERT: multitask} if missing else {})}
        own = {name: MultitaskConfig.from_dict(model.config.to_dict()) for name, model in sources.items()}
        config = RoutedMultitaskConfig(expert_config=expert_config, specialised_tasks=list(specialised), expert_configs=own)
        config.name_or_path = base.config.name_or_path
        routed = cls(config)
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

    def forward_all(self, batches: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Logits of several tasks: each expert answers its tasks
        ([`MultitaskModel.forward_all()`][hf_multitask.modeling.MultitaskModel.forward_all]), so a batch
        runs one encoder pass per expert it needs (and per distinct input within one)."""
        by_expert: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
        for task, batch in batches.items():
            by_expert.setdefault(self.config.route(task), {})[task] = batch
        out: dict[str, torch.Tensor] = {}
        for name, part in by_expert.items():
            out.update(self.experts[name].forward_all(part))
        return {t: out[t] for t in batches}

    def pipeline(self, tokenizer: Any, **kwargs: Any) -> Any:
        """A [`MultitaskPipeline`][hf_multitask.pipeline.MultitaskPipeline] over this model, as
        [`MultitaskModel.pipeline()`][hf_multitask.modeling.MultitaskModel.pipeline] builds one."""
        from .pipeline import MultitaskPipeline

        return MultitaskPipeline(model=self, tokenizer=tokenizer, **kwargs)

    def parameter_counts(self) -> dict[str, int]:
        """``total`` and ``trainable`` parameters, ``encoders`` (one per expert: each holds a whole
        encoder in memory), ``encoder_passes_per_task`` (1: a request for one task runs its
        expert's encoder once) and each expert's total as ``expert_{name}``."""
        counts = {"total": 0, "trainable": 0}
        for p in self.parameters():
            counts["total"] += p.numel()
            counts["trainable"] += p.numel() if p.requires_grad else 0
        counts["encoders"] = len(self.experts)
        counts["encoder_passes_per_task"] = 1
        counts.update({f"expert_{name}": sum(p.numel() for p in expert.parameters()) for name, expert in self.experts.items()})
        return counts


RoutedMultitaskConfig.register_for_auto_class()
RoutedMultitaskModel.register_for_auto_class("AutoModel")

__all__ = ["RoutedMultitaskConfig", "RoutedMultitaskModel", "SHARED_EXPERT"]
