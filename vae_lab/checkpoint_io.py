"""Lightning checkpoint I/O that writes atomically."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vae_lab.files import write_atomically


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves with ``torch.save`` into a temporary file, then renames it over the checkpoint: a run
    killed while saving keeps its previous good checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str, storage_options: Any | None = None) -> None:
        write_atomically(path, lambda file: torch.save(checkpoint, file))
