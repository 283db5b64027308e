"""Continuing from an earlier run's saved multitask model (``--backbone out/best``): its trained
encoder, heads and adapters, and the model flags of this run applied where they can apply.

A model flag left out keeps the checkpoint's setting. A flag that is given is applied when the
trained weights allow it (``--pooling``, ``--head_dropout``, a ``--pair_encoding`` that no
trained task uses, more ``--adjustment_tasks`` or ``--pal_tasks``: added, starting as no-ops);
a flag the trained weights cannot follow (another ``--head_type`` or ``--head_hidden_sizes``,
another encoding for a trained pair task) is refused with a message naming it; settings fixed
by adapters already trained (their rank, heads, LoRA settings) are kept, with a warning when the
flags ask for others.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..configuration import MultitaskConfig
from ..modeling import MultitaskModel
from ..tasks import TaskSpec
from .arguments import ModelArguments, RecipeError

__all__ = ["continue_from"]

logger = logging.getLogger("hf_multitask.recipe")


def _config_changes(backbone: str, config: MultitaskConfig, args: ModelArguments) -> dict[str, Any]:
    """The settings of ``config`` this run's flags change (refused where the trained heads cannot follow)."""
    changes: dict[str, Any] = {}
    for key in ("pooling", "head_dropout"):  # read at every forward / built into fresh modules: they apply
        value = getattr(args, key)
        if value is not None and value != getattr(config, key):
            changes[key] = value
    for key in ("head_type", "head_hidden_sizes"):
        value = getattr(args, key)
        if value is not None and value != getattr(config, key):
            raise RecipeError(
                f"--{key} {value}: the trained heads of --backbone {backbone} are {config.head_type!r} with hidden sizes "
                f"{config.head_hidden_sizes}, and the head type is the whole model's: leave --{key} out to keep them, or start "
                "from an encoder"
            )
    if args.pair_encoding is not None and args.pair_encoding != config.pair_encoding:
        bound = [s.name for s in config.task_specs if s.is_pair and s.pair_encoding is None]
        if bound:
            raise RecipeError(
                f"--pair_encoding {args.pair_encoding}: the trained pair task(s) {bound} of --backbone {backbone} are "
                f"{config.pair_encoding}-encoded, and their heads fit no other encoding: leave --pair_encoding out (a new task "
                "takes its own with --task_pair_encodings), or start from an encoder"
            )
        changes["pair_encoding"] = args.pair_encoding
    added = [t for t in args.adjustment_tasks if t not in config.adjustment_tasks]
    if added:  # a new adjustment matrix starts as the identity: the trained model's outputs are unchanged
        changes["adjustment_tasks"] = [*config.adjustment_tasks, *added]
    dropped = [t for t in config.adjustment_tasks if args.adjustment_tasks and t not in args.adjustment_tasks]
    if dropped:
        logger.warning("--backbone %s: tasks %s keep their trained adjustment matrices (--adjustment_tasks only adds)", backbone, dropped)
    return changes


def _add_adapters(backbone: str, model: MultitaskModel, args: ModelArguments) -> None:
    """``--pal_tasks`` and ``--lora_r`` on a continued model: new adapters added, trained ones kept."""
    config = model.config
    wanted = list(model.task_names) if args.pal_tasks == ["all"] else list(args.pal_tasks)
    missing = [t for t in wanted if t not in config.pal_tasks]
    if wanted and config.pal_tasks:  # the trained PALs fix the rank, heads and projection sharing
        asked = (args.pal_rank, args.pal_heads, args.pal_shared_projections)
        have = (config.pal_rank, config.pal_heads, config.pal_shared_projections)
        if asked != have:
            logger.warning("--backbone %s: its PALs keep rank %d, %d heads, shared projections %s (the PAL flags ask for %s)",
                           backbone, *have, asked)  # fmt: skip
    if missing:
        fixed = (
            {} if config.pal_tasks else {"rank": args.pal_rank, "heads": args.pal_heads, "shared_projections": args.pal_shared_projections}
        )
        model.add_pal(missing, init=args.pal_init, **fixed)
        logger.info("--backbone %s: PALs added for %s", backbone, missing)
    if args.lora_r > 0 and config.lora:
        asked = {"r": args.lora_r, "alpha": args.lora_alpha, "target_modules": list(args.lora_targets), "per_task": args.lora_per_task}
        have = {k: config.lora[k] for k in asked}
        if asked != have:
            logger.warning("--backbone %s: its trained LoRA is kept as it is, %s (the LoRA flags ask for %s)", backbone, have, asked)


def continue_from(backbone: str, config: MultitaskConfig, specs: list[TaskSpec], args: ModelArguments) -> MultitaskModel:
    """The saved multitask model at ``backbone`` (its ``config``) for this run's tasks ``specs``:
    trained tasks keep their heads, new tasks get fresh ones, and the model flags ``args`` apply
    as the module docstring says."""
    have = {s.name: s for s in config.task_specs}
    for spec in specs:
        if spec.name in have and have[spec.name] != spec:
            raise RecipeError(
                f"--backbone {backbone}: its task {spec.name!r} is {have[spec.name]}, but this run defines it as {spec}; "
                "rename the task or make the definitions agree"
            )
    changes = _config_changes(backbone, config, args)
    trained = MultitaskModel.from_pretrained(backbone, dtype=torch.float32)
    new = [s for s in specs if s.name not in have]
    model = trained
    if new or changes:
        config = MultitaskConfig.from_dict({**config.to_dict(), **changes, "tasks": [*config.tasks, *[s.to_dict() for s in new]]})
        model = MultitaskModel(config)
        missing, unexpected = model.load_state_dict(trained.state_dict(), strict=False)
        added = {s.name for s in new} | set(changes.get("adjustment_tasks", [])) - set(trained.config.adjustment_tasks)
        fresh = {k.split(".")[1] for k in missing}
        if unexpected or not fresh <= added:
            raise RecipeError(
                f"--backbone {backbone}: could not add tasks {[s.name for s in new]} (missing {missing}, unexpected {unexpected})"
            )
        if changes:
            logger.info("--backbone %s: this run's model flags change %s", backbone, changes)
    _add_adapters(backbone, model, args)
    logger.info("continuing from %s: tasks %s keep their trained heads, %s get new ones", backbone, sorted(have), [s.name for s in new])
    return model
