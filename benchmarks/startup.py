"""Start-up time of `python -m vae_lab.train`: to `--help`, and to the first training step.

    python benchmarks/startup.py [--repeats 5]

Wall times of fresh processes, medians of interleaved repeats, against baselines measured in the
same run: `python -c "import torch"` and `python -c "import lightning"` (a training run cannot
start before Lightning is imported; Lightning imports torchvision and matplotlib itself, through
torchmetrics). The first step is the moment vae_lab.run.epoch_timer records (VAE_LAB_TIMING_FILE);
the run is then interrupted. Real MNIST, default model; the logger=csv run must not import wandb,
the default run (wandb, offline without an API key) pays for it. Saved as
benchmarks/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import REPO, data_root, interleaved, print_table, save, summary


def wall_time(arguments: list[str]):
    def measure() -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, *arguments], cwd=REPO, check=True, capture_output=True)
        return time.perf_counter() - started

    return measure


def time_to_first_step(overrides: list[str]):
    """Seconds from launching `python -m vae_lab.train` to its first training step."""

    def measure() -> float:
        with tempfile.TemporaryDirectory(prefix="vae_lab_startup_") as folder:
            timing_file = Path(folder) / "timing.jsonl"
            environment = {
                **os.environ,
                "VAE_LAB_TIMING_FILE": str(timing_file),
                "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"),
                "WANDB_SILENT": "true",
            }
            command = [
                sys.executable,
                "-m",
                "vae_lab.train",
                f"data.root={data_root()}",
                f"hydra.run.dir={folder}/run",
                "++eval.n_importance_samples=0",
                *overrides,
            ]
            launched = time.time()
            process = subprocess.Popen(
                command, cwd=REPO, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            try:
                while process.poll() is None and not first_step(timing_file):
                    time.sleep(0.02)
                if not first_step(timing_file):
                    raise RuntimeError(
                        f"{' '.join(command)} ended before its first step:\n{process.stderr.read()[-3000:]}"
                    )
                seconds = first_step(timing_file) - launched
            finally:
                stop(process)
        return seconds

    return measure


def first_step(timing_file: Path) -> float | None:
    if not timing_file.is_file():
        return None
    for line in timing_file.read_text().splitlines():
        if line.endswith("}") and json.loads(line)["event"] == "first_step":
            return json.loads(line)["time"]
    return None


def stop(process: subprocess.Popen) -> None:
    """Interrupt the run as Ctrl-C would (Lightning and wandb shut down cleanly), then make sure."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    arguments = parser.parse_args()
    measures = {
        'python -c "import torch"': wall_time(["-c", "import torch"]),
        'python -c "import lightning"': wall_time(["-c", "import lightning"]),
        "vae_lab.train --help": wall_time(["-m", "vae_lab.train", "--help"]),
        "first step, logger=csv": time_to_first_step(["logger=csv"]),
        "first step, default (wandb offline)": time_to_first_step([]),
    }
    results = {name: summary(values) for name, values in interleaved(measures, arguments.repeats).items()}
    torch_seconds = results['python -c "import torch"']["median"]
    lightning_seconds = results['python -c "import lightning"']["median"]
    rows = [
        {
            "measured": name,
            "seconds": result["median"],
            "spread": result["spread"],
            "x import torch": result["median"] / torch_seconds,
            "x import lightning": result["median"] / lightning_seconds,
        }
        for name, result in results.items()
    ]
    print_table(rows, ["measured", "seconds", "spread", "x import torch", "x import lightning"])
    help_seconds = results["vae_lab.train --help"]["median"]
    print(f"--help: {help_seconds:.2f} s (acceptance < 3 s: {'ok' if help_seconds < 3 else 'ABOVE'})")
    print("saved", save("startup", {"repeats": arguments.repeats, "rows": rows, "seconds": results}))


if __name__ == "__main__":
    main()
