"""The report's PNG plots, drawn with matplotlib's Agg backend (imported only here, when needed).

- ``metrics_vs_<axis>.png``: each metric against one swept axis, mean with error bars of one std
  over seeds, one line per setting of the other axes;
- ``training_curves.png``: val/elbo after each epoch of every job, one colour per setting;
- ``kl_per_dim.png``: KL of each latent dimension, sorted largest first within each job, then
  averaged over seeds (dimension indices are not comparable between runs, their ranks are);
- ``images.png``: every complete job's reconstructions and prior samples, one row per setting;
- ``rate_distortion.png``: every complete job as a point (D, R) = (-test/reconstruction, test/kl)
  (Alemi et al. 2018), one colour per setting, with the lines R + D = -ELBO = const;
- ``kl_per_dim_heatmaps.png``: for every job, the KL of each latent dimension after each epoch
  (posterior collapse over training, vae_lab.evaluation.collapse), on one colour scale.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any

from vae_lab.evaluation.figures import pyplot, save
from vae_lab.report.jobs import Job, sort_key
from vae_lab.report.table import HEADINGS, Report, Row, Statistic


def file_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")


def colours(n: int) -> list[Any]:
    colour_map = pyplot().get_cmap("tab10" if n <= 10 else "viridis")
    return [colour_map(i if n <= 10 else i / max(n - 1, 1)) for i in range(n)]


def as_numbers(values: list[str]) -> list[float] | None:
    try:
        return [float(value) for value in values]
    except ValueError:
        return None


def metrics_against_axis(report: Report, axis: str, path: Path) -> Path | None:
    """One panel per metric: the metric against ``axis``, one line per setting of the other axes."""
    test_metrics = [metric for metric in report.metrics if metric.startswith("test/")]
    if not test_metrics:
        return None
    plt = pyplot()
    others = [other for other in report.axes if other != axis]
    values = sorted({row.setting[axis] for row in report.rows}, key=sort_key)
    numbers = as_numbers(values)
    positions = dict(zip(values, numbers if numbers is not None else range(len(values)), strict=True))
    groups: dict[tuple[str, ...], list[Row]] = {}
    for row in report.rows:
        groups.setdefault(tuple(row.setting[other] for other in others), []).append(row)
    columns = min(3, len(test_metrics))
    rows_of_panels = -(-len(test_metrics) // columns)
    figure, panels = plt.subplots(rows_of_panels, columns, figsize=(4.2 * columns, 3.4 * rows_of_panels), squeeze=False)
    for panel, metric in zip(panels.flat, test_metrics, strict=False):
        for colour, (group, rows) in zip(
            colours(len(groups)), sorted(groups.items(), key=lambda item: [sort_key(v) for v in item[0]]), strict=True
        ):
            points = [(positions[row.setting[axis]], row.statistic(metric)) for row in rows]
            points = sorted((x, s) for x, s in points if s is not None)
            if not points:
                continue
            label = ", ".join(f"{other}={value}" for other, value in zip(others, group, strict=True)) or None
            panel.errorbar(
                [x for x, _ in points],
                [s.mean for _, s in points],
                yerr=[s.std or 0.0 for _, s in points],
                marker="o",
                capsize=4,
                color=colour,
                label=label,
            )
        panel.set_title(HEADINGS.get(metric, metric))
        panel.set_xlabel(axis)
        if numbers is None:
            panel.set_xticks(range(len(values)), values, rotation=20)
        elif min(numbers) > 0 and max(numbers) / min(numbers) >= 20:
            panel.set_xscale("log")
        panel.grid(alpha=0.3)
    for panel in list(panels.flat)[len(test_metrics) :]:
        panel.axis("off")
    if len(groups) > 1:
        panels.flat[0].legend(fontsize=8)
    figure.suptitle(f"metrics against {axis} (mean ± std over seeds)")
    figure.tight_layout()
    return save(figure, path)


def training_curves(report: Report, path: Path) -> Path | None:
    """val/elbo per epoch of every job that has a metrics CSV, one colour per setting."""
    curves = [(row_index, job, job.validation_curve()) for row_index, row in enumerate(report.rows) for job in row.jobs]
    curves = [(index, job, curve) for index, job, curve in curves if curve]
    if not curves:
        return None
    plt = pyplot()
    figure, panel = plt.subplots(figsize=(8, 5))
    palette = colours(len(report.rows))
    labelled: set[int] = set()
    for index, job, curve in curves:
        label = None if index in labelled else report.rows[index].label()
        labelled.add(index)
        style = "-" if job.status == "complete" else ":"
        panel.plot(
            [e for e, _ in curve],
            [v for _, v in curve],
            style,
            marker=".",
            color=palette[index],
            label=label,
            alpha=0.85,
        )
    if max(len(curve) for _, _, curve in curves) >= 4:
        # The first epoch's ELBO is far below the rest: keep the scale for the epochs after it.
        low = min(v for _, _, curve in curves for _, v in curve[1:])
        high = max(v for _, _, curve in curves for _, v in curve)
        panel.set_ylim(low - 0.05 * (high - low + 1), high + 0.05 * (high - low + 1))
    last_epoch = max(epoch for _, _, curve in curves for epoch, _ in curve)
    panel.set_xlim(0.5, last_epoch + 0.5)
    if last_epoch <= 10:
        panel.set_xticks(range(1, last_epoch + 1))
    else:
        panel.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    panel.set_xlabel("epoch")
    panel.set_ylabel("val/elbo (nats per image)")
    panel.set_title("training curves: val/elbo after each epoch (dotted: job not complete)")
    panel.grid(alpha=0.3)
    panel.legend(fontsize=8)
    figure.tight_layout()
    return save(figure, path)


def kl_per_dimension(report: Report, path: Path) -> tuple[Path | None, str]:
    """KL per latent dimension by rank, mean ± std over seeds per setting; (path or None, note)."""
    lines: list[tuple[int, Row, list[Statistic | None]]] = []
    sources: set[str] = set()
    for index, row in enumerate(report.rows):
        vectors = []
        for job in row.complete:
            values, source = job.kl_per_dim()
            if values:
                vectors.append(sorted(values, reverse=True))
                sources.add(source)
        if vectors:
            length = min(len(vector) for vector in vectors)
            lines.append((index, row, [Statistic.of([vector[rank] for vector in vectors]) for rank in range(length)]))
    if not lines:
        return None, "no job has a KL per latent dimension (test/kl_per_dim or images/latent_pictures.json)"
    plt = pyplot()
    figure, panel = plt.subplots(figsize=(8, 4.5))
    palette = colours(len(report.rows))
    for index, row, per_rank in lines:
        ranks = range(1, len(per_rank) + 1)
        panel.errorbar(
            list(ranks),
            [s.mean for s in per_rank],
            yerr=[s.std or 0.0 for s in per_rank],
            marker=".",
            capsize=2,
            color=palette[index],
            label=row.label(),
        )
    panel.set_xlabel("latent dimension, ranked by its KL (largest first)")
    panel.set_ylabel("KL(q(z_j|x) || p(z_j)) (nats)")
    panel.set_title("KL per latent dimension (mean ± std over seeds)")
    panel.axhline(0.0, color="grey", linewidth=0.5)
    panel.grid(alpha=0.3)
    panel.legend(fontsize=8)
    figure.tight_layout()
    return save(figure, path), "source: " + "; ".join(sorted(sources))


def image_grid(report: Report, path: Path, notes: list[str]) -> Path | None:
    """Reconstructions and prior samples of every complete job: one row per setting, two panels
    (reconstructions, samples) per seed. A picture that cannot be read (truncated, not a PNG) is a
    panel saying so and a note naming the file."""
    from PIL import Image

    rows = [row for row in report.rows if any(has_images(job) for job in row.complete)]
    if not rows:
        return None
    seeds = sorted({job.seed for row in rows for job in row.complete if has_images(job)}, key=sort_key)
    plt = pyplot()
    figure, panels = plt.subplots(
        len(rows), 2 * len(seeds), figsize=(2.6 * 2 * len(seeds), 2.9 * len(rows)), squeeze=False
    )
    for row_panels, row in zip(panels, rows, strict=True):
        by_seed = {job.seed: job for job in row.complete if has_images(job)}
        for column, seed in enumerate(seeds):
            job = by_seed.get(seed)
            for offset, name in enumerate(("reconstructions", "samples")):
                panel = row_panels[2 * column + offset]
                panel.set_xticks([])
                panel.set_yticks([])
                if job is None:
                    panel.text(0.5, 0.5, "no images", ha="center", va="center", transform=panel.transAxes)
                else:
                    picture_path = job.directory / "images" / f"{name}.png"
                    try:
                        with Image.open(picture_path) as picture:
                            panel.imshow(picture.convert("RGB"))
                    except OSError as error:  # PIL's UnidentifiedImageError and "image file is truncated" too
                        panel.text(0.5, 0.5, "unreadable", ha="center", va="center", transform=panel.transAxes)
                        notes.append(f"images: unreadable: {picture_path}: {error}")
                panel.set_title(f"seed {seed}: {name}", fontsize=9)
        row_panels[0].set_ylabel(row.label().replace(", ", "\n"), fontsize=9)
    figure.suptitle("reconstructions (odd rows: originals, even rows: reconstructions) and prior samples")
    figure.tight_layout()
    return save(figure, path)


def rate_distortion(report: Report, path: Path) -> Path | None:
    """The rate-distortion plane (Alemi et al. 2018): each complete job at distortion
    D = -E_q log p(x|z) (-test/reconstruction) and rate R = KL (test/kl), one colour per setting of
    the swept axes; the dashed lines R + D = const are models of equal ELBO. A job with ELBO surgery
    is annotated with its mutual information and marginal KL (the two parts of its rate)."""
    points = [
        (index, -float(job.metrics["test/reconstruction"]), float(job.metrics["test/kl"]), job)
        for index, row in enumerate(report.rows)
        for job in row.complete
        if all(isinstance(job.metrics.get(name), (int, float)) for name in ("test/reconstruction", "test/kl"))
    ]
    if not points:
        return None
    plt = pyplot()
    figure, panel = plt.subplots(figsize=(7, 5.5))
    palette = colours(len(report.rows))
    labelled: set[int] = set()
    for index, distortion, rate, job in points:
        label = None if index in labelled else report.rows[index].label()
        labelled.add(index)
        panel.scatter(
            [distortion], [rate], s=45, color=palette[index], label=label, zorder=3, edgecolors="black", linewidths=0.4
        )
        text = f"-ELBO={distortion + rate:.1f}"
        parts = [job.metrics.get(name) for name in ("test/mutual_information", "test/marginal_kl")]
        if all(isinstance(part, (int, float)) for part in parts):  # ELBO surgery of the rate (its own test images)
            text += f"\nI={parts[0]:.1f}, KL(q(z)||p)={parts[1]:.1f}"
        panel.annotate(text, (distortion, rate), fontsize=7, xytext=(6, 2), textcoords="offset points")
    if len(report.axes) == 1:  # one swept axis (a beta sweep): the frontier it traces, through the settings' means
        by_row: dict[int, list[tuple[float, float]]] = {}
        for index, distortion, rate, _ in points:
            by_row.setdefault(index, []).append((distortion, rate))
        means = [
            (statistics.fmean(d for d, _ in values), statistics.fmean(r for _, r in values))
            for _, values in sorted(by_row.items())
        ]
        panel.plot([d for d, _ in means], [r for _, r in means], "-", color="black", linewidth=0.8, alpha=0.5, zorder=2)
    distortions, rates = [d for _, d, _, _ in points], [r for _, _, r, _ in points]
    pad_d = 0.1 * (max(distortions) - min(distortions)) + 1.0
    pad_r = 0.1 * (max(rates) - min(rates)) + 1.0
    low_d, high_d = min(distortions) - pad_d, max(distortions) + pad_d
    low_r, high_r = max(0.0, min(rates) - pad_r), max(rates) + pad_r
    totals = [d + r for d, r in zip(distortions, rates, strict=True)]
    levels = sorted({round(t, 1) for t in (min(totals), max(totals))} | {round(t, 1) for t in totals[:8]})  # equal ELBO
    for level in levels:
        panel.plot([low_d, high_d], [level - low_d, level - high_d], "--", color="grey", linewidth=0.7, zorder=1)
    panel.set_xlim(low_d, high_d)
    panel.set_ylim(low_r, high_r)
    panel.set_xlabel("distortion D = -E_q[log p(x|z)] (nats, -test/reconstruction)")
    panel.set_ylabel("rate R = KL(q(z|x) || p(z)) (nats, test/kl)")
    panel.set_title("rate-distortion plane (Alemi et al. 2018); dashed: R + D = -ELBO of a job")
    panel.grid(alpha=0.3)
    panel.legend(fontsize=8)
    figure.tight_layout()
    return save(figure, path)


def collapse_heatmaps(report: Report, path: Path) -> Path | None:
    """For every job with a KL per latent dimension in its metrics.csv, the heatmap of that KL against
    the epoch (vae_lab.evaluation.collapse), all on one colour scale, one panel per job."""
    from vae_lab.evaluation.collapse import draw_heatmap, kl_history

    panels_data = []
    for row in report.rows:
        for job in row.jobs:
            if job.unreadable:  # listed as unreadable by the report; its files are not read again
                continue
            epochs, values = kl_history(job.directory / "metrics.csv")
            if epochs:
                status = "" if job.status == "complete" else f" ({job.status})"
                panels_data.append((f"{row.label()}, seed {job.seed}{status}", epochs, values))
    if not panels_data:
        return None
    plt = pyplot()
    columns = min(3, len(panels_data))
    rows_of_panels = -(-len(panels_data) // columns)
    figure, panels = plt.subplots(rows_of_panels, columns, figsize=(4.6 * columns, 3.6 * rows_of_panels), squeeze=False)
    high = max(max(max(vector) for vector in values) for _, _, values in panels_data)
    image = None
    for panel, (title, epochs, values) in zip(panels.flat, panels_data, strict=False):
        image = draw_heatmap(panel, epochs, values, title)
        image.set_clim(0.0, max(high, 1e-6))
    for panel in list(panels.flat)[len(panels_data) :]:
        panel.axis("off")
    figure.colorbar(image, ax=list(panels.flat), label="KL(q(z_j|x) || p(z_j)) (nats, val)")
    figure.suptitle("posterior collapse over training: KL of each latent dimension after each epoch")
    return save(figure, path)


def has_images(job: Job) -> bool:
    return all((job.directory / "images" / f"{name}.png").is_file() for name in ("reconstructions", "samples"))


def draw_all(report: Report, directory: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """Every plot the report's jobs allow, into ``directory``: ([(caption, path)], notes on the
    plots that could not be drawn)."""
    plots: list[tuple[str, Path]] = []
    notes: list[str] = []
    for axis in report.axes:
        drawn = metrics_against_axis(report, axis, directory / f"metrics_vs_{file_name(axis)}.png")
        if drawn:
            plots.append((f"Metrics against {axis} (error bars: one std over seeds)", drawn))
    drawn = training_curves(report, directory / "training_curves.png")
    if drawn:
        plots.append(("Training curves: val/elbo after each epoch, all jobs", drawn))
    else:
        notes.append("training curves: no job has a metrics.csv with val/elbo")
    drawn, note = kl_per_dimension(report, directory / "kl_per_dim.png")
    if drawn:
        plots.append((f"KL per latent dimension ({note})", drawn))
    else:
        notes.append(f"KL per latent dimension: {note}")
    drawn = rate_distortion(report, directory / "rate_distortion.png")
    if drawn:
        plots.append(("Rate-distortion plane: every complete job at (D, R); dashed lines of equal ELBO", drawn))
    else:
        notes.append("rate-distortion plane: no complete job has test/reconstruction and test/kl")
    drawn = collapse_heatmaps(report, directory / "kl_per_dim_heatmaps.png")
    if drawn:
        plots.append(("Posterior collapse over training: KL of each latent dimension per epoch, every job", drawn))
    else:
        notes.append("collapse heatmaps: no job has val/kl_per_dim in its metrics.csv")
    drawn = image_grid(report, directory / "images.png", notes)
    if drawn:
        plots.append(("Reconstructions and prior samples of every complete job", drawn))
    else:
        notes.append("images: no complete job has images/reconstructions.png and images/samples.png")
    return plots, notes
