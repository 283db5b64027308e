"""The conflict plot for many tasks: a mean-cosine matrix instead of 45 curves."""

import math

import pytest

import hf_multitask as hm
from hf_multitask.telemetry import PREFIX, _cosine_matrix


def _rows(tasks, steps=4):
    rows = []
    for step in range(1, steps + 1):
        row = {"step": step, PREFIX + "rate": 0.5}
        for i, a in enumerate(tasks):
            row[PREFIX + f"grad_norm_{a}"] = 1.0 + i
            for b in tasks[i + 1 :]:
                row[PREFIX + f"cos_{a}_{b}"] = (-0.1 if "stance" in a and "stance" in b else 0.2) * step / steps
        rows.append(row)
    return rows


def test_ten_tasks_with_underscores_give_the_mean_cosine_matrix(tmp_path):
    tasks = ["emoji", "emotion", "hate", "irony", "offensive", *(f"stance_{t}" for t in ("abortion", "atheism", "climate", "feminist",
                                                                                         "hillary"))]  # fmt: skip
    rows = _rows(tasks)
    matrix = _cosine_matrix(rows, tasks)
    mean_step = sum(s / 4 for s in range(1, 5)) / 4
    assert matrix[0][1] == pytest.approx(0.2 * mean_step) and matrix[1][0] == matrix[0][1]
    assert matrix[5][6] == pytest.approx(-0.1 * mean_step) and matrix[3][3] == 1.0
    assert not any(math.isnan(v) for line in matrix for v in line)
    png = hm.plot_conflicts(rows, tmp_path / "c.png")
    assert png.stat().st_size > 20_000
