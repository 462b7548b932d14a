"""vae_lab: what each term of the ELBO does to a Variational Autoencoder.

In a notebook, ``vae_lab.load_run(run_dir)`` reads a finished run back (vae_lab/run/loading.py).
It is imported on first use, so that ``import vae_lab`` (and every ``python -m vae_lab.<entry>``)
stays free of torch and Lightning until they are needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vae_lab.run.loading import LoadedRun, load_run

__version__ = "0.1.0"
__all__ = ["LoadedRun", "load_run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from vae_lab.run import loading

        return getattr(loading, name)
    raise AttributeError(f"module 'vae_lab' has no attribute {name!r}")
