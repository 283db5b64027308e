"""The recipe's model: the backbone (the packaged MiniLM, a folder, a Hub id, or an earlier
run's ``best/``), the heads, adapters and which parameters train."""

from __future__ import annotations

import logging
from typing import Any

from transformers import AutoConfig, AutoTokenizer

from ..backbone import default_backbone
from ..configuration import MultitaskConfig
from ..heads import MLPHead
from ..model_folders import ModelFolderError, check_model_folder, is_local_folder
from ..modeling import MultitaskModel
from ..tasks import TaskSpec
from .arguments import ModelArguments, RecipeError
from .continuation import continue_from

__all__ = ["resolve_backbone", "check_max_length", "load_model"]

logger = logging.getLogger("hf_multitask.recipe")

_NO_NETWORK_HINT = ("With no network, pass --backbone packaged (the offline MiniLM from `pip install 'hf-multitask[offline]'`) or "
                    "a local model folder.")  # fmt: skip


def resolve_backbone(name: str) -> str:
    """``--backbone``: ``packaged`` is the offline MiniLM's folder; anything else is as given."""
    return default_backbone() if name == "packaged" else name


# encoders whose position ids start after the padding index (RoBERTa's offset of pad_token_id + 1)
_POSITION_OFFSET_TYPES = ("roberta", "xlm-roberta", "camembert", "longformer", "xlm-roberta-xl")


def _backbone_config(backbone: str):
    try:
        return AutoConfig.from_pretrained(backbone)
    except (OSError, ValueError) as err:
        raise RecipeError(f"Could not load the backbone {backbone!r}: {err}\n{_NO_NETWORK_HINT}") from None


def check_max_length(max_length: int, encoder_config) -> None:
    """``max_length`` (special tokens included) must fit the encoder's position embeddings."""
    positions = getattr(encoder_config, "max_position_embeddings", None)
    if positions is None:
        return
    if encoder_config.model_type in _POSITION_OFFSET_TYPES:
        positions -= int(getattr(encoder_config, "pad_token_id", 1) or 0) + 1
    if not 1 <= max_length <= positions:
        raise RecipeError(
            f"--max_length {max_length} does not fit the encoder ({encoder_config.model_type}): it counts the special "
            f"tokens and must be between 1 and {positions}, the encoder's position limit"
        )


def load_model(model_args: ModelArguments, specs: list[TaskSpec], max_length: int | None = None) -> tuple[MultitaskModel, Any]:
    """The model and tokenizer of the run. ``--backbone`` is an encoder (fresh heads) or a saved
    multitask model (``out/best`` of an earlier run: its heads are kept, new tasks get heads, and
    the model flags apply where the trained weights allow: see
    ``hf_multitask.recipe.continuation``)."""
    backbone = resolve_backbone(model_args.backbone)
    if is_local_folder(backbone):
        try:
            check_model_folder(backbone)
        except ModelFolderError as err:
            raise RecipeError(f"--backbone: {err}") from None
    overrides = model_args.task_pair_encodings or {}
    specs = [TaskSpec.from_dict({**s.to_dict(), "pair_encoding": overrides[s.name]}) if s.name in overrides else s for s in specs]
    config = _backbone_config(backbone)
    if getattr(config, "model_type", None) == "hf_multitask_routed":
        raise RecipeError(f"--backbone {backbone} is a routed two-step checkpoint; continue from one of its experts instead")
    own = isinstance(config, MultitaskConfig)
    if max_length is not None:
        check_max_length(max_length, config.encoder_config if own else config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(backbone)
        if own:
            model = continue_from(backbone, config, specs, model_args)
        else:
            given = {k: getattr(model_args, k) for k in ("pair_encoding", "head_type", "head_hidden_sizes", "head_dropout", "pooling")}
            model = MultitaskModel.from_encoder(
                backbone,
                tasks=specs,
                **{k: v for k, v in given.items() if v is not None},  # the rest: MultitaskConfig's defaults
                pal_tasks=model_args.pal_tasks,
                pal_rank=model_args.pal_rank,
                pal_heads=model_args.pal_heads,
                pal_shared_projections=model_args.pal_shared_projections,
                pal_init=model_args.pal_init,
                adjustment_tasks=model_args.adjustment_tasks,
            )
    except OSError as err:
        raise RecipeError(f"Could not load the backbone {backbone!r}: {err}\n{_NO_NETWORK_HINT}") from None
    if model_args.lora_r > 0 and not (own and model.config.lora):
        model.add_lora(
            r=model_args.lora_r, alpha=model_args.lora_alpha, target_modules=model_args.lora_targets, per_task=model_args.lora_per_task
        )
    if model.config.head_type == "lstm":  # a siamese pair gives no one sequence of token states: say which tasks take another head
        other = [t for t in model.task_names if isinstance(model.heads[t], MLPHead)]
        if other:
            logger.warning("--head_type lstm: task(s) %s take a linear head (over [u, v, |u-v|, u*v] for a bi-encoded pair): an "
                           "LSTM reads one sequence of token states, which their encoding does not give", other)  # fmt: skip
    if max_length is not None:  # what the pipeline, `predict` and `tweeteval-test` cut inputs to by default
        model.config.train_max_length = int(max_length)
    counts = model.set_trainable(model_args.trainable)
    logger.info("parameters: %s", counts)
    return model, tokenizer
