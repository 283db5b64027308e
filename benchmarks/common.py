"""Helpers shared by the benchmark scripts: the real backbone on the reference data."""

from __future__ import annotations

import os
from pathlib import Path

import hf_multitask as hm

DATA_DIR = Path(os.environ.get("HF_MULTITASK_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
FILES = {"sst": "ids-sst-train.csv", "quora": "quora-train.csv", "sts": "sts-train.csv"}


def load_reference(tokenizer, config: hm.MultitaskConfig, limit: int | None = None, max_length: int = 64) -> dict:
    """Encoded reference datasets ``{task: dataset}`` following the model's pair encodings."""
    out = {}
    for spec in config.task_specs:
        raw = hm.load_task_data(spec, DATA_DIR / FILES[spec.name], limit=limit)
        out[spec.name] = hm.encode_task(raw, spec, tokenizer, pair_encoding=config.task_pair_encoding(spec), max_length=max_length)
    return out
