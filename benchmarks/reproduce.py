"""Run the short schedule of each paper reproduction on real MNIST and tabulate what it reaches
against the paper's number.

    python benchmarks/reproduce.py [--experiments iwae_vae_k1 iwae_k5 ...] [--out outputs/reproduce]

Each experiment runs as `python -m vae_lab.train experiment=<name> schedule=short`; the table
(printed, and saved as benchmarks/results/reproduce.json and .md, merged with the rows of earlier
invocations) holds the paper's test NLL, ours (importance-sampled with the run's eval settings: k = 5000
on the 10k test set by default; pass e.g. eval.n_importance_samples=1000 as an extra override), the test
ELBO, active units, epochs and wall time.
The data root is VAE_LAB_DATA, or ../shared/data beside the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

#: experiment -> (paper, reported test NLL in nats (None: the paper reports no NLL), full-schedule optimizer steps)
PAPER = {
    "iwae_vae_k1": ("Burda et al. 2016, Table 1, VAE k=1", 86.76, 3280 * 2500),
    "iwae_vae_k5": ("Burda et al. 2016, Table 1, VAE k=5", 86.47, 3280 * 2500),
    "iwae_k5": ("Burda et al. 2016, Table 1, IWAE k=5", 85.54, 3280 * 2500),
    "iwae_k50": ("Burda et al. 2016, Table 1, IWAE k=50", 84.78, 3280 * 2500),
    "vampprior": ("Tomczak & Welling 2018, VampPrior (static MNIST)", 85.57, 2000 * 500),
    "vampprior_standard": ("Tomczak & Welling 2018, standard prior (static MNIST)", None, 2000 * 500),
    "kingma_welling": ("Kingma & Welling 2014, Fig. 2 (reports the ELBO)", None, 2000 * 500),
}


def run(name: str, out: Path, data_root: Path, extra: list[str]) -> dict:
    run_dir = out / name
    command = [
        sys.executable,
        "-m",
        "vae_lab.train",
        f"experiment={name}",
        "schedule=short",
        "logger=csv",
        f"data.root={data_root}",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]
    print("$", " ".join(command), flush=True)
    started = time.time()
    completed = subprocess.run(command, cwd=REPO, text=True, capture_output=True)
    if completed.returncode != 0:
        print(completed.stdout[-2000:], completed.stderr[-4000:], sep="\n")
        return {"experiment": name, "status": "failed", "returncode": completed.returncode}
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = summary["metrics"]
    paper, paper_nll, full_steps = PAPER.get(name, (name, None, None))
    return {
        "experiment": name,
        "status": summary.get("status", "complete"),
        "paper": paper,
        "paper_nll": paper_nll,
        "nll_is": metrics.get("test/nll_is"),
        "n_importance_samples": summary["config"]["eval"]["n_importance_samples"],
        "n_test_images": summary["config"]["eval"].get("n_test_images") or 10_000,
        "test_elbo": metrics.get("test/elbo"),
        "active_units": metrics.get("test/active_units"),
        "epochs": summary["epochs"],
        "global_steps": summary["global_steps"],
        "wall_time_seconds": round(time.time() - started, 1),
        "full_schedule_steps": full_steps,
        "full_command": f"python -m vae_lab.train experiment={name}",
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        (
            "| experiment | paper | paper NLL | ours, short schedule: test NLL (IS) | ours, test ELBO | active units "
            "| epochs | wall time |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["status"] != "complete":
            lines.append(f"| {row['experiment']} | failed | | | | | | |")
            continue

        def fmt(value: float | None, digits: int = 2) -> str:
            return "-" if value is None else f"{value:.{digits}f}"

        estimate = f"{fmt(row['nll_is'])} (k = {row['n_importance_samples']}, {row['n_test_images']:,} images)"
        lines.append(
            f"| {row['experiment']} | {row['paper']} | {fmt(row['paper_nll'])} | {estimate} | "
            f"{fmt(-row['test_elbo'] if row['test_elbo'] is not None else None)} | "
            f"{row['active_units'] if row['active_units'] is not None else '-'} | "
            f"{row['epochs']} | {row['wall_time_seconds'] / 60:.1f} min |"
        )
    return "\n".join(lines)


def merged(previous: list[dict], new: list[dict]) -> list[dict]:
    """The rows of earlier invocations with this one's replacing those of the same experiment, in
    the order of PAPER: experiments can be run one invocation at a time (or on several machines)."""
    by_name = {row["experiment"]: row for row in [*previous, *new]}
    return [by_name[name] for name in [*PAPER, *sorted(set(by_name) - set(PAPER))] if name in by_name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", nargs="+", default=list(PAPER))
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "reproduce")
    parser.add_argument("extra", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    data_root = Path(os.environ.get("VAE_LAB_DATA", REPO.parent / "shared" / "data")).resolve()
    new_rows = [run(name, args.out, data_root, args.extra) for name in args.experiments]
    results = RESULTS / "reproduce.json"  # read after the runs: another invocation may have written meanwhile
    previous = json.loads(results.read_text())["rows"] if results.is_file() else []
    rows = merged(previous, new_rows)
    table = markdown(rows)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
    results.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    (RESULTS / "reproduce.md").write_text(f"Machine: {machine}\n\n{table}\n")


if __name__ == "__main__":
    main()
