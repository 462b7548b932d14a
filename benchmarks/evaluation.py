"""Benchmark: the importance-sampled evaluation (k = 5000 on the 10k MNIST test set) of vae_lab
against a plain batched PyTorch implementation of the same computation, written out below; and the
speed-up of the evaluation's own thread choice (``auto``) over one thread, the count it ran on before
it chose its own (issue 18: at least 1.6x on 2 idle cores, with the same numbers).

    python benchmarks/evaluation.py [--run-dir <trained run>] [--k 5000] [--n-images 10000] [--threads 1,auto]
                                    [--no-plain]

``--threads`` lists torch thread counts, or ``auto``: vae_lab's evaluation as a run with
``threads=auto`` does it (it times its first batches on 1 thread and on all cores, and runs on the
faster; the plain loop then runs on the count it chose). Each measurement runs in its own subprocess,
so that its peak memory (ru_maxrss) is its own. Both sides evaluate the same weights on the same
binarized test images with the same batch and chunk sizes and the same noise (each image's own,
vae_lab.evaluation.noise), so their -log p(x) must agree to float error, and so must vae_lab's at every
thread count (both checked). Without --run-dir the default model is evaluated at its (untrained)
initialisation: the time does not depend on the weights. Prints a table and the speed-up of each row
over the one-thread row, and writes benchmarks/results/evaluation.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
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
    Bernoulli decoder, N(0, I) prior and diagonal Gaussian encoder: one logsumexp over all k. The
    noise is vae_lab's (each image's own samples), so that both sides compute on the same numbers."""
    import torch
    import torch.nn.functional as F

    from vae_lab.evaluation.noise import ImageNoise

    w = {name: tensor.float() for name, tensor in state_dict.items()}
    half_log_two_pi = 0.5 * math.log(2 * math.pi)
    total = 0.0
    with torch.inference_mode():
        for start in range(0, images.shape[0], images_per_batch):
            x = images[start : start + images_per_batch]
            image_noise = ImageNoise(seed, range(start, start + x.shape[0]), "importance")
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
                noise = image_noise.standard_normal(n, mean)
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

    # auto: the process runs on one thread, as training leaves it, and the evaluation chooses its own.
    torch.set_num_threads(1 if args.threads == "auto" else int(args.threads))
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
        from vae_lab.run.threads import evaluation_threads

        threads = evaluation_threads("auto") if args.threads == "auto" else None
        memory_before = peak_memory_mb()
        started = time.perf_counter()
        result = evaluate(model, datamodule.splits["test"], settings, threads=threads)
        seconds = time.perf_counter() - started
        log_likelihood = result.log_likelihood
        plan = (result.images_per_batch, result.samples_per_chunk)
        timings = result.thread_timings
    return {
        "implementation": args.worker,
        "threads": result.threads if args.worker == "vae_lab" else int(args.threads),
        "threads_setting": args.threads,
        **({"seconds_per_image_by_threads": timings} if args.worker == "vae_lab" and timings else {}),
        "seconds": round(seconds, 2),
        "nll": -log_likelihood,
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "memory_before_evaluation_mb": round(memory_before, 1),
        "images_per_batch": plan[0],
        "samples_per_chunk": plan[1],
    }


def run_worker(args: argparse.Namespace, implementation: str, threads: int | str, plan: tuple[int, int]) -> dict:
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
    import lightning

    # The keys of a Lightning checkpoint (vae_lab.run.checkpoints refuses a bare state dict).
    checkpoint = {"state_dict": model.state_dict(), "epoch": 0, "global_step": 0}
    torch.save({**checkpoint, "pytorch-lightning_version": lightning.__version__}, folder / "checkpoints" / "best.ckpt")
    return str(folder)


def machine() -> dict:
    """Where the figures come from, with the load average (other processes distort timings)."""
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
    parser.add_argument(
        "--threads", default="1,auto", help="comma-separated torch thread counts to measure, or auto (vae_lab's choice)"
    )
    parser.add_argument("--no-plain", action="store_true", help="measure vae_lab only (the thread speed-up)")
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
        for threads in [t if t == "auto" else int(t) for t in args.threads.split(",")]:
            # vae_lab first: the plain loop then uses the batch and chunk sizes, and the threads, vae_lab chose.
            ours = run_worker(args, "vae_lab", threads, (0, 0))
            row = {"threads": threads, "vae_lab": ours}
            if not args.no_plain:
                plan = (ours["images_per_batch"], ours["samples_per_chunk"])
                plain = run_worker(args, "plain", ours["threads"], plan)
                row.update(
                    plain=plain,
                    time_ratio=round(ours["seconds"] / plain["seconds"], 3),
                    nll_agree=abs(ours["nll"] - plain["nll"]) < 1e-3,
                )
            rows.append(row)
            print(f"threads={threads}: vae_lab {ours['seconds']:.1f} s on {ours['threads']} thread(s)", file=sys.stderr)

    one = next((row["vae_lab"] for row in rows if row["threads"] == 1), None)
    for row in rows:
        if one is not None:
            row["speedup_over_1_thread"] = round(one["seconds"] / row["vae_lab"]["seconds"], 3)
            row["nll_difference_from_1_thread"] = abs(row["vae_lab"]["nll"] - one["nll"])
    header = (
        f"{'threads':>7} {'impl':>8} {'ran on':>6} {'seconds':>9} {'peak MB':>8} {'B x S':>10} {'-log p(x)':>12} "
        f"{'/plain':>6} {'speed-up':>8}"
    )
    lines = [f"importance-sampled evaluation, k={args.k}, {args.n_images} MNIST test images", header]
    for row in rows:
        for name in [name for name in ("vae_lab", "plain") if name in row]:
            r = row[name]
            ratio = f"{row['time_ratio']:.2f}" if name == "vae_lab" and "time_ratio" in row else ""
            speedup = f"{row['speedup_over_1_thread']:.2f}x" if name == "vae_lab" and one is not None else ""
            shape = f"{r['images_per_batch']}x{r['samples_per_chunk']}"
            lines.append(
                f"{row['threads']!s:>7} {name:>8} {r['threads']:>6} {r['seconds']:>9.1f} {r['peak_memory_mb']:>8.0f} "
                f"{shape:>10} {r['nll']:>12.6f} {ratio:>6} {speedup:>8}"
            )
    print("\n".join(lines))
    for row in rows:
        if one is not None and row["threads"] != 1:
            print(
                f"speed-up of threads={row['threads']} (ran on {row['vae_lab']['threads']}) over 1 thread: "
                f"{row['speedup_over_1_thread']:.2f}x; -log p(x) differs by "
                f"{row['nll_difference_from_1_thread']:.1e} nats"
                f" (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
            )
    report = {
        "benchmark": (
            "importance-sampled evaluation, vae_lab.evaluation.importance_sampling.evaluate vs a plain batched loop"
        ),
        "k": args.k,
        "n_images": args.n_images,
        "run_dir": args.run_dir if Path(args.run_dir).exists() else "default model at initialisation",
        "machine": machine(),
        "time_ratio_definition": "vae_lab seconds / plain seconds (acceptance: <= 1.5)",
        "speedup_definition": "vae_lab seconds on 1 thread / vae_lab seconds of the row (issue 18: auto >= 1.6x)",
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {args.output}")
    if not all(row.get("nll_agree", True) for row in rows):
        raise SystemExit("vae_lab and the plain loop disagree on -log p(x): the comparison is not like for like.")
    if any(row.get("nll_difference_from_1_thread", 0.0) > 1e-4 for row in rows):
        raise SystemExit("vae_lab's -log p(x) depends on the thread count by more than 1e-4 nats.")


if __name__ == "__main__":
    main()
