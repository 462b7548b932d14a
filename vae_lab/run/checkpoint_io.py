"""Lightning checkpoint I/O that writes atomically, never writes a non-finite checkpoint, and seals
every checkpoint with a content digest that every load verifies (vae_lab.run.checkpoint_integrity)."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vae_lab.errors import NumericalError
from vae_lab.files import write_atomically
from vae_lab.run.checkpoint_integrity import seal, verify_digests
from vae_lab.run.checkpoints import non_finite_tensors


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves with ``torch.save`` into a temporary file, then renames it over the checkpoint: a run
    killed while saving keeps its previous good checkpoint.

    A checkpoint whose weights or optimizer state hold a NaN or an inf is refused (NumericalError)
    and the previous file is kept: a checkpoint on disk is always one that can be resumed from.
    Every checkpoint written gets content digests (:func:`~vae_lab.run.checkpoint_integrity.seal`);
    every checkpoint Lightning loads through this plugin (resume, ``ckpt_path="best"``) is verified
    against them, so that a changed bit is refused (CheckpointError) instead of trained or evaluated.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str, storage_options: Any | None = None) -> None:
        bad = list(non_finite_tensors({key: checkpoint.get(key) for key in ("state_dict", "optimizer_states")}))
        if bad:
            raise NumericalError(
                f"refusing to write checkpoint {path}: non-finite values in {', '.join(bad[:5])}"
                f"{', ...' if len(bad) > 5 else ''}. The previous checkpoint at that path (if any) is kept."
            )
        seal(checkpoint)
        write_atomically(path, lambda file: torch.save(checkpoint, file))

    def load_checkpoint(self, path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        checkpoint = super().load_checkpoint(path, *args, **kwargs)
        verify_digests(path, checkpoint)  # an older checkpoint without digests: check_checkpoint warned
        return checkpoint
