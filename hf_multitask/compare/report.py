"""The report of a comparison folder: CSV, markdown tables and a PNG of score vs cost."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from .grid import RESULT, GridError
from .stats import paired, summarise


def load_results(out_dir: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The grid description and every finished reported cell (tuning runs excluded)."""
    out = Path(out_dir)
    if not (out / "grid.json").is_file():
        raise GridError(f"{out} holds no grid.json: not a comparison folder (run `python -m hf_multitask.compare run` first)")
    grid = json.loads((out / "grid.json").read_text())
    cells = [json.loads(p.read_text()) for p in sorted((out / "runs").glob(f"split*/*/seed*/{RESULT}"))] if (out / "runs").is_dir() else []
    return grid, cells


def _fmt(mean: float, ci: float, digits: int = 3) -> str:
    """``mean ± ci``; an interval too narrow to show at ``digits`` gets up to two more digits."""
    if math.isnan(mean):
        return "—"
    while not math.isnan(ci) and 0 < ci < 0.5 * 10**-digits and digits < 5:
        digits += 1
    return f"{mean:.{digits}f}" if math.isnan(ci) else f"{mean:.{digits}f} ± {ci:.{digits}f}"


def _verdict(mean: float, ci: float) -> str:
    if math.isnan(mean) or math.isnan(ci):
        return ""
    if mean - ci > 0:
        return " (better)"
    if mean + ci < 0:
        return " (worse)"
    return " (within noise)"


def _specialisation(cells: list[dict[str, Any]]) -> list[str]:
    """One line per specialising cell: the served score next to every expert kept (a choice made on
    the validation set it is scored on leans high; every expert kept chose nothing) and the
    multitask phase alone, the parameters the served model holds and what the phase cost."""
    mine = [c for c in cells if "specialise_seconds" in c.get("metrics", {})]
    if not mine:
        return []
    lines = ["Specialising cells (validation overall: served, every expert kept, the multitask phase alone; parameters in memory; "
             "the specialisation phase's seconds per 1k examples):", "",
             "| arm | split | seed | served | every expert kept | multitask phase | kept | parameters in memory | s / 1k examples |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in sorted(mine, key=lambda c: (c["split"], c["arm"], c["seed"])):
        m = c["metrics"]
        every = m.get("experts_eval_overall", math.nan)  # cells from before it was recorded have "—"
        cost = 1000 * m["specialise_seconds"] / m["specialise_examples"] if m.get("specialise_examples") else math.nan
        cells_ = [f"`{c['arm']}`", str(c["split"]), str(c["seed"]), _fmt(m["eval_overall"], math.nan, 4), _fmt(every, math.nan, 4),
                  _fmt(m.get("multitask_eval_overall", math.nan), math.nan, 4), str(m.get("specialise_kept", "—")),
                  f"{m['serving_parameters'] / 1e6:.1f} M" if "serving_parameters" in m else "—", _fmt(cost, math.nan, 1)]  # fmt: skip
        lines.append("| " + " | ".join(cells_) + " |")
    return [*lines, ""]


def markdown(
    grid: dict[str, Any],
    rows: list[dict[str, Any]],
    tuning: list[dict[str, Any]] | None = None,
    pairs: list[dict[str, Any]] | None = None,
    results: list[dict[str, Any]] | None = None,
) -> str:
    """The results table (one per split), the paired differences, the specialising cells (from the
    cells' ``results``) and the tuning choices, as markdown."""
    tasks = grid["tasks"]
    lines = []
    reference, baseline = grid.get("reference"), grid.get("baseline")
    against = [f"Δm and the paired Δ overall vs `{reference}` (the reference)"] if reference else []
    against += [f"paired Δ overall vs `{baseline}` (the baseline)"] if baseline else []
    for split in sorted({r["split"] for r in rows}):
        lines += [f"Validation split {split} (seeds: mean ± 95 % t interval{'; ' if against else ''}{', '.join(against)}):", ""]
        names = {t: next((r[f"{t}_metric"] for r in rows if r["split"] == split and r[f"{t}_metric"]), "") for t in tasks}
        head = ["arm", "seeds", *[f"{t} {names[t]}" for t in tasks], "overall", *(["Δm (%)", "Δ vs reference"] if reference else []),
                *(["Δ vs baseline"] if baseline else []), "s / 1k examples (median)", "s / step (median)", "peak RSS (MB)"]  # fmt: skip
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in (r for r in rows if r["split"] == split):
            subset = "" if r.get("tasks", " ".join(tasks)) == " ".join(tasks) else f" ({r['tasks']} only)"
            versus = (
                [
                    _fmt(r["delta_m"], r["delta_m_ci"], 2),
                    _fmt(r["vs_reference"], r["vs_reference_ci"]) + _verdict(r["vs_reference"], r["vs_reference_ci"]),
                ]
                if reference
                else []
            )
            versus += [_fmt(r["vs_baseline"], r["vs_baseline_ci"]) + _verdict(r["vs_baseline"], r["vs_baseline_ci"])] if baseline else []
            # the time columns have no interval; a time is unknown ("—") when no cell of the arm timed all its training
            cells = [f"`{r['arm']}`", str(r["seeds"]), *[_fmt(r[t], r[f"{t}_ci"]) for t in tasks], _fmt(r["overall"], r["overall_ci"]) + subset,
                     *versus, *(_fmt(r[k], math.nan, d) for k, d in (("s_per_1k_examples", 1), ("s_per_step", 2), ("peak_rss_mb", 0)))]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        mine = [r for r in pairs or [] if r["split"] == split]
        if mine:
            lines += [f"Paired differences on split {split} (same seed; mean ± 95 % t interval over seeds):", ""]
            head = ["a − b", "seeds", *[f"Δ {t}" for t in tasks], "Δ overall"]
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for r in mine:
                subset = "" if r.get("tasks", " ".join(tasks)) == " ".join(tasks) else f" ({r['tasks']} only)"
                cells = [f"`{r['pair']}`", str(r["seeds"]), *[_fmt(r[t], r[f"{t}_ci"]) for t in tasks],
                         _fmt(r["overall"], r["overall_ci"]) + _verdict(r["overall"], r["overall_ci"]) + subset]  # fmt: skip
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    lines += _specialisation([c for c in results or [] if c["arm"] in grid.get("arms", {})])  # arms the grid still has
    for r in rows:
        if r.get("same_run_as"):
            lines.append(f"- `{r['arm']}` on split {r['split']}: its cells are runs of `{r['same_run_as']}` with the very same flags "
                         "(copied, not trained again).")  # fmt: skip
    for choice in tuning or []:
        scores = ", ".join(f"`{k}` {v:.4f}" for k, v in choice["scores"].items())
        lines.append(
            f"- `{choice['arm']}` tuned on split {choice['split']} (seed {choice['seed']}): {scores}; chosen `{choice['chosen']}`."
        )
        for name, spec in grid.get("arms", {}).items():
            if spec.get("choice_of") == choice["arm"] and any(r["arm"] == name for r in rows):
                lines.append(
                    f"- `{name}` takes `{choice['arm']}`'s choice, `{choice['chosen']}`, with its own flags {' '.join(spec['args'])}."
                )
    return "\n".join(lines).rstrip() + "\n"


def plot(grid: dict[str, Any], rows: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """Overall score vs training cost, and per-task differences from the reference arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, ref = grid["tasks"], grid.get("reference")
    fig, axes = plt.subplots(1, 2 if ref else 1, figsize=(12 if ref else 6, 4.5), squeeze=False)
    left = axes[0][0]
    colour = {arm: f"C{i % 10}" for i, arm in enumerate(dict.fromkeys(r["arm"] for r in rows))}  # one colour per arm in both panels
    for r in rows:
        err = None if math.isnan(r["overall_ci"]) else r["overall_ci"]
        left.errorbar(r["s_per_1k_examples"], r["overall"], yerr=err, fmt="o", capsize=3, color=colour[r["arm"]])
        left.annotate(f"{r['arm']} (split {r['split']})", (r["s_per_1k_examples"], r["overall"]), fontsize=7, xytext=(4, 2),
                      textcoords="offset points")  # fmt: skip
    left.set_xlabel("training seconds per 1,000 examples")
    left.set_ylabel("overall score (mean over seeds)")
    left.set_title("score vs cost")
    if ref:  # the per-task panel needs single-task models to compare with
        _per_task_panel(axes[0][1], tasks, ref, rows, colour)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _per_task_panel(right: Any, tasks: list[str], ref: str, rows: list[dict[str, Any]], colour: dict[str, str]) -> None:
    others = [r for r in rows if r["arm"] != ref]
    width = 0.8 / max(1, len(others))
    for i, r in enumerate(others):
        base = next((b for b in rows if b["arm"] == ref and b["split"] == r["split"]), None)
        if base is None:
            continue
        deltas = [r[t] - base[t] for t in tasks]
        right.bar(
            [k + i * width for k in range(len(tasks))], deltas, width, label=f"{r['arm']} (split {r['split']})", color=colour[r["arm"]]
        )
    right.axhline(0, color="black", linewidth=0.8)
    right.set_xticks([k + 0.4 - width / 2 for k in range(len(tasks))], tasks)
    right.set_ylabel(f"metric minus `{ref}`")
    right.set_title("per-task difference from single-task models")
    if others:
        right.legend(fontsize=7)


def report(out_dir: str | os.PathLike, markdown_path: str | None = None, png_path: str | None = None) -> list[dict[str, Any]]:
    """Write ``results.csv``, ``results.md`` (or ``markdown_path``) and ``results.png`` (or
    ``png_path``) into the comparison folder; returns the summary rows."""
    out = Path(out_dir)
    grid, cells = load_results(out)
    if not cells:
        raise GridError(f"{out}: no finished runs yet")
    rows = summarise(grid, cells)
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tuning = [json.loads(p.read_text()) for p in sorted(out.glob("tuning/*/choice.json"))]
    Path(markdown_path or out / "results.md").write_text(markdown(grid, rows, tuning, paired(grid, cells), cells))
    plot(grid, rows, png_path or out / "results.png")
    return rows
