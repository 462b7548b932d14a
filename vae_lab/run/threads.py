"""How many CPU threads a run uses: ``threads: auto`` (by model size) or a number."""

from __future__ import annotations

from typing import Any

import torch

from vae_lab.errors import ConfigError
from vae_lab.run.devices import available_cores

#: Forward GFLOP per training step from which auto uses all cores (see choose_threads): above
#: every model measured here, all of which trained faster on one thread.
MANY_THREADS_FROM_GFLOP = 5.0


def threads_number(setting: int | str) -> int:
    """A ``threads`` setting that is not ``auto``: the number, checked."""
    if isinstance(setting, int) and not isinstance(setting, bool):
        if setting < 1:
            raise ConfigError(f"threads={setting} must be at least 1 (or auto).")
        return setting
    raise ConfigError(f"threads={setting!r} is not a number of threads; use threads=auto or threads=<N>.")


def training_flops(model: torch.nn.Module, image_shape: tuple[int, ...], batch_size: int) -> int:
    """Floating-point operations of one forward pass of the ELBO on a batch (counted by
    ``torch.utils.flop_counter``: matrix products and convolutions, which scale with the batch),
    from one image (0.04 s, against 0.4 s for a batch of 100), without touching the global random
    state or any gradient."""
    from torch.utils.flop_counter import FlopCounterMode

    image = torch.zeros((1, *image_shape), device=next(model.parameters()).device)
    counter = FlopCounterMode(display=False)
    with torch.random.fork_rng(devices=[]), torch.no_grad(), counter:
        model.elbo_terms(image, model.objective.n_samples)
    return counter.get_total_flops() * batch_size


def choose_threads(
    setting: int | str | None,
    model: torch.nn.Module,
    image_shape: tuple[int, ...],
    batch_size: int,
    processes: int = 1,
    device_type: str = "cpu",
) -> int:
    """The torch thread count of a run: ``setting`` when it is a number (``None``: torch's default);
    for ``auto``, one thread for models below ``MANY_THREADS_FROM_GFLOP`` forward GFLOP per
    training step, else all of this process's share of the cores (``processes``: DDP ranks on this
    machine). On an accelerator (``device_type`` not cpu) auto keeps torch's default.

    Measured with benchmarks/threads.py on this 2-core machine while other jobs shared it (load
    average 6-14; medians of 5 interleaved rounds, batch 100, benchmarks/results/threads.json),
    milliseconds per step on 1 thread against 2: the default 784-200-200-50 MLP on MNIST
    (0.085 GFLOP) 19 against 1800; the MLP on CIFAR-10-sized images (0.27 GFLOP) 53 against 1500;
    the conv model on MNIST (1.0 GFLOP) 141 against 750 and on CIFAR-10 (1.4 GFLOP) 235 against
    1800 (an earlier run: 25/290, 49/1250, 176/1800, 291/2600). Small matrix products gain little
    from a second thread, and when the cores are busy every parallel region waits for a
    descheduled thread: one thread was 5-100x faster for every model. Larger models (wide conv
    nets, ResNet VAEs) are where a second core pays; re-measure on a quiet machine to move the
    threshold.
    A number of threads changes the order of floating-point sums, so results are reproducible for
    a fixed thread count; auto depends only on the model, never on the machine's load.
    """
    cores = max(1, available_cores() // max(1, processes))
    if setting is None:
        return torch.get_num_threads()
    if setting != "auto":
        return threads_number(setting)
    if device_type != "cpu":  # the model runs on an accelerator: the CPU threads only feed it
        return torch.get_num_threads()
    gflop = training_flops(model, image_shape, batch_size) / 1e9
    return cores if gflop >= MANY_THREADS_FROM_GFLOP else 1


def set_run_threads(
    setting: int | str | None, model: torch.nn.Module, datamodule: Any, trainer: Any, at_most: int | None = None
) -> int:
    """Set torch's thread count for a run's Trainer (:func:`choose_threads` for its devices on this
    machine), never above ``at_most`` (a parallel launcher worker's share of the cores); returns it."""
    threads = choose_threads(
        setting,
        model,
        datamodule.image_shape,
        datamodule.batch_size,
        trainer.num_devices,
        trainer.strategy.root_device.type,
    )
    threads = min(threads, at_most) if at_most is not None else threads
    torch.set_num_threads(threads)
    return threads


def evaluation_threads(
    setting: int | str | None,
    processes: int = 1,
    device_type: str = "cpu",
    launcher_share: int | None = None,
) -> tuple[int, ...]:
    """The torch thread counts the test-set evaluation chooses from, by timing its first batches
    (vae_lab.evaluation.thread_choice): for ``auto``, 1 and this process's share of the cores
    (``processes``: DDP ranks on this machine; ``launcher_share``: the threads a parallel launcher gave
    this worker, never exceeded); a number: that number; ``None``: torch's current count; on an
    accelerator the current count (the CPU threads only feed it).

    Training keeps choose_threads' count: the evaluation's chunks are thousands of z decoded at once,
    a workload that a second idle core speeds up (benchmarks/evaluation.py measures it) while the
    training steps of small models are fastest on one thread."""
    if setting is None or device_type != "cpu":
        return (torch.get_num_threads(),)
    if setting != "auto":
        return (threads_number(setting),)
    share = max(1, available_cores() // max(1, processes))
    if launcher_share is not None:
        share = min(share, launcher_share)
    return tuple(sorted({1, share}))
