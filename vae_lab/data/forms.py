"""The three forms in which pixels can be served to a likelihood p(x|z).

Every likelihood declares the one form it models; the data module serves exactly that form, so a
likelihood never sees data it is not a distribution over (a Bernoulli never sees grey values).

- ``binary``: pixels in {0, 1} (binarized MNIST). p(x|z) is a probability mass.
- ``continuous``: dequantized pixels y = (x + u) / 256, u ~ U[0, 1), for densities on [0, 1]
  (Gaussian, Laplace, continuous Bernoulli). The uniform noise makes -log p(y) + D log 256 an
  upper bound on the negative log-likelihood of the discrete image (Theis et al. 2016, eq. 7).
- ``discrete``: the 8-bit values x in {0, ..., 255}, stored as floats. p(x|z) is a probability mass.
"""

from __future__ import annotations

import enum
import math

import torch


class DataForm(str, enum.Enum):
    BINARY = "binary"
    CONTINUOUS = "continuous"
    DISCRETE = "discrete"

    @property
    def description(self) -> str:
        """What the pixels are, for messages."""
        return {
            DataForm.BINARY: "binary pixels (0 or 1)",
            DataForm.CONTINUOUS: "pixel values dequantized to [0, 1]",
            DataForm.DISCRETE: "8-bit pixel values (0..255)",
        }[self]

    @property
    def is_density(self) -> bool:
        """True when p(x|z) is a density (on dequantized data), False when it is a mass."""
        return self is DataForm.CONTINUOUS

    def to_unit_interval(self, x: torch.Tensor) -> torch.Tensor:
        """Map served pixels to [0, 1], the scale the encoder and the image grids use."""
        if self is DataForm.DISCRETE:
            return x / 255.0
        return x

    def bits_per_dim(self, negative_log_likelihood: torch.Tensor, n_dims: int) -> torch.Tensor:
        """Bits per dimension of a negative log-likelihood in nats per image.

        Masses: nll / (D ln 2). Densities on y = (x + u)/256: nll / (D ln 2) + log2(256) = + 8,
        which undoes the change of variables from [0, 256) to [0, 1) (targets.md, CIFAR-10).
        """
        bits = negative_log_likelihood / (n_dims * math.log(2.0))
        return bits + 8.0 if self.is_density else bits
