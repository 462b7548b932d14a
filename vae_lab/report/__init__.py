"""The ablation report: ``python -m vae_lab.report <sweep dir> [run dirs ...]``.

Reads every job's ``summary.json`` and ``metrics.csv`` and writes, into the sweep directory (or
``--output-dir``): ``report.md``, ``report.csv``, ``report.html`` (self-contained) and the PNG plots in
``report_plots/``; logs the table to wandb in the sweep's group. Works on a sweep that is still
running or partly failed: such jobs are listed, not dropped.
"""

from __future__ import annotations

from vae_lab.report.jobs import Job, collect_jobs
from vae_lab.report.make import ReportFiles, make_report
from vae_lab.report.table import Report, build_report

__all__ = ["Job", "Report", "ReportFiles", "build_report", "collect_jobs", "make_report"]
