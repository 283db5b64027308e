"""SMART (Jiang et al. 2020): smoothness-inducing adversarial regularisation + Bregman proximal point."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..tasks import TaskSpec


def symmetric_divergence(spec: TaskSpec, p_logits: torch.Tensor, q_logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``l_s`` of SMART: symmetric KL ``KL(p||q) + KL(q||p)`` (batch mean) for classification,
    squared error (mean) for regression. Per-token logits ``(batch, length, labels)`` with a
    ``mask`` (token classification: the labelled positions) give the mean over the masked
    positions."""
    if spec.task_type.logits_kind == "values":
        return ((p_logits.float() - q_logits.float()) ** 2).mean()
    p_log, q_log = p_logits.float().log_softmax(-1), q_logits.float().log_softmax(-1)
    per = (p_log.exp() * (p_log - q_log)).sum(-1) + (q_log.exp() * (q_log - p_log)).sum(-1)
    if mask is None:
        return per.mean()
    weight = mask.to(per.dtype)
    return (per * weight).sum() / weight.sum().clamp_min(1.0)


def _token_mask(spec: TaskSpec, batch: dict[str, Any]) -> torch.Tensor | None:
    """The positions the divergence averages over for per-token tasks (None for sentence tasks)."""
    if not spec.task_type.sequence_labels:
        return None
    if batch.get("word_mask") is not None:
        return batch["word_mask"] != 0
    return batch["attention_mask"] != 0 if batch.get("attention_mask") is not None else None


class SmartRegularizer:
    """Adds SMART's two terms to a task loss: ``L + lambda_s R_s + mu D_breg``.

    * ``R_s = l_s(f(x + delta), f(x))`` with ``delta`` on the input embeddings, started from
      ``N(0, noise_std^2)`` and moved ``steps`` times by normalised gradient ascent of step
      ``step_size``, projected into the L-inf ball of radius ``epsilon``;
    * ``D_breg = l_s(f(x; theta), f(x; theta_ema))`` against an EMA copy of the model,
      ``theta_ema <- beta theta_ema + (1 - beta) theta`` after every optimizer step ([`update_ema()`][hf_multitask.schemes.smart.SmartRegularizer.update_ema]).

    Use it as ``MultitaskTrainer(..., loss_hook=SmartRegularizer(model))``: it is part of each
    task's loss, so gradient surgery sees the regularised per-task gradients.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        lambda_s: float = 1.0,
        epsilon: float = 1e-5,
        step_size: float = 1e-3,
        noise_std: float = 1e-5,
        steps: int = 1,
        mu: float = 1.0,
        beta: float = 0.99,
    ) -> None:
        if steps < 0 or epsilon < 0 or noise_std < 0 or not 0.0 <= beta < 1.0:
            raise ValueError("SMART needs steps >= 0, epsilon >= 0, noise_std >= 0 and beta in [0, 1)")
        self.lambda_s, self.epsilon, self.step_size, self.noise_std, self.steps = lambda_s, epsilon, step_size, noise_std, steps
        self.mu, self.beta = mu, beta
        self.ema = copy.deepcopy(model).eval() if mu > 0 else None
        if self.ema is not None:
            for p in self.ema.parameters():
                p.requires_grad_(False)
        self._delta: torch.Tensor | None = None
        self._handle = model.get_input_embeddings().register_forward_hook(self._perturb)

    def _perturb(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        if self._delta is None:
            return None
        if self._delta.shape != output.shape:
            raise RuntimeError("SMART perturbation shape does not match the embeddings: one forward per perturbed call")
        return output + self._delta.to(output.dtype)

    def _forward_perturbed(self, model: nn.Module, task: str, batch: dict[str, Any], delta: torch.Tensor) -> torch.Tensor:
        self._delta = delta
        try:
            return model(task=task, **batch).logits
        finally:
            self._delta = None

    def _embedding_shape(self, model: nn.Module, batch: dict[str, Any]) -> tuple[int, int, int]:
        ids = batch["input_ids"]
        hidden = model.get_input_embeddings().embedding_dim
        if batch.get("input_ids_b") is not None:  # siamese: both sides go through one encoder call
            length = max(ids.shape[1], batch["input_ids_b"].shape[1])
            return (2 * ids.shape[0], length, hidden)
        return (ids.shape[0], ids.shape[1], hidden)

    def adversarial_loss(self, model: nn.Module, task: str, batch: dict[str, Any], logits: torch.Tensor) -> torch.Tensor:
        """SMART's smoothness term: the symmetric divergence of the logits under the adversarial embedding noise."""
        spec = model.get_task(task)
        if batch["input_ids"].dim() != 2:
            raise ValueError(
                f"SMART: task {task!r} ({spec.kind}) feeds (batch, choices, length) inputs; SMART supports sentence and token tasks"
            )
        shape = self._embedding_shape(model, batch)
        delta = torch.randn(shape, device=logits.device) * self.noise_std
        for _ in range(self.steps):
            delta.requires_grad_(True)
            adv = self._forward_perturbed(model, task, batch, delta)
            (grad,) = torch.autograd.grad(symmetric_divergence(spec, adv, logits.detach(), _token_mask(spec, batch)), delta)
            norm = grad.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
            delta = (delta.detach() + self.step_size * grad / norm).clamp(-self.epsilon, self.epsilon)
        adv = self._forward_perturbed(model, task, batch, delta.detach())
        return symmetric_divergence(spec, adv, logits, _token_mask(spec, batch))

    def bregman(self, model: nn.Module, task: str, batch: dict[str, Any], logits: torch.Tensor) -> torch.Tensor:
        """SMART's Bregman proximal term: the divergence from the EMA teacher's logits."""
        with torch.no_grad():
            teacher = self.ema(task=task, **batch).logits
        spec = model.get_task(task)
        return symmetric_divergence(spec, logits, teacher, _token_mask(spec, batch))

    def __call__(self, model: nn.Module, task: str, batch: dict[str, Any], output: Any) -> torch.Tensor:
        loss = output.loss
        if self.lambda_s > 0:
            loss = loss + self.lambda_s * self.adversarial_loss(model, task, batch, output.logits)
        if self.ema is not None and self.mu > 0:
            loss = loss + self.mu * self.bregman(model, task, batch, output.logits)
        return loss

    @torch.no_grad()
    def update_ema(self, model: nn.Module) -> None:
        """Move the EMA teacher towards ``model`` (the trainer calls it after every optimizer step)."""
        if self.ema is None:
            return
        for p_ema, p in zip(self.ema.parameters(), model.parameters()):
            p_ema.mul_(self.beta).add_(p.detach(), alpha=1.0 - self.beta)

    def state_dict(self) -> dict[str, Any]:
        """The EMA teacher's parameters: saved in checkpoints so a resumed run keeps its teacher."""
        return {"ema": None if self.ema is None else [p.detach().clone() for p in self.ema.parameters()]}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the EMA teacher [`state_dict()`][hf_multitask.schemes.smart.SmartRegularizer.state_dict] saved (on resume)."""
        saved = state.get("ema")
        if (saved is None) != (self.ema is None):
            raise ValueError("SMART state: the checkpoint's EMA teacher does not match this regulariser (mu > 0 in one only)")
        if saved is not None:
            params = list(self.ema.parameters())
            if len(saved) != len(params):
                raise ValueError(f"SMART state: {len(saved)} EMA tensors for {len(params)} parameters")
            for p, value in zip(params, saved):
                p.copy_(value)

    def remove(self) -> None:
        """Detach the embedding hook from the model."""
        self._handle.remove()
