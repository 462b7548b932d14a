"""Benchmark: the importance-sampled evaluation (k = 5000 on the 10k MNIST test set) of vae_lab
against a plain batched PyTorch implementation of the same computation, written out below.

    python benchmarks/evaluation.py [--run-dir <trained run>] [--k 5000] [--n-images 10000] [--threads 1,2]

Each measurement runs in its own subprocess, so that its peak memory (ru_maxrss) is its own. Both
sides evaluate the same weights on the same binarized test images with the same batch and chunk
sizes and the same seeded noise, so their -log p(x) must agree to float error (checked). Without
--run-dir the default model is evaluated at its (untrained) initialisation: the time does not
depend on the weights. Prints a table and writes benchmarks/results/evaluation.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "evaluation.json"
#: The seed vae_lab binarizes the MNIST test images with, once (vae_lab.data.base.EVALUATION_SEED + 1).
TEST_BINARIZATION_SEED = 1235


def peak_memory_mb() -> float:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- the plain implementation
def plain_test_images(data_root: Path, n_images: int):
    """The MNIST test images, binarized once exactly as vae_lab's data module does it."""
    import numpy as np
    import torch

    raw = (data_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").read_bytes()
    images = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=16).copy()).reshape(-1, 1, 28, 28)
    # vae_lab.data.base.binarize: [u < grey / 255] with u ~ U[0, 1) from the seeded generator.
    uniform = torch.rand(images.shape, generator=torch.Generator().manual_seed(TEST_BINARIZATION_SEED))
    binary = (uniform < images.float() / 255.0).float()
    return binary[:n_images].reshape(n_images, 784)


def plain_evaluation(state_dict, images, k: int, images_per_batch: int, samples_per_chunk: int, seed: int) -> float:
    """Mean log p(x) over images by importance sampling, for the 784-200-200-50 tanh VAE with a
    Bernoulli decoder, N(0, I) prior and diagonal Gaussian encoder: one logsumexp over all k."""
    import torch
    import torch.nn.functional as F

    w = {name: tensor.float() for name, tensor in state_dict.items()}
    half_log_two_pi = 0.5 * math.log(2 * math.pi)
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    with torch.inference_mode():
        for start in range(0, images.shape[0], images_per_batch):
            x = images[start : start + images_per_batch]
            h = torch.tanh(F.linear(x, w["encoder.features.1.0.weight"], w["encoder.features.1.0.bias"]))
            h = torch.tanh(F.linear(h, w["encoder.features.1.2.weight"], w["encoder.features.1.2.bias"]))
            mean = F.linear(h, w["encoder.mean.weight"], w["encoder.mean.bias"])
            raw_log_variance = F.linear(h, w["encoder.log_variance.weight"], w["encoder.log_variance.bias"])
            # vae_lab.model.networks.base.GaussianEncoder: log sigma^2 = B tanh(raw / B), B = 20.
            log_variance = 20.0 * torch.tanh(raw_log_variance / 20.0)
            std = torch.exp(0.5 * log_variance)
            latent_dim = mean.shape[-1]
            log_weights = torch.empty(k, x.shape[0])
            for s in range(0, k, samples_per_chunk):
                n = min(samples_per_chunk, k - s)
                noise = torch.randn((n, *mean.shape), generator=generator)
                z = mean + std * noise
                g = torch.tanh(F.linear(z, w["decoder.hidden.0.weight"], w["decoder.hidden.0.bias"]))
                g = torch.tanh(F.linear(g, w["decoder.hidden.2.weight"], w["decoder.hidden.2.bias"]))
                logits = F.linear(g, w["decoder.output.weight"], w["decoder.output.bias"])
                log_px = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
                log_pz = -0.5 * z.square().sum(-1) - latent_dim * half_log_two_pi
                log_qz = -0.5 * noise.square().sum(-1) - (0.5 * log_variance).sum(-1) - latent_dim * half_log_two_pi
                log_weights[s : s + n] = log_px + log_pz - log_qz
            total += float((torch.logsumexp(log_weights, dim=0) - math.log(k)).double().sum())
    return total / images.shape[0]


# ---------------------------------------------------------------- workers (one per subprocess)
def worker(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(int(args.threads))
    from omegaconf import OmegaConf

    from vae_lab.evaluate import read_state_dict

    run_dir = Path(args.run_dir)
    run_cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    state_dict = read_state_dict(run_dir / "checkpoints" / "best.ckpt")
    if args.worker == "plain":
        images = plain_test_images(Path(run_cfg.data.root), args.n_images)
        memory_before = peak_memory_mb()
        started = time.perf_counter()
        log_likelihood = plain_evaluation(
            state_dict, images, args.k, args.images_per_batch, args.samples_per_chunk, args.seed
        )
        seconds = time.perf_counter() - started
        plan = (args.images_per_batch, args.samples_per_chunk)
    else:
        from vae_lab.evaluate import load_weights
        from vae_lab.evaluation.importance_sampling import EvaluationSettings, evaluate
        from vae_lab.model.build import build_datamodule, build_model

        datamodule = build_datamodule(run_cfg)
        model = build_model(run_cfg, datamodule)
        load_weights(model, run_dir / "checkpoints" / "best.ckpt", state_dict)
        datamodule.setup("test")
        settings = EvaluationSettings(
            n_importance_samples=args.k,
            seed=args.seed,
            n_test_images=args.n_images,
            memory_budget_mb=args.memory_budget_mb or None,
        )
        memory_before = peak_memory_mb()
        started = time.perf_counter()
        result = evaluate(model, datamodule.splits["test"], settings)
        seconds = time.perf_counter() - started
        log_likelihood = result.log_likelihood
        plan = (result.images_per_batch, result.samples_per_chunk)
    return {
        "implementation": args.worker,
        "threads": int(args.threads),
        "seconds": round(seconds, 2),
        "nll": -log_likelihood,
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "memory_before_evaluation_mb": round(memory_before, 1),
        "images_per_batch": plan[0],
        "samples_per_chunk": plan[1],
    }


def run_worker(args: argparse.Namespace, implementation: str, threads: int, plan: tuple[int, int]) -> dict:
    command = [
        sys.executable, __file__, "--worker", implementation, "--threads", str(threads),
        "--run-dir", str(args.run_dir), "--k", str(args.k), "--n-images", str(args.n_images), "--seed", str(args.seed),
        "--memory-budget-mb", str(args.memory_budget_mb),
        "--images-per-batch", str(plan[0]), "--samples-per-chunk", str(plan[1]),
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"{implementation} worker failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def default_run(folder: Path, data_root: str | None) -> str:
    """A run directory holding the default config and the default model at its initialisation."""
    import torch
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from vae_lab.model.build import build_datamodule, build_model

    overrides = [f"data.root={data_root}"] if data_root else []
    with initialize_config_module("vae_lab.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, build_datamodule(cfg))
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml", resolve=True)
    (folder / "checkpoints").mkdir()
    torch.save({"state_dict": model.state_dict()}, folder / "checkpoints" / "best.ckpt")
    return str(folder)


def machine() -> dict:
    """Where the figures come from, with the load average (other processes distort timings)."""
    import os

    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    return {"platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", help="a trained run (default: the default model at initialisation)")
    parser.add_argument("--data-root", help="MNIST data root when no --run-dir is given (default: VAE_LAB_DATA)")
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--n-images", type=int, default=10_000)
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts to measure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-budget-mb", type=float, default=0, help="vae_lab's budget (default 0: its own)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--worker", choices=["vae_lab", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--images-per-batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--samples-per-chunk", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    with tempfile.TemporaryDirectory() as temporary:
        if args.run_dir is None:
            args.run_dir = default_run(Path(temporary) / "run", args.data_root)
        rows = []
        for threads in [int(t) for t in args.threads.split(",")]:
            # vae_lab first: the plain loop then uses the batch and chunk sizes vae_lab chose.
            ours = run_worker(args, "vae_lab", threads, (0, 0))
            plain = run_worker(args, "plain", threads, (ours["images_per_batch"], ours["samples_per_chunk"]))
            agree = abs(ours["nll"] - plain["nll"]) < 1e-3
            rows.append({
                "threads": threads,
                "vae_lab": ours,
                "plain": plain,
                "time_ratio": round(ours["seconds"] / plain["seconds"], 3),
                "nll_agree": agree,
            })  # fmt: skip
            print(
                f"threads={threads}: vae_lab {ours['seconds']:.1f} s, plain {plain['seconds']:.1f} s", file=sys.stderr
            )

    header = f"{'threads':>7} {'impl':>8} {'seconds':>9} {'peak MB':>8} {'B x S':>10} {'-log p(x)':>10} {'ratio':>6}"
    lines = [f"importance-sampled evaluation, k={args.k}, {args.n_images} MNIST test images", header]
    for row in rows:
        for name in ("vae_lab", "plain"):
            r = row[name]
            ratio = f"{row['time_ratio']:.2f}" if name == "vae_lab" else ""
            shape = f"{r['images_per_batch']}x{r['samples_per_chunk']}"
            lines.append(
                f"{row['threads']:>7} {name:>8} {r['seconds']:>9.1f} {r['peak_memory_mb']:>8.0f} {shape:>10} {r['nll']:>10.3f} {ratio:>6}"
            )
    print("\n".join(lines))
    report = {
        "benchmark": "importance-sampled evaluation, vae_lab.evaluation.importance_sampling.evaluate vs a plain batched loop",
        "k": args.k,
        "n_images": args.n_images,
        "run_dir": args.run_dir if Path(args.run_dir).exists() else "default model at initialisation",
        "machine": machine(),
        "time_ratio_definition": "vae_lab seconds / plain seconds (acceptance: <= 1.5)",
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {args.output}")
    if not all(row["nll_agree"] for row in rows):
        raise SystemExit("vae_lab and the plain loop disagree on -log p(x): the comparison is not like for like.")


if __name__ == "__main__":
    main()
