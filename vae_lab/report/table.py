"""The report's table: one row per setting of the swept axes, each metric as mean ± std over seeds.

The std is the sample standard deviation over the complete jobs of a setting (n - 1 in the
denominator), shown only when n >= 2. Failed, unfinished, pending and unreadable jobs are counted in
their setting's row and listed one by one (an unreadable one with its file and why), never dropped.
"""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass, field

from vae_lab.report.jobs import UNREADABLE, Job, sort_key, swept_axes

#: The table's metric columns, in order; a metric no job has is left out.
METRICS = ("test/elbo", "test/nll_is", "test/bpd", "test/kl", "test/active_units", "epochs", "wall_time_seconds")
HEADINGS = {"wall_time_seconds": "wall time (s)"}
DIGITS = {"test/bpd": 4, "test/active_units": 1, "epochs": 1, "wall_time_seconds": 1}
NOT_COMPLETE = ("failed", "diverged", "unfinished", "pending", UNREADABLE)


@dataclass
class Statistic:
    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Statistic | None:
        if not values:
            return None
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))

    def format(self, digits: int) -> str:
        text = f"{self.mean:.{digits}f}"
        return text if self.std is None else f"{text} ± {self.std:.{digits}f}"


@dataclass
class Row:
    setting: dict[str, str]
    jobs: list[Job] = field(default_factory=list)

    def with_status(self, status: str) -> list[Job]:
        return [job for job in self.jobs if job.status == status]

    @property
    def complete(self) -> list[Job]:
        return self.with_status("complete")

    @property
    def not_complete(self) -> list[Job]:
        return [job for job in self.jobs if job.status != "complete"]

    def statistic(self, metric: str) -> Statistic | None:
        values = [job.metrics[metric] for job in self.complete if isinstance(job.metrics.get(metric), (int, float))]
        return Statistic.of([float(value) for value in values])

    @property
    def seeds(self) -> list[str]:
        return sorted((job.seed for job in self.complete), key=sort_key)

    def label(self) -> str:
        return ", ".join(f"{axis}={value}" for axis, value in self.setting.items()) or "all jobs"


@dataclass
class Report:
    axes: list[str]
    rows: list[Row]
    jobs: list[Job]
    metrics: list[str]

    @property
    def not_complete(self) -> list[Job]:
        return [job for row in self.rows for job in row.not_complete]

    def status_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for job in self.jobs:
            counts[job.status] = counts.get(job.status, 0) + 1
        return counts


def build_report(jobs: list[Job]) -> Report:
    """Group ``jobs`` into rows by their values of the swept axes (seeds are replicates)."""
    axes = swept_axes(jobs)
    rows: dict[tuple[str, ...], Row] = {}
    for job in jobs:
        key = tuple(job.value_of(axis) for axis in axes)
        rows.setdefault(key, Row(dict(zip(axes, key, strict=True)))).jobs.append(job)
    ordered = [rows[key] for key in sorted(rows, key=lambda key: [sort_key(value) for value in key])]
    metrics = [metric for metric in METRICS if any(metric in job.metrics for job in jobs if job.status == "complete")]
    return Report(axes, ordered, jobs, metrics)


def status_text(row: Row) -> str:
    """``2 complete``, or ``1 complete, 1 failed``."""
    parts = [f"{len(row.complete)} complete"]
    parts += [f"{len(row.with_status(status))} {status}" for status in NOT_COMPLETE if row.with_status(status)]
    others = [job.status for job in row.not_complete if job.status not in NOT_COMPLETE]
    parts += [f"{others.count(status)} {status}" for status in sorted(set(others))]
    return ", ".join(parts)


def table_cells(report: Report) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells of the table shown in report.md and report.html."""
    header = [*report.axes, "seeds (n)", *(HEADINGS.get(metric, metric) for metric in report.metrics), "jobs"]
    cells = []
    for row in report.rows:
        seeds = row.seeds
        line = [*row.setting.values(), f"{', '.join(seeds)} ({len(seeds)})" if seeds else "- (0)"]
        for metric in report.metrics:
            statistic = row.statistic(metric)
            line.append("-" if statistic is None else statistic.format(DIGITS.get(metric, 2)))
        cells.append([*line, status_text(row)])
    return header, cells


def job_cells(report: Report) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the list of jobs that are not complete."""
    header = ["status", "job", *report.axes, "seed", "error"]
    cells = [
        [job.status, str(job.directory), *(job.value_of(axis) for axis in report.axes), job.seed, job.error or ""]
        for job in report.not_complete
    ]
    return header, cells


def numeric_table(report: Report) -> tuple[list[str], list[list[object]]]:
    """Columns and rows of numbers (None where there is none): the axes' values, the seeds, each
    metric's mean and std, and the job counts by status. For report.csv and the wandb.Table."""
    columns = [*report.axes, "n_seeds", "seeds"]
    for metric in report.metrics:
        columns += [f"{metric} mean", f"{metric} std"]
    columns += ["complete", *NOT_COMPLETE]
    data = []
    for row in report.rows:
        line: list[object] = [*row.setting.values(), len(row.complete), " ".join(row.seeds)]
        for metric in report.metrics:
            statistic = row.statistic(metric)
            line += [None, None] if statistic is None else [statistic.mean, statistic.std]
        line += [len(row.complete), *(len(row.with_status(status)) for status in NOT_COMPLETE)]
        data.append(line)
    return columns, data


def to_csv(report: Report) -> str:
    """report.csv: one row per setting, full precision (empty where there is no value), plus the
    jobs that are not complete as ``status:directory`` separated by ``;``."""
    columns, data = numeric_table(report)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*columns, "not_complete_jobs"])
    for row, line in zip(report.rows, data, strict=True):
        jobs = ";".join(f"{job.status}:{job.directory}" for job in row.not_complete)
        writer.writerow(["" if value is None else value for value in line] + [jobs])
    return buffer.getvalue()


def markdown_table(header: list[str], cells: list[list[str]]) -> str:
    """A Markdown table; each cell on one line (a multi-line error message is joined with spaces)."""
    escape = lambda text: " ".join(str(text).split()).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(escape(c) for c in line) + " |" for line in cells]
    return "\n".join(lines)
