"""`MultitaskConfig`: the encoder's config nested inside, plus task specs, pair encoding and heads."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig

from .tasks import PAIR_ENCODINGS, TaskSpec, as_task_spec, metric_groups

HEAD_TYPES = ("linear", "mlp", "lstm")
POOLINGS = ("cls", "mean")


REMOTE_PIPELINE_TASK = "multitask-text-remote"
_SPECIAL_TOKENS = ("pad_token_id", "bos_token_id", "eos_token_id")


class MultitaskConfig(PretrainedConfig):
    """Configuration of a [`MultitaskModel`][hf_multitask.modeling.MultitaskModel].

    Args:
        encoder_config: Config of the shared encoder (any ``AutoModel`` encoder), as a
            ``PretrainedConfig`` or its dict form (with ``model_type``).
        tasks: Task specs (``TaskSpec`` or dicts).
        pair_encoding: Default encoding of sentence-pair tasks: ``"cross"`` (both sentences
            in one sequence), ``"bi"`` (siamese, features ``[u, v, |u-v|, u*v]``) or
            ``"cosine"`` (siamese, cosine similarity scaled into the label range).
        head_type: ``"linear"``, ``"mlp"`` or ``"lstm"`` (a BiLSTM over the token states plus
            [CLS]; a siamese ``"bi"`` pair has no one sequence of token states, so its task takes
            a linear head over ``[u, v, |u-v|, u*v]``, and the recipe's log names such tasks).
        head_hidden_sizes: Hidden layer sizes of the MLP head.
        head_dropout: Dropout before every head layer.
        pooling: Sentence representation: ``"cls"`` (first token) or ``"mean"`` (masked mean).
        pal_tasks: Tasks that get Projected Attention Layers (``["all"]`` for every task;
            empty: no PALs). See [`hf_multitask.pal`][hf_multitask.pal].
        pal_rank: PAL width r (divisible by ``pal_heads``).
        pal_heads: Attention heads inside the r-dimensional PAL space.
        pal_shared_projections: Share V_E / V_D across layers (per task), as in the paper.
        pal_init: ``"zero"`` (V_D = 0: adding PALs leaves the model's outputs unchanged) or
            ``"xavier"``.
        adjustment_tasks: Classification tasks whose output probabilities go through a learned
            C x C adjustment matrix (initialised to the identity), as for SST in the published work.
        lora: LoRA settings written by [`MultitaskModel.add_lora()`][hf_multitask.modeling.MultitaskModel.add_lora] (re-injected on load).
        train_max_length: The ``max_length`` (special tokens included) the model's inputs were cut
            to in training, which every serving path (the pipeline, ``hf-multitask predict``,
            ``tweeteval-test``) takes by default
            ([`serving_max_length`][hf_multitask.configuration.serving_max_length]). The recipe records
            it; None (checkpoints saved before it was recorded): each path keeps its own default.
            Not called ``max_length``: transformers takes that name for a generation setting and
            refuses to save a model config holding one.
    """

    model_type = "hf_multitask"
    sub_configs = {"encoder_config": AutoConfig}

    def __init__(
        self,
        encoder_config: PretrainedConfig | dict[str, Any] | None = None,
        tasks: list[TaskSpec | dict[str, Any]] | None = None,
        pair_encoding: str = "cross",
        head_type: str = "linear",
        head_hidden_sizes: list[int] | tuple[int, ...] = (),
        head_dropout: float = 0.1,
        pooling: str = "cls",
        pal_tasks: list[str] | tuple[str, ...] | None = None,
        pal_rank: int = 96,
        pal_heads: int = 12,
        pal_shared_projections: bool = True,
        pal_init: str = "zero",
        lora: dict[str, Any] | None = None,
        adjustment_tasks: list[str] | tuple[str, ...] | None = None,
        train_max_length: int | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(encoder_config, dict):
            encoder_config = dict(encoder_config)
            if "model_type" not in encoder_config:
                raise ValueError("encoder_config dict needs a 'model_type' key")
            encoder_config = AutoConfig.for_model(**encoder_config)
        self.encoder_config = encoder_config
        specs = [as_task_spec(t) for t in (tasks or [])]
        names = [t.name for t in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"Task names must be unique, got {names}")
        metric_groups(specs)  # members of a pooled metric group must agree
        self.tasks = [t.to_dict() for t in specs]
        if pair_encoding not in PAIR_ENCODINGS:
            raise ValueError(f"pair_encoding must be one of {PAIR_ENCODINGS}, got {pair_encoding!r}")
        if head_type not in HEAD_TYPES:
            raise ValueError(f"head_type must be one of {HEAD_TYPES}, got {head_type!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if not 0.0 <= float(head_dropout) < 1.0:
            raise ValueError(f"head_dropout must be in [0, 1), got {head_dropout}")
        sizes = [int(h) for h in head_hidden_sizes]
        if any(h <= 0 for h in sizes):
            raise ValueError(f"head_hidden_sizes must be positive, got {sizes}")
        self.pair_encoding = pair_encoding
        self.head_type = head_type
        self.head_hidden_sizes = sizes
        self.head_dropout = float(head_dropout)
        self.pooling = pooling
        pal_tasks = list(pal_tasks or [])
        if pal_tasks == ["all"]:
            pal_tasks = list(names)
        unknown = [t for t in pal_tasks if t not in names]
        if unknown:
            raise ValueError(f"pal_tasks names unknown task(s) {unknown}; tasks are {names}")
        if pal_init not in ("zero", "xavier"):
            raise ValueError(f"pal_init must be 'zero' or 'xavier', got {pal_init!r}")
        if int(pal_rank) <= 0 or int(pal_heads) <= 0 or int(pal_rank) % int(pal_heads):
            raise ValueError(f"pal_rank ({pal_rank}) must be a positive multiple of pal_heads ({pal_heads})")
        self.pal_tasks = pal_tasks
        self.pal_rank = int(pal_rank)
        self.pal_heads = int(pal_heads)
        self.pal_shared_projections = bool(pal_shared_projections)
        self.pal_init = pal_init
        self.lora = dict(lora) if lora else None
        adjustment_tasks = list(adjustment_tasks or [])
        for t in adjustment_tasks:
            spec = next((s for s in specs if s.name == t), None)
            if spec is None or not spec.task_type.label_classes:
                raise ValueError(f"adjustment_tasks: {t!r} is not a classification task of this model")
        self.adjustment_tasks = adjustment_tasks
        if train_max_length is not None and (isinstance(train_max_length, bool) or int(train_max_length) < 1):
            raise ValueError(f"train_max_length must be a positive number of tokens or None, got {train_max_length!r}")
        self.train_max_length = None if train_max_length is None else int(train_max_length)
        for spec in specs:
            spec.task_type.validate_model(spec, self)
        # the encoder's special tokens, so the Trainer finds the model already aligned with its
        # tokenizer (and does not warn that it "updated" them) and saved configs carry them from the start
        for key in _SPECIAL_TOKENS:
            if kwargs.get(key) is None and getattr(encoder_config, key, None) is not None:
                kwargs[key] = getattr(encoder_config, key)
        # pipeline(model=..., trust_remote_code=True) finds the pipeline in the checkpoint's code
        # (under its own task name: with the package imported, "multitask-text" is the registered pipeline)
        kwargs.setdefault(
            "custom_pipelines", {REMOTE_PIPELINE_TASK: {"impl": "pipeline.MultitaskPipeline", "pt": ["AutoModel"], "type": "text"}}
        )
        super().__init__(**kwargs)

    @property
    def task_specs(self) -> list[TaskSpec]:
        """The tasks as [`TaskSpec`][hf_multitask.tasks.TaskSpec] objects, in config order."""
        return [TaskSpec.from_dict(t) for t in self.tasks]

    @property
    def task_names(self) -> list[str]:
        return [t["name"] for t in self.tasks]

    def get_task(self, name: str) -> TaskSpec:
        """Look a task up by name; unknown names raise ``KeyError`` listing the known ones."""
        for t in self.tasks:
            if t["name"] == name:
                return TaskSpec.from_dict(t)
        raise KeyError(f"Unknown task {name!r}; this model knows {self.task_names}")

    def task_pair_encoding(self, spec: TaskSpec) -> str | None:
        """Effective pair encoding of a task (None for single-sentence tasks)."""
        if not spec.is_pair:
            return None
        return spec.pair_encoding or self.pair_encoding


def trained_max_length(config: Any) -> int | None:
    """The ``train_max_length`` of a [`MultitaskConfig`][hf_multitask.MultitaskConfig], or of the one
    a config nests as ``expert_config`` (a [`RoutedMultitaskConfig`][hf_multitask.RoutedMultitaskConfig]);
    None when it is unknown."""
    for candidate in (config, getattr(config, "expert_config", None)):
        value = getattr(candidate, "train_max_length", None)
        if value is not None:
            return int(value)
    return None


# encoders whose position ids start after the padding index (RoBERTa's scheme): pad_token_id + 1 positions are never a token's
_PADDING_OFFSET_ENCODERS = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "ibert", "longformer", "luke",
                                      "markuplm", "mpnet", "roberta-prelayernorm", "xmod", "lilt", "layoutlmv3"})  # fmt: skip
_NO_LIMIT = 1_000_000  # a tokenizer that states no model_max_length says 1e30


def encoder_max_length(config: Any, tokenizer: Any = None) -> int | None:
    """The most tokens (special tokens included) the encoder of ``config`` (a
    [`MultitaskConfig`][hf_multitask.configuration.MultitaskConfig] or a routed model's config) can
    take: its ``max_position_embeddings``, less the positions a RoBERTa-like encoder reserves
    (``pad_token_id + 1``), or the ``tokenizer``'s ``model_max_length`` when it states a smaller
    one; None when neither says."""
    encoder = getattr(config, "encoder_config", None)
    positions = getattr(encoder, "max_position_embeddings", None)
    limit = None
    if isinstance(positions, int) and positions > 0:
        offset = int(getattr(encoder, "pad_token_id", None) or 0) + 1 if encoder.model_type in _PADDING_OFFSET_ENCODERS else 0
        limit = positions - offset
    stated = getattr(tokenizer, "model_max_length", None)
    if isinstance(stated, int) and 0 < stated < _NO_LIMIT:
        limit = stated if limit is None else min(limit, stated)
    return limit


def serving_max_length(config: Any, asked: int | None = None, fallback: int | None = None, tokenizer: Any = None) -> int | None:
    """The ``max_length`` a serving path cuts its inputs to: ``asked`` when given, else the length
    the model was trained with
    ([`trained_max_length`][hf_multitask.configuration.trained_max_length]), else ``fallback``
    (the path's own default, for checkpoints that do not record it), cut to what the encoder can
    take ([`encoder_max_length`][hf_multitask.configuration.encoder_max_length]: a 512 default is
    past the end of a 128-position encoder). Every serving path asks this one function."""
    if asked is not None:
        return int(asked)
    trained = trained_max_length(config)
    if trained is not None:
        return trained
    limit = encoder_max_length(config, tokenizer)
    return fallback if fallback is None or limit is None else min(int(fallback), limit)
