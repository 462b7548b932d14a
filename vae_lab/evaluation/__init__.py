"""Measuring a trained VAE: what the numbers of a run are.

- ``importance_sampling.py``: the importance-sampled log-likelihood, the ELBO, bits/dim, active units
  and the KL of each latent dimension on the test set.
- ``noise.py``: the evaluation's noise, drawn per image and per sample (independent of the chunks and
  threads); ``thread_choice.py``: the evaluation's thread count, timed on its first batches.
- ``decompositions.py``: ELBO surgery and the inference gaps; ``collapse.py``: the KL of each latent
  dimension over training; ``gradient_snr.py``: the gradient signal-to-noise diagnostic.
- ``images.py``, ``latent_pictures.py``: reconstructions, samples, traversals and interpolations.

May use: ``vae_lab.model``, ``vae_lab.data``, ``vae_lab.files``, ``vae_lab.errors``, ``vae_lab.ranges``. Never the run
machinery or the trackers.
"""
