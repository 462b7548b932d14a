"""Measure the gradient signal-to-noise ratio of the IWAE against k, with and without DReG (Rainforth et al.
2018, Fig. 1; Tucker et al. 2019), on a briefly trained default model.

    nice -n 10 python benchmarks/gradient_snr.py [--epochs 1,10] [--train-subset 10000] [--ks 1,5,10,50]
        [--n-estimates 100]

For each number of epochs in --epochs it trains the default model (objective=elbo, Bernoulli, MLP) for that
many epochs on the first --train-subset training images through the CLI (outputs/benchmark_gradient_snr_<E>
epochs/, reused when it holds a finished run). Then, for each k and for gradient =
reparameterization and dreg, the trained weights get objective=iwae with that k and estimator and
vae_lab.evaluation.gradient_snr.gradient_snr measures --n-estimates gradient estimates on one fixed batch (the first
training batch, data.batch_size images), seeded identically for every setting. Writes
benchmarks/results/gradient_snr.json and docs/images/gradient_snr_vs_k.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gradient_snr.json"
FIGURE = ROOT / "docs" / "images" / "gradient_snr_vs_k.png"
GRADIENTS = ("reparameterization", "dreg")


def train(run_dir: Path, epochs: int, train_subset: int) -> None:
    command = [
        sys.executable,
        "-m",
        "vae_lab.train",
        f"trainer.max_epochs={epochs}",
        f"data.train_subset={train_subset}",
        "logger=csv",
        "eval.n_importance_samples=0",
        f"hydra.run.dir={run_dir}",
    ]
    print("training:", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def measure(run_dir: Path, ks: list[int], n_estimates: int, epochs: int) -> list[dict]:
    import torch
    from omegaconf import OmegaConf

    from vae_lab.evaluation.gradient_snr import gradient_snr
    from vae_lab.model.build import build_datamodule, build_model
    from vae_lab.model.objectives import IWAE

    torch.set_num_threads(1)
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    model = build_model(cfg, datamodule)
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    model.load_state_dict(checkpoint["state_dict"])
    batch = next(iter(datamodule.train_dataloader()))
    results = []
    for k in ks:
        for gradient in GRADIENTS:
            model.objective = IWAE(k=k, gradient=gradient)
            started = time.time()
            snr = gradient_snr(model.train(), batch, n_estimates, seed=cfg.seed)
            seconds = round(time.time() - started, 1)
            results.append({"epochs": epochs, "k": k, "gradient": gradient, **snr, "seconds": seconds})
            print(
                f"{epochs} epochs, k={k:3d} {gradient:18s} encoder SNR {snr['encoder']['snr_mean']:.4f}  "
                f"decoder SNR {snr['decoder']['snr_mean']:.4f}",
                flush=True,
            )
    return results


def plot(results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharex=True)
    trained = sorted({r["epochs"] for r in results})
    for axis, group in zip(axes, ("encoder", "decoder"), strict=True):
        for gradient, marker, color in zip(GRADIENTS, ("o", "s"), ("C0", "C1"), strict=True):
            for epochs, line in zip(trained, ("-", "--", ":"), strict=False):
                rows = [r for r in results if r["gradient"] == gradient and r["epochs"] == epochs]
                axis.plot(
                    [r["k"] for r in rows],
                    [r[group]["snr_mean"] for r in rows],
                    marker + line,
                    color=color,
                    label=f"IWAE {gradient}, trained {epochs} epoch{'s' * (epochs != 1)}",
                )
        axis.set(xscale="log", yscale="log", xlabel="k (importance samples)", title=f"{group} gradient SNR")
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("mean over parameters of |mean| / std")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(FIGURE, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", default="1,10")
    parser.add_argument("--train-subset", type=int, default=10000)
    parser.add_argument("--ks", default="1,5,10,50")
    parser.add_argument("--n-estimates", type=int, default=100)
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    results = []
    for epochs in (int(e) for e in args.epochs.split(",")):
        run_dir = ROOT / "outputs" / f"benchmark_gradient_snr_{epochs}epochs"
        if not (run_dir / "summary.json").is_file():
            train(run_dir, epochs, args.train_subset)
        results += measure(run_dir, ks, args.n_estimates, epochs)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "command": "nice -n 10 python " + " ".join(sys.argv),
                "trained": {
                    "epochs": args.epochs,
                    "train_subset": args.train_subset,
                    "model": "the default (elbo, bernoulli, mlp)",
                },
                "n_estimates": args.n_estimates,
                "threads": 1,
                "cpu": os.cpu_count(),
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    plot(results)
    print(f"wrote {RESULTS.relative_to(ROOT)} and {FIGURE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
