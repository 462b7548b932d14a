"""Training throughput of `python -m vae_lab.train` against hand-written baselines, on real MNIST.

    python benchmarks/throughput.py [--epochs 3] [--repeats 3] [--threads auto]

Measured, each in a fresh process, interleaved round by round (images per second over full
training epochs of the default model, 784-200-200-50 tanh, Bernoulli likelihood, batch 100,
Adam 1e-3; start-up, validation and checkpoints excluded):

- vae_lab: `python -m vae_lab.train` with the default config (in-memory data path), its epochs
  timed from inside by vae_lab.run.epoch_timer (VAE_LAB_TIMING_FILE);
- plain loop: a careful hand-written PyTorch loop, the same architecture with
  binary_cross_entropy_with_logits and the closed-form KL, over a uint8 tensor already in memory
  (randperm per epoch, binarized per batch as vae_lab does), with `torch.optim.Adam(lr=1e-3)` as
  people write it; and the same loop with `fused=True`, as vae_lab's config has it (for
  information: how much of the difference is the optimizer);
- DataLoader: the classic `DataLoader(MNIST(root, transform=ToTensor()), batch_size=100,
  shuffle=True)` with `torch.bernoulli` per batch, feeding the same hand-written model;

- pythae 0.1.2 (a peer library; benchmarks/pythae_peer.py): the same model, data, binarization and
  epochs, trained by pythae's own BaseTrainer (its DataLoader, its default Adam and progress bar).
  It runs in its own environment, benchmarks/.envs/pythae, made on first use (a venv without the
  system's packages: ``pip install torch==2.14.1`` and pythae's dependencies, then pythae with
  ``--no-deps``, since it declares the ``dataclasses`` backport that would shadow the standard
  library's); it is no dependency of vae_lab. Where it cannot be installed, its row says why;

and the data path alone (one epoch of binarized batches, no model): vae_lab's in-memory path
(MNISTDataModule.train_dataloader), its torchvision path (data.loader=torchvision), and the
classic DataLoader. Every variant uses the same number of torch threads (``--threads``; auto =
what vae_lab's threads=auto picks for this model). Results are ratios against the baselines of the
same run, by wall time (the acceptance figures) and, for information, by the CPU time of the
measuring process (less sensitive to other jobs on a shared machine); saved as
benchmarks/results/throughput.json. The data root is VAE_LAB_DATA, or
../shared/data beside the repository.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import data_root, interleaved, print_table, python_subprocess, save, summary

BATCH_SIZE = 100


# ---------------------------------------------------------------------------------- the baselines
def plain_model():
    """The default model written by hand: 784-200-200-50 tanh encoder and decoder."""
    import torch
    from torch import nn

    class PlainVAE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(784, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh())
            self.mean = nn.Linear(200, 50)
            self.log_variance = nn.Linear(200, 50)
            self.decoder = nn.Sequential(
                nn.Linear(50, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh(), nn.Linear(200, 784)
            )

        def loss(self, x: torch.Tensor) -> torch.Tensor:
            """-ELBO averaged over the batch: BCE summed over pixels plus the closed-form KL."""
            x = x.flatten(1)
            h = self.encoder(x)
            mean, log_variance = self.mean(h), self.log_variance(h)
            z = mean + torch.exp(0.5 * log_variance) * torch.randn_like(mean)
            logits = self.decoder(z)
            reconstruction = nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
            kl = 0.5 * (mean.pow(2) + log_variance.exp() - 1.0 - log_variance).sum(1)
            return (reconstruction + kl).mean()

    return PlainVAE()


def mnist_uint8(root: Path):
    from torchvision.datasets import MNIST

    return MNIST(str(root), train=True).data


def train_epochs(batches_of_epoch, epochs: int, fused: bool = False) -> list[dict]:
    """Train the hand-written model on ``batches_of_epoch()`` (an iterable of binarized batches)
    for ``epochs`` epochs with Adam as people write it (or fused, as vae_lab's config has it); the
    wall time and image count of each."""
    import torch

    torch.manual_seed(0)
    model = plain_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
    timings = []
    for _ in range(epochs):
        started, cpu_started, images = time.perf_counter(), time.process_time(), 0
        for x in batches_of_epoch():
            loss = model.loss(x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            images += x.shape[0]
        timings.append(epoch_timing(started, cpu_started, images))
    return timings


def epoch_timing(started: float, cpu_started: float, images: int) -> dict:
    """An epoch's wall time, CPU time of this process and images, as vae_lab.run.epoch_timer writes them."""
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,
        "images": images,
    }


def in_memory_batches(images):
    """A careful hand-written in-memory pipeline: randperm, index, binarize per batch."""
    import torch

    generator = torch.Generator().manual_seed(0)

    def epoch():
        order = torch.randperm(images.shape[0], generator=generator)
        for start in range(0, images.shape[0] - BATCH_SIZE + 1, BATCH_SIZE):
            grey = images[order[start : start + BATCH_SIZE]].float() / 255.0
            yield (torch.rand(grey.shape, generator=generator) < grey).float()

    return epoch


def classic_dataloader_batches(root: Path):
    """The classic pipeline: torchvision MNIST + ToTensor() + DataLoader, torch.bernoulli per batch."""
    import torch
    from torch.utils.data import DataLoader
    from torchvision.datasets import MNIST
    from torchvision.transforms import ToTensor

    loader = DataLoader(
        MNIST(str(root), train=True, transform=ToTensor()), batch_size=BATCH_SIZE, shuffle=True, drop_last=True
    )

    def epoch():
        for x, _ in loader:
            yield torch.bernoulli(x)

    return epoch


def vae_lab_batches(root: Path, loader: str):
    """vae_lab's own training loader (no trainer: epoch 0 each time), the default MNIST config."""
    from vae_lab.data import MNISTDataModule
    from vae_lab.data.forms import DataForm

    datamodule = MNISTDataModule(root=str(root), data_form=DataForm.BINARY, batch_size=BATCH_SIZE, loader=loader)
    datamodule.setup()
    return datamodule.train_dataloader().__iter__


def serve_epochs(batches_of_epoch, epochs: int) -> list[dict]:
    """Only the data path: iterate over the binarized batches of ``epochs`` epochs."""
    timings = []
    for _ in range(epochs):
        started, cpu_started, images = time.perf_counter(), time.process_time(), 0
        for x in batches_of_epoch():
            images += x.shape[0]
        timings.append(epoch_timing(started, cpu_started, images))
    return timings


def run_vae_lab(root: Path, epochs: int, threads: int) -> list[dict]:
    """`python -m vae_lab.train` as a user runs it; its epochs timed from inside."""
    with tempfile.TemporaryDirectory(prefix="vae_lab_throughput_") as folder:
        timing_file = Path(folder) / "timing.jsonl"
        python_subprocess(
            [
                "-m",
                "vae_lab.train",
                "logger=csv",
                f"trainer.max_epochs={epochs}",
                f"threads={threads}",
                f"data.root={root}",
                f"hydra.run.dir={folder}/run",
                "++eval.n_importance_samples=0",  # no importance-sampled evaluation at the end
            ],
            env={"VAE_LAB_TIMING_FILE": str(timing_file)},
        )
        events = [json.loads(line) for line in timing_file.read_text().splitlines()]
    return [
        {key: event[key] for key in ("seconds", "cpu_seconds", "images")}
        for event in events
        if event["event"] == "epoch"
    ]


# ---------------------------------------------------------------------------------- the peer: pythae
PYTHAE_ENV = Path(__file__).resolve().parent / ".envs" / "pythae"
PYTHAE = "pythae==0.1.2"
#: pythae 0.1.2's dependencies (its metadata), less the ``dataclasses`` backport; torch as vae_lab's.
PYTHAE_DEPENDENCIES = (
    "torch==2.14.1",
    "numpy>=1.19",
    "tqdm",
    "typing-extensions",
    "cloudpickle>=2.1.0",
    "imageio",
    "scikit-learn",
    "scipy>=1.7.1",
    "pydantic>=2.0",
)


def pythae_python() -> Path | str:
    """The Python of benchmarks/.envs/pythae, made on first use (a few minutes: torch is installed
    into it); or, when it cannot be made, why (pip's last lines)."""
    python, complete = PYTHAE_ENV / "bin" / "python", PYTHAE_ENV / ".complete"
    if complete.is_file():
        return python
    print(f"pythae: making its environment in {PYTHAE_ENV} (once)", flush=True)
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(PYTHAE_ENV)],
        [str(python), "-m", "pip", "install", "--quiet", *PYTHAE_DEPENDENCIES],
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", PYTHAE],
    ]
    for step in steps:
        try:
            completed = subprocess.run(step, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"{' '.join(step[2:5])}: {error}"
        if completed.returncode != 0:
            lines = [line for line in completed.stderr.splitlines() if line.strip() and "is ignored" not in line]
            return f"{' '.join(step[2:5])} failed: {' / '.join(lines[-3:])}"
    complete.write_text(PYTHAE + "\n")  # last: a half-made environment is made again next time
    return python


def run_pythae(root: Path, epochs: int, threads: int) -> list[dict]:
    """pythae's own trainer on the same model and data, in its environment (see pythae_peer.py)."""
    python = pythae_python()
    if isinstance(python, str):
        raise RuntimeError(f"pythae is not installed: {python}")
    peer = Path(__file__).resolve().parent / "pythae_peer.py"
    command = [str(python), str(peer), "--root", str(root), "--epochs", str(epochs), "--threads", str(threads)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if completed.returncode != 0:
        raise RuntimeError(f"pythae_peer.py failed ({completed.returncode}): {completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run_variant(name: str, epochs: int, threads: int) -> list[dict]:
    """Measure one variant in this process."""
    import torch

    torch.set_num_threads(threads)
    root = data_root()
    if name == "vae_lab":
        return run_vae_lab(root, epochs, threads)
    if name == "plain loop":
        return train_epochs(in_memory_batches(mnist_uint8(root)), epochs)
    if name == "plain loop, fused Adam":
        return train_epochs(in_memory_batches(mnist_uint8(root)), epochs, fused=True)
    if name == "DataLoader":
        return train_epochs(classic_dataloader_batches(root), epochs)
    if name == PYTHAE_ROW:
        return run_pythae(root, epochs, threads)
    if name == "data: vae_lab memory":
        return serve_epochs(vae_lab_batches(root, "memory"), epochs)
    if name == "data: vae_lab torchvision":
        return serve_epochs(vae_lab_batches(root, "torchvision"), epochs)
    if name == "data: DataLoader":
        return serve_epochs(classic_dataloader_batches(root), epochs)
    raise ValueError(f"unknown variant {name!r}")


PYTHAE_ROW = "pythae 0.1.2"
TRAINING = ("vae_lab", "plain loop", "plain loop, fused Adam", "DataLoader", PYTHAE_ROW)
DATA = ("data: vae_lab memory", "data: vae_lab torchvision", "data: DataLoader")


# ---------------------------------------------------------------------------------- the table
def auto_threads() -> int:
    """What threads=auto picks for the default model on MNIST."""
    from hydra import compose, initialize_config_module

    from vae_lab.model.build import build_datamodule, build_model
    from vae_lab.run.threads import choose_threads

    with initialize_config_module("vae_lab.conf", version_base="1.3"):
        cfg = compose("config", overrides=["logger=csv", f"data.root={data_root()}"])
    datamodule = build_datamodule(cfg)
    return choose_threads("auto", build_model(cfg, datamodule), datamodule.image_shape, datamodule.batch_size)


def in_subprocess(name: str, epochs: int, threads: int):
    def measure() -> float:
        try:
            completed = python_subprocess(
                [__file__, "--variant", name, "--epochs", str(epochs), "--threads", str(threads)]
            )
        except RuntimeError as error:
            if name != PYTHAE_ROW:  # vae_lab and the baselines must run; the peer may fail, its row says why
                raise
            measure.failure = str(error).strip().splitlines()[-1][:300]
            return math.nan
        timings = json.loads(completed.stdout.strip().splitlines()[-1])
        measure.epochs.append(timings)
        return statistics.median(epoch["images"] / epoch["seconds"] for epoch in timings)

    measure.epochs = []
    measure.failure = None
    return measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (each run a fresh process)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant, interleaved")
    parser.add_argument("--threads", default="auto", help="torch threads of every variant (auto: vae_lab's choice)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.variant:
        print(json.dumps(run_variant(arguments.variant, arguments.epochs, int(arguments.threads))))
        return

    threads = auto_threads() if arguments.threads == "auto" else int(arguments.threads)
    print(f"threads: {threads}; {arguments.repeats} interleaved runs of {arguments.epochs} epochs per variant")
    pythae = pythae_python()  # made before anything is timed
    variants = [name for name in (*TRAINING, *DATA) if name != PYTHAE_ROW or not isinstance(pythae, str)]
    measures = {name: in_subprocess(name, arguments.epochs, threads) for name in variants}
    measured = interleaved(measures, arguments.repeats)
    unavailable = {PYTHAE_ROW: pythae} if isinstance(pythae, str) else {}
    for name, measure in measures.items():
        if measure.failure is not None:
            unavailable[name] = measure.failure
    results = {name: summary(values) for name, values in measured.items() if name not in unavailable}
    baselines = {
        "vae_lab": ("plain loop", "plain loop, fused Adam", "DataLoader", PYTHAE_ROW),
        "data: vae_lab memory": ("data: DataLoader",),
    }
    baselines["data: vae_lab torchvision"] = ("data: DataLoader",)
    rows = []
    for name, result in results.items():
        epochs = [epoch for run in measures[name].epochs for epoch in run]
        row = {
            "variant": name,
            "images_per_second": result["median"],
            "spread": result["spread"],
            "seconds_per_epoch": statistics.median(epoch["seconds"] for epoch in epochs),
            "images_per_cpu_second": statistics.median(epoch["images"] / epoch["cpu_seconds"] for epoch in epochs),
        }
        for baseline in baselines.get(name, ()):
            if baseline in results:
                row[f"x {baseline.removeprefix('data: ')}"] = result["median"] / results[baseline]["median"]
        rows.append(row)
    for name, why in unavailable.items():
        rows.insert(TRAINING.index(name) if name in TRAINING else len(rows), {"variant": name, "note": why})
    columns = [
        "variant",
        "images_per_second",
        "spread",
        "seconds_per_epoch",
        "images_per_cpu_second",
        "x plain loop",
        "x plain loop, fused Adam",
        "x DataLoader",
        "x pythae 0.1.2",
    ]
    if unavailable:
        columns.append("note")
    print_table(rows, columns)
    ratios = {
        "vae_lab / plain loop": results["vae_lab"]["median"] / results["plain loop"]["median"],
        "vae_lab / DataLoader": results["vae_lab"]["median"] / results["DataLoader"]["median"],
        "vae_lab / plain loop with fused Adam": results["vae_lab"]["median"]
        / results["plain loop, fused Adam"]["median"],
        "data: vae_lab memory / DataLoader": results["data: vae_lab memory"]["median"]
        / results["data: DataLoader"]["median"],
    }
    if PYTHAE_ROW in results:
        ratios["vae_lab / pythae 0.1.2"] = results["vae_lab"]["median"] / results[PYTHAE_ROW]["median"]
    acceptance = {
        "vae_lab / plain loop": 0.9,
        "vae_lab / plain loop with fused Adam": 1.1,  # issue 18
        "vae_lab / DataLoader": 1.4,
        "data: vae_lab memory / DataLoader": 8.0,
    }
    cpu = {row["variant"]: row["images_per_cpu_second"] for row in rows if "images_per_cpu_second" in row}
    ratios["CPU time: vae_lab / plain loop (information)"] = cpu["vae_lab"] / cpu["plain loop"]
    ratios["CPU time: vae_lab / plain loop with fused Adam (information)"] = (
        cpu["vae_lab"] / cpu["plain loop, fused Adam"]
    )
    for name, ratio in ratios.items():
        if name not in acceptance:
            print(f"{name}: {ratio:.2f}x")
            continue
        verdict = "ok" if ratio >= acceptance[name] else "BELOW"
        print(f"{name}: {ratio:.2f}x (acceptance >= {acceptance[name]}x: {verdict})")
    path = save(
        "throughput",
        {
            "threads": threads,
            "epochs_per_run": arguments.epochs,
            "runs_per_variant": arguments.repeats,
            "batch_size": BATCH_SIZE,
            "ratios": ratios,
            "acceptance": acceptance,
            "rows": rows,
            "unavailable": unavailable,
            "images_per_second": results,
            "epochs": {name: measure.epochs for name, measure in measures.items()},
        },
    )
    print("saved", path)


if __name__ == "__main__":
    main()
