"""`MultitaskTrainer`'s accounting and evaluation: FLOPs and tokens of nested per-task batches,
``evaluate`` and ``predict`` over ``{task: dataset}`` (a mixin of [`MultitaskTrainer`][hf_multitask.trainer.MultitaskTrainer])."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import datasets
import torch
from transformers import Trainer
from transformers.trainer_utils import PredictionOutput

from .metrics import prefixed_metrics
from .precision import eval_dtype
from .predict import evaluate as evaluate_tasks
from .predict import metrics_from_predictions
from .predict import predict as predict_task

logger = logging.getLogger("hf_multitask.trainer")


_KEPT_EVALUATIONS = 16  # the newest evaluations kept for reuse (metrics and predictions: small)


def weights_key(model: torch.nn.Module) -> str:
    """BLAKE2 digest of a model's parameters (names, dtypes, shapes and bytes): equal exactly when
    the weights are (about 0.1 s for MiniLM's 23M parameters)."""
    digest = hashlib.blake2b(digest_size=20)
    for name, p in model.named_parameters():
        data = p.detach().cpu().contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def evaluation_key(core: torch.nn.Module, data: dict[str, Any], prefix: str, primary: Any, batch_size: int, pad: int) -> tuple | None:
    """What an evaluation's result depends on: the weights ([`weights_key()`][hf_multitask.trainer_evaluation.weights_key]), the evaluation
    sets (each task's dataset fingerprint and length, in order), the model's config (the tasks'
    metric settings and metric groups), the primary tasks, the metric prefix, the batch size and
    the padding id. ``None`` (never reused) when a set has no fingerprint to tell it by."""
    sets = []
    for task, ds in data.items():
        fingerprint = getattr(ds, "_fingerprint", None)  # datasets' content identity: a new one for every change
        if not isinstance(fingerprint, str):
            return None
        sets.append((task, fingerprint, len(ds)))
    config = getattr(core, "config", None)
    settings = config.to_json_string(use_diff=False) if hasattr(config, "to_json_string") else repr(config)
    return (weights_key(core), prefix, tuple(sets), hashlib.blake2b(settings.encode(), digest_size=20).hexdigest(),
            tuple(primary) if primary else None, batch_size, pad)  # fmt: skip


class _EvaluationMixin(Trainer):
    """Per-task evaluation and prediction; token and FLOP accounting of nested batches."""

    _evaluations: dict[Any, tuple[dict[str, float], dict[str, Any]]]

    # ------------------------------------------------------------------ accounting
    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        """``6 x tokens x parameters`` summed over the step's task batches (the Trainer's
        estimate, which sees no top-level ``input_ids`` in a multitask step)."""
        core = self.accelerator.unwrap_model(self.model)
        params = core.num_parameters(exclude_embeddings=True) if hasattr(core, "num_parameters") else 0
        tokens = 0
        for batch in inputs.values():
            if isinstance(batch, dict):
                for key in ("input_ids", "input_ids_b"):
                    if key in batch:
                        tokens += batch[key].numel()
        return 6 * tokens * params

    def _track_num_input_tokens(self, inputs: dict[str, Any]) -> None:
        # Private Trainer hook (no public one): it looks for a top-level input_ids, which a
        # multitask step does not have, and warned on every step. Count over the task batches.
        mode = self.args.include_num_input_tokens_seen
        if mode in (None, False, "no"):
            return
        tokens = 0
        for batch in inputs.values():
            if not isinstance(batch, dict):
                continue
            for ids, mask in (("input_ids", "attention_mask"), ("input_ids_b", "attention_mask_b")):
                if ids in batch:
                    tokens += int(batch[mask].sum()) if mode == "non_padding" and mask in batch else batch[ids].numel()
        total = self.accelerator.gather(torch.tensor(tokens, device=self.args.device, dtype=torch.int64)).sum()
        self.state.num_input_tokens_seen += int(total)

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self, eval_dataset: dict[str, datasets.Dataset] | None = None, ignore_keys: Any = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """Each task's metric and loss, ``{task}_score``, ``overall`` and ``loss`` (the summed
        per-task mean losses) on the evaluation sets, as ``{metric_key_prefix}_...``.

        The predictions behind them stay in ``self.last_predictions`` (``{task: TaskPredictions}``).
        Weights already scored on the trainer's own evaluation sets are not scored again when
        nothing else that decides the result changed either (the sets, the tasks' metric settings,
        the primary tasks, the prefix: [`evaluation_key`][hf_multitask.trainer_evaluation.evaluation_key]):
        that evaluation's metrics and predictions are returned (and logged) again.
        """
        data = eval_dataset if eval_dataset is not None else self.eval_dataset
        if not data:
            raise ValueError("MultitaskTrainer.evaluate needs eval_dataset={task: dataset}")
        if not isinstance(data, dict):
            raise TypeError(f"eval_dataset must be a dict {{task: dataset}}, got {type(data).__name__}")
        if hasattr(self.optimizer, "eval") and callable(self.optimizer.eval):
            self.optimizer.eval()  # schedule-free optimizers evaluate at their averaged weights
        core = self.accelerator.unwrap_model(self.model)
        # the trainer's own evaluation sets, one process: weights it has scored before are not scored again (the recipe's
        # evaluation after training scores the checkpoint it kept, which an evaluation during training already scored),
        # as long as everything else the result depends on is the same too (evaluation_key)
        key = None
        if eval_dataset is None and self.args.world_size == 1:
            key = evaluation_key(core, data, metric_key_prefix, self.args.primary_tasks, self.args.per_device_eval_batch_size,
                                 self._pad_token_id())  # fmt: skip
        seen = self._evaluations.get(key) if key is not None else None
        if seen is not None:
            metrics, self.last_predictions = dict(seen[0]), dict(seen[1])
            logger.info("evaluation: these weights were scored at an earlier evaluation; its metrics and predictions are reused")
        else:
            self.last_predictions = {}
            results = evaluate_tasks(
                core,
                data,
                pad_token_id=self._pad_token_id(),
                batch_size=self.args.per_device_eval_batch_size,
                progress=not self.args.disable_tqdm,
                predictions=self.last_predictions,
                dtype=eval_dtype(self.args),  # --bf16_full_eval / --fp16_full_eval
            )
            metrics = prefixed_metrics(results, self.args.primary_tasks, metric_key_prefix)
            if key is not None:
                self._evaluations[key] = (dict(metrics), dict(self.last_predictions))
                while len(self._evaluations) > _KEPT_EVALUATIONS:
                    del self._evaluations[next(iter(self._evaluations))]
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def predict(
        self, test_dataset: dict[str, datasets.Dataset], ignore_keys: Any = None, metric_key_prefix: str = "test"
    ) -> PredictionOutput:
        """Predictions of every task: ``predictions`` and ``label_ids`` are ``{task: array}``
        (``label_ids[task]`` is None for unlabelled data); ``metrics`` holds the evaluation
        metrics (prefixed ``test_``) when every task has labels."""
        if not isinstance(test_dataset, dict):
            raise TypeError(f"test_dataset must be a dict {{task: dataset}}, got {type(test_dataset).__name__}")
        core = self.accelerator.unwrap_model(self.model)
        outputs = {
            t: predict_task(
                core,
                ds,
                t,
                pad_token_id=self._pad_token_id(),
                batch_size=self.args.per_device_eval_batch_size,
                progress=not self.args.disable_tqdm,
                dtype=eval_dtype(self.args),
            )  # fmt: skip
            for t, ds in test_dataset.items()
        }
        metrics: dict[str, float] = {}
        if all(o.labels is not None for o in outputs.values()):
            metrics = {f"{metric_key_prefix}_{k}": v for k, v in metrics_from_predictions(core, outputs).items()}
        self.last_predictions = outputs
        return PredictionOutput(
            predictions={t: o.predictions for t, o in outputs.items()}, label_ids={t: o.labels for t, o in outputs.items()}, metrics=metrics
        )
