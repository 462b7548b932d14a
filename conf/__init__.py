"""The Hydra config tree, shipped inside the package as ``vae_lab.conf`` (see pyproject.toml)."""
