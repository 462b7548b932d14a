"""The importance-weighted bound L_k (Burda, Grosse & Salakhutdinov 2016, "Importance Weighted
Autoencoders", eq. 8) as the training objective."""

from __future__ import annotations

import torch

from vae_lab.objectives.base import ELBOTerms, Objective, check_sample_count


class IWAE(Objective):
    """loss = -mean_batch L_k(x), L_k(x) = log (1/k) sum_{i=1..k} p(x, z_i) / q(z_i|x), z_i ~ q(z|x).

    The k samples are reparameterized and the loss is the bound itself (one logsumexp over the k
    log-weights), so autograd gives the IWAE gradient of Burda et al. (2016, section 3): the
    gradients of the k log-weights, weighted by the normalized importance weights. L_1 is the ELBO;
    L_k <= L_{k+1} <= log p(x) in expectation (their Theorem 1). ``kl`` only chooses how the
    logged KL is computed; the bound does not use it.
    """

    def __init__(self, k: int = 5, kl: str = "auto") -> None:
        check_sample_count("k", k)
        super().__init__(n_samples=k, kl=kl)
        self.k = k

    def loss(self, terms: ELBOTerms, step: int, epoch: int) -> torch.Tensor:
        return -terms.importance_weighted_bound().mean()

    def logged_values(self, step: int, epoch: int) -> dict[str, float]:
        return {"k": float(self.k)}
