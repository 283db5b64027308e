"""Whole-process ``hf-multitask predict`` on TweetEval emoji test tweets: PyTorch fp32 against
ONNX Runtime fp32 and int8 (issue 52), the modes interleaved in one run.

    python benchmarks/onnx_speed.py --model outputs/RUN/best --data-dir ../shared/data/tweeteval \\
        [--n 8000] [--rounds 1] [--bf16] [--export-dir DIR] [--export-args '--per-channel'] [--out benchmarks/results/onnx_speed.json]

What it does: the first ``--n`` lines of ``emoji/test_text.txt`` become one ``.txt`` input (one
tweet per line, as ``predict`` reads it); the model is exported once (``hf-multitask export
--quantize int8``, timed apart); then each round runs, in a rotating order, one real
``hf-multitask predict`` process per mode and times it from start to exit: model loading,
tokenising, batching by length, the forward passes and writing the answers. ``--bf16`` adds
PyTorch under bf16 autocast (``--dtype bfloat16``; refused by the command on a CPU without bf16
instructions, and then reported as skipped). Before the timed rounds every mode runs once on 64
lines (file caches, the first import). The JSON holds every time, examples per second (median
over rounds), each mode's ratio to PyTorch fp32 and whether the issue's targets are met (ONNX fp32
>= 1.3x, int8 >= 2.0x), how often each backend's labels agree with PyTorch fp32's (and the largest
score difference), the CPU's instruction sets and the package versions.

Nothing here is run by the tests: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"onnx_fp32": 1.3, "onnx_int8": 2.0}
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def _cli() -> list[str]:
    exe = shutil.which("hf-multitask")
    return [exe] if exe else [sys.executable, "-m", "hf_multitask.cli"]


def _cpu() -> dict:
    info = {"machine": platform.machine(), "cores": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), None)
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return {**info, "model": model, "flags": {f: f in flags for f in FLAGS}}


def _shown(path: str) -> str:
    """A model folder as the results file names it: relative to the working folder when inside it,
    else its last four parts (no machine's absolute paths in a committed result)."""
    full = Path(path).resolve()
    try:
        return str(full.relative_to(Path.cwd()))
    except ValueError:
        return str(Path(*full.parts[-4:]))


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("hf-multitask", "torch", "transformers", "onnxruntime", "onnx"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _run(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return time.perf_counter() - start, proc


def _labels(path: Path) -> dict[str, list]:
    """Each task's answers (label, or value) in file order."""
    out: dict[str, list] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        for task, answer in json.loads(line)["answers"].items():
            out.setdefault(task, []).append(answer)
    return out


def _agreement(ref: dict[str, list], got: dict[str, list]) -> dict:
    result = {}
    for task, answers in ref.items():
        pairs = list(zip(answers, got.get(task, [])))
        if not pairs or not isinstance(answers[0], dict):
            continue
        key = "label" if "label" in answers[0] else ("value" if "value" in answers[0] else "choice")
        if key == "value":
            result[task] = {"max_abs_diff": max(abs(a[key] - b[key]) for a, b in pairs)}
        else:
            result[task] = {"label_agreement": sum(a[key] == b[key] for a, b in pairs) / len(pairs),
                            "max_score_diff": max(abs(a["score"] - b["score"]) for a, b in pairs)}  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a saved hf-multitask model folder with single-text TweetEval tasks")
    parser.add_argument("--data-dir", required=True, help="the TweetEval folder (emoji/test_text.txt is read)")
    parser.add_argument("--n", type=int, default=8000, help="tweets (the first n lines of emoji/test_text.txt)")
    parser.add_argument("--rounds", type=int, default=1, help="timed rounds; each runs every mode once, in a rotating order")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--tasks", nargs="+", help="answer only these tasks (default: every task that takes one text)")
    parser.add_argument("--bf16", action="store_true", help="also time PyTorch under bf16 autocast (--dtype bfloat16)")
    parser.add_argument("--export-dir", help="where the export goes (default: a temporary folder); reused when it holds one")
    parser.add_argument("--export-args", default="", help="more flags for hf-multitask export, e.g. '--per-channel' or '--fp32-heads'")
    parser.add_argument("--out", default="benchmarks/results/onnx_speed.json")
    args = parser.parse_args()

    lines = Path(args.data_dir, "emoji", "test_text.txt").read_text(encoding="utf-8").splitlines()
    if len(lines) < args.n:
        parser.error(f"emoji/test_text.txt has {len(lines)} lines, fewer than --n {args.n}")
    work = Path(tempfile.mkdtemp(prefix="onnx-speed-"))
    tweets = work / "tweets.txt"
    tweets.write_text("".join(line + "\n" for line in lines[: args.n]), encoding="utf-8")
    warm = work / "warm.txt"
    warm.write_text("".join(line + "\n" for line in lines[:64]), encoding="utf-8")

    export = Path(args.export_dir) if args.export_dir else work / "export"
    export_seconds = None
    if not (export / "onnx_manifest.json").is_file():
        export_seconds, proc = _run(
            [*_cli(), "export", args.model, str(export), "--quantize", "int8", "--quiet", *args.export_args.split()]
        )
        if proc.returncode:
            sys.exit(f"export failed: {proc.stderr.strip()}")
    modes = {
        "torch_fp32": ["--model", args.model, "--backend", "torch"],
        "onnx_fp32": ["--model", str(export / "model.onnx"), "--backend", "onnx"],
        "onnx_int8": ["--model", str(export / "model_int8.onnx"), "--backend", "onnx"],
    }
    if args.bf16:
        modes["torch_bf16"] = ["--model", args.model, "--backend", "torch", "--dtype", "bfloat16"]
    common = ["--batch_size", str(args.batch_size), "--quiet", *(["--tasks", *args.tasks] if args.tasks else [])]
    skipped = {}
    for mode, flags in list(modes.items()):  # warm-up, and what this machine refuses
        _, proc = _run([*_cli(), "predict", *flags, "--input", str(warm), "--output", str(work / f"warm-{mode}.jsonl"), *common])
        if proc.returncode:
            skipped[mode] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
            del modes[mode]
    if "torch_fp32" not in modes:
        sys.exit(f"the PyTorch fp32 run failed: {skipped['torch_fp32']}")

    seconds: dict[str, list[float]] = {m: [] for m in modes}
    names = list(modes)
    for r in range(args.rounds):
        for mode in names[r % len(names) :] + names[: r % len(names)]:
            elapsed, proc = _run(
                [*_cli(), "predict", *modes[mode], "--input", str(tweets), "--output", str(work / f"{mode}.jsonl"), *common]
            )
            if proc.returncode:
                sys.exit(f"{mode} failed: {proc.stderr.strip()}")
            seconds[mode].append(elapsed)
            print(f"round {r + 1} {mode}: {elapsed:.1f} s ({args.n / elapsed:.0f} examples/s)", flush=True)
    rate = {m: args.n / statistics.median(s) for m, s in seconds.items()}
    ratios = {m: rate[m] / rate["torch_fp32"] for m in rate if m != "torch_fp32"}
    reference = _labels(work / "torch_fp32.jsonl")
    result = {
        "what": f"hf-multitask predict, whole process, on the first {args.n} TweetEval emoji test tweets (.txt input)",
        "model": _shown(args.model),
        "n": args.n,
        "rounds": args.rounds,
        "batch_size": args.batch_size,
        "tasks": args.tasks,
        "export_seconds": export_seconds,
        "export_args": args.export_args,
        "seconds": seconds,
        "examples_per_s": rate,
        "ratio_to_torch_fp32": ratios,
        "targets": TARGETS,
        "met": {m: ratios[m] >= t for m, t in TARGETS.items() if m in ratios},
        "agreement_with_torch_fp32": {m: _agreement(reference, _labels(work / f"{m}.jsonl")) for m in modes if m != "torch_fp32"},
        "skipped": skipped,
        "cpu": _cpu(),
        "versions": _versions(),
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({"ratio_to_torch_fp32": ratios, "met": result["met"], "skipped": skipped}, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
