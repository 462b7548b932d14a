"""MNIST (LeCun et al. 1998), read with torchvision's dataset class from ``<root>/MNIST/raw/``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from vae_lab.data.base import ImageDataModule
from vae_lab.data.download import base_url, fetch_archive

#: The first 4 bytes of an IDX file of unsigned bytes with 3 (images) or 1 (labels) dimensions.
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
GZIP_MAGIC = b"\x1f\x8b"
REPLACE = "replace it with the official file (delete it and run with data.download=true, or copy it from the release)"
HAND_MADE = "or set data.verify=false if it is a hand-made file on purpose"


@dataclass(frozen=True)
class IdxFile:
    """One of the four official files: its name, what it holds, and what the official file is."""

    name: str
    #: Official number of images (or labels).
    count: int
    #: md5 of the official uncompressed file (the content of torchvision's md5-checked .gz files).
    md5: str

    @property
    def holds_images(self) -> bool:
        return "images" in self.name

    @property
    def kind(self) -> str:
        return "images" if self.holds_images else "labels"

    @property
    def magic(self) -> int:
        return IMAGES_MAGIC if self.holds_images else LABELS_MAGIC

    @property
    def header_size(self) -> int:
        return 16 if self.holds_images else 8

    @property
    def item_size(self) -> int:
        return 28 * 28 if self.holds_images else 1

    def size(self, count: int) -> int:
        """Bytes of a file of ``count`` items."""
        return self.header_size + count * self.item_size


OFFICIAL = (
    IdxFile("train-images-idx3-ubyte", 60_000, "6bbc9ace898e44ae57da46a324031adb"),
    IdxFile("train-labels-idx1-ubyte", 60_000, "a25bea736e30d166cdddb491f175f624"),
    IdxFile("t10k-images-idx3-ubyte", 10_000, "2646ac647ad5339dbf082846283269ea"),
    IdxFile("t10k-labels-idx1-ubyte", 10_000, "27ae3e4e09519cfbb04c329615203637"),
)
RAW_FILES = tuple(official.name for official in OFFICIAL)


def idx_problem(path: Path, official: IdxFile, verify: bool) -> tuple[int | None, str | None]:
    """(the number of items in the file, what is wrong with it or None). The format is checked
    from the header and the size (magic number, 28x28 images, a size that matches the header's
    count); with ``verify`` also the official count and md5. The common case costs one md5 pass
    (about 0.07 s for all four files here), measured against the official file's exact size first."""
    from torchvision.datasets.utils import calculate_md5

    size = path.stat().st_size
    if verify and size == official.size(official.count) and calculate_md5(str(path)) == official.md5:
        return official.count, None
    with path.open("rb") as handle:
        header = handle.read(official.header_size)
    magic = int.from_bytes(header[:4], "big")
    if size == 0:
        return None, f"{path} is empty (0 bytes): {REPLACE}."
    if header.startswith(GZIP_MAGIC):
        return None, f"{path} is gzip-compressed: decompress it (gunzip -c {path.name}.gz > {path.name}), or {REPLACE}."
    if magic != official.magic:
        if magic in (IMAGES_MAGIC, LABELS_MAGIC):
            other = "images" if magic == IMAGES_MAGIC else "labels"
            return None, (
                f"{path} is an IDX {other} file (magic number 0x{magic:08x}), not MNIST {official.kind} "
                f"(0x{official.magic:08x}): a {other} file was copied in its place; {REPLACE}."
            )
        return None, (
            f"{path} does not start with the IDX magic number of MNIST {official.kind} (0x{official.magic:08x}; "
            f"found 0x{header[:4].hex()}): it is not an MNIST file; {REPLACE}."
        )
    if len(header) < official.header_size:
        return None, f"{path} is {size} bytes, shorter than an IDX header: it is truncated; {REPLACE}."
    count = int.from_bytes(header[4:8], "big")
    if official.holds_images:
        rows, columns = int.from_bytes(header[8:12], "big"), int.from_bytes(header[12:16], "big")
        if (rows, columns) != (28, 28):
            return None, f"{path} holds images of {rows}x{columns} pixels, not MNIST's 28x28; {REPLACE}."
    expected = official.size(count)
    if size != expected:
        what = "it is truncated" if size < expected else f"{size - expected:,} bytes too many"
        return None, (
            f"{path} is {size:,} bytes, but its header announces {count:,} {official.kind} ({expected:,} bytes): "
            f"{what}; {REPLACE}."
        )
    if verify and count != official.count:
        hint = ""
        if {count, official.count} == {60_000, 10_000}:
            hint = f" (the count of the {'training' if count == 60_000 else 'test'} file: are the files swapped?)"
        return count, (
            f"{path} holds {count:,} {official.kind}; the official file has {official.count:,}{hint}; "
            f"{REPLACE}, {HAND_MADE}."
        )
    if verify:
        return count, (
            f"{path} has the size of the official file but not its content (md5 {calculate_md5(str(path))}, "
            f"official {official.md5}): it is damaged; {REPLACE}, {HAND_MADE}."
        )
    return count, None


class MNISTDataModule(ImageDataModule):
    """60,000 training images (of which ``val_size`` are held out for validation) and the official
    10,000 test images, 28x28 grey."""

    image_shape = (1, 28, 28)
    name = "MNIST"
    n_train_and_val = 60_000

    @property
    def raw_folder(self) -> Path:
        return self.root / "MNIST" / "raw"

    def expected_files(self) -> list[Path]:
        return [self.raw_folder / name for name in RAW_FILES]

    def how_to_get(self) -> str:
        return (
            "Copy the four original MNIST files (uncompressed, or the .gz files beside them) into that "
            "folder, or run with data.download=true on a machine with network access (data.mirror=<base URL> "
            "for a mirror of the .gz files)."
        )

    def file_problems(self) -> list[str]:
        """Each file's problem (:func:`idx_problem`), then images and labels that do not pair up."""
        counts: dict[str, int | None] = {}
        problems: list[str] = []
        for official in OFFICIAL:
            count, problem = idx_problem(self.raw_folder / official.name, official, self.verify)
            counts[official.name] = None if problem else count
            problems += [problem] if problem else []
        for split in ("train", "t10k"):
            images, labels = counts[f"{split}-images-idx3-ubyte"], counts[f"{split}-labels-idx1-ubyte"]
            if images is not None and labels is not None and images != labels:
                problems.append(
                    f"{self.raw_folder / f'{split}-images-idx3-ubyte'} holds {images:,} images but "
                    f"{split}-labels-idx1-ubyte holds {labels:,} labels: they are not a pair; replace them with "
                    "the official files (delete them and run with data.download=true)."
                )
        return problems

    def download_files(self) -> None:
        """Each missing file from its .gz (torchvision's names and md5s): the .gz in the raw folder
        when it is there, else from ``data.mirror`` or torchvision's mirrors."""
        from torchvision.datasets import MNIST

        mirrors = [base_url(self.mirror)] if self.mirror else list(MNIST.mirrors)
        for archive, md5 in MNIST.resources:
            name = archive.removesuffix(".gz")
            if not (self.raw_folder / name).exists():
                fetch_archive([mirror + archive for mirror in mirrors], archive, md5, self.raw_folder, [name])

    def torchvision_train_set(self) -> Dataset:
        """torchvision's ``MNIST`` with ``PILToTensor``: per image, a PIL image turned into uint8 [1, 28, 28]."""
        from torchvision.datasets import MNIST
        from torchvision.transforms import PILToTensor

        return MNIST(str(self.root), train=True, download=False, transform=PILToTensor())

    def load_uint8(self) -> tuple[torch.Tensor, torch.Tensor]:
        # torchvision's class (issue 2). Lightning imports torchvision anyway (through torchmetrics),
        # so reading the IDX files with a reader of our own would save only ~0.1 s of a run's start.
        from torchvision.datasets import MNIST

        train = MNIST(str(self.root), train=True, download=False).data
        test = MNIST(str(self.root), train=False, download=False).data
        return train.unsqueeze(1), test.unsqueeze(1)
