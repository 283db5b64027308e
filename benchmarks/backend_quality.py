"""What ONNX Runtime fp32 and int8 cost in quality, on TweetEval's validation labels (issue 52).

    python benchmarks/backend_quality.py --data-dir ../shared/data/tweeteval \\
        --files benchmarks/results/tweeteval/backends/sum_annealed_seed0 \\
        --model RUN/best --export EXPORT_DIR [--model RUN_B/best --export EXPORT_B --tasks emoji ...] \\
        --out benchmarks/results/tweeteval/backends/sum_annealed_seed0/quality.json

Two things, neither of which reads a test label (the held-out scorer owns those):

- **Validation.** Each model's ``val_text.txt`` is written by ``hf-multitask tweeteval-test`` with
  each backend (PyTorch fp32, ONNX fp32 ``model.onnx``, ONNX int8 ``model_int8.onnx``), through a
  TweetEval-shaped folder whose ``test_text.txt`` files are links to the validation text, then
  scored against ``val_labels.txt`` with the official metrics. Repeat ``--model``/``--export``
  (with ``--tasks`` after each) for a benchmark served by several models, as ``separate`` is.
- **Test agreement.** ``--files`` names a folder holding ``torch_fp32/``, ``onnx_fp32/`` and
  ``onnx_int8/`` test files already written: the share of test labels each ONNX backend gives
  as PyTorch fp32 does, per task.

The JSON holds each backend's six validation metrics and benchmark score (x 100), each ONNX
backend's difference to PyTorch fp32, and the test agreement.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from hf_multitask import metrics
from hf_multitask.tweeteval import _METRIC, STANCE_TARGETS, TWEETEVAL_TASKS

BACKENDS = {"torch_fp32": None, "onnx_fp32": "model.onnx", "onnx_int8": "model_int8.onnx"}


def _val_mirror(data_dir: Path, into: Path) -> None:
    """A TweetEval folder whose test text is the validation text (links, nothing copied)."""
    for task in TWEETEVAL_TASKS:
        for group in _groups(task):
            (into / group).mkdir(parents=True, exist_ok=True)
            (into / group / "test_text.txt").symlink_to((data_dir / group / "val_text.txt").resolve())
        (into / task / "mapping.txt").symlink_to((data_dir / task / "mapping.txt").resolve())


def _groups(task: str) -> list[str]:
    return [task] if task != "stance" else [f"stance/{t}" for t in STANCE_TARGETS]


def _ints(files: list[Path]) -> np.ndarray:
    return np.array([int(line) for f in files for line in f.read_text().split()])


def _predicted(folder: Path, task: str) -> np.ndarray:
    """A task's labels from official prediction files (``{task}.txt``, ``stance/{target}.txt``)."""
    return _ints([folder / f"{g}.txt" for g in _groups(task)])


def _gold(data_dir: Path, task: str) -> np.ndarray:
    return _ints([data_dir / g / "val_labels.txt" for g in _groups(task)])


def _score(files: Path, data_dir: Path, tasks: list[str]) -> dict[str, float]:
    out = {t: 100 * getattr(metrics, _METRIC[t])(_predicted(files, t), _gold(data_dir, t)) for t in tasks}
    return {**out, "benchmark": float(np.mean(list(out.values())))} if len(out) == len(TWEETEVAL_TASKS) else out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--model", type=Path, action="append", default=[], help="a saved model folder (repeatable)")
    parser.add_argument("--export", type=Path, action="append", default=[], help="its `hf-multitask export` folder")
    parser.add_argument("--tasks", nargs="+", action="append", default=None, help="the tasks the model before it answers")
    parser.add_argument("--files", type=Path, help="a folder with torch_fp32/, onnx_fp32/, onnx_int8/ test files")
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=list(BACKENDS),
        default=list(BACKENDS),
        help="score only these (e.g. onnx_int8 for another int8 export: --per-channel, --fp32-heads)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if len(args.model) != len(args.export) or (args.tasks and len(args.tasks) != len(args.model)):
        parser.error("give one --export (and, if any, one --tasks) per --model")
    tasks_of = args.tasks or [list(TWEETEVAL_TASKS)] * len(args.model)
    result: dict = {"validation": {}, "test_agreement": {}}
    with tempfile.TemporaryDirectory() as tmp:
        mirror = Path(tmp) / "data"
        _val_mirror(args.data_dir, mirror)
        for backend, graph in ((b, g) for b, g in BACKENDS.items() if b in args.backends):
            files = Path(tmp) / backend
            for model, export, tasks in zip(args.model, args.export, tasks_of, strict=True):
                cmd = [sys.executable, "-m", "hf_multitask.cli", "tweeteval-test", "--data-dir", str(mirror),
                       "--output-dir", str(files), "--quiet", "--tasks", *tasks]  # fmt: skip
                cmd += ["--model", str(model)] if graph is None else ["--backend", "onnx", "--model", str(export / graph)]
                subprocess.run(cmd, check=True)
            done = [t for t in TWEETEVAL_TASKS if any(t in ts for ts in tasks_of)]
            result["validation"][backend] = _score(files, args.data_dir, done)
            print(backend, json.dumps(result["validation"][backend]), flush=True)
    base = result["validation"].get("torch_fp32")
    if base:
        result["validation_minus_torch_fp32"] = {
            b: {k: v - base[k] for k, v in s.items()} for b, s in result["validation"].items() if b != "torch_fp32"
        }
    if args.files:
        ref = {t: _predicted(args.files / "torch_fp32", t) for t in TWEETEVAL_TASKS}
        for backend in ("onnx_fp32", "onnx_int8"):
            got = {t: _predicted(args.files / backend, t) for t in ref}
            short = [t for t in ref if len(got[t]) != len(ref[t])]  # numpy would broadcast a one-line file over all
            if short:
                raise SystemExit(f"{args.files / backend}: {short} hold another number of lines than torch_fp32's")
            result["test_agreement"][backend] = {t: float(np.mean(got[t] == y)) for t, y in ref.items()}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
