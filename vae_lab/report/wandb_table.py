"""The report's table (and plots) logged to wandb, in a run of the sweep's group, so that the group's
workspace shows the same comparison as report.html.

Project, entity, group and mode come from the jobs' resolved config (``logger.wandb``); the group
falls back to the sweep directory's name. The mode follows :func:`vae_lab.tracking.wandb_mode.resolve_wandb_mode`
(online with an API key, offline without; ``WANDB_MODE`` wins). Nothing is logged when the jobs
had no wandb logger (``logger=csv`` / ``logger=none``) unless a mode is asked for explicitly, and
never with ``--no-wandb`` (mode ``disabled``), whatever ``WANDB_MODE`` says.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from vae_lab.report.jobs import nested_get
from vae_lab.report.table import Report, numeric_table


def wandb_settings(report: Report) -> dict[str, Any] | None:
    """The jobs' ``logger.wandb`` settings (the most common group among them), or None if none had one."""
    settings = [nested_get(job.config, "logger.wandb") for job in report.jobs]
    settings = [value for value in settings if isinstance(value, dict)]
    if not settings:
        return None
    groups = Counter(
        str(value["group"]) for value in settings if value.get("group") and "${" not in str(value["group"])
    )
    if (
        not groups
    ):  # the group vae_lab gave the sweep's runs (vae_lab.run.jobs.sweep_group), as their summary.json records
        recorded = [(job.summary.get("wandb") or {}).get("group") for job in report.jobs]
        groups = Counter(str(group) for group in recorded if group)
    chosen = dict(settings[0])
    chosen["group"] = groups.most_common(1)[0][0] if groups else None
    return chosen


def log_report(
    report: Report, output_dir: Path, plots: list[tuple[str, Path]], requested_mode: str | None, group: str | None
) -> str:
    """Log the table and plots to a ``report`` run in the sweep's group; returns what was done
    (a line for the report and the terminal)."""
    from vae_lab.tracking.wandb_mode import resolve_wandb_mode

    if requested_mode == "disabled":  # --no-wandb: over WANDB_MODE and the config, and wandb is not imported
        return "not logged: wandb is disabled on the command line (--no-wandb)"
    settings = wandb_settings(report)
    if settings is None and requested_mode is None:
        return (
            "not logged: the jobs had no wandb logger (logger.wandb is null); "
            "pass --wandb-mode offline or online to log anyway"
        )
    settings = settings or {}
    mode = resolve_wandb_mode(requested_mode or settings.get("mode") or "auto")
    if mode == "disabled":
        return "not logged: wandb is disabled (mode disabled)"
    group = group or settings.get("group") or output_dir.name
    import wandb

    run = wandb.init(
        project=settings.get("project") or "vae_lab",
        entity=settings.get("entity"),
        group=group,
        name=f"report {group}",
        job_type="report",
        tags=[*(settings.get("tags") or []), "report"],
        dir=str(output_dir),
        mode=mode,
        config={"sweep": str(output_dir), "axes": report.axes, "jobs": len(report.jobs)},
    )
    try:
        columns, data = numeric_table(report)
        logged: dict[str, Any] = {"report/table": wandb.Table(columns=columns, data=data)}
        for caption, path in plots:
            logged[f"report/{path.stem}"] = wandb.Image(str(path), caption=caption)
        run.log(logged)
        run.summary.update({f"report/jobs_{status}": count for status, count in report.status_counts().items()})
        where = f"run {run.id} in project {run.project}, group {group!r} ({mode})"
        if mode == "offline":
            where += f"; upload with: wandb sync {Path(run.dir).parent}"
    finally:
        run.finish()
    return f"table logged to {where}"
