"""The model: the VAE LightningModule (``vae.py``) and the parts it is made of.

- ``likelihoods/`` p(x|z), ``priors/`` p(z), ``posteriors/`` q(z|x), ``objectives/`` (ELBO, IWAE and
  their variants), ``networks/`` (encoders and decoders): one class and one yaml in ``conf/`` each.
- ``build.py`` turns a composed config into a data module and a VAE; ``initialization.py``,
  ``lr_schedules.py``, ``compilation.py``, ``precision.py``, ``epoch_means.py`` serve it.

May use: torch, lightning, pyro, ``vae_lab.data`` and the shared ``vae_lab.errors``, ``vae_lab.seeds``,
``vae_lab.ranges``. Never the run machinery, the evaluation or the trackers.
"""
