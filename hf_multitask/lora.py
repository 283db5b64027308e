"""LoRA adapters through ``peft``: one shared LoRA, or one LoRA per task switched with the task.

``model.add_lora(...)`` injects LoRA layers into the encoder with ``peft.inject_adapter_in_model``
and records the settings in ``config.lora``; ``MultitaskModel.__init__`` re-injects them from
the config, so a LoRA model saves and loads with plain ``save_pretrained`` /
``AutoModel.from_pretrained`` (no separate adapter files). With ``per_task=True`` every task
has its own adapter, named after the task, and the forward pass activates the adapter of the
task being run; those adapters count as task parameters (never projected by surgery).
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

DEFAULT_TARGETS = ("query", "value")
SHARED_ADAPTER = "shared"


def lora_settings(
    *, r: int = 8, alpha: int = 16, dropout: float = 0.0, target_modules=DEFAULT_TARGETS, per_task: bool = False
) -> dict[str, Any]:
    """Validated LoRA settings as stored in ``MultitaskConfig.lora``."""
    if int(r) <= 0:
        raise ValueError(f"LoRA rank must be positive, got {r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    if not targets:
        raise ValueError("LoRA needs at least one target module name")
    return {"r": int(r), "alpha": int(alpha), "dropout": float(dropout), "target_modules": targets, "per_task": bool(per_task)}


def inject_lora(encoder: nn.Module, settings: dict[str, Any], adapters: list[str]) -> list[nn.Module]:
    """Inject one LoRA adapter per name into ``encoder``; returns the LoRA layers."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    config = LoraConfig(
        r=settings["r"], lora_alpha=settings["alpha"], lora_dropout=settings["dropout"], target_modules=settings["target_modules"]
    )
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
    return layers


def activate(layers: list[nn.Module], adapter: str) -> None:
    """Make ``adapter`` the active one on every LoRA layer, leaving ``requires_grad`` alone
    (peft's ``set_adapter`` would freeze the other tasks' adapters)."""
    for layer in layers:
        layer._active_adapter = [adapter]
