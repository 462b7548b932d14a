"""Training steps per second with 1 thread against all cores, per model size: the measurement
behind ``threads: auto`` (vae_lab/run/threads.py).

    python benchmarks/threads.py [--repeats 7] [--steps 30] [--only conv]

Each model is vae_lab's own (built from the config groups), one optimizer step = the ELBO, its
gradient and Adam, on random data of the data set's shape, batch 100. The thread counts are
interleaved in every round; the table shows medians, their spread, and the speed-up of all cores
over one. Saved as benchmarks/results/threads.json.
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import torch
from timing import interleaved, print_table, save, summary

#: (name, config overrides, image shape): the default model on MNIST and the conv model on CIFAR-10.
MODELS = [
    ("mlp, MNIST (784-200-200-50)", ["model=mlp", "likelihood=bernoulli"], (1, 28, 28)),
    ("mlp, CIFAR-10 size", ["model=mlp", "likelihood=gaussian"], (3, 32, 32)),
    ("conv, MNIST", ["model=conv", "likelihood=bernoulli"], (1, 28, 28)),
    ("conv, CIFAR-10 size", ["model=conv", "likelihood=gaussian"], (3, 32, 32)),
]


def build(overrides: list[str], image_shape: tuple[int, int, int]):
    from hydra import compose, initialize_config_module

    from vae_lab.model.build import build_model

    with initialize_config_module("vae_lab.conf", version_base="1.3"):
        # No data here, so no data-dependent output-bias initialisation (it changes no step time).
        cfg = compose("config", overrides=[*overrides, "logger=none", "model.initialize_output_bias=false"])
    torch.manual_seed(0)
    model = build_model(cfg, SimpleNamespace(image_shape=image_shape))
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def step_timer(model, optimizer, batch: torch.Tensor, threads: int, steps: int):
    def seconds_per_step() -> float:
        torch.set_num_threads(threads)
        step()  # warm-up after switching the thread count
        started = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - started) / steps

    def step() -> None:
        loss = model.objective.loss(model.elbo_terms(batch, model.objective.n_samples), step=0, epoch=0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return seconds_per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--only", default="", help="measure only the models whose name contains this")
    arguments = parser.parse_args()
    from vae_lab.run.threads import available_cores, training_flops

    cores = available_cores()
    rows = []
    for name, overrides, image_shape in [model for model in MODELS if arguments.only in model[0]]:
        model, optimizer = build(overrides, image_shape)
        generator = torch.Generator().manual_seed(0)
        uniform = torch.rand((arguments.batch_size, *image_shape), generator=generator)
        batch = (uniform < 0.3).float() if model.data_form.value == "binary" else uniform
        print(f"{name}:", flush=True)
        variants = {
            f"{threads} thread(s)": step_timer(model, optimizer, batch, threads, arguments.steps)
            for threads in sorted({1, cores})
        }
        measured = interleaved(variants, arguments.repeats)
        one, many = summary(measured["1 thread(s)"]), summary(measured[f"{cores} thread(s)"])
        rows.append(
            {
                "model": name,
                "gflop_per_step": training_flops(model, image_shape, arguments.batch_size) / 1e9,
                "ms_1_thread": one["median"] * 1e3,
                "spread_1": one["spread"],
                f"ms_{cores}_threads": many["median"] * 1e3,
                f"spread_{cores}": many["spread"],
                f"speedup_{cores}_over_1": one["median"] / many["median"],
                "raw_seconds": {"1": one, str(cores): many},
            }
        )
    columns = [key for key in rows[0] if key != "raw_seconds"]
    print_table(rows, columns)
    print("saved", save("threads", {"batch_size": arguments.batch_size, "steps": arguments.steps, "rows": rows}))


if __name__ == "__main__":
    main()
