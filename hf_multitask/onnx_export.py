"""``hf-multitask export``: a trained model as ONNX graphs for ONNX Runtime, fp32 and int8.

What a graph is. Every graph is one encoder pass, and every head that can read that pass is one
of its outputs:

- a [`MultitaskModel`][hf_multitask.modeling.MultitaskModel] without task-routed encoder modules: **one graph**
  (``model.onnx``) takes ``input_ids`` / ``attention_mask`` / ``token_type_ids`` and outputs the
  logits of every task that reads the encoder's token states: single-text classification and
  regression, token classification, and sentence pairs with the ``cross`` encoding (both texts
  in one sequence). It is [`MultitaskModel.forward_all()`][hf_multitask.modeling.MultitaskModel.forward_all] with one input for all of them;
- a task whose input is not one sequence gets a graph of its own: siamese pairs (``bi`` /
  ``cosine``) take both sides (``input_ids_b``, ...), multiple choice takes ``(batch, choices,
  length)`` blocks and ``choice_mask``;
- a task whose encoder differs (PALs, per-task LoRA) gets a graph of its own, and a routed
  (``specialised``) model gets its experts' graphs, each expert's tasks planned as above.

Graphs are named after their task, or ``_shared`` for the shared one (no task can have that
name), and a routed model's after their expert (``<expert>.<graph>`` when an expert has
several). ``onnx_manifest.json`` says which graph and output answer which task; the model's
``config.json`` (its tasks and label names) and its tokenizer go beside the graphs, so the
folder describes itself. [`OnnxMultitaskModel`][hf_multitask.onnx_backend.OnnxMultitaskModel] serves it.

How. ``torch.onnx.export`` with the TorchScript tracer (``dynamo=False``), opset 17, batch and
length dynamic, the encoder's attention switched to its eager implementation while tracing.
Only the public model API is traced (``forward_all``, ``model(task=...)``). Why not ``optimum``:
its ONNX exporter moved out of ``optimum`` 2.x into ``optimum-onnx``, whose release needs
``transformers < 4.58`` (this package needs 5), and its ``OnnxConfig`` describes one tensor
signature per model, with no way to pass ``task=`` or to name several heads as outputs; a
wrapper module and ``torch.onnx.export`` are what it would run anyway. Why the tracer and not
the ``torch.export`` (dynamo) exporter: ``forward_all`` compares inputs with ``torch.equal``,
which ``torch.export`` cannot trace, and ONNX Runtime's BERT fusions (``Attention``,
``EmbedLayerNormalization``, ``SkipLayerNormalization``) recognise the traced graph of eager
attention and not the dynamo one: the fused graph is the fast one. The tracer records one path
through Python control flow, so every graph is checked after export on a batch of another size
and other lengths than the one traced: fp32 logits must equal PyTorch's within 1e-4, or the
export is refused.

``quantize="int8"``: ONNX Runtime's dynamic quantisation (``quantize_dynamic``: int8 weights,
activations quantised per batch) of the matrix products and fused attention, the task heads'
included; the embeddings stay fp32, and ``fp32_heads=True`` keeps the task heads fp32 too.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .encoding import MODEL_INPUT_KEYS, MultitaskCollator
from .heads import LSTMHead
from .modeling import MultitaskModel
from .onnx_backend import MANIFEST_FORMAT, MANIFEST_NAME, graph_feeds, require_onnx_extra
from .routed import RoutedMultitaskModel

__all__ = ["OPSET", "SHARED_GRAPH", "OnnxExportError", "GraphPlan", "plan_graphs", "export_onnx"]

OPSET = 17
PARITY_ATOL = PARITY_RTOL = 1e-4
LAYOUT_INPUTS = {
    "tokens": ["input_ids", "attention_mask", "token_type_ids"],
    "pair": ["input_ids", "attention_mask", "token_type_ids", "input_ids_b", "attention_mask_b", "token_type_ids_b"],
    "choices": ["input_ids", "attention_mask", "token_type_ids", "choice_mask"],
}
SHARED_GRAPH = "_shared"  # the graph of the tasks that share one encoder pass; no task has this name (task names start with a letter)
_TRACE_TEXTS = ["the cat sat on the mat today", "a dog", "we walked home in the rain and talked"]
_PROBE_TEXTS = ["good", "my friend sings very well in the big old hall at night", "one two three", "it is fine", "no"]


class OnnxExportError(ValueError):
    """A model, head or encoder that cannot be exported; the message names it."""


@dataclass
class GraphPlan:
    """One graph of an export: the (expert) model traced, the tasks it answers, its input layout
    (``"tokens"``, ``"pair"``, ``"choices"``) and, for multiple choice, the choice count."""

    name: str
    model: MultitaskModel
    tasks: list[str]
    layout: str
    expert: str | None = None
    choices: int | None = None
    inputs: list[str] = field(default_factory=list)


def _dummy_batch(model: MultitaskModel, task: str, tokenizer: Any, texts: list[str]) -> dict[str, Any]:
    """A collated batch of made-up examples of ``task`` (one per text), as the data path encodes them."""
    spec = model.get_task(task)
    rows: dict[str, list[Any]] = {}
    for k, column in enumerate(spec.text_columns):
        feature = spec.task_type.text_feature(spec, column)
        shifted = texts[k:] + texts[:k]  # the second text of a pair differs from the first
        if type(feature).__name__ in ("Sequence", "List", "LargeList"):  # words (tagging) or choices (multiple choice)
            rows[column] = [(t.split() * 2)[: max(2, min(len(t.split()), spec.num_labels))] for t in shifted]
        else:
            rows[column] = shifted
    encoded = spec.task_type.encode_batch(spec, rows, tokenizer, model.config.task_pair_encoding(spec), None)
    unknown = sorted(set(encoded) - set(MODEL_INPUT_KEYS) - {"labels"})
    if unknown:
        raise OnnxExportError(f"task {task!r} ({spec.kind}): its inputs {unknown} are not ones the ONNX export knows "
                              f"(it takes {list(MODEL_INPUT_KEYS)})")  # fmt: skip
    features = [{key: values[i] for key, values in encoded.items()} for i in range(len(texts))]
    return MultitaskCollator(int(tokenizer.pad_token_id or 0))(features)


def _layout(batch: dict[str, Any]) -> str:
    if batch["input_ids"].dim() == 3:
        return "choices"
    return "pair" if "input_ids_b" in batch else "tokens"


def _plan_model(model: MultitaskModel, tasks: list[str], tokenizer: Any, expert: str | None) -> list[GraphPlan]:
    routed = set(model.routed_tasks)  # their encoder differs from the shared one (their own PALs or LoRA adapter): a graph each
    shared: list[str] = []
    own: list[GraphPlan] = []
    for task in tasks:
        spec = model.get_task(task)
        if isinstance(model.heads[task], LSTMHead):
            raise OnnxExportError(f"task {task!r}: its LSTM head (head_type 'lstm') cannot be exported to ONNX (the tracer does not export "
                                  "packed sequences); train it with head_type 'linear' or 'mlp', or serve it with the torch backend")  # fmt: skip
        batch = _dummy_batch(model, task, tokenizer, _TRACE_TEXTS[:2])
        layout = _layout(batch)
        if layout == "tokens" and task not in routed and spec.task_type.shares_states(model, spec, batch):
            shared.append(task)
        else:
            own.append(GraphPlan(task, model, [task], layout, expert, spec.num_labels if layout == "choices" else None))
    plans = ([GraphPlan(SHARED_GRAPH, model, shared, "tokens", expert)] if shared else []) + own
    if expert is not None:  # a routed model's experts: their graphs are named after them
        for plan in plans:
            plan.name = expert if len(plans) == 1 else f"{expert}.{plan.name}"
    return plans


def plan_graphs(model: MultitaskModel | RoutedMultitaskModel, tokenizer: Any) -> list[GraphPlan]:
    """The graphs an export of ``model`` writes (see the module docstring), in task order."""
    if isinstance(model, RoutedMultitaskModel):
        config = model.config
        return [plan for expert in config.experts
                for plan in _plan_model(model.experts[expert], [t for t in model.task_names if config.route(t) == expert], tokenizer,
                                        expert)]  # fmt: skip
    if isinstance(model, MultitaskModel):
        return _plan_model(model, list(model.task_names), tokenizer, None)
    raise OnnxExportError(f"a {type(model).__name__} cannot be exported: the export takes a MultitaskModel or a RoutedMultitaskModel")


def _head_scopes(model: MultitaskModel, tasks: list[str]) -> dict[str, nn.Module]:
    """The modules of the tasks' heads (and adjustment matrices), each under a name no other
    module and no task can have (task names hold no ``:``)."""
    scopes = {f"head:{t}": model.heads[t] for t in tasks}
    scopes.update({f"adjustment:{t}": model.adjustments[t] for t in tasks if t in model.adjustments})
    return scopes


class _Graph(nn.Module):
    """What is traced: ``forward_all`` of the plan's tasks, all reading the same inputs.

    The tracer names a node after the modules it runs in, each module by the first name it has
    under the traced one, and without its parents' names: a head is ``/<task>/``, which a task
    called ``encoder`` shares with the encoder. So the heads are registered here first, under
    [`_head_scopes()`][hf_multitask.onnx_export._head_scopes]' names: every node of a head has a
    ``head:<task>`` (or ``adjustment:<task>``) part in its name, and nothing else does."""

    def __init__(self, model: MultitaskModel, tasks: list[str], inputs: list[str]) -> None:
        super().__init__()
        self.scopes = nn.ModuleDict(_head_scopes(model, tasks))  # before the model: the names the tracer gives the heads
        self.model, self.tasks, self.inputs = model, list(tasks), list(inputs)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch = dict(zip(self.inputs, tensors))
        logits = self.model.forward_all({task: batch for task in self.tasks})
        return tuple(logits[task] for task in self.tasks)


@contextmanager
def _quiet():
    """No warnings and no log lines from the tracer and ONNX Runtime's tools (they log on the root logger)."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


@contextmanager
def _eager_attention(model: MultitaskModel):
    """The encoder's eager attention while tracing (ONNX Runtime fuses its pattern), restored after."""
    encoder = model.encoder
    before = getattr(encoder.config, "_attn_implementation", None)
    switched = False
    if before not in (None, "eager") and hasattr(encoder, "set_attn_implementation"):
        try:
            encoder.set_attn_implementation("eager")
            switched = True
        except (ValueError, ImportError):  # an encoder without an eager implementation: trace what it has
            pass
    try:
        yield
    finally:
        if switched:
            encoder.set_attn_implementation(before)


def _output_name(task: str) -> str:
    return f"logits.{task}"


def _file_name(stem: str, plan: GraphPlan, first: bool) -> str:
    return f"{stem}.onnx" if first else f"{stem}.{re.sub(r'[^A-Za-z0-9_.-]', '_', plan.name)}.onnx"


def _torch_outputs(plan: GraphPlan, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    graph = _Graph(plan.model, plan.tasks, list(feeds))
    with torch.inference_mode():
        return [t.float().numpy() for t in graph(*(torch.from_numpy(v) for v in feeds.values()))]


def _export_graph(plan: GraphPlan, tokenizer: Any, path: Path, opset: int) -> None:
    """Trace ``plan`` into ``path`` (fp32, dynamic batch and length)."""
    pad = int(tokenizer.pad_token_id or 0)
    feeds = graph_feeds(plan.layout, _dummy_batch(plan.model, plan.tasks[0], tokenizer, _TRACE_TEXTS[:2]), LAYOUT_INPUTS[plan.layout], pad,
                        plan.choices)  # fmt: skip
    outputs = _torch_outputs(plan, feeds)
    axes: dict[str, dict[int, str]] = {}
    for name, value in feeds.items():
        axes[name] = (
            {0: "batch"} if name == "choice_mask" else ({0: "batch", 2: "length"} if value.ndim == 3 else {0: "batch", 1: "length"})
        )
    for task, value in zip(plan.tasks, outputs):  # per-token logits are (batch, length, labels)
        axes[_output_name(task)] = {0: "batch", 1: "length"} if value.ndim == 3 and plan.layout != "choices" else {0: "batch"}
    graph = _Graph(plan.model, plan.tasks, list(feeds)).eval()
    # _quiet: the tracer warns about every Python value it records as a constant; the parity check after export is the test
    with _eager_attention(plan.model), _quiet(), torch.no_grad():
        try:
            torch.onnx.export(graph, tuple(torch.from_numpy(v) for v in feeds.values()), str(path), dynamo=False, opset_version=opset,
                              input_names=list(feeds), output_names=[_output_name(t) for t in plan.tasks], dynamic_axes=axes,
                              do_constant_folding=True)  # fmt: skip
        except Exception as err:  # the tracer and the ONNX symbolics raise many types; name the graph and the first line
            kinds = ", ".join(f"{t} ({plan.model.get_task(t).kind}, {type(plan.model.heads[t]).__name__})" for t in plan.tasks)
            raise OnnxExportError(f"graph {plan.name!r} (task(s) {kinds}, encoder {plan.model.config.encoder_config.model_type}) "
                                  f"cannot be exported to ONNX: {type(err).__name__}: {str(err).strip().splitlines()[0][:200]}") from None  # fmt: skip


def _fuse(path: Path, model: MultitaskModel) -> bool:
    """ONNX Runtime's transformer fusions (attention, layer norms, GELU) on ``path``, in place;
    False (graph left as it was) when the optimiser fails on it."""
    from onnxruntime.transformers.optimizer import optimize_model

    enc = model.config.encoder_config
    heads = int(getattr(enc, "num_attention_heads", 0) or getattr(enc, "n_heads", 0) or 0)
    hidden = int(getattr(enc, "hidden_size", 0) or getattr(enc, "dim", 0) or 0)
    try:
        with _quiet():
            optimized = optimize_model(str(path), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0)
        optimized.save_model_to_file(str(path))
    except Exception:  # noqa: BLE001 - a graph the fusions do not understand stays unfused (and correct)
        return False
    return True


def _ort_outputs(path: Path, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(outputs, {k: v for k, v in feeds.items() if k in names})


def _probe(plan: GraphPlan, tokenizer: Any) -> dict[str, np.ndarray]:
    """A batch of another size and other lengths than the traced one."""
    batch = _dummy_batch(plan.model, plan.tasks[0], tokenizer, _PROBE_TEXTS)
    return graph_feeds(plan.layout, batch, LAYOUT_INPUTS[plan.layout], int(tokenizer.pad_token_id or 0), plan.choices)


def _parity(plan: GraphPlan, path: Path, feeds: dict[str, np.ndarray]) -> float:
    """The largest difference of the graph's logits from PyTorch's on ``feeds``; inf when out of tolerance."""
    got = _ort_outputs(path, feeds, [_output_name(t) for t in plan.tasks])
    want = _torch_outputs(plan, feeds)
    worst = 0.0
    for g, w in zip(got, want):
        if g.shape != w.shape or not np.allclose(g, w, rtol=PARITY_RTOL, atol=PARITY_ATOL):
            return float("inf")
        worst = max(worst, float(np.abs(g - w).max()) if g.size else 0.0)
    return worst


def _quantize(src: Path, dst: Path, tasks: list[str], per_channel: bool, fp32_heads: bool) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    exclude = []
    if fp32_heads:  # a head's nodes have its scope in their names (_Graph); the quantiser rewrites a Gemm as "<name>_MatMul"
        scopes = {*(f"head:{t}" for t in tasks), *(f"adjustment:{t}" for t in tasks)}
        nodes = onnx.load(str(src), load_external_data=False).graph.node
        exclude = [name for n in nodes if scopes & set(n.name.split("/")) for name in (n.name, f"{n.name}_MatMul")]
    with _quiet():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel, op_types_to_quantize=["MatMul", "Attention"],
                         nodes_to_exclude=exclude, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # fmt: skip


def export_onnx(
    model: MultitaskModel | RoutedMultitaskModel,
    tokenizer: Any,
    out_dir: str | os.PathLike[str],
    *,
    quantize: str | None = None,
    opset: int = OPSET,
    fuse: bool = True,
    per_channel: bool = True,
    fp32_heads: bool = False,
    progress: bool = True,
) -> Path:
    """Export ``model`` to ``out_dir``: its graphs (``model.onnx``, and ``model.<graph>.onnx`` for
    tasks that need their own), ``config.json``, the tokenizer and ``onnx_manifest.json``.

    ``quantize="int8"`` adds int8 graphs (``model_int8.onnx``, ...) made by dynamic
    quantisation (``per_channel``, the default: one scale per output channel of each weight, which
    on TweetEval kept validation within 0.24–0.34 points of fp32 where one scale per matrix lost
    0.76–1.27, at the same speed; ``fp32_heads``: heads left in fp32) and makes them the folder's
    default. ``fuse``: apply ONNX Runtime's transformer fusions.
    Every fp32 graph is checked against PyTorch on a batch unlike the traced one (logits within
    1e-4); a graph that fails, and a head or encoder the exporter cannot trace, are an
    [`OnnxExportError`][hf_multitask.onnx_export.OnnxExportError] naming it. Returns ``out_dir``."""
    require_onnx_extra("hf-multitask export", ("onnx", "onnxruntime"))
    if quantize not in (None, "int8"):
        raise OnnxExportError(f"quantize must be None or 'int8', got {quantize!r}")
    if not isinstance(model, (MultitaskModel, RoutedMultitaskModel)):
        raise OnnxExportError(f"a {type(model).__name__} cannot be exported: the export takes a MultitaskModel or a RoutedMultitaskModel")
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.float32}:
        raise OnnxExportError(
            f"the model's weights are {sorted(map(str, dtypes))}: export a float32 model (from_pretrained(..., dtype=torch.float32))"
        )
    out = Path(out_dir)
    if any((out / n).is_file() for n in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")):
        raise OnnxExportError(f"{out} holds a PyTorch model: export into a folder of its own")
    out.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    plans = plan_graphs(model, tokenizer)
    graphs, tasks = [], {}
    try:
        for k, plan in enumerate(tqdm(plans, desc="Exporting graphs", disable=not progress)):
            path = out / _file_name("model", plan, k == 0)
            _export_graph(plan, tokenizer, path, opset)
            probe = _probe(plan, tokenizer)
            names = _graph_inputs(path)
            probe = {k2: v for k2, v in probe.items() if k2 in names}
            fused, diff = False, float("inf")
            if fuse:
                plain = path.with_suffix(".unfused")
                plain.write_bytes(path.read_bytes())
                fused = _fuse(path, plan.model) and (diff := _parity(plan, path, probe)) < float("inf")
                if not fused:  # the fusions failed or broke parity: keep the plain graph
                    plain.replace(path)
                plain.unlink(missing_ok=True)
            if not fused:
                diff = _parity(plan, path, probe)
            if diff == float("inf"):
                path.unlink(missing_ok=True)
                raise OnnxExportError(f"graph {plan.name!r} (task(s) {plan.tasks}): the exported logits differ from PyTorch's by more than "
                                      f"{PARITY_ATOL:g} on a batch of another shape; this model cannot be exported faithfully")  # fmt: skip
            files = {"fp32": path.name}
            if quantize == "int8":
                int8 = out / _file_name("model_int8", plan, k == 0)
                _quantize(path, int8, plan.tasks, per_channel, fp32_heads)
                _ort_outputs(int8, probe, [_output_name(plan.tasks[0])])  # it loads and runs
                files["int8"] = int8.name
            graphs.append({"name": plan.name, "expert": plan.expert, "layout": plan.layout, "choices": plan.choices, "inputs": names,
                           "outputs": {t: _output_name(t) for t in plan.tasks}, "files": files, "fused": fused,
                           "max_abs_diff_fp32": diff})  # fmt: skip
            for task in plan.tasks:
                spec = plan.model.get_task(task)
                tasks[task] = {"graph": plan.name, "output": _output_name(task), "kind": spec.kind, "num_labels": spec.num_labels,
                               "text_columns": list(spec.text_columns), "label_names": list(spec.label_names) if spec.label_names else None}  # fmt: skip
    finally:
        model.train(was_training)
    _write_folder(model, tokenizer, out, graphs, tasks, quantize, opset, per_channel, fp32_heads)
    return out


def _graph_inputs(path: Path) -> list[str]:
    """The inputs the exported graph kept (an input the model ignores is not one)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers]


def _write_folder(model: Any, tokenizer: Any, out: Path, graphs: list[dict[str, Any]], tasks: dict[str, Any], quantize: str | None, opset: int,
                  per_channel: bool, fp32_heads: bool) -> None:  # fmt: skip
    from importlib.metadata import PackageNotFoundError, version

    import onnxruntime

    try:
        ours = version("hf-multitask")
    except PackageNotFoundError:  # run from a source tree
        ours = "unknown"
    before = set(out.glob("*.py"))
    model.config.save_pretrained(out)
    for copied in set(out.glob("*.py")) - before:  # the config's code, copied for trust_remote_code: an export runs no PyTorch code
        copied.unlink()
    tokenizer.save_pretrained(out)
    variants: dict[str, Any] = {"fp32": {"quantization": None}}
    if quantize == "int8":
        variants["int8"] = {"quantization": {"method": "dynamic (onnxruntime.quantization.quantize_dynamic)", "weights": "int8 (QInt8)",
                                             "ops": ["MatMul", "Attention"], "per_channel": per_channel, "fp32_heads": fp32_heads,
                                             "int8": "the encoder's matrix products and attention" + ("" if fp32_heads else
                                                     ", the task heads' matrix products (adjustment matrices included)"),
                                             "fp32": "embeddings, layer norms" + (", task heads (adjustment matrices included)"
                                                                                  if fp32_heads else "")}}  # fmt: skip
    manifest = {
        "format": MANIFEST_FORMAT,
        "exporter": f"torch.onnx.export (TorchScript tracer, dynamo=False), opset {opset}",
        "versions": {"hf_multitask": ours, "torch": torch.__version__.split("+")[0], "onnxruntime": onnxruntime.__version__},
        "model_type": model.config.model_type,
        "pad_token_id": int(tokenizer.pad_token_id or 0),
        "default_variant": "int8" if quantize == "int8" else "fp32",
        "variants": variants,
        "graphs": graphs,
        "tasks": tasks,
    }
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
