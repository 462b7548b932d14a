"""What every vae_lab checkpoint carries about itself, and the checks made with it on every load.

Each checkpoint gets a ``vae_lab`` record (schema: vae_lab.run.provenance):

- ``config``: the run's resolved config (put in by :class:`CheckpointRecord`, a Lightning callback);
- ``provenance``: vae_lab's version and git commit, library versions, device (vae_lab.run.provenance);
- ``digests``: a sha256 of each part of the checkpoint (``state_dict``, ``optimizer_states``,
  ``loops``, ``callbacks``, ..., and the record itself), computed by :func:`seal` just before the
  file is written (vae_lab.run.checkpoint_io.AtomicCheckpointIO) over a canonical serialization: the
  raw bytes, dtype and shape of every tensor and the repr of every other value, dict keys sorted.
  It is exact across save/load round trips and costs a few milliseconds for the default model.

On load (:func:`verify_checkpoint`, called by vae_lab.run.checkpoints.check_checkpoint for resume, the
best checkpoint after training and vae_lab.evaluate; and by AtomicCheckpointIO for every load
Lightning makes), the digests are recomputed: a flipped bit in a weight or an optimizer moment is
refused, naming the file and the part. With a config to compare (resume, evaluate), the
checkpoint's own config must agree on every model- or data-defining key.

The rule for "model- or data-defining": every config key, except the keys in
:data:`MAY_DIFFER` (and the keys below them) -- where the data is and how it is read, how many
threads/devices/which accelerator, console and logging settings, the evaluation settings, and
``trainer.max_epochs`` (to extend a run). Any key not listed there (including keys added later) must
be equal.

A checkpoint without the record (written before this module, or by other code) is still read, with a
warning that its integrity and settings cannot be checked.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from vae_lab.errors import CheckpointError
from vae_lab.run.provenance import SCHEMA_VERSION, provenance
from vae_lab.run.state import MAY_CHANGE_ON_RESUME, config_differences

#: The top-level key of a checkpoint that holds vae_lab's record.
RECORD_KEY = "vae_lab"

#: Config keys (with everything below them) that may differ between a checkpoint and the config
#: that loads it (one list with the resume check's, vae_lab.run.state).
MAY_DIFFER = MAY_CHANGE_ON_RESUME

#: How the error messages name the parts of a checkpoint.
PART_NAMES = {
    "state_dict": "the model weights (state_dict)",
    "optimizer_states": "the optimizer state (optimizer_states)",
    "lr_schedulers": "the learning-rate scheduler state (lr_schedulers)",
    "loops": "the training loop state (loops)",
    "callbacks": "the callbacks' state (callbacks)",
    RECORD_KEY: f"its config and provenance record ({RECORD_KEY})",
}


def _feed(update: Callable[[Any], None], value: Any) -> None:
    """Feed a canonical, unambiguous serialization of ``value`` to a hash's ``update``."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        if tensor.layout != torch.strided:
            tensor = tensor.to_dense()
        tensor = tensor.cpu().contiguous()
        update(f"T{tensor.dtype}{list(tensor.shape)};".encode())
        if tensor.numel():
            update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, Mapping):
        items = sorted(value.items(), key=lambda item: (type(item[0]).__name__, str(item[0])))
        update(f"D{len(items)};".encode())
        for key, item in items:
            _feed(update, key)
            _feed(update, item)
    elif isinstance(value, (list, tuple)):  # torch.Size too; a list and a tuple hash alike
        update(f"L{len(value)};".encode())
        for item in value:
            _feed(update, item)
    elif isinstance(value, (str, bytes)):
        data = value.encode() if isinstance(value, str) else value
        update(f"{type(value).__name__}{len(data)};".encode())
        update(data)
    else:  # None, bool, int, float (repr is exact), torch.dtype ...
        text = f"{type(value).__name__}:{value!r}".encode()
        update(f"V{len(text)};".encode())
        update(text)


def part_digest(value: Any) -> str:
    """sha256 (hex) of the canonical serialization of one part of a checkpoint."""
    hasher = hashlib.sha256()
    _feed(hasher.update, value)
    return hasher.hexdigest()


def content_digests(checkpoint: Mapping[str, Any]) -> dict[str, str]:
    """The digest of every top-level part of ``checkpoint``; the record counts without its ``digests``."""
    digests = {str(key): part_digest(value) for key, value in checkpoint.items() if key != RECORD_KEY}
    record = checkpoint.get(RECORD_KEY)
    if isinstance(record, Mapping):
        digests[RECORD_KEY] = part_digest({key: value for key, value in record.items() if key != "digests"})
    return digests


def seal(checkpoint: dict[str, Any]) -> None:
    """Add the content digests to the checkpoint's record (creating a bare one when no
    :class:`CheckpointRecord` put one in): the last step before the file is written."""
    record = checkpoint.setdefault(RECORD_KEY, {"schema_version": SCHEMA_VERSION})
    record.pop("digests", None)
    record["digests"] = content_digests(checkpoint)


class CheckpointRecord(Callback):
    """Puts the run's resolved config and the provenance into every checkpoint Lightning writes."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        checkpoint[RECORD_KEY] = {
            "schema_version": SCHEMA_VERSION,
            "config": self.config,
            "provenance": provenance(pl_module.device),
        }


def warn(message: str) -> None:
    print(f"vae_lab: warning: {message}", file=sys.stderr)


def verify_digests(path: str | os.PathLike, checkpoint: Mapping[str, Any]) -> bool:
    """Recompute the digests of a loaded checkpoint and compare them with the saved ones.

    Returns False when the checkpoint has none (an older one); raises :class:`CheckpointError`
    naming the file and the parts that changed when they differ."""
    record = checkpoint.get(RECORD_KEY)
    saved = record.get("digests") if isinstance(record, Mapping) else None
    if not isinstance(saved, Mapping):
        return False
    actual = content_digests(checkpoint)
    changed = [key for key in sorted(set(saved) | set(actual)) if saved.get(key) != actual.get(key)]
    if changed:
        parts = ", ".join(PART_NAMES.get(key, repr(key)) for key in changed)
        raise CheckpointError(
            f"checkpoint {path} is corrupt: {parts} changed after it was written (the content digest saved with "
            "it no longer matches: a flipped bit on disk or in a copy, or an edit). It cannot be used. Restore the "
            "file from a good copy, or use another checkpoint of the run (checkpoints/last.ckpt or best.ckpt); to "
            "resume, move a corrupt last.ckpt away and start the run over."
        )
    return True


def verify_checkpoint(
    path: str | os.PathLike,
    checkpoint: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    config_source: str = "this config",
) -> None:
    """The integrity check (:func:`verify_digests`) and, with ``config`` (a resolved config as a
    dict), the settings check: :class:`CheckpointError` listing every model- or data-defining key
    whose value in the checkpoint's config differs from ``config`` (from ``config_source``).
    A checkpoint without a digest or a config is accepted with a warning."""
    missing = [] if verify_digests(path, checkpoint) else ["content digest"]
    if config is not None:
        record = checkpoint.get(RECORD_KEY)
        saved = record.get("config") if isinstance(record, Mapping) else None
        if not isinstance(saved, Mapping):
            missing.append("config")
        else:
            changed = config_differences(dict(saved), dict(config), may_change=MAY_DIFFER)
            if changed:
                listing = "\n".join(f"  - {line}" for line in changed)
                raise CheckpointError(
                    f"checkpoint {path} was written with other model or data settings than {config_source} "
                    f"(checkpoint -> {config_source}):\n{listing}\nNothing was loaded or written. Use the config "
                    "the checkpoint was written with (kept in the run's summary.json 'config' and in the checkpoint's "
                    f"'{RECORD_KEY}' record), or this config in a new run. Only these keys may differ: "
                    f"{', '.join(MAY_DIFFER)}."
                )
    if missing:
        warn(
            f"checkpoint {path} carries no {' and no '.join(missing)} (it was written before vae_lab recorded them, "
            f"or by other code): its {'integrity' if 'content digest' in missing else 'settings'}"
            f"{' and settings' if len(missing) == 2 else ''} cannot be checked."
        )
