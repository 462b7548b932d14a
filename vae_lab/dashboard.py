"""The wandb dashboard of a sweep: ``python -m vae_lab.dashboard <sweep dir> [--name NAME]``.

Builds a wandb workspace view (with ``wandb-workspaces``, ``pip install 'vae_lab[dashboard]'``) of
the sweep's runs (its wandb group):

- for each swept axis, the ``val/elbo`` curves (on the epoch axis) grouped by it, and
  ``test/nll_is`` and ``test/elbo`` per setting (bars); an axis that is a config group
  (``likelihood=gaussian``) groups by ``choices.<group>``, another (``objective.kl_weight=2``) by
  its config key;
- the rate (``test/kl``) against the distortion (``-test/reconstruction``) of every job;
- the KL of each latent dimension (the per-epoch charts of vae_lab.tracking.wandb_run);
- the image panels (reconstructions, prior samples, traversals; per epoch and at the end).

Online (an API key, vae_lab.tracking.wandb_mode) it saves the view and prints its URL. Offline it writes the
view's specification (the ``Workspace``, as JSON) to ``<sweep dir>/dashboard.json`` and says how to
publish it once online: ``wandb sync`` the runs, then run this command again.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from vae_lab.errors import ConfigError, VaeLabError

log = logging.getLogger("vae_lab.dashboard")

SPEC_FILE = "dashboard.json"
INSTALL_HINT = "pip install 'vae_lab[dashboard]'  (or: pip install wandb-workspaces==0.4.13)"
#: The image keys of a vae_lab run (vae_lab.tracking.wandb_run, vae_lab.evaluation.latent_pictures, vae_lab.train).
IMAGE_KEYS = (
    "images/reconstructions",
    "images/samples",
    "images/traversals",
    "latent/traversals",
    "latent/interpolations",
    "images",
)
KL_TABLES = ("val/kl_per_dim_chart_table", "test/kl_per_dim_chart_table")


def grouping_key(axis: str, jobs: list[Any]) -> str:
    """The config key the runs are grouped by for a swept axis: ``choices.<group>`` for a config
    group, else the axis itself (a config key such as ``objective.kl_weight``)."""
    if any(axis in (job.choices or {}) for job in jobs):
        return f"choices.{axis}"
    return axis


def sweep_wandb(jobs: list[Any]) -> dict[str, Any]:
    """The sweep's wandb identity from its jobs' summary.json (``wandb``: group, project, entity,
    mode): the most common of each."""
    records = [job.summary.get("wandb") or {} for job in jobs]
    records = [record for record in records if record.get("status") == "ok"]
    if not records:
        raise ConfigError(
            'none of the sweep\'s jobs has a wandb run (summary.json has no "wandb": {"status": "ok"}); '
            "train the sweep with logger=wandb (the default) to get a dashboard."
        )

    def most_common(name: str) -> Any:
        values = Counter(record.get(name) for record in records if record.get(name))
        return values.most_common(1)[0][0] if values else None

    return {name: most_common(name) for name in ("group", "project", "entity", "mode")}


def read_group_file(sweep_dir: Path) -> str | None:
    """The sweep's wandb group as vae_lab.run.jobs fixed it (``<sweep dir>/.wandb_group``), or None."""
    from vae_lab.run.jobs import GROUP_FILE

    path = sweep_dir / GROUP_FILE
    return path.read_text().strip() or None if path.is_file() else None


def build_workspace(jobs: list[Any], axes: list[str], identity: dict[str, Any], name: str) -> Any:
    """The workspace view of the sweep (see the module doc)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    sections = []
    for axis in axes:
        key = grouping_key(axis, jobs)
        by = wr.Config(key)
        sections.append(
            ws.Section(
                name=f"by {axis}",
                is_open=True,
                panels=[
                    wr.LinePlot(
                        title=f"val/elbo by {axis}",
                        x="epoch",
                        y=["val/elbo"],
                        groupby=by,
                        groupby_aggfunc="mean",
                        groupby_rangefunc="minmax",
                    ),
                    *[
                        wr.BarPlot(title=f"{metric} by {axis}", metrics=[metric], groupby=by, groupby_aggfunc="mean")
                        for metric in ("test/nll_is", "test/elbo")
                    ],
                ],
            )
        )
    sections.append(
        ws.Section(
            name="rate and distortion",
            is_open=True,
            panels=[
                wr.ScatterPlot(
                    title="rate test/kl against distortion -test/reconstruction (nats), every job",
                    x=wr.SummaryMetric("test/kl"),
                    y=wr.SummaryMetric("test/reconstruction"),
                ),
                *[
                    wr.CustomChart(
                        query={"summaryTable": {"tableKey": table}},
                        chart_name="wandb/bar/v0",
                        chart_fields={"label": "dimension", "value": "kl"},
                        chart_strings={"title": f"{table.split('/')[0]}: KL per latent dimension (nats)"},
                    )
                    for table in KL_TABLES
                ],
            ],
        )
    )
    sections.append(
        ws.Section(
            name="images",
            is_open=True,
            panels=[
                wr.MediaBrowser(title=key, media_keys=[key], mode="gallery", gallery_axis="step") for key in IMAGE_KEYS
            ],
        )
    )
    group = identity.get("group")
    return ws.Workspace(
        entity=identity.get("entity") or "",
        project=identity.get("project") or "vae_lab",
        name=name,
        sections=sections,
        runset_settings=ws.RunsetSettings(
            filters=[ws.Metric("Group") == group] if group else [],
            groupby=[ws.Config(grouping_key(axes[0], jobs))] if axes else [],
        ),
    )


def specification(workspace: Any) -> dict[str, Any]:
    """The workspace as JSON data: its public fields (pydantic's dump of the ``Workspace`` dataclass),
    without the library's private bookkeeping (``_id``...)."""
    from pydantic import TypeAdapter
    from wandb_workspaces.workspaces import Workspace

    def public(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: public(item) for key, item in value.items() if not str(key).startswith("_")}
        if isinstance(value, list):
            return [public(item) for item in value]
        return value

    return public(TypeAdapter(Workspace).dump_python(workspace, mode="json"))


def make_dashboard(sweep_dir: Path, name: str | None = None, mode: str | None = None) -> str:
    """Build the sweep's dashboard: save it (online) or write ``<sweep dir>/dashboard.json``
    (offline); returns what was done, one line."""
    from vae_lab.files import write_json_atomically
    from vae_lab.report.jobs import collect_jobs, swept_axes
    from vae_lab.tracking.wandb_mode import resolve_wandb_mode

    sweep_dir = Path(sweep_dir)
    jobs = [job for job in collect_jobs([sweep_dir]) if job.status != "pending"]
    identity = sweep_wandb(jobs)
    identity["group"] = identity["group"] or read_group_file(sweep_dir)
    try:
        import wandb_workspaces  # noqa: F401
    except ImportError:
        raise ConfigError(f"the dashboard needs the wandb-workspaces library: {INSTALL_HINT}") from None
    axes = swept_axes(jobs)
    name = name or f"vae_lab {identity.get('group') or sweep_dir.name}"
    workspace = build_workspace(jobs, axes, identity, name)
    mode = resolve_wandb_mode(mode or "auto")
    if mode == "online":
        saved = workspace.save()
        return f"dashboard saved: {saved.url}"
    spec_path = sweep_dir / SPEC_FILE
    write_json_atomically(spec_path, specification(workspace))
    return (
        f"dashboard written to {spec_path} (offline: no wandb API key). To publish it once online: "
        f"`wandb login`, `wandb sync {sweep_dir}/*/wandb/offline-run-*`, then run "
        f"`python -m vae_lab.dashboard {sweep_dir}` again."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vae_lab.dashboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="the sweep directory of a `python -m vae_lab.train -m ...` run")
    parser.add_argument("--name", default=None, help="the view's name (default: vae_lab <wandb group>)")
    parser.add_argument(
        "--mode",
        choices=("auto", "online", "offline"),
        default=None,
        help="online saves the view, offline writes dashboard.json (default: online with an API key)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        print(make_dashboard(args.sweep_dir, args.name, args.mode))
    except VaeLabError as error:
        print(f"vae_lab: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
