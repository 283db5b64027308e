"""``hf-multitask``: the command line for people who never open Python.

    hf-multitask train [--config recipes/configs/X.yaml] [--key value ...]   (the recipe; --help lists every flag)
    hf-multitask predict --model DIR --input file.tsv --output out.jsonl [--tasks sst sts] [--batch_size 32]
    hf-multitask tweeteval-test --model DIR --data-dir tweeteval/ --output-dir test/ [--dtype bfloat16]
    hf-multitask export MODEL_DIR OUT_DIR [--quantize int8]      (ONNX; then --backend onnx --model OUT_DIR)

The input is a TSV/CSV file with a header holding ``text`` (and ``text_b`` for sentence pairs;
a row whose ``text_b`` is empty or only spaces is a single text, and the command notes how many
there are in a file that mixes both; an ``id`` column is kept), or a JSON-lines file whose lines are ``{"id": ..., "text": ...,
"text_b": ...}`` or ``{"id": ..., "inputs": <any pipeline input>}`` (e.g. ``{"mc": {"context":
..., "choices": [...]}}``), or a ``.txt`` file: one text per line, as it is (no header, no
quoting; an empty line is an empty text, so the n-th answer is line n's, with id n). Every
line of the output holds ``{"id", "input", "answers"}``, the answers being the
``multitask-text`` pipeline's (one per task that takes the input), in the input's order;
examples are batched by length (fewer padded tokens).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .onnx_backend import OnnxBackendError, OnnxExtraMissing
from .reading import BadRecord, DataError, iter_json_records, iter_lines, read_table

__all__ = ["build_parser", "main", "read_inputs"]


class InputError(DataError):
    """An input file that cannot be read; the message names the file and line."""


def _row_input(path: Path, line: int, row: dict[str, Any]) -> Any:
    if "inputs" in row:
        return row["inputs"]
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{path}: line {line}: no text (the 'text' field is empty or missing)")
    second = row.get("text_b")
    if second is None or (isinstance(second, str) and not second.strip()):  # empty, or only spaces: a single text
        return text
    if not isinstance(second, str):
        raise InputError(f"{path}: line {line}: 'text_b' must be text, got {second!r}")
    return (text, second)


def read_inputs(path: str | Path) -> Iterator[tuple[str, Any]]:
    """``(id, pipeline input)`` for every example of a TSV/CSV/JSONL/TXT file; a malformed line is
    an [`InputError`][hf_multitask.cli.InputError] naming it (nothing is skipped silently), and so is a file with no
    example at all. A ``.txt`` file is one text per line, taken as it is: line ``n`` is example
    ``n`` (id ``"n"``), an empty line an empty text."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such input file: {path}")
    count = 0
    for count, item in enumerate(_read_inputs(path), start=1):  # noqa: B007 - the count is the point
        yield item
    if not count:
        raise InputError(f"{path}: no examples")


def _read_inputs(path: Path) -> Iterator[tuple[str, Any]]:
    if path.suffix.lower() == ".txt":  # one text per line: no header, no quoting, empty lines kept
        for line, text in iter_lines(path):
            yield str(line), text
        return
    if path.suffix.lower() in (".jsonl", ".json"):
        for line, row in iter_json_records(path):
            if isinstance(row, BadRecord):
                raise InputError(f"{path}: line {line}, {row}" if row.startswith("column") else f"{path}: line {line}: {row}")
            yield str(row.get("id", line)), _row_input(path, line, row)
        return
    header, rows = read_table(path, None)
    if "text" not in header:
        raise InputError(f"{path}: the header {header} has no 'text' column (add 'text_b' for sentence pairs)")
    for line, fields in rows:
        if getattr(fields, "problem", None):
            raise InputError(f"{path}: line {line}: {fields.problem}")
        if len(fields) != len(header):
            raise InputError(f"{path}: line {line}: {len(fields)} fields, the header has {len(header)}")
        row = dict(zip(header, fields))
        yield row.get("id") or str(line - 1), _row_input(path, line, row)


def _check_txt_tasks(model: Any, args: argparse.Namespace) -> None:
    """A ``.txt`` input holds single texts: every task asked for must take one."""
    names = args.tasks or model.task_names
    for task in names:
        model.get_task(task)
    others = [t for t in names if not model.get_task(t).task_type.accepts(model.get_task(t), "text")]
    if (args.tasks and others) or len(others) == len(names):
        raise InputError(f"{args.input}: a .txt file holds one text per line, for single-text tasks; task(s) {others} take other inputs "
                         "(sentence pairs: a TSV with 'text' and 'text_b' columns; pairs or anything else: JSON lines)")  # fmt: skip


def _size(value: Any) -> int:
    """An input's length in characters (what batching sorts on for inputs other than texts and pairs)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_size(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_size(v) for v in value)
    return len(str(value))


def _texts(value: Any) -> list[str] | None:
    """The texts of a text or a pair input; None for any other input."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, tuple) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _sizes(values: list[Any], tokenizer: Any) -> list[tuple[int, int]]:
    """Sort keys for batching by length: a text or pair by its tokens (one batched tokenizer call;
    characters follow tokens poorly on tweets, with URLs, emoji and hashtags: sorted by characters,
    8,000 TweetEval tweets padded to 1.37x their tokens, sorted by tokens 1.03x), any other input
    after them by its characters."""
    if tokenizer is None:
        return [(0, _size(v)) for v in values]
    texts = [_texts(v) for v in values]
    flat = [t for parts in texts if parts is not None for t in parts]
    counts = iter([len(ids) for ids in tokenizer(flat, add_special_tokens=False, verbose=False)["input_ids"]] if flat else [])
    return [(0, sum(next(counts) for _ in parts)) if parts is not None else (1, _size(v)) for v, parts in zip(values, texts)]


def _by_length(inputs: list[tuple[str, Any]], batch_size: int, window: int = 64, tokenizer: Any = None) -> Iterator[list[int]]:
    """Batches of indices into ``inputs``: each window of ``window`` batches sorted by length
    (stable; in tokens with ``tokenizer``, else in characters), so a batch pads little while
    answers can still be written as the file goes."""
    span = batch_size * window
    for start in range(0, len(inputs), span):
        ids = range(start, min(start + span, len(inputs)))
        keys = _sizes([inputs[i][1] for i in ids], tokenizer)
        order = [ids[k] for k in sorted(range(len(keys)), key=keys.__getitem__)]
        for k in range(0, len(order), batch_size):
            yield order[k : k + batch_size]


def _bad_example(pipe: Any, inputs: list[tuple[str, Any]], batch: list[int], extra: dict[str, Any], path: str) -> InputError:
    """The error naming the example of ``batch`` the pipeline refuses (each is tried alone)."""
    for i in sorted(batch):
        try:
            pipe([inputs[i][1]], batch_size=1, **extra)
        except ValueError as err:
            return InputError(f"{path}: example {inputs[i][0]}: {err}")
    return InputError(f"{path}: examples {', '.join(inputs[i][0] for i in sorted(batch))} cannot be answered together")


def _predict(args: argparse.Namespace) -> None:
    from tqdm.auto import tqdm

    inputs = list(read_inputs(args.input))  # read (and check) the whole file before loading the model
    singles, pairs = sum(isinstance(x, str) for _, x in inputs), sum(isinstance(x, tuple) for _, x in inputs)
    if singles and pairs:  # a row whose text_b is empty is a single text: a file may mix both, but say so
        print(f"hf-multitask: note: {singles} of {len(inputs)} examples of {args.input} have no text_b: they are single texts, "
              "answered by the single-text tasks (--tasks names the tasks that must answer every example)", file=sys.stderr)  # fmt: skip
    model, tokenizer = _load_model(args.model, args.backend)  # a MultitaskModel, a RoutedMultitaskModel or an ONNX export
    if Path(args.input).suffix.lower() == ".txt":
        _check_txt_tasks(model, args)
    pipe = model.pipeline(tokenizer, **({} if args.backend == "onnx" else {"device": args.device}))
    extra = {"tasks": args.tasks} if args.tasks else {}
    if args.dtype is not None:
        extra["autocast_dtype"] = args.dtype
    if args.max_length is not None:
        extra["max_length"] = args.max_length
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")  # renamed to the output only once every example is answered
    answers: dict[int, Any] = {}
    written = 0
    try:
        with open(partial, "w", encoding="utf-8") as handle, tqdm(total=len(inputs), desc="Predicting", disable=args.quiet) as bar:
            for batch in _by_length(inputs, args.batch_size, tokenizer=tokenizer):
                try:
                    got = pipe([inputs[i][1] for i in batch], batch_size=args.batch_size, **extra)
                except ValueError:
                    raise _bad_example(pipe, inputs, batch, extra, args.input) from None
                answers.update(zip(batch, got))
                while written in answers:  # in the input's order
                    ident, value = inputs[written]
                    handle.write(json.dumps({"id": ident, "input": value, "answers": answers.pop(written)}) + "\n")
                    written += 1
                bar.update(len(batch))
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)


def _load_model(folder: str, backend: str = "torch"):
    from transformers import AutoModel, AutoTokenizer

    import hf_multitask as hm

    from .model_folders import ModelFolderError, check_model_folder

    if backend == "onnx":
        try:
            model = hm.OnnxMultitaskModel.from_pretrained(folder)
        except OnnxBackendError as err:
            raise InputError(f"--model: {err}") from None
        return model, model.tokenizer()
    model_dir = Path(folder)
    try:
        check_model_folder(model_dir)
    except ModelFolderError as err:
        raise InputError(f"--model: {err}") from None
    model = AutoModel.from_pretrained(model_dir)
    if not isinstance(model, (hm.MultitaskModel, hm.RoutedMultitaskModel)):
        raise InputError(f"--model {model_dir}: a {type(model).__name__}, not an hf-multitask model")
    return model.eval(), AutoTokenizer.from_pretrained(model_dir)


def _tweeteval(args: argparse.Namespace) -> None:
    from .tweeteval import write_test_predictions

    model, tokenizer = _load_model(args.model, args.backend)
    try:
        written = write_test_predictions(model, tokenizer, args.data_dir, args.output_dir, tasks=args.tasks, max_length=args.max_length,
                                         batch_size=args.batch_size, progress=not args.quiet, dtype=args.dtype)  # fmt: skip
    except ValueError as err:  # a DataError too: one line on stderr, exit 2
        raise InputError(str(err)) from None
    for stem, path in sorted(written.items()):
        print(f"{stem}: {path}")


BACKENDS = ("torch", "onnx")
BACKEND_HELP = ("torch (default) or onnx: ONNX Runtime on the CPU; --model is then a folder written by `hf-multitask export` "
                "(or one of its .onnx files: model.onnx for fp32, model_int8.onnx for int8)")  # fmt: skip
DTYPE_HELP = "float32 (default) or bfloat16: predict under bf16 autocast (on a CPU it pays only with bf16 instructions)"


def _export(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from .model_folders import ModelFolderError, check_model_folder
    from .onnx_export import OnnxExportError, export_onnx

    try:
        check_model_folder(args.model_dir)
    except ModelFolderError as err:
        raise InputError(f"MODEL_DIR: {err}") from None
    model = AutoModel.from_pretrained(args.model_dir, dtype=torch.float32)
    try:
        out = export_onnx(model, AutoTokenizer.from_pretrained(args.model_dir), args.out_dir, quantize=args.quantize, opset=args.opset,
                          fuse=not args.no_fuse, per_channel=args.per_channel, fp32_heads=args.fp32_heads, progress=not args.quiet)  # fmt: skip
    except OnnxExportError as err:
        raise InputError(f"{args.model_dir}: {err}") from None
    print(f"exported to {out}" + (" (fp32 model.onnx, int8 model_int8.onnx)" if args.quantize else " (model.onnx)"))


def _dtype(name: str, device: str | None) -> Any:
    """``--dtype``: None (fp32) or ``torch.bfloat16``, refused on a CPU without bf16 instructions."""
    import torch

    from .precision import check_cpu_bf16, parse_dtype

    dtype = parse_dtype(name)
    if dtype is not None and (str(device or "cpu").startswith("cpu") or not torch.cuda.is_available()):
        check_cpu_bf16("--dtype bfloat16")
    return dtype


def main(argv: list[str] | None = None) -> None:
    """``hf-multitask``: ``train`` (the recipe), ``predict``, ``tweeteval-test`` and ``export``; a
    bad input or model folder, or a missing optional extra, ends in one line on stderr and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # the recipe owns its flags (HfArgumentParser): hand them over whole
        from .recipe import main as train

        return train(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "export":
        if args.batch_size < 1:
            parser.error("--batch_size must be at least 1")
        try:
            args.dtype = _dtype(args.dtype, getattr(args, "device", None))
        except ValueError as err:
            parser.error(str(err))
        if args.backend == "onnx" and args.dtype is not None:
            parser.error("--dtype bfloat16 is for --backend torch: ONNX graphs run in fp32, or int8 if exported with --quantize int8")
        if args.backend == "onnx" and str(getattr(args, "device", None) or "cpu") != "cpu":
            parser.error(f"--backend onnx runs on the CPU (ONNX Runtime's CPU provider), not on --device {args.device}")
    command = {"export": _export, "tweeteval-test": _tweeteval, "predict": _predict}[args.command]
    try:
        with _quiet() if args.quiet else contextlib.nullcontext():
            command(args)
    except (DataError, OSError, OnnxExtraMissing) as err:
        print(f"hf-multitask: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """``--quiet``: no progress bar at all, the libraries' too (datasets' tokenising and
    transformers' weight loading), restored afterwards for a caller in the same process
    (huggingface_hub's per-group settings included, which transformers' switch resets)."""
    from transformers.utils import logging as hf_logging

    # transformers' switch also switches huggingface_hub's bars, wiping its per-group settings; they live in a module
    # dict with no public getter (huggingface_hub 1.x-2.x; tests/inference/test_cli.py checks the round trip)
    hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")

    try:
        from datasets.utils import logging as ds_logging
    except ImportError:  # a served folder needs no datasets for .onnx input alone
        ds_logging = None
    hub_states = dict(hub_tqdm.progress_bar_states)
    was = hf_logging.is_progress_bar_enabled(), ds_logging is not None and ds_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    if ds_logging is not None:
        ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was[0]:
            hf_logging.enable_progress_bar()
        if was[1]:
            ds_logging.enable_progress_bar()
        hub_tqdm.progress_bar_states.clear()
        hub_tqdm.progress_bar_states.update(hub_states)


def _tokens(value: str) -> int:
    """``--max_length``: a number of tokens, at least 1 (0 read as 'the default' and a negative one
    failed deep in the tokenizer)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of tokens, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 token, got {number}")
    return number


def build_parser() -> argparse.ArgumentParser:
    """The ``predict``, ``tweeteval-test`` and ``export`` commands' parser (``train`` hands its flags to the recipe's)."""
    parser = argparse.ArgumentParser(prog="hf-multitask", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train with the recipe (every flag of recipes/train_pcgrad.py; `hf-multitask train --help`)")
    pred = sub.add_parser("predict", help="every task's answer for each line of a file")
    pred.add_argument("--model", required=True, help="a saved hf-multitask model folder (e.g. outputs/run/best)")
    pred.add_argument("--input", required=True, help="TSV/CSV with a 'text' (and 'text_b') column, JSON lines, or .txt (one text per line)")
    pred.add_argument("--output", required=True, help="where to write the JSON-lines answers")
    pred.add_argument("--tasks", nargs="+", help="answer only these tasks")
    pred.add_argument("--batch_size", type=int, default=32)
    pred.add_argument(
        "--max_length",
        type=_tokens,
        default=None,
        help="cut inputs to this many tokens (default: the length the model was trained with; if it does not say, 512 or the encoder's limit)",
    )
    pred.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1")
    pred.add_argument("--quiet", action="store_true", help="no progress bar")
    pred.add_argument("--dtype", default="float32", help=DTYPE_HELP)
    pred.add_argument("--backend", choices=BACKENDS, default="torch", help=BACKEND_HELP)
    tweet = sub.add_parser("tweeteval-test", help="TweetEval test predictions in the official layout from a saved model")
    tweet.add_argument("--model", required=True, help="a saved hf-multitask model folder with TweetEval tasks (e.g. outputs/run/best)")
    tweet.add_argument("--data-dir", "--data_dir", dest="data_dir", required=True, help="the TweetEval folder (its test_text.txt files)")
    tweet.add_argument("--output-dir", "--output_dir", dest="output_dir", required=True,
                       help="where {task}.txt and stance/{target}.txt go")  # fmt: skip
    tweet.add_argument("--tasks", nargs="+", help="only these tasks (default: every TweetEval task the model has)")
    tweet.add_argument("--batch_size", type=int, default=64)
    tweet.add_argument(
        "--max_length",
        type=_tokens,
        default=None,
        help="cut tweets to this many tokens (default: the length the model was trained with; if it does not say, 64 or the encoder's limit)",
    )
    tweet.add_argument("--quiet", action="store_true", help="no progress bar")
    tweet.add_argument("--dtype", default="float32", help=DTYPE_HELP)
    tweet.add_argument("--backend", choices=BACKENDS, default="torch", help=BACKEND_HELP)
    exp = sub.add_parser("export", help="ONNX graphs answering every task, for --backend onnx (needs the 'onnx' extra)")
    exp.add_argument("model_dir", help="a saved hf-multitask model folder (e.g. outputs/run/best)")
    exp.add_argument("out_dir", help="where the graphs, config, tokenizer and onnx_manifest.json go (a folder of their own)")
    exp.add_argument("--quantize", choices=["int8"], default=None,
                     help="also write int8 graphs (dynamic quantisation; model_int8.onnx) and make them the folder's default")  # fmt: skip
    exp.add_argument("--per-channel", "--per_channel", dest="per_channel", action="store_true", help="int8: one scale per output channel")
    exp.add_argument("--fp32-heads", "--fp32_heads", dest="fp32_heads", action="store_true", help="int8: keep the task heads in fp32")
    exp.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    exp.add_argument("--no-fuse", "--no_fuse", dest="no_fuse", action="store_true", help="skip ONNX Runtime's transformer fusions")
    exp.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


if __name__ == "__main__":  # pragma: no cover
    main()
