"""``pipeline("multitask-text", model=...)``: text in, every task's answer out.

Saved checkpoints carry this module and name it in ``config.custom_pipelines``, so
``pipeline(model=folder_or_repo, trust_remote_code=True)`` works without the package.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import Pipeline

from .configuration import serving_max_length
from .encoding import MultitaskCollator
from .precision import autocast, parse_dtype

__all__ = ["PIPELINE_TASK", "MultitaskPipeline", "register_multitask_pipeline"]

PIPELINE_TASK = "multitask-text"
DEFAULT_MAX_LENGTH = 512  # inputs are cut to this many tokens when the checkpoint does not record its training length


def _frozen(value: Any) -> Any:
    """``value`` with its lists as tuples: a dictionary key."""
    return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


def _applies(spec: Any, item: Any) -> bool:
    """Whether an undirected input (a string or a pair) fits the task (its type decides)."""
    return bool(spec.task_type.accepts(spec, item))


class MultitaskPipeline(Pipeline):
    """Every task's answer for each input, in one call.

    Inputs (one, or a list of them):

    - a string: every single-text task answers (sentence classification/regression; taggers
      tag its whitespace-separated words);
    - a pair ``(a, b)``: every sentence-pair task answers; transformers' text-classification
      convention works too, ``{"text": a}`` and ``{"text": a, "text_pair": b}`` (unless a task of
      the model is called ``text`` or ``text_pair``: then the dict names tasks);
    - a dict ``{task: input}``: exactly those tasks, each with its own input (a string, a pair,
      a list of words, or ``{"context": ..., "choices": [...]}`` / ``(context, choices)`` for
      multiple choice).

    Output per input: ``{task: answer}`` with, by task type, ``{"label", "score"}``
    (classification; the label name when the task has ``label_names``), ``{"value"}``
    (regression), ``[{"word", "tag", "score"}, ...]`` (token classification) and
    ``{"choice", "text", "score"}`` (multiple choice). ``tasks=[...]`` restricts the heads;
    ``batch_size`` (default 8), ``max_length`` and ``truncation`` follow pipeline conventions
    (``max_length`` defaults to the length the model was trained with, ``config.train_max_length``,
    or for a checkpoint that does not record it 512, or fewer if the encoder takes fewer);
    ``device=`` places the model; ``autocast_dtype="bfloat16"`` runs it under bf16 autocast (on a CPU
    this pays only with bf16 instructions, see [`hf_multitask.precision`][hf_multitask.precision];
    refused with ``backend="onnx"``, whose graphs run as exported). Sentence tasks that read the same single-sentence input with
    the same encoding share one encoder pass ([`MultitaskModel.forward_all()`][hf_multitask.modeling.MultitaskModel.forward_all]).

    ``backend="onnx"``: the model is an export (``hf-multitask export``) served by ONNX Runtime on
    the CPU ([`OnnxMultitaskModel`][hf_multitask.onnx_backend.OnnxMultitaskModel]);
    ``pipeline("multitask-text", model=EXPORT_DIR, backend="onnx")`` loads one. The answers are
    the same as the PyTorch model's (fp32: logits within 1e-4).
    """

    _load_tokenizer = True
    _load_processor = False
    _load_feature_extractor = False
    _load_image_processor = False

    def __init__(self, *args: Any, backend: str | None = None, **kwargs: Any) -> None:
        model = kwargs.get("model", args[0] if args else None)
        onnx = bool(getattr(model, "is_onnx", False))
        if backend not in (None, "torch", "onnx"):
            raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
        if backend is not None and (backend == "onnx") != onnx:
            raise ValueError(f"backend={backend!r}, but the model is {'an ONNX export' if onnx else 'a PyTorch model'}: "
                             + ("pass a folder written by `hf-multitask export MODEL_DIR OUT_DIR`" if backend == "onnx" else
                                "pass the PyTorch model folder, or backend='onnx'"))  # fmt: skip
        if onnx:
            kwargs["device"] = -1  # ONNX Runtime's CPU provider: the model's own device
        super().__init__(*args, **kwargs)
        # transformers' pipeline() replaces the class names in config.custom_pipelines by the
        # classes themselves when it loads a remote pipeline; put the names back so the config
        # still serialises (save_pretrained, repr)
        for info in (getattr(self.model.config, "custom_pipelines", None) or {}).values():
            if isinstance(info, dict) and "pt" in info:
                info["pt"] = [c if isinstance(c, str) else c.__name__ for c in info["pt"]]

    def _sanitize_parameters(self, tasks=None, max_length=None, truncation=True, autocast_dtype=None, **kwargs):
        pre, forward = {}, {}
        if tasks is not None:
            pre["tasks"] = list(tasks)
        if max_length is not None:
            if isinstance(max_length, bool) or int(max_length) < 1:
                raise ValueError(f"max_length must be at least 1 token, got {max_length!r} (truncation=False: no cut)")
            pre["max_length"] = int(max_length)
        if truncation is False:
            pre["max_length"] = None
        if autocast_dtype is not None:
            dtype = parse_dtype(autocast_dtype, "autocast_dtype") if isinstance(autocast_dtype, str) else autocast_dtype
            if dtype is not None and getattr(self.model, "is_onnx", False):  # it would be ignored: ONNX Runtime runs the graph as exported
                raise ValueError(f"autocast_dtype={autocast_dtype!r} is for the PyTorch backend: an ONNX export runs in fp32, or in int8 "
                                 "if exported with --quantize int8")  # fmt: skip
            forward["autocast_dtype"] = dtype
        return pre, forward, {}

    # --- the three pipeline stages, for one input -------------------------------------------
    def preprocess(self, item: Any, tasks: Sequence[str] | None = None, max_length: int | None | str = "trained") -> dict[str, Any]:
        model = self.model
        if max_length == "trained":  # not asked for: the length the model was trained with
            max_length = serving_max_length(model.config, fallback=DEFAULT_MAX_LENGTH, tokenizer=self.tokenizer)
        names = list(tasks) if tasks is not None else list(model.task_names)
        for t in names:
            model.get_task(t)
        if isinstance(item, dict) and "text" in item and set(item) <= {"text", "text_pair"} and not set(item) & set(model.task_names):
            # transformers' text-classification convention: {"text": a} is a single text, {"text": a, "text_pair": b} a pair
            item = (item["text"], item["text_pair"]) if "text_pair" in item else item["text"]
        if isinstance(item, dict):
            unknown = [t for t in item if t not in model.task_names]
            if unknown:
                raise ValueError(f"inputs name unknown task(s) {unknown}; this model has {model.task_names}")
            chosen = {t: v for t, v in item.items() if t in names}
        else:
            chosen = {t: item for t in names if _applies(model.get_task(t), item)}
            if tasks is not None:
                missing = [t for t in names if t not in chosen]
                if missing:
                    raise ValueError(f"tasks {missing} cannot answer {item!r}: give them their input as a dict {{task: input}}")
        if not chosen:
            raise ValueError(f"no task of this model takes {item!r}; tasks: {model.task_names} (pass a dict {{task: input}})")
        encoded, raw, done = {}, {}, {}
        for task, value in chosen.items():
            spec = model.get_task(task)
            row = self._row(spec, value)
            encoding = model.config.task_pair_encoding(spec)
            # tasks whose type encodes the same texts the same way share one tokenisation (e.g. six
            # sentence heads given one tweet); the shared dict also lets _forward_many collate once
            key = (type(spec.task_type).encode_batch, len(spec.text_columns), _frozen([row[c] for c in spec.text_columns]), encoding,
                   spec.subword_labels)  # fmt: skip
            if key not in done:
                enc = spec.task_type.encode_batch(spec, {c: [row[c]] for c in spec.text_columns}, self.tokenizer, encoding, max_length)
                done[key] = {k: v[0] for k, v in enc.items()}
            encoded[task] = done[key]
            raw[task] = row
        return {"encoded": encoded, "raw": raw}

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        return self._forward_many([model_inputs])[0]

    def postprocess(self, model_outputs: dict[str, Any]) -> dict[str, Any]:
        return model_outputs["answers"]

    # --- batching ---------------------------------------------------------------------------
    def __call__(self, inputs: Any, *args: Any, batch_size: int | None = None, **kwargs: Any) -> Any:
        pre, forward, _ = self._sanitize_parameters(**kwargs)
        pre, forward = {**self._preprocess_params, **pre}, {**self._forward_params, **forward}
        single = not isinstance(inputs, list)
        items = [inputs] if single else inputs
        size = int(batch_size or self._batch_size or 8)
        answers = []
        for start in range(0, len(items), size):
            prepared = [self.preprocess(item, **pre) for item in items[start : start + size]]
            answers.extend(out["answers"] for out in self._forward_many(prepared, forward.get("autocast_dtype")))
        return answers[0] if single else answers

    @torch.inference_mode()
    def _forward_many(self, prepared: list[dict[str, Any]], dtype: torch.dtype | None = None) -> list[dict[str, Any]]:
        model = self.model
        model.eval()
        collate = MultitaskCollator(self.tokenizer.pad_token_id)
        outputs: list[dict[str, Any]] = [{"answers": {}} for _ in prepared]
        by_task: dict[str, list[int]] = {}
        for i, p in enumerate(prepared):
            for task in p["encoded"]:
                by_task.setdefault(task, []).append(i)
        batches: dict[str, Any] = {}
        collated: dict[tuple[int, ...], Any] = {}  # tasks holding the very same encoded examples share one batch
        for t, idx in by_task.items():
            features = [prepared[i]["encoded"][t] for i in idx]
            key = tuple(id(f) for f in features)
            if key not in collated:
                collated[key] = collate(features)
            batches[t] = collated[key]
        with autocast(self.device, dtype):
            logits = model.forward_all({t: {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in b.items()}
                                        for t, b in batches.items()})  # fmt: skip
        for task, idx in by_task.items():
            spec = model.get_task(task)
            host = {k: v for k, v in batches[task].items() if isinstance(v, torch.Tensor)}
            values = logits[task].float().cpu().numpy()
            for j, i in enumerate(idx):
                one = {k: v[j : j + 1].numpy() for k, v in host.items()}
                outputs[i]["answers"][task] = spec.task_type.pipeline_output(spec, values[j : j + 1], one, prepared[i]["raw"][task])
        return outputs

    @staticmethod
    def _row(spec: Any, value: Any) -> dict[str, Any]:
        """The task's text columns filled from one input value."""
        cols = spec.text_columns
        if isinstance(value, dict):
            missing = [c for c in cols if c not in value]
            if missing:
                raise ValueError(f"task {spec.name!r} needs {list(cols)} in its input, missing {missing}")
            return {c: value[c] for c in cols}
        if spec.task_type.sequence_labels:
            return {cols[0]: value.split() if isinstance(value, str) else list(value)}
        if len(cols) == 2:
            if not (isinstance(value, (tuple, list)) and len(value) == 2):
                raise ValueError(f"task {spec.name!r} takes two texts ({cols[0]}, {cols[1]}), got {value!r}")
            return {cols[0]: value[0], cols[1]: value[1]}
        if not isinstance(value, str):
            raise ValueError(f"task {spec.name!r} takes one text, got {value!r}")
        return {cols[0]: value}


def register_multitask_pipeline(*loaders: type) -> None:
    """Register [`MultitaskPipeline`][hf_multitask.pipeline.MultitaskPipeline] as ``"multitask-text"`` with transformers.

    ``pipeline("multitask-text", model=folder)`` loads the folder with ``AutoModel``, then with
    each of ``loaders`` (classes with ``from_pretrained``) when that fails: the package passes
    [`OnnxMultitaskModel`][hf_multitask.onnx_backend.OnnxMultitaskModel], so an ONNX export loads too."""
    from transformers import AutoModel
    from transformers.pipelines import PIPELINE_REGISTRY

    if PIPELINE_TASK not in PIPELINE_REGISTRY.supported_tasks:
        PIPELINE_REGISTRY.register_pipeline(PIPELINE_TASK, pipeline_class=MultitaskPipeline, pt_model=(AutoModel, *loaders), type="text")
