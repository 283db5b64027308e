"""Serving an exported model on ONNX Runtime: [`OnnxMultitaskModel`][hf_multitask.onnx_backend.OnnxMultitaskModel].

A folder written by ``hf-multitask export`` ([`export_onnx()`][hf_multitask.onnx_export.export_onnx]) holds one or
more ONNX graphs, the model's ``config.json``, its tokenizer and ``onnx_manifest.json``, which
says which graph (and which of its outputs) answers which task. [`OnnxMultitaskModel`][hf_multitask.onnx_backend.OnnxMultitaskModel]
loads such a folder (or one of its ``.onnx`` files, which picks that file's variant: fp32 or
int8) and answers the calls the PyTorch models answer for prediction: ``model(task=..., **batch)``
and ``model.forward_all({task: batch})``, with the same collated batches. So
[`predict()`][hf_multitask.predict.predict], [`evaluate()`][hf_multitask.predict.evaluate],
the ``multitask-text`` pipeline and the ``hf-multitask`` commands run on it unchanged: the same
length-sorted batching, the same outputs and files.

``onnxruntime`` is the optional extra ``onnx`` (``pip install 'hf-multitask[onnx]'``); this module
imports it only when a model is loaded, and says which extra to install when it is missing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .configuration import MultitaskConfig
from .modeling import MultitaskModel, MultitaskOutput
from .routed import RoutedMultitaskConfig
from .tasks import TaskLookup

__all__ = [
    "MANIFEST_NAME",
    "OnnxBackendError",
    "OnnxExtraMissing",
    "OnnxMultitaskModel",
    "graph_feeds",
    "require_onnx_extra",
]

MANIFEST_NAME = "onnx_manifest.json"
MANIFEST_FORMAT = 1
EXTRA_HINT = "pip install 'hf-multitask[onnx]'"


class OnnxBackendError(ValueError):
    """An exported folder or ONNX file that cannot be served; the message names it."""


class OnnxExtraMissing(ImportError):
    """The ``onnx`` extra is not installed; the message says how to install it."""


def require_onnx_extra(what: str = "the ONNX backend", modules: tuple[str, ...] = ("onnxruntime",)) -> None:
    """Raise [`OnnxExtraMissing`][hf_multitask.onnx_backend.OnnxExtraMissing] (one line naming the extra) unless ``modules`` import."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise OnnxExtraMissing(f"{what} needs the '{name}' package, from the 'onnx' extra: {EXTRA_HINT}") from None


def _int64(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x), dtype=np.int64)


def _pad_axis(x: np.ndarray, axis: int, size: int, value: int) -> np.ndarray:
    if x.shape[axis] >= size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return np.pad(x, widths, constant_values=value)


def graph_feeds(
    layout: str, batch: dict[str, Any], input_names: list[str], pad_token_id: int, choices: int | None = None
) -> dict[str, np.ndarray]:
    """The int64 arrays a graph of ``layout`` takes, from a collated batch
    ([`MultitaskCollator`][hf_multitask.encoding.MultitaskCollator]'s keys).

    The PyTorch model fills what a batch lacks (an all-ones ``attention_mask``, zero
    ``token_type_ids``) and pads the shorter side of a siamese pair to the longer one's length;
    a graph takes every input at one shape, so that is done here, the same way. ``"tokens"``:
    ``(batch, length)`` inputs. ``"pair"``: the same with a ``_b`` side, both padded to one
    length. ``"choices"``: ``(batch, choices, length)`` inputs and ``choice_mask``, padded to
    the task's ``choices`` (padding choices are masked, as the model masks them)."""
    out: dict[str, np.ndarray] = {}
    sides = ("", "_b") if layout == "pair" else ("",)
    for side in sides:
        ids = _int64(batch[f"input_ids{side}"])
        mask = batch.get(f"attention_mask{side}")
        types = batch.get(f"token_type_ids{side}")
        out[f"input_ids{side}"] = ids
        out[f"attention_mask{side}"] = _int64(mask) if mask is not None else np.ones_like(ids)
        out[f"token_type_ids{side}"] = _int64(types) if types is not None else np.zeros_like(ids)
    if layout == "pair":
        length = max(out["input_ids"].shape[1], out["input_ids_b"].shape[1])
        for key in list(out):
            out[key] = _pad_axis(out[key], 1, length, pad_token_id if key.startswith("input_ids") else 0)
    if layout == "choices":
        ids = out["input_ids"]
        mask = batch.get("choice_mask")
        out["choice_mask"] = _int64(mask) if mask is not None else np.ones(ids.shape[:2], dtype=np.int64)
        size = int(choices or ids.shape[1])
        for key in list(out):
            out[key] = _pad_axis(out[key], 1, size, pad_token_id if key == "input_ids" else 0)
    return {name: out[name] for name in input_names}


def _manifest_path(path: Path) -> tuple[Path, str | None]:
    """(the export folder, the ``.onnx`` file name when a file was named)."""
    if path.is_dir():
        return path, None
    if path.suffix == ".onnx":
        if not path.is_file():
            raise OnnxBackendError(f"{path}: no such ONNX file")
        return path.parent, path.name
    if not path.exists():
        raise OnnxBackendError(f"{path}: no such folder or ONNX file")
    raise OnnxBackendError(
        f"{path}: neither an exported folder nor a .onnx file (export a model with `hf-multitask export MODEL_DIR OUT_DIR`)"
    )


def read_manifest(folder: Path) -> dict[str, Any]:
    """The export's ``onnx_manifest.json``, checked; a folder without one is an
    [`OnnxBackendError`][hf_multitask.onnx_backend.OnnxBackendError] naming it."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        weights = any((folder / n).is_file() for n in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"))
        hint = " (a PyTorch model folder: export it first" if weights else " (export a model"
        raise OnnxBackendError(f"{folder}: no {MANIFEST_NAME}, so not a folder written by hf-multitask export{hint} with "
                               f"`hf-multitask export MODEL_DIR OUT_DIR`)")  # fmt: skip
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise OnnxBackendError(f"{path}: not valid JSON ({err}); export the model again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or "graphs" not in manifest:
        raise OnnxBackendError(f"{path}: not an hf-multitask ONNX manifest of format {MANIFEST_FORMAT}; export the model again")
    return manifest


def _session(path: Path, threads: int | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    options.log_severity_level = 3  # errors only: ORT's warnings about fused nodes are not the user's business
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...) for a damaged file
        reason = " ".join(str(err).split())
        raise OnnxBackendError(f"ONNX file {path} is damaged or not an ONNX graph ({reason[:200]}); export the model again") from None


def _load_config(folder: Path) -> MultitaskConfig | RoutedMultitaskConfig:
    """The model's config from the export's ``config.json``: a routed model's is its
    [`RoutedMultitaskConfig`][hf_multitask.routed.RoutedMultitaskConfig], which answers each task's
    pair encoding from the expert that runs it (the shared expert's would encode a specialised
    task's pairs with another expert's settings)."""
    path = folder / "config.json"
    try:
        model_type = json.loads(path.read_text(encoding="utf-8")).get("model_type")
        cls = {MultitaskConfig.model_type: MultitaskConfig, RoutedMultitaskConfig.model_type: RoutedMultitaskConfig}[model_type]
        config = cls.from_pretrained(folder)
    except (OSError, ValueError, KeyError, AttributeError) as err:
        raise OnnxBackendError(
            f"{path}: not an hf-multitask model config ({' '.join(str(err).split())[:200]}); export the model again"
        ) from None
    return config


class OnnxMultitaskModel(TaskLookup):
    """An exported multitask model on ONNX Runtime (CPU), answering like a
    [`MultitaskModel`][hf_multitask.modeling.MultitaskModel] at prediction time.

    Load it with [`from_pretrained()`][hf_multitask.onnx_backend.OnnxMultitaskModel.from_pretrained]. A routed (specialised)
    export answers each task from its expert's graph, as the routed PyTorch model does.
    ``config`` is the exported model's config, the tasks and their pair encodings come from: a
    [`MultitaskConfig`][hf_multitask.configuration.MultitaskConfig], or a routed export's
    [`RoutedMultitaskConfig`][hf_multitask.routed.RoutedMultitaskConfig] (each task's pairs encoded as its
    expert encodes them). Inference only: no gradients, CPU only.
    """

    is_onnx = True
    training = False
    dtype = torch.float32

    def __init__(self, folder: Path, manifest: dict[str, Any], config: MultitaskConfig | RoutedMultitaskConfig, variant: str,
                 threads: int | None = None) -> None:  # fmt: skip
        self.folder = Path(folder)
        self.manifest = manifest
        self.config = config
        self.variant = variant
        self.name_or_path = str(self.folder)
        self._specs = {spec.name: spec for spec in config.task_specs}
        self._pad_token_id = int(manifest.get("pad_token_id") or 0)
        self._graphs: dict[str, dict[str, Any]] = {}
        self._sessions: dict[str, Any] = {}
        for graph in manifest["graphs"]:
            file = graph["files"].get(variant)
            if file is None:
                raise OnnxBackendError(f"{self.folder}: graph {graph['name']!r} has no {variant} file in {MANIFEST_NAME}")
            if graph["name"] in self._graphs:  # written before graph names were kept apart from task names (a task called 'shared')
                raise OnnxBackendError(f"{self.folder}: {MANIFEST_NAME} names the graph {graph['name']!r} twice; export the model again")
            self._graphs[graph["name"]] = graph
            self._sessions[graph["name"]] = _session(self.folder / file, threads)
        self._task_graph = {task: entry["graph"] for task, entry in manifest["tasks"].items()}
        missing = [t for t in self._specs if t not in self._task_graph]
        if missing:
            raise OnnxBackendError(f"{self.folder}: {MANIFEST_NAME} names no graph for task(s) {missing}; export the model again")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], *, variant: str | None = None, threads: int | None = None,
                        **_ignored: Any) -> OnnxMultitaskModel:  # fmt: skip
        """Load an exported folder, or one of its ``.onnx`` files (which names the variant: the
        fp32 ``model.onnx`` or the int8 ``model_int8.onnx``). A folder loads ``variant``
        (``"fp32"`` or ``"int8"``), by default the one the export was asked for.
        ``threads``: ONNX Runtime's intra-op threads (default: one per physical core).
        Other keyword arguments (what ``pipeline()`` passes to ``from_pretrained``) are ignored."""
        require_onnx_extra()
        folder, file = _manifest_path(Path(path))
        manifest = read_manifest(folder)
        variants = list(manifest.get("variants", {}))
        if file is not None:
            found = [v for g in manifest["graphs"] for v, f in g["files"].items() if f == file]
            if not found:
                raise OnnxBackendError(f"{path}: {MANIFEST_NAME} beside it names no such graph file (its files: "
                                       f"{sorted({f for g in manifest['graphs'] for f in g['files'].values()})})")  # fmt: skip
            if variant is not None and variant != found[0]:
                raise OnnxBackendError(f"{path}: the file is the {found[0]} variant, but variant={variant!r} was asked for")
            variant = found[0]
        variant = variant or manifest.get("default_variant") or variants[0]
        if variant not in variants:
            raise OnnxBackendError(f"{folder}: no {variant!r} variant (this export has {variants}; --quantize int8 adds 'int8')")
        config = _load_config(folder)
        return cls(folder, manifest, config, variant, threads)

    # ------------------------------------------------------------------ what prediction asks of a model
    def graph_of(self, task: str) -> str:
        """The name of the graph that answers ``task`` (see ``onnx_manifest.json``)."""
        self.get_task(task)
        return self._task_graph[task]

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def to(self, device: Any = None, *args: Any, **kwargs: Any) -> OnnxMultitaskModel:
        """Only the CPU: the graphs run on ONNX Runtime's CPU provider."""
        if device is not None and not isinstance(device, torch.dtype) and torch.device(device).type != "cpu":
            raise OnnxBackendError(f"the ONNX backend runs on the CPU; device {device} is not available to it")
        return self

    def eval(self) -> OnnxMultitaskModel:
        """The model itself: a graph is always in inference mode (no dropout)."""
        return self

    def train(self, mode: bool = True) -> OnnxMultitaskModel:
        """``train(False)`` is [`eval()`][hf_multitask.onnx_backend.OnnxMultitaskModel.eval]; ``train(True)`` is refused: a graph does not train."""
        if mode:
            raise OnnxBackendError("an ONNX model cannot train; train the PyTorch model and export it again")
        return self

    def can_generate(self) -> bool:
        """False: a multitask encoder does not generate (what transformers' pipelines ask)."""
        return False

    def forward_all(self, batches: dict[str, dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Logits of several tasks (``{task: collated batch}``), as
        [`MultitaskModel.forward_all()`][hf_multitask.modeling.MultitaskModel.forward_all] gives them: tasks of one graph
        whose inputs are equal are answered by one run of that graph."""
        runs: list[tuple[str, dict[str, np.ndarray], list[str]]] = []
        for task, batch in batches.items():
            graph = self._graphs[self.graph_of(task)]
            feeds = graph_feeds(graph["layout"], batch, graph["inputs"], self._pad_token_id, graph.get("choices"))
            for name, other, members in runs:
                if name == graph["name"] and all(feeds[k].shape == other[k].shape and np.array_equal(feeds[k], other[k]) for k in feeds):
                    members.append(task)
                    break
            else:
                runs.append((graph["name"], feeds, [task]))
        out: dict[str, torch.Tensor] = {}
        for name, feeds, members in runs:
            outputs = self._graphs[name]["outputs"]
            values = self._sessions[name].run([outputs[t] for t in members], feeds)
            out.update({t: torch.from_numpy(np.asarray(v)) for t, v in zip(members, values)})
        return {t: out[t] for t in batches}

    def __call__(self, task: str, labels: torch.Tensor | None = None, **inputs: Any) -> MultitaskOutput:
        """``model(task=..., **batch)``: the task's logits (and its loss when ``labels`` are given)."""
        logits = self.forward_all({task: inputs})[task]
        loss = MultitaskModel.compute_task_loss(self.get_task(task), logits, labels) if labels is not None else None
        return MultitaskOutput(loss=loss, logits=logits)

    def pipeline(self, tokenizer: Any = None, **kwargs: Any) -> Any:
        """A [`MultitaskPipeline`][hf_multitask.pipeline.MultitaskPipeline] over this model (the folder's tokenizer by default)."""
        from .pipeline import MultitaskPipeline

        if tokenizer is None:
            tokenizer = self.tokenizer()
        return MultitaskPipeline(model=self, tokenizer=tokenizer, **kwargs)

    def tokenizer(self) -> Any:
        """The tokenizer saved in the export folder."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.folder)

    def __repr__(self) -> str:
        graphs = ", ".join(f"{g['name']}: {g['files'][self.variant]}" for g in self._graphs.values())
        return f"OnnxMultitaskModel({self.folder}, variant={self.variant!r}, graphs=[{graphs}])"
