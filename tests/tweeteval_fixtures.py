"""The tiny TweetEval layout the TweetEval tests share (a module, not a conftest: the tests import
it by name), and the recipe arguments of a 4-step run on it."""

from __future__ import annotations

from pathlib import Path

from conftest import RECIPE_WORDS

from hf_multitask import tweeteval as te

SIZES = {"train": 24, "val": 10, "test": 7}


def tweet(i: int) -> str:
    return " ".join(RECIPE_WORDS[(i * 5 + k) % len(RECIPE_WORDS)] for k in range(2 + i % 3)) + f" @user #{i}"


def write_group(folder: Path, num_labels: int, offset: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in SIZES.items():
        (folder / f"{split}_text.txt").write_text("".join(f"{tweet(offset + i)} \n" for i in range(n)), encoding="utf-8")
        if split != "test":
            (folder / f"{split}_labels.txt").write_text("".join(f"{(offset + i) % num_labels}\n" for i in range(n)))


def write_tweeteval(root: Path) -> Path:
    """A tiny copy of the TweetEval layout in ``root``: six task folders, stance with five target folders."""
    for task, k in te._NUM_LABELS.items():
        names = [f"class{i}" for i in range(k)]
        if task == "emoji":  # the real emoji mapping has three columns: index, emoji, description
            names = [f"e{i}\t_desc_{i}_" for i in range(k)]
        if task == "stance":
            names = ["none", "against", "favor"]
        (root / task).mkdir()
        (root / task / "mapping.txt").write_text("".join(f"{i}\t{n}\n" for i, n in enumerate(names)))
        if task == "stance":
            for j, target in enumerate(te.STANCE_TARGETS):
                write_group(root / task / target, k, offset=10 * j)
        else:
            write_group(root / task, k)
    return root


def recipe_args(backbone, data, out, *extra):
    """A 4-step recipe run on the TweetEval layout at ``data``, evaluated and saved every 2 steps."""
    return ["--benchmark", "tweeteval", "--data-dir", str(data), "--backbone", str(backbone), "--output-dir", str(out),
            "--max-steps", "4", "--per_device_train_batch_size", "4", "--use_cpu", "true", "--disable_tqdm", "true",
            "--telemetry_steps", "0", "--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "steps",
            "--save_steps", "2", "--plot_telemetry", "false", *extra]  # fmt: skip
