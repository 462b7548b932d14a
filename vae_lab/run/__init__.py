"""The run machinery: the life of a job from its config to its finished run directory.

- Settings: ``settings.py`` (every key, type and range), ``machine_checks.py`` (devices, memory).
- The job: ``jobs.py`` (one job under any launcher and rank), ``launchers.py``, ``devices.py``,
  ``threads.py``, ``distributed.py`` (DDP inside a run), ``hydra_callbacks.py``, ``sweep_progress.py``.
- The run directory: ``state.py`` (fresh, resume, skip or refuse), ``lock.py``, ``checkpoints.py``,
  ``checkpoint_io.py``, ``checkpoint_integrity.py``, ``provenance.py``, ``resume.py``.
- Stopping: ``interrupts.py``, ``early_signals.py``, ``stopped_runs.py``, ``finite_guard.py``,
  ``pause_points.py`` (a test hook).
- The Trainer's parts and the run's stages: ``callbacks.py`` (callbacks and loggers: config entries built by
  Hydra, and those the machinery needs), ``stages.py`` (test the best checkpoint, images, summary.json).
- Training-loop helpers: ``step_overheads.py``, ``log_flush.py``, ``epoch_timer.py``, ``shard_recorder.py``.

May use everything below it: ``vae_lab.tracking``, ``vae_lab.evaluation``, ``vae_lab.model``,
``vae_lab.data``. Only the entry points (``vae_lab.train``, ``vae_lab.evaluate``) import it.
"""
