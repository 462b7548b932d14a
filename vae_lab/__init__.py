"""vae_lab: what each term of the ELBO does to a Variational Autoencoder."""

__version__ = "0.1.0"
