"""``hf-multitask``: the command line for people who never open Python.

    hf-multitask train [--config recipes/configs/X.yaml] [--key value ...]   (the recipe; --help lists every flag)
    hf-multitask predict --model DIR --input file.tsv --output out.jsonl [--tasks sst sts] [--batch_size 32]
    hf-multitask tweeteval-test --model DIR --data-dir tweeteval/ --output-dir test/ [--dtype bfloat16]

The input is a TSV/CSV file with a header holding ``text`` (and ``text_b`` for sentence pairs;
a row whose ``text_b`` is empty is a single text, and the command notes how many there are in a
file that mixes both; an ``id`` column is kept), or a JSON-lines file whose lines are ``{"id": ..., "text": ...,
"text_b": ...}`` or ``{"id": ..., "inputs": <any pipeline input>}`` (e.g. ``{"mc": {"context":
..., "choices": [...]}}``). Every line of the output holds ``{"id", "input", "answers"}``,
the answers being the ``multitask-text`` pipeline's (one per task that takes the input).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .reading import BadRecord, DataError, iter_json_records, read_table

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
    if second is None or second == "":
        return text
    if not isinstance(second, str):
        raise InputError(f"{path}: line {line}: 'text_b' must be text, got {second!r}")
    return (text, second)


def read_inputs(path: str | Path) -> Iterator[tuple[str, Any]]:
    """``(id, pipeline input)`` for every example of a TSV/CSV/JSONL file; a malformed line is
    an :class:`InputError` naming it (nothing is skipped silently), and so is a file with no
    example at all."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such input file: {path}")
    count = 0
    for count, item in enumerate(_read_inputs(path), start=1):  # noqa: B007 - the count is the point
        yield item
    if not count:
        raise InputError(f"{path}: no examples")


def _read_inputs(path: Path) -> Iterator[tuple[str, Any]]:
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


def _predict(args: argparse.Namespace) -> None:
    from tqdm.auto import tqdm

    import hf_multitask as hm

    inputs = list(read_inputs(args.input))  # read (and check) the whole file before loading the model
    singles, pairs = sum(isinstance(x, str) for _, x in inputs), sum(isinstance(x, tuple) for _, x in inputs)
    if singles and pairs:  # a row whose text_b is empty is a single text: a file may mix both, but say so
        print(f"hf-multitask: note: {singles} of {len(inputs)} examples of {args.input} have no text_b: they are single texts, "
              "answered by the single-text tasks (--tasks names the tasks that must answer every example)", file=sys.stderr)  # fmt: skip
    model, tokenizer = _load_model(args.model)
    if not isinstance(model, hm.MultitaskModel):
        raise InputError(f"--model {args.model}: a {type(model).__name__}, not a MultitaskModel (the pipeline needs one)")
    pipe = model.pipeline(tokenizer, device=args.device)
    extra = {"tasks": args.tasks} if args.tasks else {}
    if args.dtype is not None:
        extra["autocast_dtype"] = args.dtype
    if args.max_length:
        extra["max_length"] = args.max_length
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")  # renamed to the output only once every example is answered
    try:
        with open(partial, "w", encoding="utf-8") as handle, tqdm(total=len(inputs), desc="Predicting", disable=args.quiet) as bar:
            for start in range(0, len(inputs), args.batch_size):
                chunk = inputs[start : start + args.batch_size]
                try:
                    answers = pipe([x for _, x in chunk], batch_size=args.batch_size, **extra)
                except ValueError as err:
                    raise InputError(f"{args.input}: examples {chunk[0][0]}..{chunk[-1][0]}: {err}") from None
                for (ident, value), answer in zip(chunk, answers):
                    handle.write(json.dumps({"id": ident, "input": value, "answers": answer}) + "\n")
                bar.update(len(chunk))
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)


def _load_model(folder: str):
    from transformers import AutoModel, AutoTokenizer

    import hf_multitask as hm

    from .model_folders import ModelFolderError, check_model_folder

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

    model, tokenizer = _load_model(args.model)
    try:
        written = write_test_predictions(model, tokenizer, args.data_dir, args.output_dir, tasks=args.tasks, max_length=args.max_length,
                                         batch_size=args.batch_size, progress=not args.quiet, dtype=args.dtype)  # fmt: skip
    except ValueError as err:  # a DataError too: one line on stderr, exit 2
        raise InputError(str(err)) from None
    for stem, path in sorted(written.items()):
        print(f"{stem}: {path}")


DTYPE_HELP = "float32 (default) or bfloat16: predict under bf16 autocast (on a CPU it pays only with bf16 instructions)"


def _dtype(name: str, device: str | None) -> Any:
    """``--dtype``: None (fp32) or ``torch.bfloat16``, refused on a CPU without bf16 instructions."""
    import torch

    from .precision import check_cpu_bf16, parse_dtype

    dtype = parse_dtype(name)
    if dtype is not None and (str(device or "cpu").startswith("cpu") or not torch.cuda.is_available()):
        check_cpu_bf16("--dtype bfloat16")
    return dtype


def main(argv: list[str] | None = None) -> None:
    """``hf-multitask``: ``train`` (the recipe), ``predict`` and ``tweeteval-test``; a bad input or
    model folder ends in one line on stderr and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # the recipe owns its flags (HfArgumentParser): hand them over whole
        from .recipe import main as train

        return train(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch_size must be at least 1")
    try:
        args.dtype = _dtype(args.dtype, getattr(args, "device", None))
    except ValueError as err:
        parser.error(str(err))
    try:
        _tweeteval(args) if args.command == "tweeteval-test" else _predict(args)
    except (DataError, OSError) as err:
        print(f"hf-multitask: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def build_parser() -> argparse.ArgumentParser:
    """The ``predict`` and ``tweeteval-test`` commands' parser (``train`` hands its flags to the recipe's)."""
    parser = argparse.ArgumentParser(prog="hf-multitask", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train with the recipe (every flag of recipes/train_pcgrad.py; `hf-multitask train --help`)")
    pred = sub.add_parser("predict", help="every task's answer for each line of a file")
    pred.add_argument("--model", required=True, help="a saved hf-multitask model folder (e.g. outputs/run/best)")
    pred.add_argument("--input", required=True, help="TSV/CSV with a 'text' (and 'text_b') column, or JSON lines")
    pred.add_argument("--output", required=True, help="where to write the JSON-lines answers")
    pred.add_argument("--tasks", nargs="+", help="answer only these tasks")
    pred.add_argument("--batch_size", type=int, default=32)
    pred.add_argument(
        "--max_length",
        type=int,
        default=None,
        help="cut inputs to this many tokens (default: the length the model was trained with; 512 if it does not say)",
    )
    pred.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1")
    pred.add_argument("--quiet", action="store_true", help="no progress bar")
    pred.add_argument("--dtype", default="float32", help=DTYPE_HELP)
    tweet = sub.add_parser("tweeteval-test", help="TweetEval test predictions in the official layout from a saved model")
    tweet.add_argument("--model", required=True, help="a saved hf-multitask model folder with TweetEval tasks (e.g. outputs/run/best)")
    tweet.add_argument("--data-dir", "--data_dir", dest="data_dir", required=True, help="the TweetEval folder (its test_text.txt files)")
    tweet.add_argument("--output-dir", "--output_dir", dest="output_dir", required=True,
                       help="where {task}.txt and stance/{target}.txt go")  # fmt: skip
    tweet.add_argument("--tasks", nargs="+", help="only these tasks (default: every TweetEval task the model has)")
    tweet.add_argument("--batch_size", type=int, default=64)
    tweet.add_argument(
        "--max_length",
        type=int,
        default=None,
        help="cut tweets to this many tokens (default: the length the model was trained with; 64 if it does not say)",
    )
    tweet.add_argument("--quiet", action="store_true", help="no progress bar")
    tweet.add_argument("--dtype", default="float32", help=DTYPE_HELP)
    return parser


if __name__ == "__main__":  # pragma: no cover
    main()
