"""What the benchmark scripts share: interleaved repeats, medians with their spread, the machine
they ran on, a printed table and the JSON file in benchmarks/results/."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def data_root() -> Path:
    """VAE_LAB_DATA, or ../shared/data beside the repository."""
    return Path(os.environ.get("VAE_LAB_DATA", REPO.parent / "shared" / "data")).resolve()


def interleaved(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run every variant once per round, ``repeats`` rounds (so that a busy spell of the machine
    hits all variants alike); returns each variant's measurements."""
    measured: dict[str, list[float]] = {name: [] for name in variants}
    for round_number in range(repeats):
        for name, measure in variants.items():
            measured[name].append(measure())
            print(f"  round {round_number + 1}/{repeats} {name}: {measured[name][-1]:.4g}", flush=True)
    return measured


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and the spread (max - min) / median of repeated measurements."""
    median = statistics.median(values)
    return {
        "median": median,
        "min": min(values),
        "max": max(values),
        "spread": (max(values) - min(values)) / median if median else float("nan"),
        "values": list(values),
    }


def machine() -> dict[str, Any]:
    """Where the numbers came from, including how busy the machine was."""
    import torch

    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads_default": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def save(name: str, results: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json`` (with the machine) and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **results}, indent=2) + "\n")
    return path


def print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    """A plain-text table of ``rows`` (dicts) with the given columns."""
    cells = [[format_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    print("  ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True)))
    print("  ".join("-" * width for width in widths))
    for line in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


def format_cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return "" if value is None else str(value)


def python_subprocess(arguments: Sequence[str], env: dict[str, str] | None = None, timeout: float = 3600):
    """Run ``python <arguments>`` from the repository root; raise with its output when it fails."""
    completed = subprocess.run(
        [sys.executable, *arguments],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"python {' '.join(arguments)} failed ({completed.returncode}):\n"
            f"{completed.stdout[-2000:]}\n{completed.stderr[-4000:]}"
        )
    return completed
