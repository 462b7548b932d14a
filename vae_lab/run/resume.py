"""Continuing a run in its own output dir (``resume=true``) without losing what it logged."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


def keep_logged_epochs(csv_logger: Any, through_epoch: int) -> int:
    """Keep the rows of ``metrics.csv`` logged up to ``through_epoch`` (the epoch of the checkpoint
    the run resumes from); the rows of later, interrupted epochs are dropped, since those epochs run
    again. Lightning's CSV logger deletes an existing metrics file when it starts, so this starts
    the logger and writes the kept rows back. Returns how many rows were kept."""
    path = Path(csv_logger.log_dir) / "metrics.csv"
    if not path.is_file():
        return 0
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        header = list(reader.fieldnames or [])
        rows = [row for row in reader if row.get("epoch", "").isdigit() and int(row["epoch"]) <= through_epoch]
    writer = csv_logger.experiment  # removes the old file
    writer.metrics_keys = header
    with open(writer.metrics_file_path, "w", newline="") as file:
        table = csv.DictWriter(file, fieldnames=header)
        table.writeheader()
        table.writerows(rows)
    return len(rows)
