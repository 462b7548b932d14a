"""What each part of vae_lab's training step costs, A/B in one process (issue 14's 3% rule, issue 18's gap).

    python benchmarks/step_costs.py [--steps 1020] [--block 20] [--repeats 5] [--profile]

Each fit trains the default model (784-200-200-50 tanh, Bernoulli, batch 100, fused Adam, one torch
thread, real MNIST) with the callbacks a ``python -m vae_lab.train`` run has during its training
steps (the non-finite guard, the console's per-epoch line, the learning-rate logger, the CUDA check
without NVML). Times are CPU time of the process (one torch thread: the work of a step, not the time
other jobs of a shared machine took from it).

What one change costs: it is switched on and off every ``--block`` steps within one fit (after
``--warmup`` steps), so that both states share the process, its memory and the machine's busy
spells; each block's CPU time per step is recorded (Lightning's work between steps included) and the
figure is the median difference between each 'on' block and the 'off' block before it. The changes:
the removed ``VAE.__setattr__`` shortcut put back, torch's Bernoulli.log_prob in place of
BernoulliLogProb, ``self.log`` per step in place of EpochMeans, the NVML-based CUDA check kept, the
finite guard off, Adam not fused.

Whole fits, for the gap of issue 18 and the progress bars (which cannot be switched within a fit):
the hand-written fused-Adam loop of benchmarks/throughput.py and vae_lab's own training_step in a
hand-written loop (no Lightning) on the same batches, and Lightning fits with each bar, in rounds
whose order rotates. ``--profile``: cProfile of one default fit instead.
Saved as benchmarks/results/step_costs.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from throughput import plain_model
from timing import data_root, print_table, save


def compose_default() -> Any:
    from hydra import compose, initialize_config_module

    with initialize_config_module("vae_lab.conf", version_base="1.3"):
        return compose("config", overrides=["logger=csv", f"data.root={data_root()}"])


class StepClock:
    """Lightning callback: CPU seconds of this process per step, from the start of batch ``warmup`` to
    the end of the last."""

    def __init__(self, warmup: int) -> None:
        import lightning as L

        class Clock(L.Callback):
            def on_train_batch_start(inner, trainer, module, batch, batch_idx):  # noqa: N805
                if batch_idx == warmup:
                    self.started = time.process_time()

            def on_train_batch_end(inner, trainer, module, outputs, batch, batch_idx):  # noqa: N805
                self.ended, self.steps = time.process_time(), batch_idx + 1 - warmup

        self.callback = Clock()
        self.started = self.ended = 0.0
        self.steps = 0

    def ms_per_step(self) -> float:
        return 1000 * (self.ended - self.started) / self.steps


class Alternation:
    """Lightning callback: switches a change on and off every ``block`` steps (off, on, off, on, ...
    after ``warmup`` steps) and records the CPU milliseconds per step of each block, from the start
    of its first step to the start of the next block's (all of Lightning's work between steps in)."""

    def __init__(self, switch: Callable[[Any, Any, bool], None], block: int, warmup: int) -> None:
        import lightning as L

        self.blocks: dict[bool, list[float]] = {False: [], True: []}
        state = {"on": False, "started": None}

        def boundary(trainer: Any, module: Any, batch_idx: int) -> None:
            now = time.process_time()
            if state["started"] is not None:
                self.blocks[state["on"]].append(1000 * (now - state["started"]) / block)
                state["on"] = not state["on"]
                switch(trainer, module, state["on"])
            state["started"] = now

        class Switch(L.Callback):
            def on_train_batch_start(inner, trainer, module, batch, batch_idx):  # noqa: N805
                step = trainer.global_step  # across epochs
                if step >= warmup and (step - warmup) % block == 0:
                    boundary(trainer, module, step)

            def on_train_end(inner, trainer, module):  # noqa: N805
                switch(trainer, module, False)

        self.callback = Switch()


# ---------------------------------------------------------------------------------- the changes
def setattr_shortcut(self: Any, name: str, value: Any) -> None:
    """The former ``VAE.__setattr__``: a plain attribute for Lightning's ``_current_fx_name``."""
    if name == "_current_fx_name":
        object.__setattr__(self, name, value)
    else:
        super(type(self), self).__setattr__(name, value)


def switch_setattr_shortcut(trainer: Any, model: Any, on: bool) -> None:
    if on:
        type(model).__setattr__ = setattr_shortcut
    elif "__setattr__" in type(model).__dict__:
        del type(model).__setattr__


from vae_lab.model.likelihoods.bernoulli import LogitBernoulli  # noqa: E402

OWN_LOG_PROB = LogitBernoulli.log_prob


def switch_torch_bernoulli(trainer: Any, model: Any, on: bool) -> None:
    """torch's Bernoulli.log_prob (binary_cross_entropy_with_logits) in place of BernoulliLogProb."""
    from torch.distributions import Bernoulli

    LogitBernoulli.log_prob = Bernoulli.log_prob if on else OWN_LOG_PROB


def switch_log_per_step(trainer: Any, model: Any, on: bool) -> None:
    """self.log of each training metric at every step (what EpochMeans replaces)."""

    def add(values: dict[str, Any]) -> None:
        for name, value in values.items():
            model.log(f"train/{name}", value.mean(), on_step=False, on_epoch=True, batch_size=value.shape[0])

    if on:
        model.train_means.add = add
    else:
        model.train_means.__dict__.pop("add", None)


def switch_nvml_check(trainer: Any, model: Any, on: bool) -> None:
    """PYTORCH_NVML_BASED_CUDA_CHECK=1 back during the steps (what CudaCheckWithoutNVML removes)."""
    from vae_lab.run.step_overheads import NVML_CHECK_VARIABLE

    if on:
        os.environ[NVML_CHECK_VARIABLE] = "1"
    else:
        os.environ.pop(NVML_CHECK_VARIABLE, None)


def switch_finite_guard(trainer: Any, model: Any, on: bool) -> None:
    """The non-finite guard's check off (on = without the check)."""
    from vae_lab.run.finite_guard import NonFiniteGuard

    for callback in trainer.callbacks:
        if isinstance(callback, NonFiniteGuard):
            callback.every_n_steps = 0 if on else 1


def switch_unfused_adam(trainer: Any, model: Any, on: bool) -> None:
    """Adam's per-tensor loop in place of the fused kernel (the same state)."""
    for optimizer in trainer.optimizers:
        for group in optimizer.param_groups:
            group["fused"] = not on


SWITCHES: dict[str, Callable[[Any, Any, bool], None]] = {
    "VAE.__setattr__ shortcut (removed)": switch_setattr_shortcut,
    "torch Bernoulli.log_prob, not BernoulliLogProb": switch_torch_bernoulli,
    "self.log per step, not EpochMeans": switch_log_per_step,
    "NVML check kept, no CudaCheckWithoutNVML": switch_nvml_check,
    "no finite guard (check_finite_every_n_steps=0)": switch_finite_guard,
    "Adam not fused": switch_unfused_adam,
}


@contextlib.contextmanager
def stderr_to_devnull() -> Iterator[None]:
    """File descriptors 1 and 2 to /dev/null during a fit (the bars write there)."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for descriptor in (*saved, devnull):
            os.close(descriptor)


def run_callbacks(cfg: Any, bar: str) -> list[Any]:
    """The callbacks a default run trains with (checkpoints are written at epoch ends only: left out)."""
    import hydra.utils
    from lightning.pytorch.callbacks import TQDMProgressBar

    from vae_lab.run.finite_guard import NonFiniteGuard
    from vae_lab.run.step_overheads import CudaCheckWithoutNVML
    from vae_lab.tracking.console import LineProgress

    bars = {
        "bar: TQDM refresh_rate=1": lambda: TQDMProgressBar(refresh_rate=1),
        "bar: TQDM refresh_rate=20": lambda: TQDMProgressBar(refresh_rate=20),
    }
    return [
        hydra.utils.instantiate(cfg.callbacks.learning_rate),
        NonFiniteGuard(cfg.check_finite_every_n_steps),
        CudaCheckWithoutNVML(),
        bars.get(bar, LineProgress)(),
    ]


def lightning_fit(cfg: Any, datamodule: Any, steps: int, extra: list[Any], bar: str = "lines") -> Any:
    """A Lightning fit of ``steps`` batches of the default model with the run's callbacks and ``extra``."""
    import lightning as L
    import torch

    from vae_lab.model.build import build_model
    from vae_lab.tracking.console import metrics_csv_logger

    torch.manual_seed(0)
    model = build_model(cfg, datamodule)
    with tempfile.TemporaryDirectory(prefix="vae_lab_step_costs_") as folder:
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=steps,  # over several epochs when steps > 500
            limit_val_batches=0,
            enable_checkpointing=False,
            enable_model_summary=False,
            log_every_n_steps=cfg.trainer.log_every_n_steps,
            logger=[metrics_csv_logger(folder)],
            callbacks=[*run_callbacks(cfg, bar), *extra],
            default_root_dir=folder,
        )
        with stderr_to_devnull():
            trainer.fit(model, datamodule=datamodule)
    return trainer


def fit_ms_per_step(cfg: Any, datamodule: Any, steps: int, warmup: int, bar: str = "lines") -> float:
    clock = StepClock(warmup)
    lightning_fit(cfg, datamodule, steps, [clock.callback], bar)
    return clock.ms_per_step()


def alternated(cfg: Any, datamodule: Any, switch: Any, steps: int, block: int, warmup: int) -> dict[str, Any]:
    """One fit with the change switched on and off every ``block`` steps: the median ms per step of
    each state and the median difference of neighbouring blocks (on minus the off block before it)."""
    alternation = Alternation(switch, block, warmup)
    lightning_fit(cfg, datamodule, steps, [alternation.callback])
    off, on = alternation.blocks[False], alternation.blocks[True]
    pairs = [b - a for a, b in zip(off, on, strict=False)]
    return {
        "off_ms": statistics.median(off),
        "on_ms": statistics.median(on),
        "difference_ms": statistics.median(pairs),
        "blocks": alternation.blocks,
    }


def hand_loop(batches: list[Any], step: Callable[[Any], Any], optimizer: Any, warmup: int) -> float:
    """ms per step of a hand-written loop over ``batches`` (step(x) -> loss)."""
    for index, x in enumerate(batches):
        if index == warmup:
            started = time.process_time()
        loss = step(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return 1000 * (time.process_time() - started) / (len(batches) - warmup)


def plain_fused(batches: list[Any], warmup: int) -> float:
    import torch

    torch.manual_seed(0)
    model = plain_model()
    return hand_loop(batches, model.loss, torch.optim.Adam(model.parameters(), lr=1e-3, fused=True), warmup)


def vae_lab_by_hand(cfg: Any, datamodule: Any, batches: list[Any], warmup: int) -> float:
    import torch

    from vae_lab.model.build import build_model

    torch.manual_seed(0)
    model = build_model(cfg, datamodule)
    model.train()
    optimizer = model.configure_optimizers()
    return hand_loop(batches, lambda x: model.training_step(x, 0), optimizer, warmup)


def profile(cfg: Any, datamodule: Any, steps: int, warmup: int) -> None:
    """cProfile of one default fit (the first fit of the process warms up outside the profile):
    the functions with the most time of their own, and the cumulative time of the main parts."""
    import cProfile
    import pstats

    lightning_fit(cfg, datamodule, 50, [])
    profiler = cProfile.Profile()
    profiler.enable()
    lightning_fit(cfg, datamodule, steps, [])
    profiler.disable()
    stats = pstats.Stats(profiler).strip_dirs()
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(60)


WHOLE_FITS = ("bar: TQDM refresh_rate=1", "bar: TQDM refresh_rate=20")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1020, help="training steps of each alternated fit")
    parser.add_argument("--block", type=int, default=20, help="steps between two switches")
    parser.add_argument("--warmup", type=int, default=20, help="first batches not timed")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of the whole-fit comparisons")
    parser.add_argument("--only", nargs="*", help="switch only these changes (names as in the table); no whole fits")
    parser.add_argument(
        "--profile", action="store_true", help="instead: cProfile one default fit and print where its time goes"
    )
    arguments = parser.parse_args()
    import logging

    import torch

    torch.set_num_threads(1)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("vae_lab").setLevel(logging.ERROR)
    from vae_lab.model.build import build_datamodule

    cfg = compose_default()
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    if arguments.profile:
        profile(cfg, datamodule, arguments.steps, arguments.warmup)
        return
    print(f"each change switched on and off every {arguments.block} steps in one fit of {arguments.steps} steps")
    switched = {}
    chosen = {name: switch for name, switch in SWITCHES.items() if not arguments.only or name in arguments.only}
    for name, switch in chosen.items():
        switched[name] = alternated(cfg, datamodule, switch, arguments.steps, arguments.block, arguments.warmup)
        print(f"  {name}: {switched[name]['difference_ms']:+.3f} ms per step", flush=True)
    base = statistics.median(value for result in switched.values() for value in result["blocks"][False])
    rows = [
        {
            "change": name,
            "ms per step, off": result["off_ms"],
            "on": result["on_ms"],
            "on - off, ms": result["difference_ms"],
            "% of a step": 100 * result["difference_ms"] / base,
        }
        for name, result in switched.items()
    ]
    print_table(rows, ["change", "ms per step, off", "on", "on - off, ms", "% of a step"])
    if arguments.only:
        return

    whole_steps = min(arguments.steps, 500)  # one epoch
    batches = [batch for batch, _ in zip(datamodule.train_dataloader(), range(whole_steps), strict=False)]
    measures: dict[str, Callable[[], float]] = {
        "plain loop, fused Adam": lambda: plain_fused(batches, arguments.warmup),
        "vae_lab training_step by hand": lambda: vae_lab_by_hand(cfg, datamodule, batches, arguments.warmup),
        "vae_lab, Lightning fit (lines)": lambda: fit_ms_per_step(cfg, datamodule, whole_steps, arguments.warmup),
    }
    for bar in WHOLE_FITS:
        measures[bar] = lambda bar=bar: fit_ms_per_step(cfg, datamodule, whole_steps, arguments.warmup, bar)
    print(f"whole fits, {arguments.repeats} rounds, the order rotated each round")
    measured = rotated(measures, arguments.repeats)
    whole = [{"variant": name, "ms per step": statistics.median(values)} for name, values in measured.items()]
    print_table(whole, ["variant", "ms per step"])
    path = save(
        "step_costs",
        {
            "steps": arguments.steps,
            "block": arguments.block,
            "switched": switched,
            "base_ms_per_step": base,
            "whole_fits": measured,
        },
    )
    print("saved", path)


def rotated(measures: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Each measure once per round, the order shifted by one each round (no variant always runs last)."""
    names = list(measures)
    measured: dict[str, list[float]] = {name: [] for name in names}
    for round_number in range(repeats):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            measured[name].append(measures[name]())
            print(f"  round {round_number + 1}/{repeats} {name}: {measured[name][-1]:.4g}", flush=True)
    return measured


if __name__ == "__main__":
    main()
