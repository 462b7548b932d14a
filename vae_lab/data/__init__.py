"""Data modules: one file per data set, each with a yaml of the same name in ``conf/data/``."""

from vae_lab.data.base import ImageDataModule
from vae_lab.data.cifar import CIFAR10DataModule
from vae_lab.data.mnist import MNISTDataModule

__all__ = ["ImageDataModule", "CIFAR10DataModule", "MNISTDataModule"]
