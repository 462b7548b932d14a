"""Continuing a run in its own output dir (``resume=true``) without losing what it logged."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


def keep_logged_epochs(csv_logger: Any, through_epoch: int) -> int:
    """Keep the rows of ``metrics.csv`` logged up to ``through_epoch`` (the epoch of the checkpoint
    the run resumes from); the rows of later, interrupted epochs are dropped, since those epochs run
    again. Lightning's CSV logger deletes an existing metrics file when it starts, so the kept rows
    are read first and logged again through the logger's public ``log_metrics`` and ``save`` (they
    come back with the same columns and values: the logger writes its columns sorted, as it did
    the first time, and each value as Python writes the number it read). Returns how many rows were kept."""
    path = Path(csv_logger.log_dir) / "metrics.csv"
    if not path.is_file():
        return 0
    with path.open(newline="") as file:
        rows = [
            row for row in csv.DictReader(file) if row.get("epoch", "").isdigit() and int(row["epoch"]) <= through_epoch
        ]
    for row in rows:
        values = {name: _number(text) for name, text in row.items() if name != "step" and text not in ("", None)}
        csv_logger.log_metrics(values, step=int(row["step"]))
    csv_logger.save()
    return len(rows)


def _number(text: str) -> int | float | str:
    """A cell of metrics.csv as the value that was logged (``3`` an int, ``-190.5`` a float)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
