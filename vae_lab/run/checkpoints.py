"""Reading checkpoints safely: a truncated, foreign, non-finite or altered file is refused.

Every place that loads a checkpoint (resume, the best checkpoint before validation and test,
``python -m vae_lab.evaluate``) goes through :func:`check_checkpoint`, so that a bad file stops
the program with a :class:`~vae_lab.errors.CheckpointError` that names the file and the problem,
instead of a traceback from deep inside ``torch.load`` or a silent NaN evaluation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from vae_lab.errors import CheckpointError

#: What every Lightning checkpoint holds; a file without them is not one.
LIGHTNING_KEYS = ("state_dict", "epoch", "global_step", "pytorch-lightning_version")

#: Where a run keeps its checkpoints, relative to its output dir.
CHECKPOINT_DIR = "checkpoints"


def checkpoint_callbacks(run_dir: str | os.PathLike) -> list[Any]:
    """The run's two checkpoints, both under ``<run dir>/checkpoints/``:

    - ``best.ckpt``, the best ``val/elbo`` so far (the first callback, so ``ckpt_path="best"`` uses it);
    - ``last.ckpt``, the end of every epoch. A separate callback, because Lightning 2.6's
      ``save_last=True`` rewrites last.ckpt only in epochs where the monitored value improved, so
      it would lag behind the last completed epoch that ``resume=true`` must continue from.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    directory = Path(run_dir) / CHECKPOINT_DIR
    best = ModelCheckpoint(
        dirpath=directory, filename="best", monitor="val/elbo", mode="max", auto_insert_metric_name=False
    )
    last = ModelCheckpoint(dirpath=directory, filename="last", monitor=None, save_top_k=1, enable_version_counter=False)
    return [best, last]


def last_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """``<run dir>/checkpoints/last.ckpt`` (the end of the last completed epoch), or None."""
    path = Path(run_dir) / CHECKPOINT_DIR / "last.ckpt"
    return path if path.exists() else None


def non_finite_tensors(tree: Any, prefix: str = "") -> Iterator[str]:
    """The names of the floating-point tensors in a nested dict/list that hold a NaN or an inf."""
    if isinstance(tree, torch.Tensor):
        if (tree.is_floating_point() or tree.is_complex()) and not bool(torch.isfinite(tree).all()):
            yield prefix or "<tensor>"
    elif isinstance(tree, float):
        if not math.isfinite(tree):
            yield prefix or "<float>"
    elif isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from non_finite_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(tree, (list, tuple)):
        for index, value in enumerate(tree):
            yield from non_finite_tensors(value, f"{prefix}[{index}]")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file with ``torch.load(weights_only=True)`` (no code in the file runs).

    Raises :class:`CheckpointError` when the file is missing, empty, truncated or not a torch file.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file.")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): it was truncated. Use another checkpoint.")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            kind = "it holds Python objects other than tensors and plain values, so it is not a vae_lab checkpoint"
        else:
            kind = "the file is truncated or corrupt, or not a torch checkpoint"
        raise CheckpointError(
            f"checkpoint {path} ({size} bytes) cannot be read: {kind} ({reason}). "
            "Use another checkpoint (e.g. checkpoints/last.ckpt or best.ckpt of the run)."
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(checkpoint).__name__}, not a Lightning checkpoint (a dict with "
            f"{', '.join(LIGHTNING_KEYS)})."
        )
    return checkpoint


def check_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module | None = None,
    map_location: str | torch.device = "cpu",
    config: Mapping[str, Any] | None = None,
    config_source: str = "this run's config",
) -> dict[str, Any]:
    """Load a checkpoint and check that it is a whole, finite Lightning checkpoint whose content
    digest matches (vae_lab.run.checkpoint_integrity); with ``model``, also that it is a checkpoint of
    this model (the same parameter names and shapes); with ``config`` (resolved, from
    ``config_source``), that it was written with the same model- and data-defining settings.

    Returns the checkpoint dict; raises :class:`CheckpointError` naming the file and the problem.
    """
    from vae_lab.run.checkpoint_integrity import verify_checkpoint

    checkpoint = load_checkpoint(path, map_location)
    missing = [key for key in LIGHTNING_KEYS if key not in checkpoint]
    if missing or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise CheckpointError(
            f"checkpoint {path} is not a Lightning checkpoint: it lacks {', '.join(missing) or 'a state_dict'} "
            f"(it has {', '.join(map(str, list(checkpoint)[:8])) or 'nothing'}). Use a checkpoint written by vae_lab."
        )
    bad = list(non_finite_tensors(checkpoint["state_dict"]))
    if bad:
        raise CheckpointError(
            f"checkpoint {path} holds non-finite weights ({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}); "
            "it cannot be used. Use an earlier checkpoint."
        )
    verify_checkpoint(path, checkpoint, config, config_source)
    if model is not None:
        mismatch = state_dict_mismatch(checkpoint["state_dict"], model.state_dict())
        if mismatch:
            raise CheckpointError(
                f"checkpoint {path} is from another model: {mismatch}. Load it with the config of the run that "
                "wrote it (its .hydra/config.yaml)."
            )
    return checkpoint


def state_dict_mismatch(saved: Mapping[str, Any], expected: Mapping[str, torch.Tensor]) -> str:
    """A description of how two state dicts differ in names or shapes ('' when they match)."""
    problems = []
    missing = [name for name in expected if name not in saved]
    unexpected = [name for name in saved if name not in expected]
    if missing:
        problems.append(f"missing {', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:4])}{', ...' if len(unexpected) > 4 else ''}")
    for name, tensor in expected.items():
        value = saved.get(name)
        if isinstance(value, torch.Tensor) and value.shape != tensor.shape:
            problems.append(f"{name} has shape {list(value.shape)}, the model needs {list(tensor.shape)}")
            if len(problems) >= 6:
                break
    return "; ".join(problems)
