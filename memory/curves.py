"""The loss curve of a training run: a CSV always, a PNG when matplotlib is installed.

One row per optimizer step (``train_loss``) plus a row per held-out evaluation
(``eval_loss_memory``: history written, then the target read; ``eval_loss_no_memory``: the
same with the state zeroed). An empty cell means "not measured at this step". The PNG is
drawn with matplotlib's Agg canvas directly, so no global backend is switched.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["COLUMNS", "write_csv", "write_png", "merge_rows"]

log = logging.getLogger(__name__)

COLUMNS = ("step", "train_loss", "eval_loss_memory", "eval_loss_no_memory")


def merge_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per step, sorted, later values filling the empty cells of earlier ones."""
    by_step: dict[int, dict[str, Any]] = {}
    for row in rows:
        merged = by_step.setdefault(int(row["step"]), {column: None for column in COLUMNS} | {"step": int(row["step"])})
        merged.update({k: v for k, v in row.items() if k in COLUMNS and v is not None})
    return [by_step[step] for step in sorted(by_step)]


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in merge_rows(rows):
        writer.writerow(["" if row[c] is None else (row[c] if c == "step" else f"{row[c]:.6f}") for c in COLUMNS])
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


def write_png(rows: Sequence[dict[str, Any]], path: Path) -> bool:
    """Draw the curve; False (and nothing written) when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    rows = merge_rows(rows)
    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    labels = {
        "train_loss": "train",
        "eval_loss_memory": "held out, with memory",
        "eval_loss_no_memory": "held out, memory zeroed",
    }
    for column, label in labels.items():
        points = [(row["step"], row[column]) for row in rows if row[column] is not None]
        if points:
            steps, losses = zip(*points, strict=True)
            axes.plot(steps, losses, label=label, marker="o" if column != "train_loss" else None, markersize=3)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("cross-entropy on target tokens")
    axes.set_title("δ-mem adapter training")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    return True
