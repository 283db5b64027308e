"""Projected Attention Layers (Stickland & Murray 2019, "BERT and PALs").

For a task t and encoder layer l, the PAL is a low-rank branch beside self-attention:

    PAL(h) = V_D g(V_E h),        layer output = LN(h + SA(h) + PAL(h))

with V_E: d -> r, V_D: r -> d (shared across layers, per task, as in the paper; or per
layer) and g multi-head attention in the r-dimensional space. The branch is attached to
the encoder by a forward pre-hook on each layer's self-attention output module (the one
that computes ``LN(dense(SA(h)) + h)``): the hook adds ``PAL(h)`` to its residual input,
so the encoder code is not forked. Supported: BERT-style layouts
(``encoder.layer[i].attention.output`` taking ``(attention_output, input_tensor)``), i.e.
BERT, RoBERTa, XLM-R, CamemBERT, ELECTRA.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .task_routing import current_route

SUPPORTED_PAL_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "electra")
PAL_INITS = ("zero", "xavier")


def pal_attention_sites(encoder: nn.Module) -> list[nn.Module]:
    """The self-attention output modules the PAL hooks attach to, one per layer.

    Raises ``ValueError`` naming the architecture when it is not supported.
    """
    model_type = getattr(getattr(encoder, "config", None), "model_type", type(encoder).__name__)
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if model_type not in SUPPORTED_PAL_MODEL_TYPES or layers is None:
        raise ValueError(
            f"PAL adapters support BERT-style encoders ({', '.join(SUPPORTED_PAL_MODEL_TYPES)}); "
            f"got model_type {model_type!r}. Use LoRA (hf_multitask.lora) for other architectures."
        )
    sites = []
    for i, layer in enumerate(layers):
        site = getattr(getattr(layer, "attention", None), "output", None)
        if site is None or not hasattr(site, "LayerNorm"):
            raise ValueError(f"Layer {i} of the {model_type} encoder has no attention.output with a LayerNorm: PAL cannot attach")
        sites.append(site)
    return sites


class LowRankSelfAttention(nn.Module):
    """Multi-head self-attention inside the r-dimensional PAL space (the ``g`` of the paper)."""

    def __init__(self, rank: int, heads: int) -> None:
        super().__init__()
        if rank % heads:
            raise ValueError(f"pal_rank {rank} must be divisible by pal_heads {heads}")
        self.heads, self.head_dim = heads, rank // heads
        self.query = _tag(nn.Linear(rank, rank), "attention")
        self.key = _tag(nn.Linear(rank, rank), "attention")
        self.value = _tag(nn.Linear(rank, rank), "attention")

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        b, n, r = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        mask = None
        if attention_mask is not None:
            mask = attention_mask.to(torch.bool)
            # a row with no token to attend to (a padding choice of a multiple-choice batch) attends to all
            # of them instead: a fully masked softmax is NaN on some GPU kernels, and the row is ignored anyway
            mask = (mask | ~mask.any(-1, keepdim=True))[:, None, None, :]
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out.transpose(1, 2).reshape(b, n, r)


class PALAdapter(nn.Module):
    """All PAL parameters of one task: projections (shared or per layer) and per-layer attention."""

    def __init__(self, hidden: int, rank: int, heads: int, layers: int, shared_projections: bool) -> None:
        super().__init__()
        n_proj = 1 if shared_projections else layers
        self.shared_projections = shared_projections
        self.down = nn.ModuleList(_tag(nn.Linear(hidden, rank, bias=False), "down") for _ in range(n_proj))  # V_E
        self.up = nn.ModuleList(_tag(nn.Linear(rank, hidden, bias=False), "up") for _ in range(n_proj))  # V_D
        self.attention = nn.ModuleList(LowRankSelfAttention(rank, heads) for _ in range(layers))

    def forward(self, layer: int, h: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        p = 0 if self.shared_projections else layer
        return self.up[p](self.attention[layer](self.down[p](h), attention_mask))

    @staticmethod
    def count(hidden: int, rank: int, layers: int, shared_projections: bool) -> int:
        """Closed-form parameter count: ``P * 2 d r + L * 3 (r^2 + r)`` with ``P = 1`` shared or ``L``."""
        projections = 1 if shared_projections else layers
        return projections * 2 * hidden * rank + layers * 3 * (rank * rank + rank)


def attach_pal_hook(site: nn.Module, layer: int) -> Any:
    """Register the PAL pre-hook on one attention-output module (``layer``: its layer index).

    The hook reads the task from the route of the encoder call it runs in
    ([`hf_multitask.task_routing`][hf_multitask.task_routing]) and takes that task's PAL from the
    route's model, so a deep copy of the model (EMA teachers, ensembles, two-step copies), a
    replica, two threads at once and a checkpointed recomputation each run the right PALs.
    """
    object.__setattr__(site, "_pal_layer", layer)
    return site.register_forward_pre_hook(_pal_pre_hook, with_kwargs=True)


def _pal_pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]):
    route = current_route()
    if route is None or route.task is None:
        return None
    adapters = getattr(route.owner, "pals", None)
    if adapters is None or route.task not in adapters:
        return None
    adapter, layer, mask = adapters[route.task], module._pal_layer, route.attention_mask
    if len(args) >= 2:
        h = args[1]
        return (args[0], h + adapter(layer, h, mask), *args[2:]), kwargs
    if "input_tensor" in kwargs:
        h = kwargs["input_tensor"]
        return args, {**kwargs, "input_tensor": h + adapter(layer, h, mask)}
    raise RuntimeError("PAL hook could not find the residual input of the attention output module")


def init_pal_linear(module: nn.Linear, init_mode: str, std: float, initializer) -> None:
    """Initialise one PAL linear layer by its role (``_pal_role``: ``up``, ``down`` or ``attention``).

    ``zero`` sets V_D ("up") to 0 so the PALs start with no influence; ``xavier`` uses
    Xavier-uniform everywhere. Linear layers are the unit because transformers skips
    parameter-less container modules when it initialises custom-code models.
    """
    role = module._pal_role
    if init_mode == "xavier":
        initializer.xavier_uniform_(module.weight)
    elif role == "up":
        initializer.zeros_(module.weight)
    else:
        initializer.normal_(module.weight, mean=0.0, std=std)
    if module.bias is not None:
        initializer.zeros_(module.bias)


def _tag(linear: nn.Linear, role: str) -> nn.Linear:
    linear._pal_role = role
    return linear
