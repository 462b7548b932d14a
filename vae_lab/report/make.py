"""Making the whole report from sweep or run directories."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vae_lab.files import write_atomically
from vae_lab.report.documents import to_html, to_markdown
from vae_lab.report.jobs import collect_jobs
from vae_lab.report.plots import draw_all
from vae_lab.report.table import Report, build_report, to_csv

PLOTS_DIRECTORY = "report_plots"


@dataclass
class ReportFiles:
    report: Report
    markdown: Path
    csv: Path
    html: Path
    plots: list[Path]
    wandb: str


def default_output_dir(paths: list[Path]) -> Path:
    """The directory given when there is one (a sweep or a run); else the closest common parent."""
    if len(paths) == 1:
        return paths[0]
    return Path(os.path.commonpath([str(path.resolve()) for path in paths]))


def write_text(path: Path, text: str) -> Path:
    write_atomically(path, lambda file: file.write(text.encode()))
    return path


def make_report(
    paths: list[Path],
    output_dir: Path | None = None,
    wandb_mode: str | None = None,
    group: str | None = None,
    command: str | None = None,
) -> ReportFiles:
    """Read the jobs under ``paths`` and write report.md, report.csv, report.html and the plots into
    ``output_dir``; log the table to wandb unless ``wandb_mode`` is ``disabled``."""
    from vae_lab.report.wandb_table import log_report

    paths = [Path(path).resolve() for path in paths]
    report = build_report(collect_jobs(paths))
    output_dir = (output_dir or default_output_dir(paths)).resolve()
    command = command or "python -m vae_lab.report " + " ".join(str(path) for path in paths)
    plots, notes = draw_all(report, output_dir / PLOTS_DIRECTORY)
    wandb_note = log_report(report, output_dir, plots, wandb_mode, group)
    title = f"Ablation report: {output_dir.name}"
    return ReportFiles(
        report=report,
        markdown=write_text(
            output_dir / "report.md", to_markdown(report, title, command, plots, notes, output_dir, wandb_note)
        ),
        csv=write_text(output_dir / "report.csv", to_csv(report)),
        html=write_text(output_dir / "report.html", to_html(report, title, command, plots, notes, wandb_note)),
        plots=[path for _, path in plots],
        wandb=wandb_note,
    )
