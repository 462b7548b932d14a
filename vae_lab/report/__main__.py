"""``python -m vae_lab.report <sweep dir | run dir> [...] [--output-dir DIR] [--no-wandb]``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from vae_lab.errors import VaeLabError
from vae_lab.tracking.wandb_mode import WANDB_MODES


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m vae_lab.report",
        description="Tables and plots of a sweep (or of a list of run directories): report.md, report.csv, "
        "report.html and report_plots/*.png, plus the table in wandb in the sweep's group.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="a sweep directory (multirun/...) and/or run directories")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where to write (default: the sweep directory; for several paths, their closest common parent)",
    )
    parser.add_argument("--no-wandb", action="store_true", help="do not log the table to wandb")
    parser.add_argument(
        "--wandb-mode",
        choices=WANDB_MODES,
        default=None,
        help="wandb mode for the report's run (default: the "
        "jobs' logger.wandb.mode; nothing is logged when the jobs had no wandb logger)",
    )
    parser.add_argument(
        "--group", default=None, help="wandb group (default: the jobs' group, else the sweep directory's name)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    from vae_lab.report.make import make_report

    command = "python -m vae_lab.report " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    try:
        files = make_report(
            arguments.paths,
            output_dir=arguments.output_dir,
            wandb_mode="disabled" if arguments.no_wandb else arguments.wandb_mode,
            group=arguments.group,
            command=command,
        )
    except VaeLabError as error:
        print(f"vae_lab.report: error: {error}", file=sys.stderr)
        return 2
    counts = files.report.status_counts()
    print(f"vae_lab.report: {len(files.report.rows)} settings from {len(files.report.jobs)} jobs ({counts})")
    for job in files.report.not_complete:
        for where in job.unreadable or [str(job.directory)]:  # an unreadable job: <file>: <reason>
            print(f"vae_lab.report: {job.status}: {where} ({' '.join(job.overrides)})")
    print(f"vae_lab.report: wandb: {files.wandb}")
    print(
        f"vae_lab.report: wrote {files.markdown}, {files.csv.name}, {files.html.name} and {len(files.plots)} plots "
        f"in {files.plots[0].parent if files.plots else '-'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
