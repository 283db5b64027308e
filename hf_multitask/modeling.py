"""`MultitaskModel`: one shared ``AutoModel`` encoder, one head per task."""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration import MultitaskConfig
from .heads import AdjustmentMatrix, CosineHead
from .model_folders import CheckedFolderLoading
from .pal import PALAdapter, attach_pal_hook, init_pal_linear, pal_attention_sites
from .task_routing import routed, task_of, with_route
from .tasks import TaskLookup, TaskSpec

try:  # transformers >= 5: initialisers that respect already-loaded weights
    from transformers import initialization as init
except ImportError:  # pragma: no cover - older transformers
    from torch.nn import init


@dataclass
class MultitaskOutput(ModelOutput):
    """Output of [`MultitaskModel.forward()`][hf_multitask.modeling.MultitaskModel.forward].

    Attributes:
        loss: Cross-entropy (classification) or mean squared error (regression), when
            ``labels`` were given.
        logits: ``(batch, num_labels)`` scores; ``(batch, 1)`` predictions for regression.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


# top-level modules whose children are keyed by task name: each child belongs to its task
TASK_OWNED_MODULES = ("heads", "pals", "adjustments")


class MultitaskModel(TaskLookup, CheckedFolderLoading, PreTrainedModel):
    """A shared encoder with one head per task.

    Build one from a pretrained encoder with [`from_encoder()`][hf_multitask.modeling.MultitaskModel.from_encoder], or load a saved
    multitask checkpoint with ``AutoModel.from_pretrained`` (after ``import hf_multitask``)
    or ``MultitaskModel.from_pretrained``. Call it with the task name::

        out = model(task="sst", input_ids=ids, attention_mask=mask, labels=y)

    Sentence-pair tasks with the ``"bi"`` or ``"cosine"`` encoding take the second
    sentence as ``input_ids_b`` / ``attention_mask_b`` (/ ``token_type_ids_b``).
    """

    config_class = MultitaskConfig
    base_model_prefix = "encoder"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    # forward takes task=...; keep the Trainer from passing num_items_in_batch (see README).
    accepts_loss_kwargs = False

    def __init__(self, config: MultitaskConfig) -> None:
        super().__init__(config)
        if config.encoder_config is None:
            raise ValueError("MultitaskConfig.encoder_config is required")
        if not config.tasks:
            raise ValueError("MultitaskConfig.tasks is empty: give at least one TaskSpec")
        self.encoder = AutoModel.from_config(config.encoder_config)
        if getattr(self.encoder, "pooler", None) is not None:
            # The task heads read token states; an unused pooler would only confuse DDP.
            self.encoder.pooler = None
        hidden = int(config.encoder_config.hidden_size)
        self._encoder_accepts_token_types = "token_type_ids" in inspect.signature(self.encoder.forward).parameters
        self.heads = nn.ModuleDict()
        self._specs: dict[str, TaskSpec] = {}
        for spec in config.task_specs:
            self._specs[spec.name] = spec
            self.heads[spec.name] = spec.task_type.build_head(spec, config, hidden)  # the task's type owns its head
        self.adjustments = nn.ModuleDict({t: AdjustmentMatrix(self._specs[t].num_labels) for t in config.adjustment_tasks})
        self._pal_hooks: list[Any] = []
        self.pals = nn.ModuleDict()
        if config.pal_tasks:
            self._build_pals(config.pal_tasks)
        self._lora_layers: list[nn.Module] = []
        if config.lora:
            self._inject_lora(config.lora)
        self.post_init()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_encoder(
        cls,
        name_or_path: str | os.PathLike[str],
        tasks: list[TaskSpec | dict[str, Any]],
        **config_kwargs: Any,
    ) -> MultitaskModel:
        """Pretrained encoder weights from ``name_or_path`` plus freshly initialised heads.

        ``name_or_path`` is anything ``AutoModel.from_pretrained`` takes (a local folder or
        a Hub id; Hub ids need the network or a warm cache). Extra keyword arguments go to
        [`MultitaskConfig`][hf_multitask.configuration.MultitaskConfig] (``pair_encoding``, ``head_type``, ...). Weights are loaded
        in float32, which is what AMP training wants.
        """
        from transformers import AutoConfig

        encoder_config = AutoConfig.from_pretrained(name_or_path)
        config = MultitaskConfig(encoder_config=encoder_config, tasks=tasks, **config_kwargs)
        model = cls(config)
        pretrained = AutoModel.from_pretrained(name_or_path, dtype=torch.float32)
        missing, unexpected = model.encoder.load_state_dict(pretrained.state_dict(), strict=False)
        unexpected = [k for k in unexpected if not k.startswith("pooler.")]
        if missing or unexpected:
            raise ValueError(f"Encoder weights from {name_or_path} do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
        model.config.name_or_path = str(name_or_path)
        return model

    # ------------------------------------------------------------------ PAL adapters
    def _build_pals(self, tasks: list[str]) -> list[PALAdapter]:
        sites = pal_attention_sites(self.encoder)
        cfg = self.config
        hidden = int(cfg.encoder_config.hidden_size)
        created = []
        for task in tasks:
            if task not in self.pals:
                self.pals[task] = PALAdapter(hidden, cfg.pal_rank, cfg.pal_heads, len(sites), cfg.pal_shared_projections)
                created.append(self.pals[task])
        if not self._pal_hooks:
            self._pal_hooks = [attach_pal_hook(site, layer) for layer, site in enumerate(sites)]
        return created

    def add_pal(
        self,
        tasks: list[str] | None = None,
        *,
        rank: int | None = None,
        heads: int | None = None,
        shared_projections: bool | None = None,
        init: str = "zero",
    ) -> None:
        """Add PALs to an existing (e.g. already fine-tuned) model; recorded in the config.

        With ``init="zero"`` (V_D = 0) the model's outputs are unchanged until the PALs train.
        Settings of PALs already present win: ``rank``/``heads``/``shared_projections`` can
        only be given for the first PALs of a model.
        """
        tasks = list(tasks or self.task_names)
        for t in tasks:
            self.get_task(t)
        cfg = self.config
        if cfg.pal_tasks and any(v is not None for v in (rank, heads, shared_projections)):
            raise ValueError("This model has PALs already: their rank/heads/projection sharing are fixed")
        if rank is not None:
            cfg.pal_rank = int(rank)
        if heads is not None:
            cfg.pal_heads = int(heads)
        if shared_projections is not None:
            cfg.pal_shared_projections = bool(shared_projections)
        if cfg.pal_rank % cfg.pal_heads:
            raise ValueError(f"pal_rank ({cfg.pal_rank}) must be a multiple of pal_heads ({cfg.pal_heads})")
        if init not in ("zero", "xavier"):
            raise ValueError(f"init must be 'zero' or 'xavier', got {init!r}")
        cfg.pal_init = init
        created = self._build_pals(tasks)
        device = next(self.encoder.parameters()).device
        for adapter in created:
            adapter.to(device)
            for module in adapter.modules():
                self._init_weights(module)
        cfg.pal_tasks = [t for t in self.task_names if t in self.pals]

    # ------------------------------------------------------------------ LoRA (peft)
    def _inject_lora(self, settings: dict[str, Any]) -> None:
        from .lora import SHARED_ADAPTER, inject_lora, lora_tasks

        unknown = [t for t in settings.get("tasks") or [] if t not in self._specs]
        if unknown:
            raise ValueError(f"LoRA tasks {unknown} are not tasks of this model {self.task_names}")
        adapters = lora_tasks(settings, self.task_names) if settings["per_task"] else [SHARED_ADAPTER]
        self._lora_layers = inject_lora(self.encoder, settings, adapters)

    def add_lora(
        self,
        *,
        r: int = 8,
        alpha: int = 16,
        dropout: float = 0.0,
        target_modules=("query", "value"),
        per_task: bool = False,
        tasks: list[str] | None = None,
    ) -> None:
        """Add LoRA adapters (through ``peft``) to the encoder and record them in the config.

        ``per_task=False``: one adapter shared by every task. ``per_task=True``: one adapter per
        task (per task of ``tasks``, if given; the others run the encoder alone), chosen by the
        task of each call. LoRA's B starts at zero, so outputs are unchanged until it trains.
        Which parameters train does not change: use
        [`set_trainable()`][hf_multitask.modeling.MultitaskModel.set_trainable] (``"lora"`` /
        ``"lora_and_heads"``) to train only the adapters (and heads).
        """
        from .lora import lora_settings

        if self.config.lora:
            raise ValueError("This model has LoRA adapters already")
        settings = lora_settings(r=r, alpha=alpha, dropout=dropout, target_modules=target_modules, per_task=per_task, tasks=tasks)
        self._inject_lora(settings)
        self.to(next(self.heads.parameters()).device)
        self.config.lora = settings

    def merge_lora(self) -> None:
        """Fold a shared LoRA adapter into the encoder's weights: the model becomes a plain one (no
        ``config.lora``), with the same outputs and one matrix product less per adapted layer.
        Per-task adapters cannot be merged into one encoder and are refused. (A merge done by hand
        through peft is refused when the model is saved or, for per-task adapters, run.)"""
        from .lora import merge_shared_lora

        if not self._lora_layers:
            raise ValueError("This model has no LoRA adapters to merge")
        merge_shared_lora(self.encoder, self._lora_layers, self.config.lora)
        self._lora_layers, self.config.lora = [], None

    def save_pretrained(self, *args: Any, **kwargs: Any) -> Any:
        from .lora import refuse_merged

        refuse_merged(self._lora_layers, self.config.lora, "save")
        return super().save_pretrained(*args, **kwargs)

    def set_trainable(self, mode: str) -> dict[str, int]:
        """Choose what trains: ``"all"``, ``"heads"`` (LP / linear probing), ``"pal"`` (PALs
        only) or ``"pal_and_heads"``. Returns [`parameter_counts()`][hf_multitask.modeling.MultitaskModel.parameter_counts]."""
        modes = ("all", "heads", "pal", "pal_and_heads", "lora", "lora_and_heads")
        if mode not in modes:
            raise ValueError(f"trainable mode must be one of {modes}, got {mode!r}")
        if mode.startswith("pal") and not len(self.pals):
            raise ValueError("This model has no PALs: set pal_tasks or call add_pal() first")
        if mode.startswith("lora") and not self._lora_layers:
            raise ValueError("This model has no LoRA adapters: call add_lora() first")
        for name, p in self.named_parameters():
            kind = self._parameter_kind(name)
            p.requires_grad = mode == "all" or (kind == "heads" and mode.endswith("heads")) or (kind != "heads" and mode.startswith(kind))
        return self.parameter_counts()

    @staticmethod
    def _parameter_kind(name: str) -> str:
        part = name.split(".", 1)[0]
        if part in TASK_OWNED_MODULES:
            return "pal" if part == "pals" else "heads"
        return "lora" if ".lora_" in name else "encoder"

    def parameter_counts(self) -> dict[str, int]:
        """``total``, ``trainable``, and the sizes of ``encoder``, ``heads``, ``pals`` and ``lora``."""
        counts = {"total": 0, "trainable": 0, "encoder": 0, "heads": 0, "pals": 0, "lora": 0}
        for name, p in self.named_parameters():
            counts["total"] += p.numel()
            counts["trainable"] += p.numel() if p.requires_grad else 0
            kind = self._parameter_kind(name)
            counts["pals" if kind == "pal" else kind] += p.numel()
        return counts

    def _init_weights(self, module: nn.Module) -> None:
        # Only our own modules reach this: the encoder (a PreTrainedModel) initialises itself.
        std = float(getattr(self.config.encoder_config, "initializer_range", 0.02))
        if isinstance(module, nn.Linear) and hasattr(module, "_pal_role"):
            init_pal_linear(module, self.config.pal_init, std, init)
        elif isinstance(module, nn.Linear) and hasattr(module, "_lora_role"):
            # LoRA as peft initialises it: B = 0 (no influence), A random
            if module._lora_role == "B":
                init.zeros_(module.weight)
            else:
                init.kaiming_uniform_(module.weight, a=5**0.5)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, AdjustmentMatrix):
            init.eye_(module.matrix)
        elif isinstance(module, nn.LSTM):
            for name, param in module.named_parameters():
                (init.zeros_ if "bias" in name else init.xavier_uniform_)(param)
        elif isinstance(module, CosineHead) and module.classifier:
            init.constant_(module.scale, 5.0)
            init.zeros_(module.bias)

    # ------------------------------------------------------------------ introspection
    def _owner(self, name: str) -> str | None:
        """The task that owns a parameter (head, PAL, per-task LoRA), or None if shared."""
        parts = name.split(".")
        if parts[0] in TASK_OWNED_MODULES:
            return parts[1]
        if self.config.lora and self.config.lora["per_task"] and ".lora_" in name:
            for i, part in enumerate(parts[:-1]):
                if part.startswith("lora_") and parts[i + 1] in self._specs:
                    return parts[i + 1]
        return None

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters shared by all tasks (the encoder, a shared LoRA): what surgery acts on."""
        return (p for n, p in self.named_parameters() if self._owner(n) is None)

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        """Parameters owned by one task: its head, its PALs and its per-task LoRA (never
        projected by surgery)."""
        self.get_task(task)
        return (p for n, p in self.named_parameters() if self._owner(n) == task)

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.encoder.set_input_embeddings(value)

    # ------------------------------------------------------------------ forward
    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        task: str | None = None,
    ) -> torch.Tensor:
        """Sentence representations ``(batch, hidden)`` with the configured pooling.

        ``task``: run that task's encoder modules (its PALs, its LoRA adapter) too; without it the
        shared encoder runs alone (inside ``forward(task=...)``, the task being run)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.pool(self.encode_tokens(input_ids, attention_mask, token_type_ids, task=task), attention_mask)

    def pool(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Sentence vectors from token states with the configured pooling (``cls`` or masked ``mean``)."""
        if self.config.pooling == "cls":
            return states[:, 0]
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def pipeline(self, tokenizer: Any, **kwargs: Any) -> Any:
        """A [`MultitaskPipeline`][hf_multitask.pipeline.MultitaskPipeline] over this model (``pipeline(...)``
        with the package imported, or ``trust_remote_code=True`` without it, builds the same)."""
        from .pipeline import MultitaskPipeline

        return MultitaskPipeline(model=self, tokenizer=tokenizer, **kwargs)

    def forward_all(self, batches: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Logits of several tasks, running the encoder once per distinct input.

        ``batches`` maps tasks to their model inputs. Tasks whose inputs are equal tensors
        (e.g. the same sentences for a sentiment head, a topic head and a tagger), whose type
        can read shared token states (``logits_from_states``) and whose encoder is not routed
        per task (no PALs, no per-task LoRA) share one encoder pass; the others run their own
        forward. Equal to calling the model once per task (tested).
        """
        routed = set(self.routed_tasks)
        groups: list[tuple[dict[str, torch.Tensor], list[str]]] = []
        out: dict[str, torch.Tensor] = {}
        for task, batch in batches.items():
            spec = self.get_task(task)
            if task in routed or not spec.task_type.shares_states(self, spec, batch):
                out[task] = self(task=task, **{k: v for k, v in batch.items() if k != "labels"}).logits
                continue
            key = {k: batch.get(k) for k in ("input_ids", "attention_mask", "token_type_ids")}
            for inputs, members in groups:
                if all((a is None and b is None) or (a is not None and b is not None and a.shape == b.shape and torch.equal(a, b))
                       for a, b in ((inputs[k], key[k]) for k in key)):  # fmt: skip
                    members.append(task)
                    break
            else:
                groups.append((key, [task]))
        for inputs, members in groups:
            mask = inputs["attention_mask"] if inputs["attention_mask"] is not None else torch.ones_like(inputs["input_ids"])
            states = self.encode_tokens(inputs["input_ids"], mask, inputs["token_type_ids"])
            for task in members:
                spec = self.get_task(task)
                out[task] = spec.task_type.logits_from_states(self, spec, states, mask)
        return {t: out[t] for t in batches}

    def encode_tokens(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None, *, task: str | None = None
    ) -> torch.Tensor:
        """Token states ``(batch, length, hidden)`` of the encoder.

        ``task``: run that task's encoder modules (PALs, per-task LoRA) too; without it the shared
        encoder runs alone (inside ``forward(task=...)``, the task being run). The task is part
        of this call ([`hf_multitask.task_routing`][hf_multitask.task_routing]), never left on the model."""
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self._encoder_accepts_token_types:
            kwargs["token_type_ids"] = token_type_ids
        if task is None:
            task = task_of(self)
        else:
            self.get_task(task)
        with routed(self, task, attention_mask):
            return self.encoder(**kwargs).last_hidden_state

    @property
    def routed_tasks(self) -> list[str]:
        """The tasks whose encoder differs from the shared one (their own PALs or LoRA adapter):
        each needs an encoder pass of its own."""
        from .lora import lora_tasks

        own = set(self.config.pal_tasks or []) | set(lora_tasks(self.config.lora, self.task_names))
        return [t for t in self.task_names if t in own]

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func: Any = None, **kwargs: Any) -> None:
        # transformers hands every checkpointed layer this function; the recomputation of a layer (in
        # the backward pass) must run the PALs / LoRA adapter of the task it first ran with
        # (private transformers API, pinned in tests/trainer/test_transformers_surface.py)
        if gradient_checkpointing_func is None:
            from torch.utils.checkpoint import checkpoint as gradient_checkpointing_func
        super()._set_gradient_checkpointing(enable=enable, gradient_checkpointing_func=with_route(gradient_checkpointing_func), **kwargs)

    def encode_pair(self, a: dict[str, torch.Tensor | None], b: dict[str, torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """The pooled vectors ``(u, v)`` of both sides of a siamese pair (``a``, ``b``: dicts of
        ``input_ids`` / ``attention_mask`` / ``token_type_ids``), in one encoder call."""
        from .encoding import stack_pair_sides

        merged = stack_pair_sides(a, b, int(getattr(self.config.encoder_config, "pad_token_id", 0) or 0))
        pooled = self.encode(merged["input_ids"], merged["attention_mask"], merged["token_type_ids"])
        batch = a["input_ids"].shape[0]
        return pooled[:batch], pooled[batch:]

    def forward(
        self,
        task: str,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        input_ids_b: torch.Tensor | None = None,
        attention_mask_b: torch.Tensor | None = None,
        token_type_ids_b: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        word_mask: torch.Tensor | None = None,
        choice_mask: torch.Tensor | None = None,
    ) -> MultitaskOutput | tuple[torch.Tensor, ...]:
        """Run ``task`` on a batch.

        Args:
            task: Name of one of the model's tasks.
            input_ids: The (first) sentence, or both sentences joined for the ``"cross"`` pair encoding.
            attention_mask: Its attention mask.
            token_type_ids: Its token type ids.
            input_ids_b: The second sentence for the siamese ``"bi"`` / ``"cosine"`` encodings.
            attention_mask_b: Its attention mask.
            token_type_ids_b: Its token type ids.
            labels: Class indices (classification), float targets (regression), one tag per
                token with -100 where ignored (token classification).
            word_mask: Token classification: 1 on each word's first sub-token (used by
                predictions; the model ignores it).
            choice_mask: Multiple choice: 1 for real choices, 0 for padding ones (``input_ids``
                is then ``(batch, choices, length)``).
        """
        spec = self.get_task(task)
        if self._lora_layers and self.config.lora["per_task"]:
            from .lora import refuse_merged, refuse_rerouted

            refuse_merged(self._lora_layers, self.config.lora, f"run task {task!r}")
            refuse_rerouted(self._lora_layers)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
                  "input_ids_b": input_ids_b, "attention_mask_b": attention_mask_b, "token_type_ids_b": token_type_ids_b,
                  "choice_mask": choice_mask}  # fmt: skip
        with routed(self, task):  # the task's PALs / LoRA adapter run in this call's encoder passes only
            logits = spec.task_type.logits(self, spec, inputs)
        loss = None
        if labels is not None:
            loss = self.compute_task_loss(spec, logits, labels)
        if return_dict is False:
            return tuple(x for x in (loss, logits) if x is not None)
        return MultitaskOutput(loss=loss, logits=logits)

    @staticmethod
    def compute_task_loss(spec: TaskSpec, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The task's loss (its type's: cross-entropy, mean squared error, ...), in fp32."""
        return spec.task_type.loss(spec, logits, labels)


MultitaskConfig.register_for_auto_class()
MultitaskModel.register_for_auto_class("AutoModel")
