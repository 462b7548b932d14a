"""The report as documents: report.md (links to the PNGs) and report.html (one self-contained page,
every image embedded as a base64 data URI, no scripts)."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

from vae_lab.report.table import NOT_COMPLETE, Report, job_cells, markdown_table, table_cells

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em; color: #222;
       max-width: 1400px; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #bbb; padding: 4px 8px; text-align: right; white-space: nowrap; }
th { background: #eee; }
td.text, th.text { text-align: left; }
td.wrap { text-align: left; white-space: normal; max-width: 40em; }
tr.incomplete td { background: #fff3f0; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-style: italic; margin-top: 0.3em; }
code { background: #f4f4f4; padding: 1px 4px; }
"""


def headline(report: Report) -> str:
    counts = report.status_counts()
    order = ["complete", *NOT_COMPLETE]
    parts = [f"{counts[s]} {s}" for s in order if counts.get(s)] + [
        f"{n} {s}" for s, n in counts.items() if s not in order
    ]
    axes = ", ".join(report.axes) or "none (one setting)"
    return f"{len(report.jobs)} jobs ({', '.join(parts)}); swept axes: {axes}; seeds are replicates."


def relative(path: Path, start: Path) -> str:
    try:
        return os.path.relpath(path, start)
    except ValueError:
        return str(path)


def to_markdown(
    report: Report,
    title: str,
    command: str,
    plots: list[tuple[str, Path]],
    notes: list[str],
    output_dir: Path,
    wandb_note: str,
) -> str:
    header, cells = table_cells(report)
    lines = [
        f"# {title}",
        "",
        headline(report),
        "",
        f"Made with `{command}`. Values: mean ± std over the complete jobs' seeds (sample std, n - 1); "
        "nats per image (bits/dim for bpd); '-' where no complete job has the metric.",
        "",
        markdown_table(header, cells),
        "",
    ]
    job_header, job_rows = job_cells(report)
    if job_rows:
        job_rows = [[row[0], relative(Path(row[1]), output_dir), *row[2:]] for row in job_rows]
        lines += ["## Jobs not complete", "", markdown_table(job_header, job_rows), ""]
    lines += ["## Plots", ""]
    for caption, path in plots:
        lines += [f"### {caption}", "", f"![{caption}]({relative(path, output_dir)})", ""]
    lines += [f"- {note}" for note in notes]
    if wandb_note:
        lines += ["", f"wandb: {wandb_note}"]
    return "\n".join(lines).rstrip() + "\n"


def html_table(
    header: list[str], cells: list[list[str]], text_columns: int, incomplete: list[bool] | None = None
) -> str:
    def cell(tag: str, index: int, value: str) -> str:
        last = index == len(header) - 1
        kind = ' class="wrap"' if last and tag == "td" else ' class="text"' if index < text_columns or last else ""
        return f"<{tag}{kind}>{html.escape(str(value))}</{tag}>"

    rows = ["<tr>" + "".join(cell("th", i, h) for i, h in enumerate(header)) + "</tr>"]
    for number, line in enumerate(cells):
        kind = ' class="incomplete"' if incomplete and incomplete[number] else ""
        rows.append(f"<tr{kind}>" + "".join(cell("td", i, c) for i, c in enumerate(line)) + "</tr>")
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def to_html(
    report: Report, title: str, command: str, plots: list[tuple[str, Path]], notes: list[str], wandb_note: str
) -> str:
    header, cells = table_cells(report)
    incomplete = [bool(row.not_complete) for row in report.rows]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(headline(report))}</p>",
        f"<p>Made with <code>{html.escape(command)}</code>. Values: mean ± std over the complete jobs' seeds "
        "(sample std, n - 1); nats per image (bits/dim for bpd); '-' where no complete job has the metric.</p>",
        html_table(header, cells, text_columns=len(report.axes) + 1, incomplete=incomplete),
    ]
    job_header, job_rows = job_cells(report)
    if job_rows:
        parts += ["<h2>Jobs not complete</h2>", html_table(job_header, job_rows, text_columns=len(job_header))]
    parts.append("<h2>Plots</h2>")
    for caption, path in plots:
        parts.append(
            f'<figure><img src="{data_uri(path)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    if notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(note)}</li>" for note in notes) + "</ul>")
    if wandb_note:
        parts.append(f"<p>wandb: {html.escape(wandb_note)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
