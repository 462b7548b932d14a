"""What MNIST and CIFAR-10 share: splits, the served pixel form, fixed evaluation sets, loaders."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import lightning as L
import torch
from torch.utils.data import Dataset, Subset

from vae_lab.data.batches import InMemoryBatches
from vae_lab.data.dataloader import DataLoaderBatches, UInt8Images
from vae_lab.data.forms import DataForm
from vae_lab.errors import ConfigError, DataFileError, DataNotFoundError
from vae_lab.ranges import Rule, at_least, checked, one_of

BINARIZATIONS = ("dynamic", "static", "none")
LOADERS = ("memory", "torchvision")

#: How many images, at least one.
Count = Annotated[int, at_least(1)]
#: A seed of the data's draws.
DataSeed = Annotated[int, at_least(0)]
#: A base URL of the data set's files.
Mirror = Annotated[
    str | None, Rule("a base URL, http://... or https://...", lambda url: str(url).startswith(("http://", "https://")))
]

#: Seeds of the fixed draws every evaluation sees (binarized or dequantized once, for every run).
EVALUATION_SEED = 1234


def binarize(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each pixel ~ Bernoulli(grey value / 255) (dynamic binarization, Burda et al. 2016, sec. 5.1),
    drawn as [u < grey / 255] with u ~ U[0, 1): the same distribution as ``torch.bernoulli``, at
    2-3x its speed on the CPU (one vectorized uniform draw instead of one Bernoulli per pixel)."""
    uniform = torch.rand(images.shape, generator=generator, device=images.device)
    return (uniform < images.float() / 255.0).float()


def dequantize(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """y = (x + u) / 256 with u ~ U[0, 1): uniform dequantization (Theis et al. 2016, sec. 3.1).

    In float32, x + u rounds up to x + 1 when u is within 2^-17 of 1 (a few pixels per epoch of
    MNIST); y is kept below (x + 1) / 256, so it stays in x's bin and below 1 (log(1 - y) finite).
    """
    grey = images.float()
    y = (grey + torch.rand(images.shape, generator=generator, device=images.device)) / 256.0
    upper = (grey + 1.0) / 256.0
    return torch.minimum(y, torch.nextafter(upper, torch.zeros_like(upper)))


def as_float(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return images.float()


class ImageDataModule(L.LightningDataModule, abc.ABC):
    """A data set of 8-bit images served in the form the likelihood models.

    Training images are drawn in a fresh order each epoch; with ``binarization=dynamic`` each
    pixel is re-drawn as Bernoulli(grey value) every time an image is served. Validation and test
    images are binarized (or dequantized) once with a fixed seed, so every evaluation of every run
    sees the same bits. The validation split is held out of the training images with
    ``split_seed``, independent of the run's seed.

    ``loader=memory`` (the default) serves training batches from the whole training set held on
    the training device (:class:`~vae_lab.data.batches.InMemoryBatches`); ``loader=torchvision``
    serves the same images in the same order with the same random draws through a
    ``torch.utils.data.DataLoader`` with ``num_workers`` workers over torchvision's data set
    (:mod:`vae_lab.data.dataloader`), the path for data that does not fit in memory. Validation
    and test sets are drawn once and held in memory in both cases.

    The files are fetched (``download=true``, from ``mirror`` when set) and verified
    (:meth:`prepare_data`) before the first read: sizes, formats and image counts always, the
    official checksums unless ``verify=false`` (hand-made files of the official format).
    """

    #: (channels, height, width) of the images.
    image_shape: tuple[int, int, int]
    #: Name used in messages.
    name: str
    #: Whether binarizing makes sense (grey images); a Bernoulli likelihood is refused otherwise.
    binarizable: bool = True
    #: Training images of the full data set, before the validation split (lets the config check
    #: refuse a batch larger than the data before anything is loaded); None when unknown.
    n_train_and_val: int | None = None

    @checked("data")
    def __init__(
        self,
        root: str,
        data_form: DataForm | str,
        batch_size: Count = 100,
        eval_batch_size: Count = 1000,
        val_size: Count = 10_000,
        binarization: Annotated[str | None, one_of(BINARIZATIONS)] = None,
        seed: DataSeed = 0,
        split_seed: DataSeed = 0,
        download: bool = False,
        train_subset: Count | None = None,
        loader: str = "memory",
        num_workers: int = 0,
        mirror: Mirror = None,
        verify: bool = True,
    ) -> None:
        super().__init__()
        if loader not in LOADERS:
            raise ConfigError(f"data.loader={loader!r} is unknown; use memory (the default) or torchvision.")
        if num_workers < 0 or (num_workers > 0 and loader == "memory"):
            raise ConfigError(
                f"data.num_workers={num_workers}: worker processes serve the torchvision DataLoader only; "
                "use data.loader=torchvision with data.num_workers >= 0, or data.num_workers=0."
            )
        self.root = Path(root).expanduser()
        self.data_form = DataForm(data_form)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_size = val_size
        self.binarization = self._check_binarization(binarization)
        self.seed = seed
        self.split_seed = split_seed
        self.download = download
        self.train_subset = train_subset
        self.loader = loader
        self.num_workers = num_workers
        self.mirror = mirror
        self.verify = verify
        #: Whether :meth:`prepare_data` has found (or fetched) and verified every file.
        self.files_ready = False
        self.splits: dict[str, torch.Tensor] = {}
        #: Positions of the training images in the file's training set (the torchvision path's subset).
        self.train_indices = torch.empty(0, dtype=torch.long)

    @property
    def n_dims(self) -> int:
        """D, the number of pixel values per image (784 for MNIST, 3072 for CIFAR-10)."""
        channels, height, width = self.image_shape
        return channels * height * width

    # ------------------------------------------------------------------ configuration checks
    def _check_binarization(self, binarization: str | None) -> str:
        if self.data_form is DataForm.BINARY and not self.binarizable:
            raise ConfigError(
                f"This likelihood is a distribution over binary pixels, but {self.name} is colour data that "
                "vae_lab does not binarize. Choose a likelihood for 8-bit data (likelihood=discretized_logistic "
                "or categorical) or for dequantized data (likelihood=gaussian, laplace or continuous_bernoulli)."
            )
        if binarization is None:
            return "dynamic" if self.data_form is DataForm.BINARY else "none"
        if self.data_form is DataForm.BINARY and binarization == "none":
            raise ConfigError(
                "This likelihood is a distribution over binary pixels, but data.binarization=none serves "
                "grey values. Binarize the data (data.binarization=dynamic or static), or choose a "
                "likelihood for grey values (likelihood=gaussian, laplace, continuous_bernoulli, "
                "discretized_logistic or categorical)."
            )
        if self.data_form is not DataForm.BINARY and binarization != "none":
            raise ConfigError(
                f"data.binarization={binarization} serves binary pixels, but this likelihood is a distribution "
                f"over {self.data_form.description}. Drop the override (or set data.binarization=none) to "
                "serve it that form, or use likelihood=bernoulli for binarized data."
            )
        return binarization

    @abc.abstractmethod
    def expected_files(self) -> Sequence[Path]:
        """Every file the data set reads."""

    @abc.abstractmethod
    def how_to_get(self) -> str:
        """One or two sentences on where to obtain the files."""

    @abc.abstractmethod
    def file_problems(self) -> list[str]:
        """What is wrong with the files that are there, one line per problem naming the file and the
        fix (checksums only with ``verify``); empty when every file is sound."""

    def missing_files(self) -> list[Path]:
        return [path for path in self.expected_files() if not path.is_file()]

    def check_files(self) -> None:
        """Raise one clear error naming every missing file, before any other work starts."""
        missing = self.missing_files()
        if missing:
            listing = "\n".join(f"  - {path}" for path in missing)
            raise DataNotFoundError(
                f"{self.name} is not at data root {self.root}: missing\n{listing}\n"
                f"{self.how_to_get()} Set the data root with data.root=<folder> or the VAE_LAB_DATA "
                "environment variable."
            )

    # ------------------------------------------------------------------ loading
    @abc.abstractmethod
    def load_uint8(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(training images, test images) as uint8 tensors of shape [N, C, H, W]."""

    def verify_files(self) -> None:
        """Raise one :class:`DataFileError` listing every damaged or foreign file (see :meth:`file_problems`)."""
        problems = self.file_problems()
        if problems:
            listing = "\n".join(f"  - {problem}" for problem in problems)
            raise DataFileError(f"{self.name} at data root {self.root} cannot be used:\n{listing}")

    def prepare_data(self) -> None:
        """Make the files ready before anything reads them: fetch the missing ones (``download=true``),
        then refuse missing, damaged or foreign files with one clear error. Runs once per data module,
        at the first of :func:`vae_lab.model.build.build_datamodule`, :meth:`setup` (the output-bias
        initialisation and the VampPrior read the training set before any Trainer exists) and the
        Trainer's own call."""
        if self.files_ready:
            return
        if self.download and self.missing_files():
            self.download_missing_files()
        self.check_files()
        self.verify_files()
        self.files_ready = True

    def download_missing_files(self) -> None:
        """:meth:`download_files` under a file lock in the data root: parallel sweep jobs share the
        root, so one downloads and the others wait, then find the files."""
        from filelock import FileLock

        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.root / f".{self.name.lower()}.lock")):
                if self.missing_files():  # another job may have fetched them while this one waited
                    self.download_files()
        except OSError as error:
            raise DataNotFoundError(
                f"data.download=true cannot write {self.name} into the data root {self.root} "
                f"({error.strerror or error}: {error.filename or self.root}); choose a writable data.root=<folder>."
            ) from None

    def download_files(self) -> None:
        """Fetch the missing files (network or ``mirror``); subclasses that can download override this."""
        raise DataNotFoundError(f"{self.name} cannot be downloaded by vae_lab. {self.how_to_get()}")

    def torchvision_train_set(self) -> Dataset:
        """The file's training images (validation included, file order) as a map-style data set of
        uint8 ``[C, H, W]`` items for the torchvision path; data sets with a torchvision class
        override this to use it."""
        return UInt8Images(self.load_uint8()[0])

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        self.prepare_data()
        train_and_val, test = self.load_uint8()
        if self.val_size >= train_and_val.shape[0]:
            raise ConfigError(
                f"data.val_size={self.val_size} leaves no training images out of {train_and_val.shape[0]}; "
                f"use data.val_size < {train_and_val.shape[0]}."
            )
        order = torch.randperm(train_and_val.shape[0], generator=torch.Generator().manual_seed(self.split_seed))
        self.train_indices = order[self.val_size :]
        if self.train_subset:
            self.train_indices = self.train_indices[: self.train_subset]
        train = train_and_val[self.train_indices]
        self.splits = {
            "train": self._fixed_train(train),
            "val": self._fixed_eval(train_and_val[order[: self.val_size]], EVALUATION_SEED),
            "test": self._fixed_eval(test, EVALUATION_SEED + 1),
        }
        if self.batch_size > self.splits["train"].shape[0]:
            raise ConfigError(
                f"data.batch_size={self.batch_size} is larger than the {self.splits['train'].shape[0]} "
                "training images; use a smaller data.batch_size."
            )

    def _fixed_train(self, images: torch.Tensor) -> torch.Tensor:
        """Static binarization draws the training bits once; otherwise keep the 8-bit images."""
        if self.binarization == "static":
            return binarize(images, torch.Generator().manual_seed(EVALUATION_SEED - 1)).to(torch.uint8)
        return images

    def _fixed_eval(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        """Evaluation images in the served form, drawn once with a fixed seed."""
        generator = torch.Generator().manual_seed(seed)
        if self.data_form is DataForm.BINARY:
            return binarize(images, generator)
        if self.data_form is DataForm.CONTINUOUS:
            return dequantize(images, generator)
        return images.float()

    def _train_transform(self):
        if self.data_form is DataForm.BINARY:
            return binarize if self.binarization == "dynamic" else as_float
        if self.data_form is DataForm.CONTINUOUS:
            return dequantize
        return as_float

    # ------------------------------------------------------------------ loaders
    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def _rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def _world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def _device(self) -> torch.device:
        """The training device (this rank's GPU under DDP); the CPU without a trainer."""
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def on_device(self, split: str) -> torch.Tensor:
        """The split held on the training device: moved there once, on first use."""
        images = self.splits[split]
        if images.device != self._device():
            images = self.splits[split] = images.to(self._device())
        return images

    def train_dataloader(self) -> InMemoryBatches | DataLoaderBatches:
        batching = dict(
            batch_size=self.batch_size,
            shuffle=True,
            seed=self.seed,
            transform=self._train_transform(),
            epoch=self._epoch,
            rank=self._rank,
            world_size=self._world_size,
            drop_last=True,
        )
        if self.loader == "memory":
            return InMemoryBatches(self.on_device("train"), **batching)
        if self.binarization == "static":  # the fixed bits are a data set of their own
            dataset: Dataset = UInt8Images(self.splits["train"])
        else:
            dataset = Subset(self.torchvision_train_set(), self.train_indices.tolist())
        return DataLoaderBatches(dataset, **batching, device=self._device, num_workers=self.num_workers)

    def _eval_loader(self, split: str) -> InMemoryBatches:
        return InMemoryBatches(
            self.on_device(split), self.eval_batch_size, shuffle=False, rank=self._rank, world_size=self._world_size
        )

    def val_dataloader(self) -> InMemoryBatches:
        return self._eval_loader("val")

    def test_dataloader(self) -> InMemoryBatches:
        return self._eval_loader("test")

    def example_images(self, split: str = "test", n: int = 8, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images of a split in the served form (for image grids and VampPrior init): the first n,
        or n drawn at random without replacement when a ``generator`` is given."""
        self.setup()
        images = self.splits[split]
        images = (
            images[torch.randperm(images.shape[0], generator=generator)[:n]] if generator is not None else images[:n]
        )
        if split == "train":
            return self._train_transform()(images, torch.Generator(images.device).manual_seed(self.seed))
        return images
