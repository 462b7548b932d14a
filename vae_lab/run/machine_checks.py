"""Whether this machine can serve a config: the devices it asks for, and the memory a training step needs.

:func:`vae_lab.run.settings.validate_config` checks what a config says, on any machine; the checks
here depend on the machine, so they run in the process that trains (or evaluates), right after it
and still before any data is read or anything is written. ``trainer.accelerator=gpu`` without a GPU,
``trainer.devices=[0,1,2,3]`` on the CPU or ``objective.n_samples=100000000`` (a training step of
~100 TB) are refused with one message that names the setting, instead of a Lightning error or an
allocator's traceback once the run has started and recorded itself.

Devices are checked with Lightning's own accelerator classes (``is_available``, ``parse_devices``),
so that what is accepted here is what the Trainer accepts. The memory is a lower bound on what one
training step holds at once (:func:`training_step_bytes`), compared with the device's total memory
(RAM on the CPU, shared by all processes of the run; the GPU's memory on a GPU): a run refused here
cannot fit, and no run that fits is refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from vae_lab.run.settings import Problem, raise_problems

FIX = "This machine cannot serve these settings; they were checked before any data were read, and nothing was written."


# ---------------------------------------------------------------------------------------- memory
def training_step_bytes(
    n_parameters: int,
    values_per_sample: int,
    n_samples: int,
    batch_size: int,
    *,
    parameter_bytes: int = 4,
    activation_bytes: int = 4,
) -> int:
    """A lower bound on the memory of one training step, in bytes.

    The weights and their gradients, ``2 * n_parameters`` values, and for each of the
    ``n_samples * batch_size`` pairs (z, image) the values the decoder computes from z, which the
    backward pass keeps: every decoder activation and output, and z itself (``values_per_sample``).
    The optimizer's state, the encoder's activations and the likelihood's temporaries come on top.
    """
    return 2 * parameter_bytes * n_parameters + activation_bytes * n_samples * batch_size * values_per_sample


@dataclass(frozen=True)
class ModelSizes:
    """What the memory of a run scales with, from its config alone."""

    #: Parameters of the encoder, decoder and likelihood (the prior's are left out: a lower bound).
    n_parameters: int
    #: Decoder activations and outputs for one z, plus z (latent_dim values).
    values_per_sample: int


def model_sizes(cfg: DictConfig) -> ModelSizes | None:
    """The sizes of the networks this config builds, measured on the ``meta`` device (shapes without
    memory, so ``model.latent_dim=100000000`` costs nothing); None when they cannot be measured
    there (the real build then reports any problem)."""
    from hydra.errors import InstantiationException
    from hydra.utils import get_class

    from vae_lab.evaluation.importance_sampling import decoder_values_per_sample
    from vae_lab.model.build import build_networks

    image_shape = getattr(get_class(cfg.data._target_), "image_shape", None)
    if image_shape is None:
        return None
    try:
        with torch.device("meta"):
            likelihood, encoder, decoder = build_networks(cfg, tuple(image_shape))
            activations, _ = decoder_values_per_sample(decoder, cfg.model.latent_dim)
    except (InstantiationException, NotImplementedError, RuntimeError, TypeError, ValueError):
        return None  # a network that cannot be built or run on the meta device: nothing to estimate
    n_parameters = sum(p.numel() for module in (likelihood, encoder, decoder) for p in module.parameters())
    return ModelSizes(n_parameters, activations + int(cfg.model.latent_dim))


def bytes_per_value(precision: Any) -> tuple[int, int]:
    """(bytes per parameter, bytes per activation) under Lightning's ``trainer.precision``."""
    text = str(precision)
    if "64" in text:
        return 8, 8
    if "16" in text:
        return (2, 2) if "true" in text or text in ("16", "bf16") else (4, 2)
    return 4, 4


def total_memory_bytes(device: torch.device) -> int | None:
    """All the memory of a device: the machine's RAM for the CPU, the GPU's own memory for CUDA;
    None when unknown (another kind of device)."""
    if device.type == "cpu":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return None


def _size(n_bytes: float) -> str:
    """``12.3 GiB``: binary units, as ``memory_budget_mb`` counts (2**20 bytes)."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n_bytes < 1024:
            return f"{n_bytes:.0f} {unit}" if unit == "bytes" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.1f} TiB"


def _where(device: torch.device) -> str:
    if device.type == "cuda":
        return f"of memory on {device} ({torch.cuda.get_device_name(device)})"
    return "of RAM on this machine"


def memory_problems(cfg: DictConfig, devices: list[torch.device]) -> list[Problem]:
    """A training step, a validation batch and the final evaluation (:func:`evaluation_problems`) against
    the memory of the smallest device the run uses (times the processes that share the RAM on the CPU)."""
    forked = "fork" in str(cfg.trainer.get("strategy", ""))
    if not devices or (forked and devices[0].type == "cuda"):
        return []  # no CUDA query before ranks are forked (CUDA cannot be used in a forked child)
    totals = [(total_memory_bytes(device), device) for device in devices]
    if any(total is None for total, _ in totals):
        return []
    total, device = min(totals, key=lambda pair: pair[0])
    sharing = len(devices) if device.type == "cpu" else 1
    problems = evaluation_problems(
        "eval.",
        OmegaConf.select(cfg, "eval.n_importance_samples"),
        OmegaConf.select(cfg, "eval.memory_budget_mb"),
        device,
    )
    sizes = model_sizes(cfg)
    if sizes is None:
        return problems
    objective = cfg.objective
    sample_key = "k" if "k" in objective and "n_samples" not in objective else "n_samples"
    n_samples, batch_size = int(objective.get(sample_key, 1)), int(cfg.data.batch_size)
    parameter_bytes, activation_bytes = bytes_per_value(cfg.trainer.get("precision", "32-true"))
    weights = training_step_bytes(sizes.n_parameters, 0, 0, 0, parameter_bytes=parameter_bytes)
    step = training_step_bytes(
        sizes.n_parameters,
        sizes.values_per_sample,
        n_samples,
        batch_size,
        parameter_bytes=parameter_bytes,
        activation_bytes=activation_bytes,
    )
    eval_batch = int(cfg.data.get("eval_batch_size") or batch_size)
    validation = weights // 2 + activation_bytes * eval_batch * sizes.values_per_sample  # weights, 1 sample, no grad
    if max(step, validation) * sharing <= total:
        return problems
    activations, processes = step - weights, f", x {sharing} processes" if sharing > 1 else ""
    more = f"more than the {_size(total)} {_where(device)}"
    if step * sharing <= total:  # only the validation batch does not fit
        path, value = (
            ("data.eval_batch_size", eval_batch) if validation > weights else ("model.latent_dim", cfg.model.latent_dim)
        )
        problems.append(
            Problem(
                path,
                value,
                (
                    f"not possible on this machine: a validation batch needs at least {_size(validation * sharing)} "
                    f"({eval_batch} images x {sizes.values_per_sample:,} decoder values, and the weights{processes}), "
                    f"{more}. "
                    "Lower data.eval_batch_size (or model.latent_dim)."
                ),
            )
        )
        return problems
    if weights >= activations:
        path, value, lower = "model.latent_dim", cfg.model.latent_dim, "model.latent_dim or the hidden sizes"
    elif n_samples > 1:
        path, value, lower = f"objective.{sample_key}", n_samples, f"objective.{sample_key} or data.batch_size"
    else:
        path, value, lower = "data.batch_size", batch_size, "data.batch_size"
    problems.append(
        Problem(
            path,
            value,
            (
                f"not possible on this machine: a training step needs at least {_size(step * sharing)} "
                f"(the weights and gradients of {sizes.n_parameters:,} parameters, {_size(weights)}; "
                f"{n_samples} samples x {batch_size} images x {sizes.values_per_sample:,} decoder values per sample "
                f"kept for the backward pass, {_size(activations)}"
                f"{processes}), {more}. Lower {lower}."
            ),
        )
    )
    return problems


# ---------------------------------------------------------------------------------------- devices
DEVICE_NAMES = {"gpu": "CUDA GPU", "cuda": "CUDA GPU", "mps": "Apple MPS GPU", "tpu": "TPU (torch_xla)"}


def _accelerator_class(name: str) -> Any:
    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator, MPSAccelerator, XLAAccelerator

    return {
        "cpu": CPUAccelerator,
        "gpu": CUDAAccelerator,
        "cuda": CUDAAccelerator,
        "mps": MPSAccelerator,
        "tpu": XLAAccelerator,
    }.get(name)


def training_devices(trainer: Mapping[str, Any]) -> tuple[list[Problem], list[torch.device]]:
    """(problems, the devices of this node the run will use) for a ``trainer`` section, as
    ``lightning.Trainer`` would choose them (``accelerator=auto``: a GPU when there is one)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    accelerator = trainer.get("accelerator", "auto")
    if not isinstance(accelerator, str):
        return [], []  # an Accelerator object: Lightning's own to check
    name = accelerator
    if accelerator == "auto":
        name = next((kind for kind in ("cuda", "mps") if _accelerator_class(kind).is_available()), "cpu")
    kind = _accelerator_class(name)
    if kind is None:
        return [], []  # a name validate_config refuses
    strategy = str(trainer.get("strategy", ""))
    if not kind.is_available():
        ddp = "; trainer=ddp_cpu runs DDP on the CPU" if "DDP" in strategy or "ddp" in strategy else ""
        return [
            Problem(
                "trainer.accelerator",
                accelerator,
                (
                    f"not available on this machine: torch sees no {DEVICE_NAMES.get(name, name)} "
                    f"({kind.__name__}.is_available() is False). "
                    f"Use trainer.accelerator=cpu, or auto (a GPU when there is one){ddp}."
                ),
            )
        ], []
    devices = trainer.get("devices", "auto")
    try:
        parsed = kind.auto_device_count() if devices == "auto" else kind.parse_devices(devices)
        return [], list(kind.get_parallel_devices(parsed))
    except (TypeError, ValueError, MisconfigurationException) as error:
        if name == "cpu":
            how = (
                "On the CPU trainer.devices is a number of processes (1, or 2 with trainer=ddp_cpu); a list names GPUs."
            )
        else:
            how = f"This machine has {kind.auto_device_count()} {name} device(s), numbered from 0."
        said = " ".join(str(error).split())
        return [Problem("trainer.devices", devices, f"not available with {name} (Lightning: {said}). {how}")], []


def check_training_machine(cfg: DictConfig) -> None:
    """Refuse (ConfigError, every problem at once) a run this machine cannot serve: devices it
    does not have, a training step larger than the device's memory. Call it after validate_config."""
    problems, devices = training_devices(OmegaConf.to_container(cfg.trainer, resolve=True))
    raise_problems(problems or memory_problems(cfg, devices), fix=FIX)


def evaluation_problems(
    prefix: str, n_importance_samples: int | None, memory_budget_mb: float | None, device: torch.device
) -> list[Problem]:
    """What the evaluation (vae_lab.evaluation.importance_sampling) holds beyond the device's whole memory: its chunk
    budget, or the three [k, B] float32 log-weight buffers of its smallest batch of images."""
    from vae_lab.evaluation.importance_sampling import MIN_IMAGES_PER_BATCH

    total = total_memory_bytes(device)
    if total is None:
        return []
    problems = []
    if memory_budget_mb is not None and memory_budget_mb * 2**20 > total:
        problems.append(
            Problem(
                f"{prefix}memory_budget_mb",
                memory_budget_mb,
                f"not possible; it is more than the "
                f"{_size(total)} {_where(device)}. Leave it null (sized for the device).",
            )
        )
    buffers = 3 * 4 * (n_importance_samples or 0) * MIN_IMAGES_PER_BATCH
    if buffers > total:
        problems.append(
            Problem(
                f"{prefix}n_importance_samples",
                n_importance_samples,
                (
                    f"not possible on this machine: the evaluation keeps 3 x k log-weights for each of at least "
                    f"{MIN_IMAGES_PER_BATCH} images, {_size(buffers)}, more than the {_size(total)} {_where(device)}. "
                    "Lower it (Burda et al. 2016 use 5000)."
                ),
            )
        )
    return problems


def evaluation_device(
    name: str, memory_budget_mb: float | None = None, n_importance_samples: int | None = None
) -> torch.device:
    """The device of ``python -m vae_lab.evaluate device=<name>`` (auto: a GPU when there is one);
    ConfigError when this machine does not have it, or the evaluation cannot fit its memory."""
    problems = []
    device = torch.device("cpu")
    try:
        device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    except (RuntimeError, ValueError):
        problems.append(Problem("device", name, "not a device torch knows; use auto, cpu, cuda or cuda:<index>."))
    kind = _accelerator_class(device.type)
    if not problems and device.type in ("cuda", "mps"):
        count = kind.auto_device_count() if kind.is_available() else 0
        if (device.index or 0) >= count:
            there = f"{count} {device.type} device(s), numbered from 0" if count else f"no {device.type} device"
            problems.append(
                Problem(
                    "device",
                    name,
                    f"not available: this machine has {there} "
                    f"({kind.__name__}.is_available() is {kind.is_available()}). Use device=cpu or auto.",
                )
            )
    if not problems:
        problems = evaluation_problems("", n_importance_samples, memory_budget_mb, device)
    raise_problems(problems, "the evaluation's settings", FIX)
    return device
