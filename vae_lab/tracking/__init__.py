"""What a run shows and records while it trains: the console, ``train.log``, ``metrics.csv`` and wandb.

- ``console.py``, ``console_handler.py``: the progress lines and the log file.
- ``wandb_mode.py`` (online or offline), ``wandb_failsafe.py`` (a logger whose failures never stop a run),
  ``wandb_run.py`` (what the wandb run records), ``learning_rate.py``.

May use: ``vae_lab.evaluation``, ``vae_lab.model``, lightning, wandb. Never the run machinery.
"""
