"""Encoder and decoder networks. The encoder maps x to q(z|x); the decoder maps z to the
likelihood's parameters. Input and output shapes come from the data module, never from a config."""

from vae_lab.model.networks.base import GaussianEncoder, make_activation
from vae_lab.model.networks.conv import ConvDecoder, ConvEncoder
from vae_lab.model.networks.gated_mlp import GatedMLPDecoder, GatedMLPEncoder
from vae_lab.model.networks.mlp import DenseDecoder, MLPDecoder, MLPEncoder

__all__ = [
    "GaussianEncoder",
    "make_activation",
    "ConvDecoder",
    "ConvEncoder",
    "DenseDecoder",
    "GatedMLPDecoder",
    "GatedMLPEncoder",
    "MLPDecoder",
    "MLPEncoder",
]
