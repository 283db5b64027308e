"""What an ONNX export serves beyond plain parity: a routed export encodes each task's pairs as the
task's expert does, graphs are planned per adapter task and never collide with a task's name,
``fp32_heads`` keeps the heads fp32 (and without it they are quantised, as the docs say), and
what one backend refuses the other refuses the same way."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the ONNX backend needs the 'onnx' extra (pip install 'hf-multitask[onnx]'); CI installs it")
pytest.importorskip("onnx", reason="the ONNX export needs the 'onnx' extra (pip install 'hf-multitask[onnx]'); CI installs it")

from test_cli import _cli_in_process  # noqa: E402
from test_onnx import ATOL, _assert_parity, _error_line, _model  # noqa: E402
from test_pipeline import MC, POS, SCORE, SENTI  # noqa: E402
from tweeteval_fixtures import tweet, write_tweeteval  # noqa: E402

import hf_multitask as hm  # noqa: E402
from hf_multitask import tweeteval as te  # noqa: E402
from hf_multitask.onnx_backend import OnnxBackendError, OnnxMultitaskModel  # noqa: E402
from hf_multitask.onnx_export import export_onnx  # noqa: E402


def _centre_head(model: hm.MultitaskModel, task: str, run) -> None:
    """Scale ``task``'s last head layer and centre its logits on what ``run()`` feeds it: its labels
    then follow small changes of the pooled vectors (a random head gives every input one label,
    which a wrong encoding would 'agree' with)."""
    layer = model.heads[task].net[-1]
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda module, args, out: seen.append(args[0].detach()))
    run()
    handle.remove()
    with torch.no_grad():
        layer.weight.mul_(30.0)
        layer.bias.copy_(-(torch.cat(seen) @ layer.weight.T).mean(0))


@pytest.fixture(scope="module")
def tweeteval_dir(tmp_path_factory):
    return write_tweeteval(tmp_path_factory.mktemp("tweeteval"))


@pytest.mark.parametrize("shared_encoding, own_encoding", [("bi", "cross"), ("cross", "bi")])
def test_a_routed_export_encodes_each_tasks_pairs_as_its_expert_does(shared_encoding, own_encoding, tokenizer, tweeteval_dir, tmp_path,
                                                                   capsys):  # fmt: skip
    """The shared expert encodes pairs one way, the specialised stance expert the other: the
    export answers stance from the stance expert's encoding through the pipeline and
    ``tweeteval-test --backend onnx``, as PyTorch does (the shared expert's encoding made the
    ONNX answer ignore the tweet, or asked the graph for inputs it does not have)."""
    data = tweeteval_dir
    tasks = [te.tweeteval_task(t, data) for t in ("irony", "stance")]
    shared = _model(tasks=tasks, seed=1, pair_encoding=shared_encoding)
    own = _model(tasks=tasks, seed=2, pair_encoding=own_encoding)
    spec = own.get_task("stance")
    _centre_head(own, "stance", lambda: own.pipeline(tokenizer)([(r["target"], r["text"]) for r in te.test_inputs(spec, data)[0]]))
    routed = hm.RoutedMultitaskModel.from_models({"stance": own}, multitask=shared).eval()
    routed.save_pretrained(tmp_path / "torch")
    tokenizer.save_pretrained(tmp_path / "torch")
    export_onnx(routed, tokenizer, tmp_path / "onnx", progress=False)
    served = OnnxMultitaskModel.from_pretrained(tmp_path / "onnx")
    assert served.config.task_pair_encoding(served.get_task("stance")) == own_encoding
    inputs = [("Atheism", tweet(i)) for i in range(4)] + [("Atheism", "x"), tweet(5)]
    want, got = routed.pipeline(tokenizer)(inputs), served.pipeline()(inputs)
    scores = {round(a["stance"]["score"], 4) for a in want if "stance" in a}
    assert len(scores) > 1, "the stance answer depends on the tweet, not only on the target"
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for task in w:
            assert g[task]["label"] == w[task]["label"] and g[task]["score"] == pytest.approx(w[task]["score"], abs=ATOL), task
    for backend in ("torch", "onnx"):
        status, err = _cli_in_process(capsys, "tweeteval-test", "--model", tmp_path / backend, "--data-dir", data, "--output-dir",
                                      tmp_path / f"test_{backend}", "--tasks", "irony", "stance", "--backend", backend, "--quiet")  # fmt: skip
        assert status == 0, err
    files = sorted(p.relative_to(tmp_path / "test_torch") for p in (tmp_path / "test_torch").rglob("*.txt"))
    assert len(files) == 6  # irony and the five stance targets
    assert len({line for p in files if p.parts[0] == "stance" for line in (tmp_path / "test_torch" / p).read_text().split()}) > 1
    for path in files:
        assert (tmp_path / "test_onnx" / path).read_text() == (tmp_path / "test_torch" / path).read_text(), path


def _fp32_arrays(path) -> list[np.ndarray]:
    """The float initializers of an ONNX file (what it computes with in fp32)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    return [numpy_helper.to_array(i) for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT]


def _kept(weight: torch.Tensor, arrays: list[np.ndarray]) -> bool:
    """Whether ``arrays`` hold ``weight`` as it is, or transposed (as the tracer folds it for a MatMul)."""
    w = weight.detach().numpy()
    return any(a.shape == v.shape and np.array_equal(a, v) for a in arrays for v in (w, w.T))


@pytest.mark.parametrize("fp32_heads", [False, True])
def test_fp32_heads_keeps_every_heads_weights_fp32_and_nothing_else(fp32_heads, tokenizer, tmp_path):
    """With ``fp32_heads`` every head's (and adjustment's) weights stay fp32 in every int8 graph,
    sentence heads included (the quantiser renames their Gemm, which the exclusion missed), and
    a task called ``encoder`` leaves the encoder quantised; without it, the heads are int8 too,
    as the inference guide says."""
    enc = hm.TaskSpec("encoder", "classification", num_labels=2, text_columns=("text",))
    near = hm.TaskSpec("near", "regression", num_labels=1, text_columns=("a", "b"), pair_encoding="bi")
    model = _model(tasks=[SENTI, SCORE, POS, enc, near, MC], head_type="mlp", head_hidden_sizes=[8], adjustment_tasks=["senti"])
    export_onnx(model, tokenizer, tmp_path / "x", quantize="int8", fp32_heads=fp32_heads, progress=False)
    manifest = json.loads((tmp_path / "x" / "onnx_manifest.json").read_text())
    assert manifest["variants"]["int8"]["quantization"]["fp32_heads"] is fp32_heads
    encoder = [w for layer in model.encoder.encoder.layer for w in (layer.intermediate.dense.weight, layer.output.dense.weight)]
    for graph in manifest["graphs"]:
        arrays = _fp32_arrays(tmp_path / "x" / graph["files"]["int8"])
        for task in graph["outputs"]:
            modules = [model.heads[task], *([model.adjustments[task]] if task in model.adjustments else [])]
            weights = [p for m in modules for p in m.parameters() if p.dim() == 2]
            assert len(weights) >= 2 and [_kept(w, arrays) for w in weights] == [fp32_heads] * len(weights), (graph["name"], task)
        assert not any(_kept(w, arrays) for w in encoder), f"graph {graph['name']}: the encoder's matrix products are int8"


def test_more_choices_than_the_task_takes_are_refused_by_both_backends(tokenizer, tmp_path, capsys):
    """Four choices for a task of at most three: PyTorch answered a choice past the task's
    columns and ONNX Runtime raised its own error (a traceback from predict). Both refuse it,
    naming the task; predict says so in one line naming the example."""
    model = _model(tasks=[SENTI, MC])
    model.save_pretrained(tmp_path / "torch")
    tokenizer.save_pretrained(tmp_path / "torch")
    export_onnx(model, tokenizer, tmp_path / "onnx", progress=False)
    four = {"mc": {"context": "the cat", "choices": ["runs", "eats", "sees", "sleeps"]}}
    three = {"mc": {"context": "the cat", "choices": ["runs", "eats", "sees"]}}
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "inputs": x}) + "\n" for i, x in (("ok", three), ("q", four))))
    for backend, pipe in (("torch", model.pipeline(tokenizer)), ("onnx", OnnxMultitaskModel.from_pretrained(tmp_path / "onnx").pipeline())):
        with pytest.raises(ValueError, match=r"task 'mc': 4 choices, but it takes at most 3"):
            pipe(four)
        assert pipe(three)["mc"]["choice"] in (0, 1, 2)
        status, err = _cli_in_process(capsys, "predict", "--model", tmp_path / backend, "--input", source, "--output",
                                      tmp_path / f"{backend}.jsonl", "--backend", backend, "--quiet")  # fmt: skip
        assert status == 2 and "in.jsonl: example q: task 'mc': 4 choices" in _error_line(err), backend


def test_per_task_lora_on_some_tasks_gives_only_those_tasks_a_graph(tokenizer, tmp_path):
    """LoRA adapters for two of five tasks: those two get graphs of their own (their encoder
    differs); the others, which run the encoder alone, share the one graph (each had a graph,
    and a copy of the encoder, of its own)."""
    model = _model()
    model.add_lora(r=4, per_task=True, tasks=["senti", "para"])
    with torch.no_grad():  # B starts at zero: give the adapters a visible effect
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    model.eval()
    assert model.routed_tasks == ["senti", "para"]
    export_onnx(model, tokenizer, tmp_path / "x", progress=False)
    manifest = json.loads((tmp_path / "x" / "onnx_manifest.json").read_text())
    graphs = {t: e["graph"] for t, e in manifest["tasks"].items()}
    assert graphs["senti"] == "senti" and graphs["para"] == "para" and graphs["mc"] == "mc"
    assert graphs["score"] == graphs["pos"] and graphs["score"] not in model.task_names, "one shared graph for the tasks without adapters"
    assert len(manifest["graphs"]) == 4
    _assert_parity(model, OnnxMultitaskModel.from_pretrained(tmp_path / "x"), tokenizer)


def test_a_task_called_shared_keeps_its_graph_apart_from_the_shared_one(tokenizer, tmp_path):
    """The shared graph's name is one no task can have: a task called ``shared`` that needs a
    graph of its own (a siamese pair) no longer takes the shared graph's place in the manifest
    (the single-text tasks were then asked for the pair's inputs)."""
    pair = hm.TaskSpec("shared", "classification", num_labels=2, text_columns=("a", "b"), pair_encoding="bi")
    model = _model(tasks=[SENTI, SCORE, pair])
    export_onnx(model, tokenizer, tmp_path / "x", progress=False)
    manifest = json.loads((tmp_path / "x" / "onnx_manifest.json").read_text())
    names = [g["name"] for g in manifest["graphs"]]
    assert len(set(names)) == len(names) == 2 and manifest["tasks"]["shared"]["graph"] == "shared"
    assert manifest["tasks"]["senti"]["graph"] == manifest["tasks"]["score"]["graph"] != "shared"
    served = OnnxMultitaskModel.from_pretrained(tmp_path / "x")
    assert served.graph_of("senti") != served.graph_of("shared")
    _assert_parity(model, served, tokenizer)
    manifest["graphs"][1]["name"] = manifest["graphs"][0]["name"]  # what the collision wrote: refused, not served wrongly
    (tmp_path / "x" / "onnx_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(OnnxBackendError, match="names the graph '_shared' twice; export the model again"):
        OnnxMultitaskModel.from_pretrained(tmp_path / "x")


def test_bf16_autocast_is_refused_for_an_export_as_the_command_refuses_it(tokenizer, tmp_path):
    """``autocast_dtype="bfloat16"`` (and ``predict(dtype=...)``) with an ONNX export was taken
    and ignored: ONNX Runtime runs the graph as exported. Refused, as ``--dtype bfloat16
    --backend onnx`` is; float32 is what the export runs anyway."""
    from transformers import pipeline

    export_onnx(_model(tasks=[SENTI, SCORE]), tokenizer, tmp_path / "x", progress=False)
    served = OnnxMultitaskModel.from_pretrained(tmp_path / "x")
    pipe = served.pipeline()
    refused = "autocast_dtype=.* is for the PyTorch backend: an ONNX export runs in fp32"
    with pytest.raises(ValueError, match=refused):
        pipe("the cat", autocast_dtype="bfloat16")
    with pytest.raises(ValueError, match=refused):
        pipeline("multitask-text", model=str(tmp_path / "x"), backend="onnx", autocast_dtype=torch.bfloat16)
    assert pipe("the cat", autocast_dtype="float32") == pipe("the cat")
    encoded = hm.encode_task(datasets.Dataset.from_dict({"id": ["a"], "text": ["the cat"]}), SCORE, tokenizer)
    with pytest.raises(ValueError, match="is for a PyTorch model: an ONNX export runs in fp32"):
        hm.predict(served, encoded, "score", dtype=torch.bfloat16, progress=False)
