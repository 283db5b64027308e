"""FSDP2 through accelerate: the wrap units for a multitask model, and its full weights.

accelerate's FSDP2 preparation shards every module whose class is in the wrap list (by default
the model's ``_no_split_modules``), then carves the input embedding into a unit of its own.
For BERT-family encoders the wrap list holds the embeddings block (``BertEmbeddings``), which
contains the input embedding: the word embedding would be sharded twice, and ``fully_shard``
stops with ``TypeError: Invariant encountered: value was None`` (accelerate 1.15, torch 2.13).
[`fsdp2_wrap_classes()`][hf_multitask.fsdp.fsdp2_wrap_classes] keeps such classes out of the default list, so the encoder layers
are the units, then the input embedding, then the root (heads, adapters, the rest of the
embeddings block); a list the user gave is checked and refused with the classes named. A model
that an earlier phase of the run already sharded (LP-FT, head pretraining) is kept as it is.
"""

from __future__ import annotations

import functools
from typing import Any

from torch import nn

__all__ = ["fsdp2_wrap_classes", "gather_full_model"]


def _embedding_containers(model: nn.Module) -> set[str]:
    """Class names of the modules that strictly contain the model's input embedding."""
    get = getattr(model, "get_input_embeddings", None)
    embed = get() if callable(get) else None
    if embed is None:
        return set()
    return {type(m).__name__ for m in model.modules() if m is not embed and any(c is embed for c in m.modules())}


def fsdp2_wrap_classes(plugin: Any, model: nn.Module) -> list[str] | None:
    """Fix the plugin's transformer wrap classes for ``model`` (see the module docstring).

    Returns the class names set on ``plugin.transformer_cls_names_to_wrap`` (``[]`` for a model
    already sharded), or ``None`` when nothing was changed (a size-based or no auto-wrap policy,
    or no clash). Raises
    ``ValueError`` naming ``fsdp_config["transformer_layer_cls_to_wrap"]`` when the user's own
    list holds a class that contains the input embedding.
    """
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    policy = getattr(plugin, "auto_wrap_policy", None)
    if isinstance(policy, functools.partial):
        policy = policy.func
    if policy is not transformer_auto_wrap_policy:
        return None
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        # Sharded by an earlier phase of the run (LP-FT's probe, head pretraining): accelerate
        # leaves an FSDP module as it is, but first looks the wrap classes up by name, and
        # fully_shard renamed them (BertLayer -> FSDPBertLayer), so the lookup would fail.
        plugin.transformer_cls_names_to_wrap = []
        return []
    containers = _embedding_containers(model)
    explicit = getattr(plugin, "transformer_cls_names_to_wrap", None)
    names = list(explicit) if explicit is not None else list(getattr(model, "_no_split_modules", None) or [])
    clash = sorted(n for n in names if n in containers)
    if not clash:
        return None
    kept = [n for n in names if n not in containers]
    if explicit is not None:
        raise ValueError(
            f"fsdp_config['transformer_layer_cls_to_wrap'] lists {clash}, which contain the input embedding: accelerate's "
            f"FSDP2 shards the input embedding as a unit of its own, so it would be sharded twice. List the layer classes "
            f"only, e.g. {kept or ['BertLayer']}"
        )
    plugin.transformer_cls_names_to_wrap = kept
    return kept


def gather_full_model(model: nn.Module, main_process: bool) -> nn.Module | None:
    """A plain (unsharded) copy of an FSDP2-sharded ``model``, on the CPU, on the main process.

    A collective: every rank must call it (each sharded tensor is all-gathered). Returns the copy
    on the main process and ``None`` elsewhere, so only one rank holds the full weights.
    ``model`` must be rebuildable from its config (``type(model)(model.config)``), as
    [`MultitaskModel`][hf_multitask.modeling.MultitaskModel] is.
    """
    state = {}
    for key, value in model.state_dict().items():
        full = value.full_tensor() if hasattr(value, "full_tensor") else value
        if main_process:
            state[key] = full.detach().to("cpu", copy=True)
        del full
    if not main_process:
        return None
    plain = type(model)(model.config)
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(dtypes) == 1:
        plain.to(dtype=dtypes.pop())
    plain.load_state_dict(state)
    return plain
