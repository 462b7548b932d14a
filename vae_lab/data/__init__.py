"""The data: LightningDataModules that serve MNIST and CIFAR-10 to the model.

One file per data set (``mnist.py``, ``cifar.py``), each with a yaml of the same name in ``conf/data/``;
``base.py`` (splits, subsets, example images), ``forms.py`` (binary, dequantized or 8-bit pixels),
``batches.py`` and ``dataloader.py`` (how batches are served), ``download.py`` (mirrors, checksums).

May use: torch, torchvision, lightning and the shared ``vae_lab.errors``, ``vae_lab.files``, ``vae_lab.seeds``.
"""

from vae_lab.data.base import ImageDataModule
from vae_lab.data.cifar import CIFAR10DataModule
from vae_lab.data.mnist import MNISTDataModule

__all__ = ["ImageDataModule", "CIFAR10DataModule", "MNISTDataModule"]
